//! Composes a chain of layout ops (Reshape, Flatten, Squeeze, Unsqueeze, Transpose, and a Gather
//! of one index at its head) into one slice, one reshape that only splits axes, one permute and one
//! final reshape. Each op alone is a view only while its input's strides allow it: Burn copies a
//! permuted tensor on every reshape that merges axes or drops one, so the window partitions of
//! ViPTR's attention (split, permute, merge, split, permute, merge) copied two or three times per
//! chain. Composed, the chain copies at most once, at the end. A chain is rewritten only when
//! Burn's own reshape rules (`burn_std::tensor::reshape_action`), applied to a contiguous input,
//! say the composition copies less.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use burn_std::tensor::{ReshapeAction, contiguous_strides, reshape_action};

use super::program::Step;
use crate::ops::Relayout;
use crate::tensor::{axis_slice, permute, reshape, shape, slice};

/// One chain as a single view change: `select` (axis, index) sliced first, then `split` (every
/// input axis split into factors, in memory order), `perm`, and the reshape to `out`.
#[derive(Debug, Clone, PartialEq)]
struct Composed {
    select: Option<(usize, usize)>,
    split: Vec<usize>,
    perm: Vec<usize>,
    out: Vec<usize>,
}

/// Rewrites the chains among `steps` whose intermediate values nothing else reads; `keep` are
/// values that must stay (graph outputs). Returns how many steps were removed.
pub(crate) fn compose_relayouts(steps: &mut Vec<Step>, keep: &HashSet<String>) -> usize {
    let chains = find_chains(steps, keep);
    let mut replaced: HashMap<usize, Step> = HashMap::new();
    let mut dropped = HashSet::new();
    for chain in chains.iter().filter(|c| c.len() > 1) {
        let (input, _) = steps[chain[0]].relayout.as_ref().expect("chains hold relayouts");
        let ops: Vec<Relayout> = chain.iter().map(|&i| steps[i].relayout.as_ref().expect("chains hold relayouts").1.clone()).collect();
        let Some(c) = compose(input, &ops) else { continue };
        if copies_composed(input, &c) >= copies(input, &ops) {
            continue;
        }
        let (first, last) = (&steps[chain[0]], &steps[chain[chain.len() - 1]]);
        let step = Step {
            node: last.node.clone(),
            op: "Relayout".into(),
            inputs: first.inputs.clone(),
            outputs: last.outputs.clone(),
            relayout: None,
            kernel: Arc::new(move |_, mut v| vec![apply(v.remove(0), &c)]),
        };
        dropped.extend(chain[..chain.len() - 1].iter().copied());
        replaced.insert(chain[chain.len() - 1], step);
    }
    let before = steps.len();
    let old = std::mem::take(steps);
    for (i, s) in old.into_iter().enumerate() {
        if !dropped.contains(&i) {
            steps.push(replaced.remove(&i).unwrap_or(s));
        }
    }
    before - steps.len()
}

/// Chains as step indices, found in order: a relayout joins the chain whose last output it alone
/// reads. Chains interleave (ViPTR computes q, k and v's window partitions side by side), so each
/// output remembers its own chain.
fn find_chains(steps: &[Step], keep: &HashSet<String>) -> Vec<Vec<usize>> {
    let mut readers: HashMap<&str, usize> = HashMap::new();
    for s in steps {
        for i in &s.inputs {
            *readers.entry(i.as_str()).or_default() += 1;
        }
    }
    let mut chains: Vec<Vec<usize>> = vec![];
    let mut chain_ending: HashMap<&str, usize> = HashMap::new();
    for (i, s) in steps.iter().enumerate() {
        let Some((_, r)) = &s.relayout else { continue };
        let [input] = s.inputs.as_slice() else { continue };
        let private = readers.get(input.as_str()) == Some(&1) && !keep.contains(input);
        let head_only = matches!(r, Relayout::Select { .. });
        let c = match chain_ending.remove(input.as_str()).filter(|_| private && !head_only) {
            Some(c) => {
                chains[c].push(i);
                c
            }
            None => {
                chains.push(vec![i]);
                chains.len() - 1
            }
        };
        if let [out] = s.outputs.as_slice() {
            chain_ending.insert(out.as_str(), c);
        }
    }
    chains
}

fn apply(mut t: crate::tensor::T, c: &Composed) -> crate::tensor::T {
    if let Some((axis, index)) = c.select {
        let rank = shape(&t).len();
        t = slice(t, &axis_slice(rank, axis, index, index + 1));
    }
    reshape(permute(reshape(t, &c.split), &c.perm), &c.out)
}

/// Follows the chain on "atoms": factors of the input's axes, each a run of memory with one
/// stride. A reshape regroups the atoms in their current order, splitting one where a new axis
/// ends inside it; a permute reorders the groups. `None` when a reshape cuts across atoms in a way
/// no split can express.
fn compose(input: &[usize], ops: &[Relayout]) -> Option<Composed> {
    let mut sizes: Vec<usize> = input.to_vec();
    // Atoms of each input axis, outer to inner, and the current axes as lists of atoms.
    let mut groups: Vec<Vec<usize>> = (0..input.len()).map(|a| vec![a]).collect();
    let mut axes: Vec<Vec<usize>> = groups.clone();
    let mut select = None;
    for (k, op) in ops.iter().enumerate() {
        let target = match op {
            Relayout::Select { axis, index, out } if k == 0 => {
                sizes[*axis] = 1;
                select = Some((*axis, *index));
                out
            }
            Relayout::Select { .. } => return None,
            Relayout::Permute(p) => {
                if p.len() != axes.len() {
                    return None;
                }
                axes = p.iter().map(|&a| axes[a].clone()).collect();
                continue;
            }
            Relayout::Reshape(out) => out,
        };
        let mut queue: VecDeque<usize> = axes.iter().flatten().copied().filter(|&a| sizes[a] > 1).collect();
        let mut next = vec![];
        for &d in target {
            let mut axis = vec![];
            let mut have = 1;
            while have < d {
                let a = queue.pop_front()?;
                let need = d / have;
                if d % have != 0 {
                    return None;
                }
                if sizes[a] <= need {
                    have *= sizes[a];
                    axis.push(a);
                } else if sizes[a] % need == 0 {
                    // The new axis ends inside atom `a`: its outer `need` stays `a`, the rest
                    // becomes a new atom right after it in memory.
                    let inner = sizes.len();
                    sizes.push(sizes[a] / need);
                    sizes[a] = need;
                    let g = groups.iter_mut().find(|g| g.contains(&a))?;
                    let at = g.iter().position(|&x| x == a)? + 1;
                    g.insert(at, inner);
                    queue.push_front(inner);
                    have *= need;
                    axis.push(a);
                } else {
                    return None;
                }
            }
            if have != d {
                return None;
            }
            next.push(axis);
        }
        if !queue.is_empty() {
            return None;
        }
        axes = next;
    }
    let order: Vec<usize> = groups.iter().flatten().copied().collect();
    let position: HashMap<usize, usize> = order.iter().enumerate().map(|(p, &a)| (a, p)).collect();
    let placed: HashSet<usize> = axes.iter().flatten().copied().collect();
    // Atoms of one element that a reshape dropped go first; they move nothing.
    let mut perm: Vec<usize> = order.iter().filter(|a| !placed.contains(a)).map(|a| position[a]).collect();
    perm.extend(axes.iter().flatten().map(|a| position[a]));
    let out = match ops.last()? {
        Relayout::Reshape(out) | Relayout::Select { out, .. } => out.clone(),
        Relayout::Permute(_) => axes.iter().map(|a| a.iter().map(|&x| sizes[x]).product()).collect(),
    };
    Some(Composed { select, split: order.iter().map(|&a| sizes[a]).collect(), perm, out })
}

/// A tensor's shape and strides, following Burn's view rules from a contiguous start.
struct View {
    shape: Vec<usize>,
    strides: Vec<usize>,
    copies: usize,
}

impl View {
    fn new(shape: &[usize]) -> Self {
        Self { shape: shape.to_vec(), strides: contiguous_strides(shape).to_vec(), copies: 0 }
    }

    fn reshape(&mut self, to: &[usize]) {
        if self.shape == to {
            return;
        }
        match reshape_action(&self.shape.clone().into(), &self.strides.iter().copied().collect(), &to.to_vec().into()) {
            ReshapeAction::UpdateStrides { strides } => self.strides = strides.to_vec(),
            ReshapeAction::NoChange => {}
            ReshapeAction::Recompute => {
                self.copies += 1;
                self.strides = contiguous_strides(to).to_vec();
            }
        }
        self.shape = to.to_vec();
    }

    fn permute(&mut self, perm: &[usize]) {
        self.shape = perm.iter().map(|&p| self.shape[p]).collect();
        self.strides = perm.iter().map(|&p| self.strides[p]).collect();
    }

    fn select(&mut self, axis: usize) {
        self.shape[axis] = 1;
    }
}

/// How many copies the chain makes op by op.
fn copies(input: &[usize], ops: &[Relayout]) -> usize {
    let mut v = View::new(input);
    for op in ops {
        match op {
            Relayout::Reshape(to) => v.reshape(to),
            Relayout::Permute(p) => v.permute(p),
            Relayout::Select { axis, out, .. } => {
                v.select(*axis);
                v.reshape(out);
            }
        }
    }
    v.copies
}

fn copies_composed(input: &[usize], c: &Composed) -> usize {
    let mut v = View::new(input);
    if let Some((axis, _)) = c.select {
        v.select(axis);
    }
    v.reshape(&c.split);
    v.permute(&c.perm);
    v.reshape(&c.out);
    v.copies
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the ops on index values, the definition of what the chain computes.
    fn reference(input: &[usize], ops: &[Relayout]) -> (Vec<usize>, Vec<usize>) {
        let mut shape = input.to_vec();
        let mut values: Vec<usize> = (0..input.iter().product()).collect();
        for op in ops {
            match op {
                Relayout::Reshape(to) => shape = to.clone(),
                Relayout::Select { axis, index, out } => {
                    let inner: usize = shape[axis + 1..].iter().product();
                    let n = shape[*axis];
                    values = values.chunks(inner * n).flat_map(|c| c[index * inner..(index + 1) * inner].to_vec()).collect();
                    shape = out.clone();
                }
                Relayout::Permute(p) => {
                    let out: Vec<usize> = p.iter().map(|&a| shape[a]).collect();
                    let strides = contiguous_strides(&shape).to_vec();
                    let mut moved = Vec::with_capacity(values.len());
                    let mut index = vec![0; out.len()];
                    for _ in 0..values.len() {
                        moved.push(values[index.iter().zip(p).map(|(&i, &a)| i * strides[a]).sum::<usize>()]);
                        for d in (0..out.len()).rev() {
                            index[d] += 1;
                            if index[d] < out[d] {
                                break;
                            }
                            index[d] = 0;
                        }
                    }
                    values = moved;
                    shape = out;
                }
            }
        }
        (shape, values)
    }

    fn composed_values(input: &[usize], c: &Composed) -> (Vec<usize>, Vec<usize>) {
        let mut ops = vec![];
        if let Some((axis, index)) = c.select {
            let mut out = input.to_vec();
            out[axis] = 1;
            ops.push(Relayout::Select { axis, index, out });
        }
        ops.extend([Relayout::Reshape(c.split.clone()), Relayout::Permute(c.perm.clone()), Relayout::Reshape(c.out.clone())]);
        reference(input, &ops)
    }

    #[test]
    fn window_chains_compose_to_what_they_compute_and_copy_once() {
        use Relayout::*;
        let cases: Vec<(Vec<usize>, Vec<Relayout>)> = vec![
            // ViPTR's window merge: [B·W, h, n, d] → image rows.
            (vec![4, 2, 6, 3], vec![Permute(vec![0, 2, 1, 3]), Reshape(vec![4, 6, 6]), Reshape(vec![1, 2, 2, 6, 6]), Permute(vec![0, 1, 3, 2, 4]), Reshape(vec![1, 4, 12, 3]), Reshape(vec![1, 24, 6])]),
            // One of q, k, v out of a stacked projection, split into windows.
            (vec![3, 1, 8, 4], vec![Select { axis: 0, index: 1, out: vec![1, 8, 4] }, Permute(vec![0, 2, 1]), Reshape(vec![1, 4, 2, 4]), Reshape(vec![1, 4, 2, 1, 1, 4]), Permute(vec![0, 2, 3, 4, 1, 5]), Reshape(vec![2, 4, 4])]),
            // Unit axes that come and go, and a chain that ends on a permute.
            (vec![2, 1, 6], vec![Reshape(vec![2, 6]), Reshape(vec![2, 3, 2]), Permute(vec![2, 0, 1]), Reshape(vec![1, 2, 1, 6]), Permute(vec![3, 1, 0, 2])]),
        ];
        for (input, ops) in cases {
            let c = compose(&input, &ops).unwrap_or_else(|| panic!("{ops:?} composes"));
            assert_eq!(composed_values(&input, &c), reference(&input, &ops), "{ops:?} → {c:?}");
            assert!(copies_composed(&input, &c) <= 1, "{c:?}");
        }
        let merge = [Relayout::Permute(vec![0, 2, 1, 3]), Relayout::Reshape(vec![4, 6, 6]), Relayout::Reshape(vec![1, 2, 2, 6, 6]), Relayout::Permute(vec![0, 1, 3, 2, 4]), Relayout::Reshape(vec![1, 4, 12, 3])];
        assert_eq!(copies(&[4, 2, 6, 3], &merge), 2, "Burn copies this chain twice op by op");
    }

    #[test]
    fn interleaved_chains_stay_apart() {
        let step = |name: &str, input: &str, r: Relayout| Step {
            node: name.into(),
            op: "Reshape".into(),
            inputs: vec![input.into()],
            outputs: vec![name.into()],
            relayout: Some((vec![], r)),
            kernel: Arc::new(|_, v| v),
        };
        let r = || Relayout::Reshape(vec![]);
        // q and k leave one stacked projection and are reshaped turn about, as in ViPTR's attention.
        let steps = vec![
            step("q0", "qkv", Relayout::Select { axis: 0, index: 0, out: vec![] }),
            step("k0", "qkv", Relayout::Select { axis: 0, index: 1, out: vec![] }),
            step("q1", "q0", r()),
            step("k1", "k0", r()),
            step("q2", "q1", r()),
            step("k2", "k1", r()),
        ];
        assert_eq!(find_chains(&steps, &HashSet::new()), vec![vec![0, 2, 4], vec![1, 3, 5]]);
        assert_eq!(find_chains(&steps, &HashSet::from(["q1".to_string()])), vec![vec![0, 2], vec![1, 3, 5], vec![4]]);
    }

    #[test]
    fn a_reshape_across_atoms_does_not_compose() {
        // [3, 4] transposed is [4, 3]; a first axis of 6 would need the 4 and half of the 3.
        assert!(compose(&[3, 4], &[Relayout::Permute(vec![1, 0]), Relayout::Reshape(vec![6, 2])]).is_none());
        assert!(compose(&[2, 3], &[Relayout::Reshape(vec![6]), Relayout::Select { axis: 0, index: 1, out: vec![] }]).is_none(), "a select only heads a chain");
    }
}

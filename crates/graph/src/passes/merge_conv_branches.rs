//! Merges convolutions of one input that are summed into one convolution. FAST's RepConv blocks,
//! as docTR exports them unless `reparameterize` was called first, add a 3×3, a 3×1 and a 1×3
//! conv of the same input and a BatchNorm of it (or a constant): a convolution is linear in its
//! weights, so `conv(x, W₁) + conv(x, W₂) = conv(x, W₁ + W₂)` when the taps line up, the smaller
//! kernel placed where its taps fall in the larger; a BatchNorm of the input is a centre tap of
//! `scale` plus a bias of `shift`, and a constant is a bias. One conv, with no Adds, instead of
//! three and a normalisation: what `reparameterize` does to the PyTorch model, done to any
//! export. Runs after `fold_batchnorm` (each branch's own BatchNorm is in its weights by then).

use std::collections::HashMap;
use std::sync::Arc;

use burn_backend::TensorData;

use crate::model::{Attr, Node, Subgraph};
use crate::ops::batchnorm_affine;

/// A Conv whose weights are constant, with its geometry on each spatial axis.
struct Branch {
    node: usize,
    weights: Vec<f32>,
    /// `[M, C/g, kh, kw]`.
    shape: [usize; 4],
    bias: Vec<f32>,
    /// Leading and trailing pads per axis.
    pads: [[i64; 2]; 2],
    strides: Vec<i64>,
    group: i64,
}

/// What is added to a conv: another conv, a BatchNorm of its input (`scale`, `shift`), or a
/// constant per output channel.
enum Term {
    Conv(Branch),
    Norm { node: usize, scale: Vec<f32>, shift: Vec<f32> },
    Bias(Vec<f32>),
}

/// Returns how many Adds were folded into a convolution.
pub fn merge_conv_branches(g: &mut Subgraph, protected: &[String]) -> usize {
    let mut merged = 0;
    // Each round merges one level of a chain of Adds (FAST's: conv + ver, + hor, + identity).
    loop {
        let n = merge_round(g, protected);
        if n == 0 {
            return merged;
        }
        merged += n;
        // The weights this round replaced go now: with three rounds per RepConv block, keeping
        // every round's weights to the end held the model's conv weights about four times over.
        super::prune_initializers(g);
    }
}

/// Merged weights (floats) one round makes at most: the weights they replace are freed only
/// after the round, so a round that merged everything held the model's conv weights and their
/// merged copies at once (FAST: 1.8× the file at its peak).
const ROUND_WEIGHTS: usize = 1 << 20;

fn merge_round(g: &mut Subgraph, protected: &[String]) -> usize {
    let readers = super::rewrite::Readers::new(g, protected);
    let producer = super::rewrite::producers(g);
    let init: HashMap<&str, &Arc<TensorData>> = g.initializers.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let floats = |name: &str| -> Option<Vec<f32>> { init.get(name)?.as_slice::<f32>().ok().map(<[f32]>::to_vec) };
    // A value only its one consumer reads, and that is not a graph output.
    let private = |v: &str| readers.sole(v).is_some();

    let branch = |i: usize| -> Option<Branch> {
        let n = &g.nodes[i];
        if n.op != "Conv" || !private(&n.outputs[0]) || n.outputs.len() != 1 {
            return None;
        }
        if n.attr("auto_pad").is_some_and(|a| !matches!(a, Attr::Str(s) if s == "NOTSET")) {
            return None;
        }
        let w = init.get(n.input(1)?)?;
        let shape: [usize; 4] = w.shape().to_vec().try_into().ok()?;
        let weights = w.as_slice::<f32>().ok()?.to_vec();
        let bias = match n.input(2) {
            Some(b) => floats(b).filter(|b| b.len() == shape[0])?,
            None => vec![0.0; shape[0]],
        };
        let kernel = n.ints("kernel_shape").ok()?.unwrap_or(vec![shape[2] as i64, shape[3] as i64]);
        let pads = n.ints("pads").ok()?.unwrap_or(vec![0; 4]);
        let dilations = n.ints("dilations").ok()?.unwrap_or(vec![1, 1]);
        let strides = n.ints("strides").ok()?.unwrap_or(vec![1, 1]);
        if kernel != [shape[2] as i64, shape[3] as i64] || pads.len() != 4 || dilations != [1, 1] || strides.len() != 2 {
            return None;
        }
        Some(Branch { node: i, weights, shape, bias, pads: [[pads[0], pads[2]], [pads[1], pads[3]]], strides, group: n.int("group", 1).ok()? })
    };
    let term = |v: &str, x: &str, m: usize| -> Option<Term> {
        if let Some(c) = init.get(v) {
            // A scalar, or one value per channel (`[M, 1, 1]`, `[1, M, 1, 1]`); of rank ≤ 4, so
            // the sum keeps the conv's shape.
            let (values, shape) = (c.as_slice::<f32>().ok()?, c.shape());
            let rank = shape.len();
            let per_channel = (3..=4).contains(&rank) && shape[rank - 3] == m && shape.iter().product::<usize>() == m;
            return match values.len() {
                1 if rank <= 4 => Some(Term::Bias(vec![values[0]; m])),
                _ if per_channel => Some(Term::Bias(values.to_vec())),
                _ => None,
            };
        }
        let &i = producer.get(v)?;
        let n = &g.nodes[i];
        if n.op == "BatchNormalization" && n.inputs[0] == x && private(v) && n.outputs.iter().skip(1).all(String::is_empty) {
            let (s, b, mean, var) = (floats(n.input(1)?)?, floats(n.input(2)?)?, floats(n.input(3)?)?, floats(n.input(4)?)?);
            let (scale, shift) = batchnorm_affine(&s, &b, &mean, &var, n.float("epsilon", 1e-5).ok()?);
            return (scale.len() == m).then_some(Term::Norm { node: i, scale, shift });
        }
        let b = branch(i)?;
        (g.nodes[i].inputs[0] == x).then_some(Term::Conv(b))
    };

    let mut touched = vec![false; g.nodes.len()];
    let mut rewrites: Vec<(usize, usize, Branch, Option<usize>)> = vec![];
    let mut pending = 0;
    for (ai, add) in g.nodes.iter().enumerate() {
        if pending > ROUND_WEIGHTS {
            break;
        }
        if add.op != "Add" || add.inputs.len() != 2 || add.inputs.iter().any(String::is_empty) {
            continue;
        }
        // The conv is either side; the other is what gets merged into it.
        let found = (0..2).find_map(|side| {
            let &ci = producer.get(add.inputs[side].as_str())?;
            let conv = branch(ci)?;
            let x = g.nodes[ci].inputs[0].as_str();
            let other = term(&add.inputs[1 - side], x, conv.shape[0])?;
            let (merged, gone) = merge(conv, other)?;
            Some((merged, gone))
        });
        let Some((merged, gone)) = found else { continue };
        if touched[ai] || touched[merged.node] || gone.is_some_and(|j| touched[j]) {
            continue;
        }
        touched[ai] = true;
        touched[merged.node] = true;
        if let Some(j) = gone {
            touched[j] = true;
        }
        pending += merged.weights.len();
        rewrites.push((ai, merged.node, merged, gone));
    }

    let mut new_inits = vec![];
    let mut dropped = vec![false; g.nodes.len()];
    let count = rewrites.len();
    for (ai, ci, b, gone) in rewrites {
        let out = g.nodes[ai].outputs[0].clone();
        let base = format!("{}::merged", g.nodes[ai].name);
        let (wn, bn) = (format!("{base}.weight"), format!("{base}.bias"));
        new_inits.push((wn.clone(), Arc::new(TensorData::new(b.weights, b.shape.to_vec()))));
        new_inits.push((bn.clone(), Arc::new(TensorData::new(b.bias, vec![b.shape[0]]))));
        let conv: &mut Node = &mut g.nodes[ci];
        conv.inputs.resize(3, String::new());
        conv.inputs[1] = wn;
        conv.inputs[2] = bn;
        conv.outputs[0] = out;
        conv.attrs.insert("kernel_shape".into(), Attr::Ints(vec![b.shape[2] as i64, b.shape[3] as i64]));
        conv.attrs.insert("pads".into(), Attr::Ints(vec![b.pads[0][0], b.pads[1][0], b.pads[0][1], b.pads[1][1]]));
        dropped[ai] = true;
        if let Some(j) = gone {
            dropped[j] = true;
        }
    }
    super::rewrite::apply(g, &dropped, new_inits);
    count
}

/// `conv + other` as one conv, and the node `other` came from (dropped with the Add); `None`
/// where the taps do not line up.
fn merge(mut a: Branch, other: Term) -> Option<(Branch, Option<usize>)> {
    let [m, cg, _, _] = a.shape;
    match other {
        Term::Bias(v) => {
            a.bias.iter_mut().zip(&v).for_each(|(b, v)| *b += v);
            Some((a, None))
        }
        Term::Norm { node, scale, shift } => {
            // The identity is a conv only where the output is the input: stride 1, as many
            // channels out as in, each output channel's input in its group.
            let groups = usize::try_from(a.group).ok().filter(|&g| g > 0)?;
            if a.strides != [1, 1] || m != cg * groups || m % groups != 0 {
                return None;
            }
            // The tap reading the output's own position: at the leading pad, on each axis.
            let (ty, tx) = (usize::try_from(a.pads[0][0]).ok()?, usize::try_from(a.pads[1][0]).ok()?);
            // Output sizes equal the input's only if the pads cover the kernel's reach.
            if a.pads.iter().zip(&a.shape[2..]).any(|(p, &k)| p[0] + p[1] != k as i64 - 1) || ty >= a.shape[2] || tx >= a.shape[3] {
                return None;
            }
            let [_, _, kh, kw] = a.shape;
            for (o, (s, t)) in scale.iter().zip(&shift).enumerate() {
                a.weights[((o * cg + o % cg) * kh + ty) * kw + tx] += s;
                a.bias[o] += t;
            }
            Some((a, Some(node)))
        }
        Term::Conv(b) => {
            if b.shape[..2] != a.shape[..2] || b.strides != a.strides || b.group != a.group {
                return None;
            }
            // Per axis: the merged leading pad is the larger one, each kernel's taps start at
            // the difference, and the output size (pads minus kernel) must agree.
            let mut pads = [[0i64; 2]; 2];
            let mut size = [0usize; 2];
            let mut at = [[0usize; 2]; 2];
            for axis in 0..2 {
                let (ka, kb) = (a.shape[2 + axis] as i64, b.shape[2 + axis] as i64);
                let (pa, pb) = (a.pads[axis], b.pads[axis]);
                if pa[0] + pa[1] - ka != pb[0] + pb[1] - kb {
                    return None;
                }
                let lead = pa[0].max(pb[0]);
                let (oa, ob) = (lead - pa[0], lead - pb[0]);
                let k = (oa + ka).max(ob + kb);
                pads[axis] = [lead, pa[0] + pa[1] - ka + k - lead];
                if pads[axis][1] < 0 {
                    return None;
                }
                size[axis] = k as usize;
                at[axis] = [oa as usize, ob as usize];
            }
            let [kh, kw] = size;
            let mut weights = vec![0f32; m * cg * kh * kw];
            for (src, shape, ay, ax) in [(&a.weights, a.shape, at[0][0], at[1][0]), (&b.weights, b.shape, at[0][1], at[1][1])] {
                let [_, _, h, w] = shape;
                for (i, &v) in src.iter().enumerate() {
                    let (plane, y, x) = (i / (h * w), i / w % h, i % w);
                    weights[(plane * kh + y + ay) * kw + x + ax] += v;
                }
            }
            let bias = a.bias.iter().zip(&b.bias).map(|(x, y)| x + y).collect();
            Some((Branch { weights, shape: [m, cg, kh, kw], bias, pads, ..a }, Some(b.node)))
        }
    }
}

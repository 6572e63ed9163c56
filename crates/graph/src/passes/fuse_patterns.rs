//! Rewrites op chains that exporters spell out into what they compute, so they cost one op
//! instead of four (PaddleOCR's exports are full of both):
//! - `x · clip(x + 3, 0, 6) / 6` (HardSwish written in elementary ops) → `HardSwish(x)`;
//! - `Conv → Mul(scale) → Add(shift)` with constant scale and shift (PP-LCNet's learnable affine
//!   blocks) → the Conv, its weights scaled and bias shifted per output channel;
//! - `Conv | ConvTranspose → Relu | HardSwish | Clip(lo, hi)` → the conv with the activation as its epilogue
//!   ([`Fused::activation`](crate::ir::Fused)), so the CPU kernel applies it while the output tile is hot.

use std::collections::HashMap;
use std::sync::Arc;

use burn_backend::TensorData;

use crate::ir::Activation;
use crate::model::{Attrs, Node, Subgraph};

/// Counts of what was rewritten.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fused {
    pub hardswish: usize,
    pub conv_affine: usize,
    pub conv_activation: usize,
}

/// What the matchers look up: who reads each value, and the constants by name.
struct Index<'g> {
    readers: super::rewrite::Readers<'g>,
    consts: HashMap<&'g str, &'g Arc<TensorData>>,
}

impl<'g> Index<'g> {
    fn new(g: &'g Subgraph, protected: &'g [String]) -> Self {
        let consts = g.initializers.iter().map(|(n, t)| (n.as_str(), t)).collect();
        Self { readers: super::rewrite::Readers::new(g, protected), consts }
    }

    /// The node consuming `value`, when it is the value's only use.
    fn sole_consumer<'s>(&self, g: &'s Subgraph, value: &str) -> Option<(usize, &'s Node)> {
        self.readers.sole(value).map(|i| (i, &g.nodes[i]))
    }

    fn floats(&self, name: &str) -> Option<Vec<f32>> {
        self.consts.get(name)?.as_slice::<f32>().ok().map(<[f32]>::to_vec)
    }

    fn scalar(&self, name: &str) -> Option<f32> {
        match self.floats(name)?.as_slice() {
            [v] => Some(*v),
            _ => None,
        }
    }
}

/// For a binary node with one constant operand: (the other operand, the constant's name).
fn split_const<'n>(ix: &Index, n: &'n Node) -> Option<(&'n str, &'n str)> {
    match n.inputs.as_slice() {
        [a, b] if ix.consts.contains_key(b.as_str()) && !ix.consts.contains_key(a.as_str()) => Some((a, b)),
        [a, b] if ix.consts.contains_key(a.as_str()) && !ix.consts.contains_key(b.as_str()) => Some((b, a)),
        _ => None,
    }
}

fn clip_bounds(ix: &Index, n: &Node) -> Option<(f32, f32)> {
    let lo = match n.inputs.get(1).filter(|s| !s.is_empty()) {
        Some(name) => ix.scalar(name)?,
        None => n.float("min", f32::NEG_INFINITY).ok()?,
    };
    let hi = match n.inputs.get(2).filter(|s| !s.is_empty()) {
        Some(name) => ix.scalar(name)?,
        None => n.float("max", f32::INFINITY).ok()?,
    };
    Some((lo, hi))
}

/// `Add(x, 3) → Clip(0, 6) → Mul(x, ·) → Div(·, 6) | Mul(·, 1/6)`: returns the node indices
/// `[add, clip, mul, last]` and `x`.
fn match_hardswish(ix: &Index, g: &Subgraph, add_i: usize) -> Option<([usize; 4], String)> {
    let add = &g.nodes[add_i];
    if add.op != "Add" {
        return None;
    }
    let (x, three) = split_const(ix, add)?;
    if ix.scalar(three)? != 3.0 {
        return None;
    }
    let (clip_i, clip) = ix.sole_consumer(g, &add.outputs[0])?;
    if clip.op != "Clip" || clip.inputs[0] != add.outputs[0] || clip_bounds(ix, clip)? != (0.0, 6.0) {
        return None;
    }
    let (mul_i, mul) = ix.sole_consumer(g, &clip.outputs[0])?;
    let other = match mul.inputs.as_slice() {
        [a, b] if *b == clip.outputs[0] => a,
        [a, b] if *a == clip.outputs[0] => b,
        _ => return None,
    };
    if mul.op != "Mul" || other != x {
        return None;
    }
    let (last_i, last) = ix.sole_consumer(g, &mul.outputs[0])?;
    let (lhs, k) = split_const(ix, last)?;
    let k = ix.scalar(k)?;
    let divides = last.op == "Div" && last.inputs[0] == lhs && k == 6.0;
    let multiplies = last.op == "Mul" && (k - 1.0 / 6.0).abs() < 1e-7;
    if lhs != mul.outputs[0] || !(divides || multiplies) {
        return None;
    }
    Some(([add_i, clip_i, mul_i, last_i], x.to_string()))
}

/// Per-channel values of a constant that broadcasts against `[N, C, H, W]` along C only
/// (`[1]`, `[C, 1, 1]`, `[1, C, 1, 1]`), expanded to `c` values.
fn per_channel(t: &TensorData, c: usize) -> Option<Vec<f32>> {
    let v = t.as_slice::<f32>().ok()?;
    let dims: Vec<usize> = t.shape().to_vec();
    let channel_dims = |d: &[usize]| d.iter().filter(|&&x| x != 1).count() <= 1;
    match v.len() {
        1 if dims.len() <= 4 => Some(vec![v[0]; c]),
        n if n == c && channel_dims(&dims) && (dims.len() == 3 || (dims.len() == 4 && dims[0] == 1)) && dims[dims.len() - 3] == c => {
            Some(v.to_vec())
        }
        _ => None,
    }
}

pub fn fuse_patterns(g: &mut Subgraph, protected: &[String]) -> Fused {
    let mut fused = Fused::default();
    let mut dropped = vec![false; g.nodes.len()];
    let mut new_inits: Vec<(String, Arc<TensorData>)> = vec![];
    let ix = Index::new(g, protected);

    let mut rewrites: Vec<(usize, Node)> = vec![];
    for i in 0..g.nodes.len() {
        if let Some(([add, clip, mul, last], x)) = match_hardswish(&ix, g, i) {
            if [add, clip, mul, last].iter().any(|&j| dropped[j]) {
                continue;
            }
            let l = &g.nodes[last];
            rewrites.push((
                last,
                Node { name: l.name.clone(), op: "HardSwish".into(), inputs: vec![x], outputs: l.outputs.clone(), attrs: Attrs::new(), fused: None },
            ));
            for j in [add, clip, mul] {
                dropped[j] = true;
            }
            fused.hardswish += 1;
        }
    }

    for (ci, conv) in g.nodes.iter().enumerate() {
        if conv.op != "Conv" || dropped[ci] {
            continue;
        }
        let Some(w) = conv.inputs.get(1).and_then(|n| ix.consts.get(n.as_str())) else { continue };
        let wshape = w.shape().to_vec();
        let Ok(wv) = w.as_slice::<f32>() else { continue };
        let c = wshape[0];
        let Some((mi, mul)) = ix.sole_consumer(g, &conv.outputs[0]) else { continue };
        let Some((m_in, m_const)) = split_const(&ix, mul).filter(|(a, _)| *a == conv.outputs[0]) else { continue };
        if mul.op != "Mul" || dropped[mi] || m_in != conv.outputs[0] {
            continue;
        }
        let Some(scale) = ix.consts.get(m_const).and_then(|t| per_channel(t, c)) else { continue };
        let shift = ix.sole_consumer(g, &mul.outputs[0]).and_then(|(ai, add)| {
            let (a_in, a_const) = split_const(&ix, add)?;
            (add.op == "Add" && !dropped[ai] && a_in == mul.outputs[0])
                .then(|| ix.consts.get(a_const).and_then(|t| per_channel(t, c)).map(|s| (ai, s)))?
        });
        let per = wv.len() / c;
        let scaled: Vec<f32> = wv.iter().enumerate().map(|(i, x)| x * scale[i / per]).collect();
        let b0 = match conv.inputs.get(2).filter(|s| !s.is_empty()) {
            Some(b) => match ix.floats(b) {
                Some(b) if b.len() == c => b,
                _ => continue,
            },
            None => vec![0.0; c],
        };
        let bias: Vec<f32> =
            (0..c).map(|k| b0[k] * scale[k] + shift.as_ref().map_or(0.0, |(_, s)| s[k])).collect();
        let base = format!("{}::affine_folded", conv.name);
        let (wn, bn) = (format!("{base}.weight"), format!("{base}.bias"));
        new_inits.push((wn.clone(), Arc::new(TensorData::new(scaled, wshape))));
        new_inits.push((bn.clone(), Arc::new(TensorData::new(bias, vec![c]))));
        let (last, out) = match &shift {
            Some((ai, _)) => (*ai, g.nodes[*ai].outputs[0].clone()),
            None => (mi, mul.outputs[0].clone()),
        };
        let mut folded = conv.clone();
        folded.inputs.resize(3, String::new());
        folded.inputs[1] = wn;
        folded.inputs[2] = bn;
        folded.outputs[0] = out;
        rewrites.push((ci, folded));
        dropped[mi] = true;
        dropped[last] = true;
        fused.conv_affine += 1;
    }

    // Freed now, not after the next index is built.
    drop(ix);
    for (i, node) in rewrites {
        g.nodes[i] = node;
        dropped[i] = false;
    }
    super::rewrite::apply(g, &dropped, new_inits);
    fused.conv_activation = fuse_conv_activation(g, protected);
    fused
}

/// Folds the activation that is a Conv's (or ConvTranspose's) only consumer into it.
fn fuse_conv_activation(g: &mut Subgraph, protected: &[String]) -> usize {
    let ix = Index::new(g, protected);
    let mut dropped = vec![false; g.nodes.len()];
    let mut rewrites: Vec<(usize, Node)> = vec![];
    for (ci, conv) in g.nodes.iter().enumerate() {
        if !matches!(conv.op.as_str(), "Conv" | "ConvTranspose") || conv.fused().activation.is_some() {
            continue;
        }
        let Some((ai, act)) = ix.sole_consumer(g, &conv.outputs[0]) else { continue };
        if dropped[ai] || act.inputs.first() != Some(&conv.outputs[0]) {
            continue;
        }
        let activation = match act.op.as_str() {
            "Relu" => Activation::Relu,
            "HardSwish" => Activation::HardSwish,
            "Clip" => match clip_bounds(&ix, act) {
                Some((lo, hi)) => Activation::Clip(lo, hi),
                None => continue,
            },
            _ => continue,
        };
        let mut folded = conv.clone();
        folded.fused_mut().activation = Some(activation);
        folded.outputs[0] = act.outputs[0].clone();
        rewrites.push((ci, folded));
        dropped[ai] = true;
    }
    let n = rewrites.len();
    for (i, node) in rewrites {
        g.nodes[i] = node;
    }
    super::rewrite::apply(g, &dropped, vec![]);
    n
}

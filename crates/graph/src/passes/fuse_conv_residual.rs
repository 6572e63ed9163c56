//! Folds a residual connection into the Conv before it: `Conv → Add(·, r) [→ Relu]` becomes the
//! Conv with `r` as a fourth input ([`Shortcut::BeforeActivation`]) and the Relu as its epilogue, so
//! the CPU kernel adds the shortcut while the output tile is still in registers instead of making
//! two more passes over the map (ResNet's blocks end this way). `Conv → Activation → Add(·, r)`
//! (LinkNet's decoders) becomes the Conv with `r` as a fourth input added after the activation
//! ([`Shortcut::AfterActivation`]): on the fusing GPU backends a 1×1 conv then adds it inside its
//! matmul's epilogue instead of in a kernel of its own.

use crate::ir::{Activation, Shortcut};
use crate::model::Subgraph;

/// Returns how many Adds were folded.
pub fn fuse_conv_residual(g: &mut Subgraph, protected: &[String]) -> usize {
    fold_residuals(g, protected) + fold_adds_after(g, protected)
}

fn fold_residuals(g: &mut Subgraph, protected: &[String]) -> usize {
    let readers = super::rewrite::Readers::new(g, protected);
    let producer = super::rewrite::producers(g);
    let sole = |value: &str| readers.sole(value);
    // A Conv that can take the Add: plain (no activation, no residual yet), its output read by
    // the Add alone.
    let fusable = |value: &str| -> Option<usize> {
        let ci = *producer.get(value)?;
        let conv = &g.nodes[ci];
        (conv.op == "Conv" && conv.outputs.len() == 1 && conv.fused().activation.is_none() && conv.fused().shortcut.is_none() && sole(value).is_some())
            .then_some(ci)
    };
    // (Conv, Add, the other operand, Relu after the Add)
    let mut plans: Vec<(usize, usize, String, Option<usize>)> = vec![];
    let mut taken = vec![false; g.nodes.len()];
    for (ai, add) in g.nodes.iter().enumerate() {
        let [a, b] = add.inputs.as_slice() else { continue };
        if add.op != "Add" || a == b {
            continue;
        }
        let Some((ci, other)) = later_conv(a, b, &fusable) else { continue };
        if taken[ci] || producer.get(other) == Some(&ci) {
            continue;
        }
        let relu = sole(&add.outputs[0]).filter(|&ri| g.nodes[ri].op == "Relu");
        taken[ci] = true;
        plans.push((ci, ai, other.to_string(), relu));
    }
    let mut dropped = vec![false; g.nodes.len()];
    for (ci, ai, other, relu) in &plans {
        let out = match relu {
            Some(ri) => {
                dropped[*ri] = true;
                g.nodes[*ri].outputs[0].clone()
            }
            None => g.nodes[*ai].outputs[0].clone(),
        };
        // The conv moves to the Add's place: the shortcut may be computed after the conv was.
        let mut conv = g.nodes[*ci].clone();
        conv.inputs.resize(3, String::new());
        conv.inputs.push(other.clone());
        let fused = conv.fused_mut();
        fused.shortcut = Some(Shortcut::BeforeActivation);
        if relu.is_some() {
            fused.activation = Some(Activation::Relu);
        }
        conv.outputs[0] = out;
        g.nodes[*ai] = conv;
        dropped[*ci] = true;
    }
    super::rewrite::apply(g, &dropped, vec![]);
    plans.len()
}

/// The conv that takes an Add of `a` and `b`, and the Add's other operand. Of two convs, the
/// later: moved to the Add's place, it keeps the order of the other ops (the fusing GPU backends
/// group element-wise ops by that order; moving ResNet's 3×3 conv past its block's projection cost
/// linknet_resnet18 three more kernels).
fn later_conv<'a>(a: &'a str, b: &'a str, fusable: &impl Fn(&str) -> Option<usize>) -> Option<(usize, &'a str)> {
    match (fusable(a), fusable(b)) {
        (Some(ca), Some(cb)) if cb > ca => Some((cb, a)),
        (Some(ca), _) => Some((ca, b)),
        (None, Some(cb)) => Some((cb, a)),
        (None, None) => None,
    }
}

/// `Conv[activation] → Add(·, r)`: the Add moves into the Conv as an addend after its activation.
fn fold_adds_after(g: &mut Subgraph, protected: &[String]) -> usize {
    let readers = super::rewrite::Readers::new(g, protected);
    let producer = super::rewrite::producers(g);
    let fusable = |value: &str| -> Option<usize> {
        let ci = *producer.get(value)?;
        let conv = &g.nodes[ci];
        let sole = readers.sole(value).is_some();
        (conv.op == "Conv" && conv.outputs.len() == 1 && sole && conv.fused().activation.is_some() && conv.fused().shortcut.is_none())
            .then_some(ci)
    };
    let mut plans: Vec<(usize, usize, String)> = vec![];
    let mut taken = vec![false; g.nodes.len()];
    for (ai, add) in g.nodes.iter().enumerate() {
        let [a, b] = add.inputs.as_slice() else { continue };
        if add.op != "Add" || a == b {
            continue;
        }
        let Some((ci, other)) = later_conv(a, b, &fusable) else { continue };
        if taken[ci] {
            continue;
        }
        taken[ci] = true;
        plans.push((ci, ai, other.to_string()));
    }
    let mut dropped = vec![false; g.nodes.len()];
    for (ci, ai, other) in &plans {
        let mut conv = g.nodes[*ci].clone();
        conv.inputs.resize(3, String::new());
        conv.inputs.push(other.clone());
        conv.fused_mut().shortcut = Some(Shortcut::AfterActivation);
        conv.outputs[0] = g.nodes[*ai].outputs[0].clone();
        g.nodes[*ai] = conv;
        dropped[*ci] = true;
    }
    super::rewrite::apply(g, &dropped, vec![]);
    plans.len()
}

//! Folds the bias `Add` after a `MatMul` by constant weights (PyTorch's `Linear` on a sequence
//! exports as `MatMul` then `Add`) into the MatMul, as a third input: the CPU kernel seeds the
//! product's rows with the bias instead of making another pass over it (the transformers'
//! projections and feed-forward layers).

use std::collections::HashMap;

use burn_backend::{DType, TensorData};

use crate::model::Subgraph;

/// Returns how many Adds were folded.
pub fn fuse_matmul_bias(g: &mut Subgraph, protected: &[String]) -> usize {
    let weights: HashMap<&str, &TensorData> =
        g.initializers.iter().filter(|(_, t)| t.dtype() == DType::F32).map(|(n, t)| (n.as_str(), t.as_ref())).collect();
    let shape = |name: &str| weights.get(name).map(|t| t.shape().as_ref());
    let readers = super::rewrite::Readers::new(g, protected);
    // (MatMul, Add, bias name)
    let mut plans: Vec<(usize, usize, String)> = vec![];
    for (mi, mm) in g.nodes.iter().enumerate() {
        if mm.op != "MatMul" || mm.inputs.len() != 2 {
            continue;
        }
        let Some(&[_, cols]) = shape(&mm.inputs[1]) else { continue };
        let Some(ai) = readers.sole(&mm.outputs[0]) else { continue };
        let add = &g.nodes[ai];
        if add.op != "Add" || add.inputs.len() != 2 {
            continue;
        }
        let bias = if add.inputs[0] == mm.outputs[0] { &add.inputs[1] } else { &add.inputs[0] };
        // Only a 1-D bias: it broadcasts without changing the product's shape.
        if bias == &mm.outputs[0] || shape(bias) != Some(&[cols][..]) {
            continue;
        }
        plans.push((mi, ai, bias.clone()));
    }
    let mut dropped = vec![false; g.nodes.len()];
    for (mi, ai, bias) in &plans {
        let out = g.nodes[*ai].outputs[0].clone();
        let mm = &mut g.nodes[*mi];
        mm.inputs.push(bias.clone());
        mm.outputs[0] = out;
        dropped[*ai] = true;
    }
    super::rewrite::apply(g, &dropped, vec![]);
    plans.len()
}

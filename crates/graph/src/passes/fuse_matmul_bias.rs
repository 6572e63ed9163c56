//! Folds the bias `Add` after a `MatMul` by constant weights (PyTorch's `Linear` on a sequence
//! exports as `MatMul` then `Add`) into the MatMul, as a third input: the CPU kernel seeds the
//! product's rows with the bias instead of making another pass over it (the transformers'
//! projections and feed-forward layers).

use std::collections::HashMap;

use crate::model::Subgraph;

/// Returns how many Adds were folded.
pub fn fuse_matmul_bias(g: &mut Subgraph, protected: &[String]) -> usize {
    let shapes: HashMap<&str, Vec<usize>> = g
        .initializers
        .iter()
        .filter(|(_, t)| t.as_slice::<f32>().is_ok())
        .map(|(n, t)| (n.as_str(), t.shape().to_vec()))
        .collect();
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        for input in n.inputs.iter().filter(|s| !s.is_empty()) {
            consumers.entry(input.as_str()).or_default().push(i);
        }
    }
    // (MatMul, Add, bias name)
    let mut plans: Vec<(usize, usize, String)> = vec![];
    for (mi, mm) in g.nodes.iter().enumerate() {
        if mm.op != "MatMul" || mm.inputs.len() != 2 || protected.contains(&mm.outputs[0]) {
            continue;
        }
        let Some([_, cols]) = shapes.get(mm.inputs[1].as_str()).map(Vec::as_slice) else { continue };
        let Some(&[ai]) = consumers.get(mm.outputs[0].as_str()).map(Vec::as_slice) else { continue };
        let add = &g.nodes[ai];
        if add.op != "Add" || add.inputs.len() != 2 {
            continue;
        }
        let bias = if add.inputs[0] == mm.outputs[0] { &add.inputs[1] } else { &add.inputs[0] };
        // Only a 1-D bias: it broadcasts without changing the product's shape.
        if bias == &mm.outputs[0] || shapes.get(bias.as_str()).map(Vec::as_slice) != Some(&[*cols]) {
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
    super::apply(g, &dropped, vec![]);
    plans.len()
}

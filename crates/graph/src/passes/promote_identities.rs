//! Turns `Identity` nodes of an initializer into initializers, so the folding passes see every
//! constant alike: PyTorch's exporter writes a BatchNorm's running statistics as `Identity` of an
//! equal weight when they coincide (untrained or reset layers). `Constant` nodes were already
//! turned into initializers as the file was read (`model.rs`).

use std::collections::HashMap;

use crate::model::Subgraph;

/// Returns how many nodes were promoted.
pub fn promote_identities(g: &mut Subgraph) -> usize {
    let before = g.nodes.len();
    let mut known: HashMap<&str, usize> = g.initializers.iter().enumerate().map(|(i, (n, _))| (n.as_str(), i)).collect();
    let outputs: Vec<&str> = g.outputs.iter().map(|o| o.name.as_str()).collect();
    // (output, initializer it copies); nodes are in topological order, so an Identity of an
    // Identity resolves too.
    let mut promoted: Vec<(usize, usize)> = vec![];
    for (i, n) in g.nodes.iter().enumerate() {
        let (Some(src), [out]) = (n.inputs.first(), n.outputs.as_slice()) else { continue };
        if n.op != "Identity" || outputs.contains(&out.as_str()) {
            continue;
        }
        if let Some(&t) = known.get(src.as_str()) {
            known.insert(out, t);
            promoted.push((i, t));
        }
    }
    let copies: Vec<_> = promoted.iter().map(|&(i, t)| (g.nodes[i].outputs[0].clone(), g.initializers[t].1.clone())).collect();
    let mut dropped = vec![false; g.nodes.len()];
    for &(i, _) in &promoted {
        dropped[i] = true;
    }
    super::rewrite::apply(g, &dropped, copies);
    before - g.nodes.len()
}

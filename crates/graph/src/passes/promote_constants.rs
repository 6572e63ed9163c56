//! Turns `Constant` nodes holding a tensor, and `Identity` nodes of an initializer, into
//! initializers, so the folding passes see every constant alike: PaddleOCR's exports carry all
//! their weights as `Constant` nodes, and PyTorch's exporter writes a BatchNorm's running
//! statistics as `Identity` of an equal weight when they coincide (untrained or reset layers).

use std::collections::HashMap;

use crate::model::{Attr, Subgraph};

/// Returns how many nodes were promoted.
pub fn promote_constants(g: &mut Subgraph) -> usize {
    let before = g.nodes.len();
    let mut known: HashMap<String, _> = g.initializers.iter().cloned().collect();
    let outputs: Vec<String> = g.outputs.iter().map(|o| o.name.clone()).collect();
    let mut promoted = vec![];
    // Nodes are in topological order, so an Identity of a promoted Constant resolves too.
    g.nodes.retain(|n| {
        let value = match (n.op.as_str(), n.attr("value"), n.inputs.first()) {
            ("Constant", Some(Attr::Tensor(t)), _) => Some(t.clone()),
            ("Identity", _, Some(src)) if !outputs.contains(&n.outputs[0]) => known.get(src).cloned(),
            _ => None,
        };
        match (value, n.outputs.as_slice()) {
            (Some(t), [out]) => {
                known.insert(out.clone(), t.clone());
                promoted.push((out.clone(), t));
                false
            }
            _ => true,
        }
    });
    g.initializers.extend(promoted);
    before - g.nodes.len()
}

//! Turns `Constant` nodes holding a tensor into initializers, so the folding passes see every
//! constant alike: PaddleOCR's exports carry all their weights as `Constant` nodes.

use crate::model::{Attr, Subgraph};

/// Returns how many Constant nodes were promoted.
pub fn promote_constants(g: &mut Subgraph) -> usize {
    let before = g.nodes.len();
    let mut promoted = vec![];
    g.nodes.retain(|n| match (n.op.as_str(), n.attr("value"), n.outputs.as_slice()) {
        ("Constant", Some(Attr::Tensor(t)), [out]) => {
            promoted.push((out.clone(), t.clone()));
            false
        }
        _ => true,
    });
    g.initializers.extend(promoted);
    before - g.nodes.len()
}

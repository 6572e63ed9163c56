//! Drops initializers no node reads (e.g. conv weights replaced by BatchNorm folding), so their
//! memory is freed before compilation.

use std::collections::HashSet;

use crate::model::{Attr, Subgraph};

/// Names read by nodes of `g` or of any nested branch.
fn referenced(g: &Subgraph, into: &mut HashSet<String>) {
    for n in &g.nodes {
        into.extend(n.inputs.iter().cloned());
        for a in n.attrs.values() {
            if let Attr::Graph(sub) = a {
                referenced(sub, into);
            }
        }
    }
    into.extend(g.outputs.iter().map(|o| o.name.clone()));
}

/// Returns how many initializers were dropped.
pub fn prune_initializers(g: &mut Subgraph) -> usize {
    let mut used = HashSet::new();
    referenced(g, &mut used);
    let before = g.initializers.len();
    g.initializers.retain(|(name, _)| used.contains(name));
    before - g.initializers.len()
}

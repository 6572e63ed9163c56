//! Drops initializers no node reads (e.g. conv weights replaced by BatchNorm folding), so their
//! memory is freed before compilation.

use std::collections::HashSet;

use crate::model::{Attr, Subgraph};

/// Names read by nodes of `g` or of any nested branch.
fn referenced<'g>(g: &'g Subgraph, into: &mut HashSet<&'g str>) {
    for n in &g.nodes {
        into.extend(n.inputs.iter().map(String::as_str));
        for a in n.attrs.values() {
            if let Attr::Graph(sub) = a {
                referenced(sub, into);
            }
        }
    }
    into.extend(g.outputs.iter().map(|o| o.name.as_str()));
}

/// Returns how many initializers were dropped.
pub fn prune_initializers(g: &mut Subgraph) -> usize {
    let mut used = HashSet::new();
    referenced(g, &mut used);
    let keep: Vec<bool> = g.initializers.iter().map(|(name, _)| used.contains(name.as_str())).collect();
    let before = g.initializers.len();
    let mut keep = keep.into_iter();
    g.initializers.retain(|_| keep.next().unwrap_or(true));
    before - g.initializers.len()
}

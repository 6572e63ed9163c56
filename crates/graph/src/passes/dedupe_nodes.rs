//! Common-subexpression elimination: a node with the same op, attributes and inputs as an earlier
//! one computes the same values, so its uses are pointed at the earlier node's outputs and it is
//! dropped. Unrolled decoders repeat work this way: SAR's exporter recomputes the attention
//! module's 3×3 conv over the (unchanging) feature map at each of its 31 decoding steps.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::hash::{Hash, Hasher};

use crate::model::{Attr, Node, Subgraph};

/// Removes repeated nodes from `g`; `protected` values (the graph's outputs) keep their producers.
/// Returns how many nodes were removed.
pub fn dedupe_nodes(g: &mut Subgraph, protected: &[String]) -> usize {
    // Values read inside `If` branches are referenced by name from there: keep their producers.
    let mut keep: HashSet<String> = protected.iter().cloned().collect();
    for n in &g.nodes {
        for a in n.attrs.values() {
            if let Attr::Graph(sub) = a {
                names_read(sub, &mut keep);
            }
        }
    }
    // Keys are kept as hashes, and a match is confirmed on the full keys: one string per node
    // was megabytes of load peak on viptr_tiny's 20 000 nodes.
    let mut seen: HashMap<u64, usize> = HashMap::new();
    let mut renamed: HashMap<String, String> = HashMap::new();
    let mut dropped = vec![false; g.nodes.len()];
    let mut buf = String::new();
    for i in 0..g.nodes.len() {
        let node = &mut g.nodes[i];
        for input in node.inputs.iter_mut() {
            if let Some(to) = renamed.get(input.as_str()) {
                *input = to.clone();
            }
        }
        if !key(node, &mut buf) {
            continue;
        }
        let hash = {
            let mut h = std::hash::DefaultHasher::new();
            buf.hash(&mut h);
            h.finish()
        };
        if node.outputs.iter().any(|o| keep.contains(o)) {
            seen.entry(hash).or_insert(i);
            continue;
        }
        let Some(&first) = seen.get(&hash) else {
            seen.insert(hash, i);
            continue;
        };
        let (earlier, node) = (&g.nodes[first], &g.nodes[i]);
        let mut earlier_key = String::new();
        if earlier.outputs.len() != node.outputs.len() || !key(earlier, &mut earlier_key) || earlier_key != buf {
            continue;
        }
        for (dup, orig) in node.outputs.iter().zip(&earlier.outputs) {
            if !dup.is_empty() {
                renamed.insert(dup.clone(), orig.clone());
            }
        }
        dropped[i] = true;
    }
    let removed = dropped.iter().filter(|d| **d).count();
    super::rewrite::apply(g, &dropped, vec![]);
    removed
}

/// Writes what makes two nodes compute the same thing into `k`; false for nodes that must never
/// be merged.
fn key(n: &Node, k: &mut String) -> bool {
    if n.op.starts_with("Random") || n.op == "Multinomial" || n.op == "Dropout" {
        return false;
    }
    let mut attrs: Vec<_> = n.attrs.iter().collect();
    if attrs.iter().any(|(_, a)| matches!(a, Attr::Graph(_))) {
        return false;
    }
    attrs.sort_by(|a, b| a.0.cmp(b.0));
    k.clear();
    let _ = write!(k, "{}({})", n.op, n.inputs.join(","));
    for (name, a) in attrs {
        let _ = write!(k, ";{name}={a:?}");
    }
    if let Some(f) = &n.fused {
        let _ = write!(k, ";fused={f:?}");
    }
    true
}

/// Every value name a subgraph (and the subgraphs in it) reads.
fn names_read(g: &Subgraph, out: &mut HashSet<String>) {
    for n in &g.nodes {
        out.extend(n.inputs.iter().filter(|i| !i.is_empty()).cloned());
        for a in n.attrs.values() {
            if let Attr::Graph(sub) = a {
                names_read(sub, out);
            }
        }
    }
    out.extend(g.outputs.iter().map(|o| o.name.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Attrs;

    fn node(name: &str, op: &str, inputs: &[&str], outputs: &[&str]) -> Node {
        Node {
            name: name.into(),
            op: op.into(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            attrs: Attrs::new(),
            fused: None,
        }
    }

    #[test]
    fn repeated_nodes_are_merged_and_their_uses_follow() {
        let mut g = Subgraph {
            nodes: vec![
                node("a", "Relu", &["x"], &["a"]),
                node("b", "Relu", &["x"], &["b"]),
                // Identical once b is renamed to a: merged too.
                node("c", "Add", &["a", "x"], &["c"]),
                node("d", "Add", &["b", "x"], &["d"]),
                node("e", "Mul", &["c", "d"], &["e"]),
                // The graph's output: kept although it repeats `e`.
                node("f", "Mul", &["c", "d"], &["y"]),
            ],
            ..Default::default()
        };
        let removed = dedupe_nodes(&mut g, &["y".to_string()]);
        assert_eq!(removed, 2);
        let names: Vec<_> = g.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "c", "e", "f"]);
        assert_eq!(g.nodes[2].inputs, ["c", "c"]);
        assert_eq!(g.nodes[3].inputs, ["c", "c"]);
    }

    #[test]
    fn different_attributes_keep_both() {
        let mut a = node("a", "Transpose", &["x"], &["a"]);
        a.attrs.insert("perm".into(), Attr::Ints(vec![1, 0]));
        let mut b = node("b", "Transpose", &["x"], &["b"]);
        b.attrs.insert("perm".into(), Attr::Ints(vec![0, 1]));
        let mut g = Subgraph { nodes: vec![a, b], ..Default::default() };
        assert_eq!(dedupe_nodes(&mut g, &[]), 0);
    }
}

//! What the rewriting passes share: who reads and produces each value, and how a pass ends.

use std::collections::HashMap;
use std::sync::Arc;

use burn_backend::TensorData;

use crate::ir::Subgraph;

/// Who reads each value: how many node inputs name it, and the last node that does. A rewrite
/// may fold a value away only when one node reads it and it is not a graph output. Names borrow
/// the graph's, and no list per value is kept: on viptr_tiny's 20 000 nodes either was megabytes
/// of load peak.
pub(crate) struct Readers<'g> {
    by_value: HashMap<&'g str, (u32, u32)>,
    protected: &'g [String],
}

impl<'g> Readers<'g> {
    pub(crate) fn new(g: &'g Subgraph, protected: &'g [String]) -> Self {
        Self::excluding(g, protected, &[])
    }

    /// Readers among the nodes whose op is not in `ops` (Shape reads no values).
    pub(crate) fn excluding(g: &'g Subgraph, protected: &'g [String], ops: &[&str]) -> Self {
        let mut by_value: HashMap<&str, (u32, u32)> = HashMap::new();
        for (i, n) in g.nodes.iter().enumerate().filter(|(_, n)| !ops.contains(&n.op.as_str())) {
            for input in n.inputs.iter().filter(|s| !s.is_empty()) {
                let e = by_value.entry(input.as_str()).or_default();
                *e = (e.0 + 1, i as u32);
            }
        }
        Self { by_value, protected }
    }

    /// The node that alone reads `value`, when `value` is not a graph output.
    pub(crate) fn sole(&self, value: &str) -> Option<usize> {
        match self.by_value.get(value) {
            Some(&(1, i)) if !self.protected.iter().any(|p| p == value) => Some(i as usize),
            _ => None,
        }
    }
}

/// Each value's producing node.
pub(crate) fn producers(g: &Subgraph) -> HashMap<&str, usize> {
    g.nodes.iter().enumerate().flat_map(|(i, n)| n.outputs.iter().map(move |o| (o.as_str(), i))).collect()
}

/// Ends a rewriting pass: drops the marked nodes and adds the initializers the pass made.
pub(crate) fn apply(g: &mut Subgraph, dropped: &[bool], new_inits: Vec<(String, Arc<TensorData>)>) {
    let mut keep = dropped.iter().map(|d| !d);
    g.nodes.retain(|_| keep.next().unwrap_or(true));
    g.initializers.extend(new_inits);
}

/// A node for pass tests, its one output named `{name}_out`.
#[cfg(test)]
pub(crate) fn test_node(name: &str, op: &str, inputs: &[&str], attrs: &[(&str, crate::model::Attr)]) -> crate::model::Node {
    crate::model::Node {
        name: name.into(),
        op: op.into(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        outputs: vec![format!("{name}_out")],
        attrs: attrs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        fused: None,
    }
}

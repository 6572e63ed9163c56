//! Graph passes. Load-time passes need no shapes; `specialize` runs per input shape at compile.

mod adaptive_pool;
mod attention_scores;
mod compose_relayouts;
mod dedupe_nodes;
mod defer_concat_relu;
mod fold_batchnorm;
mod fuse_conv_residual;
mod fuse_matmul_bias;
mod fuse_patterns;
mod merge_conv_branches;
mod promote_identities;
mod prune;
mod specialize;
mod transpose_gemm_weights;

pub use attention_scores::{MATMUL_SCORES, mark_attention_scores};
pub use dedupe_nodes::dedupe_nodes;
pub use defer_concat_relu::{CONCAT_BIAS_RELU, CONV_EPILOGUE_IN_CONCAT, defer_concat_relu};
pub use fold_batchnorm::fold_batchnorm;
pub use fuse_conv_residual::{CONV_ADD_AFTER, CONV_RESIDUAL, fuse_conv_residual};
pub use fuse_matmul_bias::fuse_matmul_bias;
pub use fuse_patterns::{CONV_ACTIVATION, CONV_CLIP, fuse_patterns};
pub use merge_conv_branches::merge_conv_branches;
pub use promote_identities::promote_identities;
pub use prune::prune_initializers;
pub(crate) use specialize::run_guarded;
pub use specialize::{Program, specialize};
pub use transpose_gemm_weights::transpose_gemm_weights;
pub(crate) use transpose_gemm_weights::{read_as_stored, read_transposed, stored_name, transpose_in_place};

use std::collections::HashMap;
use std::sync::Arc;

use burn_backend::TensorData;

use crate::model::Subgraph;

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
fn apply(g: &mut Subgraph, dropped: &[bool], new_inits: Vec<(String, Arc<TensorData>)>) {
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
    }
}

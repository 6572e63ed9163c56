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
mod promote_constants;
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
pub use promote_constants::promote_constants;
pub use prune::prune_initializers;
pub(crate) use specialize::run_guarded;
pub use specialize::{Program, specialize};
pub use transpose_gemm_weights::transpose_gemm_weights;

use std::sync::Arc;

use burn_backend::TensorData;

use crate::model::Subgraph;

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

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
mod rewrite;
mod program;
mod specialize;
mod transpose_gemm_weights;

pub use attention_scores::mark_attention_scores;
pub use dedupe_nodes::dedupe_nodes;
pub use defer_concat_relu::defer_concat_relu;
pub use fold_batchnorm::fold_batchnorm;
pub use fuse_conv_residual::fuse_conv_residual;
pub use fuse_matmul_bias::fuse_matmul_bias;
pub use fuse_patterns::fuse_patterns;
pub use merge_conv_branches::merge_conv_branches;
pub use promote_identities::promote_identities;
pub use prune::prune_initializers;
pub use program::Program;
pub use specialize::specialize;
pub use transpose_gemm_weights::transpose_gemm_weights;

//! Graph passes. Load-time passes need no shapes; `specialize` runs per input shape at compile.

mod fold_batchnorm;
mod fuse_patterns;
mod promote_constants;
mod prune;
mod specialize;

pub use fold_batchnorm::fold_batchnorm;
pub use fuse_patterns::fuse_patterns;
pub use promote_constants::promote_constants;
pub use prune::prune_initializers;
pub(crate) use specialize::run_guarded;
pub use specialize::{Program, specialize};

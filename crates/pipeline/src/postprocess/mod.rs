//! From model outputs to results: detection maps to boxes, recognition logits to strings.

pub mod ctc;
pub mod db;
pub mod split;

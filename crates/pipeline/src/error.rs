//! One error type for the pipeline: what went wrong, and which file, page or model it concerns.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: cannot read image: {reason}")]
    Image { path: PathBuf, reason: String },
    #[error("{path}: page is {width}×{height} px: {reason}")]
    PageSize { path: PathBuf, width: u32, height: u32, reason: &'static str },
    #[error("{path}: cannot read PDF: {reason}")]
    Pdf { path: PathBuf, reason: String },
    #[error("model card '{card}': {reason}")]
    Card { card: String, reason: String },
    #[error("model '{card}' is not available locally: {hint}")]
    ModelMissing { card: String, hint: String },
    #[error("model '{card}' does not fit its task: {reason}")]
    WrongModel { card: String, reason: String },
    #[error("model '{card}': downloading {url} failed: {reason}; {hint}")]
    Download { card: String, url: String, reason: String, hint: String },
    #[error("predictor options: {reason}")]
    Options { reason: String },
    #[error(transparent)]
    Graph(#[from] kiln_graph::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

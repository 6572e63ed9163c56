//! Kiln's OCR pipeline: docTR's `ocr_predictor` on models compiled by kiln-graph.
//!
//! ```no_run
//! // Kiln's default docTR models; `.det("db_resnet50")`, `.reco("ppocr-v4-rec")`, … pick others.
//! let predictor = kiln::Predictor::builder().assume_straight_pages(false).build()?;
//! let page = kiln::image_io::load_image("page.png".as_ref())?;
//! println!("{}", predictor.predict(&[page])?.render());
//! # Ok::<(), kiln::Error>(())
//! ```

pub mod builder;
pub mod card;
pub mod document;
pub mod download;
mod error;
pub mod geometry;
pub mod image_io;
pub mod min_rect;
pub mod overlay;
pub mod pdf;
pub mod postprocess;
pub mod orientation;
mod predictor;
pub mod preprocess;
pub mod vocabs;
pub mod warp;

pub use card::ModelCard;
pub use document::Document;
pub use error::{Error, Result};
pub use kiln_graph::{Backend, Mode};
pub use predictor::{
    DEFAULT_CROP_ORIENTATION, DEFAULT_DET, DEFAULT_PAGE_ORIENTATION, DEFAULT_RECO, Model, ModelSource, Models, Options,
    Predictor, PredictorBuilder,
};

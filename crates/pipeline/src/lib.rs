//! Kiln's OCR pipeline: docTR's `ocr_predictor` on models compiled by kiln-graph.
//!
//! ```no_run
//! use kiln::{Model, ModelCard, Options, Predictor};
//! let det = Model::load(ModelCard::named("ppocr-v4-det")?, None)?;
//! let reco = Model::load(ModelCard::named("ppocr-v4-rec")?, None)?;
//! let predictor = Predictor::new(det, reco, None, Options::default())?;
//! let page = kiln::image_io::load_image("page.png".as_ref())?;
//! println!("{}", predictor.predict(&[page])?.render());
//! # Ok::<(), kiln::Error>(())
//! ```

pub mod builder;
pub mod card;
pub mod document;
mod error;
pub mod geometry;
pub mod image_io;
pub mod overlay;
pub mod pdf;
pub mod postprocess;
mod predictor;
pub mod preprocess;
pub mod vocabs;

pub use card::ModelCard;
pub use document::Document;
pub use error::{Error, Result};
pub use kiln_graph::{Backend, Mode};
pub use predictor::{Model, Options, Predictor};

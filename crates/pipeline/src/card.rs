//! Model cards (`models/*.toml`): everything the pipeline needs to know about a model besides its
//! graph — task, input size, normalisation, resize rule, post-processing parameters, vocabulary and
//! where the ONNX file comes from. The cards in `models/` are embedded in the binary.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Detection,
    Recognition,
    CropOrientation,
    PageOrientation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channels {
    Rgb,
    /// PaddleOCR models were trained on OpenCV's BGR images.
    Bgr,
}

/// What turns the graph's output into probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    None,
    Sigmoid,
    /// FAST: docTR max-pools the logits (3×3, stride 1) before the sigmoid, outside the graph.
    MaxpoolSigmoid,
    Softmax,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Resize {
    /// docTR: to the card's input size, aspect ratio kept (unless told otherwise), zero padding
    /// (symmetric or bottom-right).
    Fixed {
        symmetric_pad: bool,
        #[serde(default = "yes")]
        preserve_aspect_ratio: bool,
    },
    /// PaddleOCR detection: scale so the `limit_type` side meets `limit`, round to `multiple`;
    /// RapidOCR first shrinks pages whose longer side exceeds `max_side`.
    SideLimit {
        limit: u32,
        limit_type: LimitType,
        multiple: u32,
        max_side: Option<u32>,
    },
    /// PaddleOCR recognition/classification: fixed height, width from the aspect ratio, padded right
    /// to the widest crop of the batch (at least the card's width), rounded up to `multiple`.
    Height {
        #[serde(default = "one")]
        multiple: u32,
    },
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitType {
    Min,
    Max,
}

/// Binary-map morphology before contour search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Morphology {
    /// docTR: opening with a 3×3 square.
    Open3,
    /// PaddleOCR: dilation with a 2×2 square.
    Dilate2,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostProcess {
    pub bin_thresh: f32,
    pub box_thresh: f32,
    pub unclip_ratio: f32,
    pub morphology: Morphology,
    /// DBNet drops boxes under 2 px after unclipping; docTR's LinkNet and FAST do not.
    #[serde(default = "yes")]
    pub drop_small: bool,
    /// On straight pages, give a text line turned by more than a degree a rotated box, cut level,
    /// as PaddleOCR cuts every box; level regions keep docTR's straight box. PaddleOCR's detector
    /// finds whole lines, and a line skewed by a few degrees fills its bounding rectangle too
    /// thinly to pass `box_thresh` (and would be cut with its neighbours' ink). docTR's word-level
    /// maps do not need it.
    #[serde(default)]
    pub level_skewed_lines: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vocab {
    /// A docTR vocabulary name (`french`, …).
    pub name: Option<String>,
    /// Characters given inline, in class order.
    pub chars: Option<String>,
    /// An ONNX `metadata_props` key holding the characters, one per line.
    pub metadata: Option<String>,
    #[serde(default)]
    pub append_space: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecoderKind {
    /// Greedy CTC: collapse repeats, drop blanks.
    Ctc,
    /// Argmax per step, cut at `<eos>` (index = vocabulary size).
    Attention,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Blank {
    First,
    Last,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    /// docTR CTC, SAR, MASTER: the least confident step.
    Min,
    /// PaddleOCR CTC, docTR ViTSTR/PARSeq: mean over the kept characters.
    Mean,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decoder {
    pub kind: DecoderKind,
    #[serde(default = "blank_last")]
    pub blank: Blank,
    pub confidence: Confidence,
}

fn blank_last() -> Blank {
    Blank::Last
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Directory name under the fixtures cache (`cargo xtask fixtures`).
    pub fixture: Option<String>,
    pub package: Option<String>,
    pub file: Option<String>,
    /// Path of an ONNX file shipped in the repository, relative to `models/`.
    pub bundled: Option<String>,
    /// Official weights to download when the model is used by name.
    pub url: Option<String>,
    /// The file's sha256: the full digest, or its leading hex digits (docTR's and OnnxTR's
    /// release file names carry the first eight).
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    pub name: String,
    pub arch: String,
    pub task: Task,
    /// C, H, W the model was trained at.
    pub input: [usize; 3],
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub channels: Channels,
    pub activation: Activation,
    pub resize: Resize,
    pub postprocess: Option<PostProcess>,
    pub vocab: Option<Vocab>,
    pub decoder: Option<Decoder>,
    /// Orientation classes in degrees, counter-clockwise, in output order.
    pub classes: Option<Vec<i32>>,
    /// Minimum probability to act on an orientation class other than 0.
    pub threshold: Option<f32>,
    /// Most crops per recognition or classification batch. PaddleOCR reads six at a time, sorted
    /// by aspect ratio; its SVTR recogniser mixes features across the whole padded width, so the
    /// padding a wide neighbour forces on a short crop changes what it reads.
    pub max_batch: Option<usize>,
    /// Recognition: read crops wider than 8× their height in overlapping windows (docTR's fixed
    /// 32×128 recognisers).
    #[serde(default)]
    pub split_wide_crops: bool,
    /// Detection and recognition: the crop orientation classifier of this model's family (a card
    /// name), used with rotated boxes unless another is named. PaddleOCR's models read crops the
    /// way its own 0°/180° classifier turns them, not the way docTR's four-way one does.
    pub crop_orientation: Option<String>,
    #[serde(default)]
    pub source: Source,
}

/// (name, TOML) of every card in `models/` (listed by build.rs).
const EMBEDDED: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/cards.rs"));

impl ModelCard {
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let card: ModelCard =
            toml::from_str(text).map_err(|e| Error::Card { card: origin.into(), reason: e.to_string() })?;
        card.validate()?;
        Ok(card)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.into(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// An embedded card by name.
    pub fn named(name: &str) -> Result<Self> {
        let (_, text) = EMBEDDED.iter().find(|(n, _)| *n == name).ok_or_else(|| Error::Card {
            card: name.into(),
            reason: format!("no such model card; known: {}", Self::names().join(", ")),
        })?;
        Self::parse(text, name)
    }

    pub fn names() -> Vec<&'static str> {
        EMBEDDED.iter().map(|(n, _)| *n).collect()
    }

    pub fn all() -> Result<Vec<Self>> {
        Self::names().into_iter().map(Self::named).collect()
    }

    fn validate(&self) -> Result<()> {
        let fail = |reason: &str| Err(Error::Card { card: self.name.clone(), reason: reason.into() });
        if self.input[0] != 3 || self.input[1] == 0 || self.input[2] == 0 {
            return fail("input must be [3, H, W] with H, W > 0");
        }
        if self.std.iter().any(|s| *s <= 0.0) {
            return fail("std must be positive");
        }
        match self.task {
            Task::Detection if self.postprocess.is_none() => fail("a detection card needs `postprocess`"),
            Task::Recognition if self.vocab.is_none() || self.decoder.is_none() => {
                fail("a recognition card needs `vocab` and `decoder`")
            }
            Task::CropOrientation | Task::PageOrientation if self.classes.is_none() => {
                fail("an orientation card needs `classes`")
            }
            _ => Ok(()),
        }
    }

    /// Where the ONNX file is on this machine, if anywhere: `$KILN_MODELS/<name>.onnx`, the file
    /// shipped in `models/`, the download cache; for cards without a download (PP-OCR, whose
    /// source is a PyPI wheel), the fixtures cache that `cargo xtask fixtures` fills.
    pub fn locate(&self) -> Result<PathBuf> {
        let mut tried = vec![];
        if let Some(dir) = std::env::var_os("KILN_MODELS") {
            tried.push(PathBuf::from(dir).join(format!("{}.onnx", self.name)));
        }
        if let Some(bundled) = &self.source.bundled {
            tried.push(models_dir().join(bundled));
        }
        if self.source.url.is_some() {
            tried.push(crate::download::cached_path(&self.name));
        } else if let Some(fixture) = &self.source.fixture {
            for dir in fixture_dirs() {
                tried.push(dir.join(fixture).join("model.onnx"));
            }
        }
        if let Some(found) = tried.iter().find(|p| p.is_file()) {
            return Ok(found.clone());
        }
        let looked = tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        let how = match (&self.source.fixture, &self.source.url) {
            (_, Some(url)) => format!("it downloads from {url} when used"),
            (Some(_), None) => "run `cargo xtask fixtures` to make it".to_string(),
            (None, None) => "no source is known".to_string(),
        };
        Err(Error::ModelMissing {
            card: self.name.clone(),
            hint: format!("looked in {looked}; {how}, or pass a local ONNX file (e.g. --det model.onnx)"),
        })
    }

    /// The model's file: found locally, else downloaded from the card's `url`.
    pub fn locate_or_fetch(&self) -> Result<PathBuf> {
        match self.locate() {
            Ok(p) => Ok(p),
            Err(e) => match &self.source.url {
                Some(url) => crate::download::fetch(&self.name, url, self.source.sha256.as_deref()),
                None => Err(e),
            },
        }
    }

    /// The random-init export `cargo xtask fixtures` made of this architecture, if any: what
    /// Kiln's parity and pipeline tests run.
    pub fn fixture_path(&self) -> Option<PathBuf> {
        let fixture = self.source.fixture.as_ref()?;
        fixture_dirs().into_iter().map(|d| d.join(fixture).join("model.onnx")).find(|p| p.is_file())
    }
}

/// The repository's `models/` directory, where shipped ONNX files live.
fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

/// Candidate fixture caches, most specific first.
fn fixture_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![];
    if let Some(d) = std::env::var_os("KILN_FIXTURES") {
        dirs.push(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("KILN_CACHE") {
        dirs.push(PathBuf::from(d).join("fixtures"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cache/kiln/fixtures"));
    }
    // A binary built in this repository also finds the repository's own cache.
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/fixtures"));
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_cards_parse() {
        let cards = ModelCard::all().unwrap();
        assert_eq!(cards.len(), EMBEDDED.len());
        for (card, (name, _)) in cards.iter().zip(EMBEDDED) {
            assert_eq!(&card.name, name);
        }
    }

    #[test]
    fn bad_card_is_a_typed_error() {
        let e = ModelCard::parse("name = 'x'\narch = 'db'\ntask = 'detection'", "x.toml").unwrap_err();
        assert!(matches!(e, Error::Card { .. }), "{e}");
        let e = ModelCard::named("nope").unwrap_err();
        assert!(e.to_string().contains("ppocr-v4-det"), "{e}");
    }
}

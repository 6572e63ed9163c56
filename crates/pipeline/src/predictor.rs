//! docTR's `ocr_predictor` flow: detect words on every page, optionally estimate each page's
//! angle and straighten it, crop the words, optionally turn crops the right way up, recognise
//! them in batches, and build the document.

use std::path::{Path, PathBuf};

use image::{GrayImage, RgbImage};
use kiln_graph::{Backend, Graph, Mode, TensorData};
use rayon::prelude::*;

use crate::builder::{BuilderOptions, build_blocks};
use crate::card::{Activation, ModelCard, Resize, Task};
use crate::document::{Document, Page, Prediction, Word};
use crate::error::{Error, Result};
use crate::geometry::{Geometry, horizontal_crop, remove_padding, rotated_crop, straight_crop};
use crate::orientation::{estimate_orientation, remove_image_padding, rotate_page};
use crate::postprocess::{ctc, db, split};
use crate::preprocess::{self, Prepared};

/// A model: its card, its loaded graph and, for recognition, its vocabulary.
pub struct Model {
    pub card: ModelCard,
    graph: Graph,
    vocab: Vec<char>,
}

impl Model {
    /// Loads the card's model from `path`, or from where the card says it lives (downloading
    /// official weights the first time).
    pub fn load(card: ModelCard, path: Option<&Path>) -> Result<Self> {
        let path: PathBuf = match path {
            Some(p) => p.to_path_buf(),
            None => card.locate_or_fetch()?,
        };
        let graph = Graph::load(&path)?;
        let vocab = match &card.vocab {
            None => vec![],
            Some(v) => {
                let mut chars: Vec<char> = if let Some(name) = &v.name {
                    crate::vocabs::named(name)
                        .ok_or_else(|| Error::Card { card: card.name.clone(), reason: format!("unknown vocabulary '{name}'") })?
                        .chars()
                        .collect()
                } else if let Some(chars) = &v.chars {
                    chars.chars().collect()
                } else if let Some(key) = &v.metadata {
                    let text = graph.metadata(key).ok_or_else(|| Error::WrongModel {
                        card: card.name.clone(),
                        reason: format!("{} has no '{key}' metadata holding the vocabulary", path.display()),
                    })?;
                    text.lines().filter_map(|l| l.chars().next()).collect()
                } else {
                    return Err(Error::Card { card: card.name.clone(), reason: "vocab needs name, chars or metadata".into() });
                };
                if v.append_space {
                    chars.push(' ');
                }
                chars
            }
        };
        let model = Model { card, graph, vocab };
        model.check_signature()?;
        Ok(model)
    }

    /// A model of the wrong kind (a recogniser passed as detector, …) is refused at load.
    fn check_signature(&self) -> Result<()> {
        let wrong = |reason: String| Err(Error::WrongModel { card: self.card.name.clone(), reason });
        let (inputs, outputs) = (self.graph.inputs(), self.graph.outputs());
        if inputs.len() != 1 || inputs[0].dims.len() != 4 {
            return wrong(format!("{} takes {} inputs; an image model takes one N×3×H×W tensor", self.graph.source().display(), inputs.len()));
        }
        let rank = outputs.first().map(|o| o.dims.len()).unwrap_or(0);
        let expected = match self.card.task {
            Task::Detection => 4,
            Task::Recognition => 3,
            Task::CropOrientation | Task::PageOrientation => 2,
        };
        if rank != expected {
            return wrong(format!(
                "{}'s first output has rank {rank}; a {:?} model gives rank {expected}",
                self.graph.source().display(),
                self.card.task
            ));
        }
        Ok(())
    }

    fn run(&self, backend: Backend, mode: Mode, batch: TensorData) -> Result<(Vec<f32>, Vec<usize>)> {
        let plan = self.graph.compile(backend, mode, &[batch.shape().to_vec()])?;
        let out = plan.run_owned(vec![batch])?.into_iter().next().ok_or_else(|| Error::WrongModel {
            card: self.card.name.clone(),
            reason: "the model has no outputs".into(),
        })?;
        let shape = out.shape().to_vec();
        let data = out.try_into_vec_as::<f32>().map_err(|e| Error::WrongModel {
            card: self.card.name.clone(),
            reason: format!("output is not float: {e:?}"),
        })?;
        Ok((data, shape))
    }
}

/// Options of [`Predictor`]; docTR's `ocr_predictor` defaults.
#[derive(Debug, Clone)]
pub struct Options {
    pub backend: Backend,
    pub mode: Mode,
    /// Straight boxes and crops; false fits rotated boxes and turns crops with the orientation model.
    pub assume_straight_pages: bool,
    /// Estimate each page's angle (page classifier + text lines), turn the page straight and
    /// detect again before reading it.
    pub straighten_pages: bool,
    /// Report each page's estimated angle in [`Page::orientation`].
    pub detect_orientation: bool,
    /// Detection input keeps the page's aspect ratio (padding); false stretches the page.
    pub preserve_aspect_ratio: bool,
    /// Pad detection inputs on both sides; `None` keeps the card's choice (docTR: symmetric).
    pub symmetric_pad: Option<bool>,
    /// Treat pages as upright: no page classifier (class 0) and rotated boxes cropped as
    /// horizontal ones.
    pub disable_page_orientation: bool,
    /// Read crops as they are: no crop classifier (class 0).
    pub disable_crop_orientation: bool,
    /// Force straight boxes in the output even when rotated ones were detected.
    pub export_as_straight_boxes: bool,
    pub det_bs: usize,
    pub reco_bs: usize,
    pub bin_thresh: Option<f32>,
    pub box_thresh: Option<f32>,
    pub builder: BuilderOptions,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backend: Backend::Flex,
            mode: Mode::Fused,
            assume_straight_pages: true,
            straighten_pages: false,
            detect_orientation: false,
            preserve_aspect_ratio: true,
            symmetric_pad: None,
            disable_page_orientation: false,
            disable_crop_orientation: false,
            export_as_straight_boxes: false,
            det_bs: 2,
            reco_bs: 128,
            bin_thresh: None,
            box_thresh: None,
            builder: BuilderOptions::default(),
        }
    }
}

/// The models of a predictor; the orientation classifiers are needed only by the options that
/// use them.
pub struct Models {
    pub det: Model,
    pub reco: Model,
    pub crop_orientation: Option<Model>,
    pub page_orientation: Option<Model>,
}

/// Where a model comes from: a card name (`kiln models`), a local ONNX file with the card that
/// describes it, or a model already loaded.
pub enum ModelSource {
    Named(String),
    File { path: PathBuf, card: String },
    Loaded(Model),
}

impl ModelSource {
    fn load(self) -> Result<Model> {
        match self {
            ModelSource::Named(name) => Model::load(ModelCard::named(&name)?, None),
            ModelSource::File { path, card } => Model::load(ModelCard::named(&card)?, Some(&path)),
            ModelSource::Loaded(m) => Ok(m),
        }
    }
}

impl From<&str> for ModelSource {
    fn from(name: &str) -> Self {
        ModelSource::Named(name.into())
    }
}

impl From<Model> for ModelSource {
    fn from(m: Model) -> Self {
        ModelSource::Loaded(m)
    }
}

/// Kiln's own trained docTR models (`models/train/`), shipped in `models/`: the default of
/// [`Predictor::builder`] and of `kiln ocr`.
pub const DEFAULT_DET: &str = "db_mobilenet_v3_large_synth";
pub const DEFAULT_RECO: &str = "crnn_mobilenet_v3_small_synth";
pub const DEFAULT_CROP_ORIENTATION: &str = "mobilenet_v3_small_crop_orientation_synth";
pub const DEFAULT_PAGE_ORIENTATION: &str = "mobilenet_v3_small_page_orientation_synth";

/// Builds a [`Predictor`] the way docTR's `ocr_predictor(...)` is called: models by name or
/// file, docTR's options. Orientation models are loaded only when the options need them.
///
/// ```no_run
/// let predictor = kiln::Predictor::builder().assume_straight_pages(false).build()?;
/// # Ok::<(), kiln::Error>(())
/// ```
pub struct PredictorBuilder {
    det: ModelSource,
    reco: ModelSource,
    /// `None`: the recogniser's family's classifier (its card's `crop_orientation`), else the
    /// detector's, else Kiln's default.
    crop_orientation: Option<ModelSource>,
    page_orientation: ModelSource,
    options: Options,
}

impl PredictorBuilder {
    pub fn det(mut self, m: impl Into<ModelSource>) -> Self {
        self.det = m.into();
        self
    }
    pub fn reco(mut self, m: impl Into<ModelSource>) -> Self {
        self.reco = m.into();
        self
    }
    pub fn crop_orientation(mut self, m: impl Into<ModelSource>) -> Self {
        self.crop_orientation = Some(m.into());
        self
    }
    pub fn page_orientation(mut self, m: impl Into<ModelSource>) -> Self {
        self.page_orientation = m.into();
        self
    }
    /// All options at once.
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }
    pub fn backend(mut self, backend: Backend, mode: Mode) -> Self {
        self.options.backend = backend;
        self.options.mode = mode;
        self
    }
    pub fn assume_straight_pages(mut self, v: bool) -> Self {
        self.options.assume_straight_pages = v;
        self
    }
    pub fn straighten_pages(mut self, v: bool) -> Self {
        self.options.straighten_pages = v;
        self
    }
    pub fn detect_orientation(mut self, v: bool) -> Self {
        self.options.detect_orientation = v;
        self
    }

    pub fn build(self) -> Result<Predictor> {
        let o = &self.options;
        let needs_crop = !o.assume_straight_pages && !o.disable_crop_orientation;
        let needs_page = (o.straighten_pages || o.detect_orientation) && !o.disable_page_orientation;
        let (det, reco) = (self.det.load()?, self.reco.load()?);
        let crop_orientation = match self.crop_orientation {
            _ if !needs_crop => None,
            Some(named) => Some(named.load()?),
            None => {
                let family = reco.card.crop_orientation.as_ref().or(det.card.crop_orientation.as_ref());
                Some(ModelSource::from(family.map_or(DEFAULT_CROP_ORIENTATION, String::as_str)).load()?)
            }
        };
        let models = Models {
            det,
            reco,
            crop_orientation,
            page_orientation: if needs_page { Some(self.page_orientation.load()?) } else { None },
        };
        Predictor::new(models, self.options)
    }
}

/// docTR's `ocr_predictor`: detection, recognition, the orientation classifiers and options.
pub struct Predictor {
    det: Model,
    reco: Model,
    crop_orientation: Option<Model>,
    page_orientation: Option<Model>,
    pub options: Options,
}

impl Predictor {
    /// A builder starting from Kiln's default models and docTR's default options.
    pub fn builder() -> PredictorBuilder {
        PredictorBuilder {
            det: DEFAULT_DET.into(),
            reco: DEFAULT_RECO.into(),
            crop_orientation: None,
            page_orientation: DEFAULT_PAGE_ORIENTATION.into(),
            options: Options::default(),
        }
    }

    pub fn new(models: Models, mut options: Options) -> Result<Self> {
        let Models { mut det, reco, crop_orientation, page_orientation } = models;
        let expect = |m: &Model, task: Task| {
            if m.card.task == task {
                Ok(())
            } else {
                Err(Error::WrongModel { card: m.card.name.clone(), reason: format!("a {:?} model, used for {task:?}", m.card.task) })
            }
        };
        expect(&det, Task::Detection)?;
        expect(&reco, Task::Recognition)?;
        if let Some(m) = &crop_orientation {
            expect(m, Task::CropOrientation)?;
        }
        if let Some(m) = &page_orientation {
            expect(m, Task::PageOrientation)?;
        }
        let missing = |what: &str, option: &str| Error::Options {
            reason: format!("{option} needs a {what} model (or disable it with disable_{what})"),
        };
        if !options.assume_straight_pages && !options.disable_crop_orientation && crop_orientation.is_none() {
            return Err(missing("crop_orientation", "assume_straight_pages=false"));
        }
        if (options.straighten_pages || options.detect_orientation)
            && !options.disable_page_orientation
            && page_orientation.is_none()
        {
            return Err(missing("page_orientation", "straighten_pages or detect_orientation"));
        }
        options.det_bs = options.det_bs.max(1);
        options.reco_bs = options.reco_bs.max(1);
        // The detection input's padding follows the options.
        if let Resize::Fixed { symmetric_pad, preserve_aspect_ratio } = &mut det.card.resize {
            *preserve_aspect_ratio = options.preserve_aspect_ratio;
            if let Some(s) = options.symmetric_pad {
                *symmetric_pad = s;
            }
        }
        Ok(Predictor { det, reco, crop_orientation, page_orientation, options })
    }

    /// The crop orientation classifier's card, when the options use one.
    pub fn crop_orientation_card(&self) -> Option<&ModelCard> {
        self.crop_orientation.as_ref().map(|m| &m.card)
    }

    /// Reads every page.
    pub fn predict(&self, pages: &[RgbImage]) -> Result<Document> {
        for (i, p) in pages.iter().enumerate() {
            crate::image_io::check_size(p.width(), p.height(), Path::new(&format!("<page {i}>")))?;
        }
        let o = &self.options;
        let want_maps = o.detect_orientation || o.straighten_pages;
        let (mut detections, maps) = self.detect_with_maps(pages, want_maps)?;
        let mut orientations = vec![Prediction::<i32>::default(); pages.len()];
        let straightened: Vec<RgbImage>;
        let mut pages = pages;
        if want_maps {
            let general = self.page_orientations(pages)?;
            let angles: Vec<i32> =
                maps.par_iter().zip(&general).map(|(m, &g)| estimate_orientation(m, Some(g))).collect();
            if o.detect_orientation {
                orientations = angles.iter().map(|&a| Prediction { value: Some(a), confidence: None }).collect();
            }
            if o.straighten_pages {
                straightened = pages
                    .par_iter()
                    .zip(&angles)
                    .map(|(p, &a)| remove_image_padding(&rotate_page(p, a as f64, p.width() != p.height())))
                    .collect();
                pages = &straightened;
                detections = self.detect(pages)?;
            }
        }
        let mut doc = Document { pages: vec![] };
        for (idx, ((page, dets), orientation)) in pages.iter().zip(detections).zip(orientations).enumerate() {
            let mut p = self.read_page(idx, page, dets)?;
            p.orientation = orientation;
            doc.pages.push(p);
        }
        Ok(doc)
    }

    /// Word boxes of every page, relative to the page.
    pub fn detect(&self, pages: &[RgbImage]) -> Result<Vec<Vec<db::Detection>>> {
        Ok(self.detect_with_maps(pages, false)?.0)
    }

    /// Word boxes, and with `maps` each page's binarised detection map at the model's input
    /// size (docTR's `seg_maps`, input padding included) for the orientation estimate.
    fn detect_with_maps(&self, pages: &[RgbImage], maps: bool) -> Result<(Vec<Vec<db::Detection>>, Vec<GrayImage>)> {
        let card = &self.det.card;
        let mut params = card.postprocess.clone().ok_or_else(|| Error::Card {
            card: card.name.clone(),
            reason: "no postprocess parameters".into(),
        })?;
        params.bin_thresh = self.options.bin_thresh.unwrap_or(params.bin_thresh);
        params.box_thresh = self.options.box_thresh.unwrap_or(params.box_thresh);
        let straight = self.options.assume_straight_pages;
        // Pages of one input size share a batch; docTR's fixed size makes that every page.
        let sizes: Vec<(usize, usize)> = pages.iter().map(|p| preprocess::target_size(card, p.height(), p.width())).collect();
        let mut out: Vec<Vec<db::Detection>> = vec![vec![]; pages.len()];
        let mut seg: Vec<GrayImage> = vec![GrayImage::new(0, 0); if maps { pages.len() } else { 0 }];
        let mut order: Vec<usize> = (0..pages.len()).collect();
        order.sort_by_key(|&i| sizes[i]);
        for group in order.chunk_by(|&a, &b| sizes[a] == sizes[b]) {
            for chunk in group.chunks(self.options.det_bs) {
                let (h, w) = sizes[chunk[0]];
                let prepared: Vec<Prepared> = chunk.par_iter().map(|&i| preprocess::prepare(card, &pages[i], h, w)).collect();
                let (mut probs, shape) = self.det.run(self.options.backend, self.options.mode, preprocess::batch(&prepared))?;
                let (mh, mw) = (shape[shape.len() - 2], shape[shape.len() - 1]);
                activate_maps(&mut probs, card.activation, mh, mw);
                let per_page: Vec<Vec<db::Detection>> = probs
                    .par_chunks(mh * mw)
                    .take(chunk.len())
                    .map(|m| db::boxes(m, mh, mw, &params, straight))
                    .collect();
                for (k, (&i, mut dets)) in chunk.iter().zip(per_page).enumerate() {
                    if let Resize::Fixed { symmetric_pad, preserve_aspect_ratio: true } = card.resize {
                        for d in &mut dets {
                            d.geometry = remove_padding(&d.geometry, pages[i].height(), pages[i].width(), symmetric_pad);
                        }
                    }
                    out[i] = dets;
                    if maps {
                        let m = &probs[k * mh * mw..(k + 1) * mh * mw];
                        seg[i] = GrayImage::from_fn(mw as u32, mh as u32, |x, y| {
                            image::Luma([if m[y as usize * mw + x as usize] > params.bin_thresh { 255 } else { 0 }])
                        });
                    }
                }
            }
        }
        Ok((out, seg))
    }

    /// The page classifier's (angle, confidence) per page; (0, 1.0) when disabled.
    fn page_orientations(&self, pages: &[RgbImage]) -> Result<Vec<(i32, f32)>> {
        match &self.page_orientation {
            Some(m) if !self.options.disable_page_orientation => self.classify(m, pages),
            _ => Ok(vec![(0, 1.0); pages.len()]),
        }
    }

    fn read_page(&self, idx: usize, page: &RgbImage, dets: Vec<db::Detection>) -> Result<Page> {
        // Rotated boxes on straight pages (`level_skewed_lines`) are cut level, as with the page
        // classifier disabled, and exported as their bounds.
        let horizontal = self.options.disable_page_orientation || self.options.assume_straight_pages;
        // Crops; boxes whose crop is empty are dropped with them.
        let mut kept: Vec<(db::Detection, RgbImage)> = dets
            .into_par_iter()
            .filter_map(|d| {
                let crop = match d.geometry {
                    Geometry::Straight(b) => straight_crop(page, b),
                    Geometry::Rotated(p) if horizontal => horizontal_crop(page, p),
                    Geometry::Rotated(p) => rotated_crop(page, p),
                }?;
                Some((d, crop))
            })
            .collect();
        // docTR: class 0 without a confidence on straight pages; with a disabled classifier,
        // class 0 at confidence 1.
        let confidence = if self.options.assume_straight_pages { None } else { Some(1.0) };
        let mut orientations = vec![Prediction { value: Some(0), confidence }; kept.len()];
        if !self.options.assume_straight_pages
            && !self.options.disable_crop_orientation
            && let Some(cls) = &self.crop_orientation
        {
            // A classifier that only tells 0° from 180° (PaddleOCR's) cannot see vertical text:
            // like PaddleOCR, turn crops at least 1.5× taller than wide a quarter turn first.
            let sees_quarter_turns = cls.card.classes.as_ref().is_some_and(|c| c.iter().any(|a| a.rem_euclid(180) == 90));
            if !sees_quarter_turns {
                for (_, crop) in kept.iter_mut() {
                    if crop.height() as f32 >= 1.5 * crop.width() as f32 {
                        *crop = image::imageops::rotate270(crop);
                    }
                }
            }
            let crops: Vec<RgbImage> = kept.iter().map(|(_, c)| c.clone()).collect();
            let preds = self.classify(cls, &crops)?;
            for ((k, o), (angle, conf)) in kept.iter_mut().zip(&mut orientations).zip(preds) {
                *o = Prediction { value: Some(angle), confidence: Some(conf) };
                let turns = quarter_turns(angle);
                k.1 = turn_clockwise(&k.1, turns);
                if let Geometry::Rotated(p) = &mut k.0.geometry {
                    p.rotate_right(turns as usize);
                }
            }
        }
        let crops: Vec<RgbImage> = kept.iter().map(|(_, c)| c.clone()).collect();
        let texts = self.recognize(&crops)?;
        let words: Vec<Word> = kept
            .into_iter()
            .zip(texts)
            .zip(orientations)
            .map(|(((d, _), (value, confidence)), crop_orientation)| {
                let geometry = match d.geometry {
                    Geometry::Rotated(_) if self.options.export_as_straight_boxes || self.options.assume_straight_pages => {
                        Geometry::Straight(d.geometry.bounds())
                    }
                    g => g,
                };
                Word { value, confidence, geometry, objectness_score: d.score, crop_orientation }
            })
            .collect();
        let dims = (page.height(), page.width());
        Ok(Page {
            page_idx: idx,
            dimensions: dims,
            orientation: Prediction::default(),
            language: Prediction::default(),
            blocks: build_blocks(words, dims, &self.options.builder),
            layout: vec![],
            tables: vec![],
        })
    }

    /// Orientation class (degrees) and its probability per crop; below the card's threshold the
    /// crop is left as it is (0°).
    fn classify(&self, model: &Model, crops: &[RgbImage]) -> Result<Vec<(i32, f32)>> {
        let card = &model.card;
        let classes = card.classes.clone().unwrap_or_default();
        let mut out = Vec::with_capacity(crops.len());
        for chunk in crops.chunks(batch_size(card, self.options.reco_bs)) {
            let (h, w) = chunk
                .iter()
                .map(|c| preprocess::target_size(card, c.height(), c.width()))
                .fold((0, 0), |a, b| (a.0.max(b.0), a.1.max(b.1)));
            // A classifier takes a fixed width: the card's.
            let (h, w) = if matches!(card.resize, Resize::Height { .. }) { (card.input[1], card.input[2]) } else { (h, w) };
            let prepared: Vec<Prepared> = chunk.par_iter().map(|c| preprocess::prepare(card, c, h, w)).collect();
            let (mut logits, shape) = model.run(self.options.backend, self.options.mode, preprocess::batch(&prepared))?;
            let k = shape[shape.len() - 1];
            if card.activation == Activation::Softmax {
                ctc::softmax_rows(&mut logits, k);
            }
            for row in logits.chunks(k).take(chunk.len()) {
                let (best, p) = row.iter().enumerate().fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a });
                let angle = classes.get(best).copied().unwrap_or(0);
                let acted = card.threshold.is_none_or(|t| p > t);
                out.push(if acted { (angle, round2(p)) } else { (0, round2(p)) });
            }
        }
        Ok(out)
    }

    /// (text, confidence) per crop.
    pub fn recognize(&self, crops: &[RgbImage]) -> Result<Vec<(String, f32)>> {
        if self.reco.card.split_wide_crops {
            let (windows, map) = split::split_crops(crops);
            if windows.len() > crops.len() {
                return Ok(split::remap(&self.read_crops(&windows)?, &map));
            }
        }
        self.read_crops(crops)
    }

    fn read_crops(&self, crops: &[RgbImage]) -> Result<Vec<(String, f32)>> {
        let model = &self.reco;
        let card = &model.card;
        let decoder = card.decoder.ok_or_else(|| Error::Card { card: card.name.clone(), reason: "no decoder".into() })?;
        // Crops sorted by aspect ratio so that a variable-width batch pads little.
        let mut order: Vec<usize> = (0..crops.len()).collect();
        order.sort_by(|&a, &b| aspect(&crops[a]).total_cmp(&aspect(&crops[b])));
        let mut out = vec![(String::new(), 0.0); crops.len()];
        for chunk in order.chunks(batch_size(card, self.options.reco_bs)) {
            let (h, w) = chunk
                .iter()
                .map(|&i| preprocess::target_size(card, crops[i].height(), crops[i].width()))
                .fold((0, 0), |a, b| (a.0.max(b.0), a.1.max(b.1)));
            let prepared: Vec<Prepared> = chunk.par_iter().map(|&i| preprocess::prepare(card, &crops[i], h, w)).collect();
            let (mut probs, shape) = model.run(self.options.backend, self.options.mode, preprocess::batch(&prepared))?;
            let (steps, classes) = (shape[1], shape[2]);
            if card.activation == Activation::Softmax {
                ctc::softmax_rows(&mut probs, classes);
            }
            let decoded: Vec<(String, f32)> = probs
                .par_chunks(steps * classes)
                .map(|seq| ctc::decode(seq, steps, classes, &model.vocab, &decoder))
                .collect();
            for (&i, d) in chunk.iter().zip(decoded) {
                out[i] = d;
            }
        }
        Ok(out)
    }
}

/// The option's batch size, capped by the card's `max_batch`.
fn batch_size(card: &ModelCard, option: usize) -> usize {
    card.max_batch.map_or(option, |m| option.min(m)).max(1)
}

fn aspect(img: &RgbImage) -> f32 {
    img.width() as f32 / img.height().max(1) as f32
}

/// docTR's `rectify_crops` / `rectify_loc_preds`: a crop of orientation class `angle` (docTR's
/// classes 0, −90, 180, 90) is read after (−angle / 90) mod 4 clockwise quarter turns, and its
/// box's corners roll as many places so that the first is the text's top-left.
fn quarter_turns(angle: i32) -> u32 {
    (-angle).div_euclid(90).rem_euclid(4) as u32
}

fn turn_clockwise(img: &RgbImage, turns: u32) -> RgbImage {
    use image::imageops::{rotate90, rotate180, rotate270};
    match turns {
        1 => rotate90(img),
        2 => rotate180(img),
        3 => rotate270(img),
        _ => img.clone(),
    }
}

/// docTR reports orientation confidences rounded to two decimals.
fn round2(p: f32) -> f32 {
    format!("{:.2}", p as f64).parse().unwrap_or(p)
}

/// Turns detection outputs into probabilities, per the card.
fn activate_maps(maps: &mut [f32], activation: Activation, h: usize, w: usize) {
    let sigmoid = |v: f32| 1.0 / (1.0 + (-v).exp());
    match activation {
        Activation::None | Activation::Softmax => {}
        Activation::Sigmoid => maps.iter_mut().for_each(|v| *v = sigmoid(*v)),
        Activation::MaxpoolSigmoid => {
            for m in maps.chunks_mut(h * w) {
                let src = m.to_vec();
                for y in 0..h {
                    for x in 0..w {
                        let mut best = f32::MIN;
                        for yy in y.saturating_sub(1)..(y + 2).min(h) {
                            for xx in x.saturating_sub(1)..(x + 2).min(w) {
                                best = best.max(src[yy * w + xx]);
                            }
                        }
                        m[y * w + x] = sigmoid(best);
                    }
                }
            }
        }
    }
}

//! `kiln`: read text from pages, and inspect and run docTR ONNX models, on Burn.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use kiln_graph::{Backend, Graph, Mode, npy};

/// Appends a line to a report string.
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

#[derive(Parser)]
#[command(name = "kiln", version, about = "Run docTR OCR models, compiled, on Burn")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Read the text of images (PNG, JPEG, TIFF, WebP, BMP) and PDFs with docTR's OCR pipeline.
    Ocr(Box<OcrArgs>),
    /// List the model cards Kiln knows and whether each model is available on this machine.
    Models,
    /// Print a model's inputs, outputs, op histogram and any op Kiln does not support.
    Inspect {
        model: PathBuf,
    },
    /// Run a model on .npy inputs and write its outputs as .npy files.
    Run {
        model: PathBuf,
        /// One .npy file per model input, in order.
        #[arg(long = "input", required = true)]
        inputs: Vec<PathBuf>,
        /// Where to write `<output name>.npy` files.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        #[arg(long, default_value = "flex")]
        backend: Backend,
        #[arg(long, default_value = "fused")]
        mode: Mode,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    // Before the pages are decoded in parallel, which would build rayon's pool unpinned.
    kiln_graph::pin_cpu_workers();
    match Cli::parse().command {
        Command::Ocr(args) => ocr(*args),
        Command::Models => models(),
        Command::Inspect { model } => inspect(model),
        Command::Run { model, inputs, out_dir, backend, mode } => run(model, inputs, out_dir, backend, mode),
    }
}

#[derive(clap::Args)]
struct OcrArgs {
    /// Image files (one page each) and PDF files (every page, rendered at 144 dpi).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Detection model: a card name (`kiln models`) or a local ONNX file.
    #[arg(long, default_value = kiln::DEFAULT_DET)]
    det: String,
    /// The card describing a local --det file.
    #[arg(long, default_value = kiln::DEFAULT_DET)]
    det_card: String,
    /// Recognition model: a card name or a local ONNX file.
    #[arg(long, default_value = kiln::DEFAULT_RECO)]
    reco: String,
    /// The card describing a local --reco file.
    #[arg(long, default_value = kiln::DEFAULT_RECO)]
    reco_card: String,
    /// Crop orientation model, used with --rotated: a card name or a local ONNX file (default:
    /// the one of the recogniser's family, e.g. ppocr-v2-cls for ppocr-v4-rec, else Kiln's).
    #[arg(long)]
    crop_orientation: Option<String>,
    #[arg(long, default_value = kiln::DEFAULT_CROP_ORIENTATION)]
    crop_orientation_card: String,
    /// Page orientation model, used with --straighten and --detect-orientation.
    #[arg(long, default_value = kiln::DEFAULT_PAGE_ORIENTATION)]
    page_orientation: String,
    #[arg(long, default_value = kiln::DEFAULT_PAGE_ORIENTATION)]
    page_orientation_card: String,
    /// Pages may be rotated: fit rotated boxes and turn crops upright (docTR's
    /// `assume_straight_pages=False`).
    #[arg(long)]
    rotated: bool,
    /// Estimate each page's angle, turn it straight and read it again (`straighten_pages`).
    #[arg(long)]
    straighten: bool,
    /// Report each page's estimated angle (`detect_orientation`).
    #[arg(long)]
    detect_orientation: bool,
    /// Treat pages as upright: no page classifier, rotated boxes cropped as horizontal ones.
    #[arg(long)]
    disable_page_orientation: bool,
    /// Read crops as they are, without the crop classifier.
    #[arg(long)]
    disable_crop_orientation: bool,
    /// Stretch pages to the detector's input instead of keeping their aspect ratio.
    #[arg(long)]
    no_preserve_aspect_ratio: bool,
    /// Pad detector inputs at the bottom and right instead of on both sides.
    #[arg(long)]
    no_symmetric_pad: bool,
    /// With --rotated, still export straight boxes.
    #[arg(long)]
    straight_boxes: bool,
    #[arg(long, default_value = "flex")]
    backend: Backend,
    #[arg(long, default_value = "fused")]
    mode: Mode,
    /// Override the card's binarisation threshold.
    #[arg(long)]
    bin_thresh: Option<f32>,
    /// Override the card's box score threshold.
    #[arg(long)]
    box_thresh: Option<f32>,
    /// Pages per detection batch.
    #[arg(long, default_value_t = 2)]
    det_bs: usize,
    /// Crops per recognition batch.
    #[arg(long, default_value_t = 128)]
    reco_bs: usize,
    /// One line per page instead of resolving lines from the boxes.
    #[arg(long)]
    no_resolve_lines: bool,
    /// Group lines into blocks (docTR's `resolve_blocks`).
    #[arg(long)]
    resolve_blocks: bool,
    /// Relative gap that always splits a line (docTR's `paragraph_break`).
    #[arg(long, default_value_t = 0.035)]
    paragraph_break: f32,
    /// Write docTR's `export()` JSON of all pages here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write hOCR (docTR's `export_as_xml`); with several pages, one file per page (`OUT-<n>.hocr`).
    #[arg(long)]
    hocr: Option<PathBuf>,
    /// Write a PNG of each page with its boxes and words; with several pages, `OUT-<n>.png`.
    #[arg(long)]
    overlay: Option<PathBuf>,
    /// Print the text to stdout (the default when no --json is given).
    #[arg(long)]
    text: bool,
}

/// A model given as a card name or a local file described by a card.
fn source(spec: &str, card: &str) -> kiln::ModelSource {
    let as_path = Path::new(spec);
    if as_path.extension().is_some_and(|e| e == "onnx") || as_path.is_file() {
        kiln::ModelSource::File { path: as_path.to_path_buf(), card: card.to_string() }
    } else {
        kiln::ModelSource::Named(spec.to_string())
    }
}

fn ocr(args: OcrArgs) -> Result<()> {
    let options = kiln::Options {
        backend: args.backend,
        mode: args.mode,
        assume_straight_pages: !args.rotated,
        straighten_pages: args.straighten,
        detect_orientation: args.detect_orientation,
        preserve_aspect_ratio: !args.no_preserve_aspect_ratio,
        symmetric_pad: args.no_symmetric_pad.then_some(false),
        disable_page_orientation: args.disable_page_orientation,
        disable_crop_orientation: args.disable_crop_orientation,
        export_as_straight_boxes: args.straight_boxes,
        bin_thresh: args.bin_thresh,
        box_thresh: args.box_thresh,
        det_bs: args.det_bs,
        reco_bs: args.reco_bs,
        builder: kiln::builder::BuilderOptions {
            resolve_lines: !args.no_resolve_lines,
            resolve_blocks: args.resolve_blocks,
            paragraph_break: args.paragraph_break,
        },
    };
    let mut builder = kiln::Predictor::builder()
        .det(source(&args.det, &args.det_card))
        .reco(source(&args.reco, &args.reco_card))
        .page_orientation(source(&args.page_orientation, &args.page_orientation_card))
        .options(options);
    if let Some(crop) = &args.crop_orientation {
        builder = builder.crop_orientation(source(crop, &args.crop_orientation_card));
    }
    let predictor = builder.build()?;
    let bar = indicatif::ProgressBar::new(args.files.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} pages {elapsed} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut doc = kiln::Document { pages: vec![] };
    let mut images = vec![];
    for file in &args.files {
        bar.set_message(file.display().to_string());
        let pages = kiln::pdf::load_pages(file)?;
        // A PDF counts as one page until it is opened.
        bar.inc_length(pages.len().saturating_sub(1) as u64);
        for page in pages {
            let mut one = predictor.predict(std::slice::from_ref(&page))?;
            for mut p in one.pages.drain(..) {
                p.page_idx = doc.pages.len();
                doc.pages.push(p);
            }
            if args.overlay.is_some() {
                images.push(page);
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let n = doc.pages.len();
    if let Some(out) = &args.hocr {
        for page in &doc.pages {
            let path = numbered(out, page.page_idx, n, "hocr");
            write_atomic(&path, page.export_hocr("Kiln - hOCR export").as_bytes())?;
            eprintln!("wrote {}", path.display());
        }
    }
    if let Some(out) = &args.overlay {
        for (page, image) in doc.pages.iter().zip(&images) {
            let path = numbered(out, page.page_idx, n, "png");
            let mut png = vec![];
            kiln::overlay::draw(image, page)
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .context("encoding the overlay")?;
            write_atomic(&path, &png)?;
            eprintln!("wrote {}", path.display());
        }
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&doc.export())?;
        write_atomic(path, text.as_bytes())?;
        eprintln!("wrote {}", path.display());
    }
    if args.text || args.json.is_none() {
        emit(&format!("{}\n", doc.render()))?;
    }
    Ok(())
}

/// `out` itself for a single page, else `out-<n>.<ext>` (n from 1).
fn numbered(out: &Path, idx: usize, pages: usize, ext: &str) -> PathBuf {
    if pages == 1 {
        return out.to_path_buf();
    }
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = out.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_else(|| ext.to_string());
    out.with_file_name(format!("{stem}-{}.{ext}", idx + 1))
}

/// Writes through a temporary file and a rename, so a failed run never leaves half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("kiln-tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn models() -> Result<()> {
    let mut out = String::new();
    for card in kiln::ModelCard::all()? {
        let place = match (card.locate(), &card.source.url) {
            (Ok(p), _) => p.display().to_string(),
            (Err(_), Some(url)) => format!("downloads when used from {url}"),
            (Err(_), None) => "not available (cargo xtask fixtures)".to_string(),
        };
        outln!(out, "{:<38} {:<18} {:<10} {}", card.name, format!("{:?}", card.task), card.arch, place);
    }
    emit(&out)
}

fn inspect(path: PathBuf) -> Result<()> {
    let mut out = String::new();
    let model = kiln_graph::OnnxModel::from_path(&path)?;
    outln!(out, "model: {} (opset {}, producer '{}')", path.display(), model.opset, model.producer);
    let fmt_dims = |dims: &[kiln_graph::Dim]| {
        dims.iter()
            .map(|d| match d {
                kiln_graph::Dim::Fixed(n) => n.to_string(),
                kiln_graph::Dim::Dynamic(Some(s)) => s.clone(),
                kiln_graph::Dim::Dynamic(None) => "?".into(),
            })
            .collect::<Vec<_>>()
            .join("×")
    };
    for i in &model.graph.inputs {
        outln!(out, "input  {}: {:?} [{}]", i.name, i.elem, fmt_dims(&i.dims));
    }
    for o in &model.graph.outputs {
        outln!(out, "output {}: {:?} [{}]", o.name, o.elem, fmt_dims(&o.dims));
    }
    let hist = kiln_graph::op_histogram(&model);
    let total: usize = hist.values().sum();
    outln!(out, "{} nodes, {} op types:", total, hist.len());
    let mut unsupported = vec![];
    for (op, n) in &hist {
        let ok = kiln_graph::is_supported(op);
        outln!(out, "  {op:<24} {n:>6}{}", if ok { "" } else { "  UNSUPPORTED" });
        if !ok {
            unsupported.push(op.as_str());
        }
    }
    if unsupported.is_empty() {
        outln!(out, "all ops supported");
    } else {
        outln!(out, "unsupported ops: {}", unsupported.join(", "));
    }
    emit(&out)
}

fn run(path: PathBuf, inputs: Vec<PathBuf>, out_dir: PathBuf, backend: Backend, mode: Mode) -> Result<()> {
    let t = Instant::now();
    let graph = Graph::load(&path)?;
    let load = t.elapsed();
    let data = inputs.iter().map(|p| npy::read(p)).collect::<kiln_graph::Result<Vec<_>>>()?;
    if data.len() != graph.inputs().len() {
        bail!("{} takes {} inputs, {} given", path.display(), graph.inputs().len(), data.len());
    }
    let shapes: Vec<Vec<usize>> = data.iter().map(|d| d.shape().to_vec()).collect();
    let t = Instant::now();
    let plan = graph.compile(backend, mode, &shapes)?;
    let compile = t.elapsed();
    let t = Instant::now();
    let outputs = plan.run(&data)?;
    let forward = t.elapsed();
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    for ((name, _), out) in plan.outputs().zip(&outputs) {
        let file = out_dir.join(format!("{}.npy", sanitize(name)));
        npy::write(&file, out)?;
        eprintln!("wrote {} {:?}", file.display(), out.shape().as_slice());
    }
    eprintln!(
        "{backend} {mode}: load {:.0} ms, compile {:.0} ms ({} kernels, {} folded), first forward {:.0} ms",
        load.as_secs_f64() * 1e3,
        compile.as_secs_f64() * 1e3,
        plan.num_steps(),
        plan.folded,
        forward.as_secs_f64() * 1e3
    );
    Ok(())
}

/// Writes a report to stdout; a closed pipe (`kiln inspect … | head`) is not an error.
fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Output names can hold characters that are awkward in file names.
fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' }).collect()
}

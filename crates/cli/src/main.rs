//! `kiln`: inspect and run docTR ONNX models on Burn.

use std::path::PathBuf;
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
    match Cli::parse().command {
        Command::Inspect { model } => inspect(model),
        Command::Run { model, inputs, out_dir, backend, mode } => run(model, inputs, out_dir, backend, mode),
    }
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

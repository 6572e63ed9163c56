//! `cargo xtask`: fixtures, the compatibility matrix, benchmarks, accuracy, and the test command.

mod accuracy;
mod bench;
mod bench_e2e;
mod bench_report;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use kiln_fixtures::{Manifest, Row, check_case, fixtures_dir, load_model};
use kiln_graph::{Backend, Mode};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Set {
    Ci,
    All,
}

#[derive(Subcommand)]
enum Task {
    /// Make the Python venv and export the fixture models with ONNX Runtime references.
    Fixtures {
        #[arg(long, value_enum, default_value = "ci")]
        set: Set,
        /// Comma-separated model names (default: the whole set).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
    },
    /// Run models on Kiln's backends and compare with ONNX Runtime.
    Compat {
        #[arg(long, value_enum, default_value = "ci")]
        set: Set,
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        #[arg(long, value_delimiter = ',', default_value = "flex,wgpu")]
        backends: Vec<String>,
        /// Modes for fusing backends (each runs in its own process).
        #[arg(long, value_delimiter = ',', default_value = "fused")]
        modes: Vec<String>,
        /// Also run full-size cases on GPU backends (by default they get the small cases only).
        #[arg(long)]
        all_cases: bool,
        /// Only these cases (e.g. `b1_1024x1024`), on every backend, small or not.
        #[arg(long, value_delimiter = ',')]
        cases: Vec<String>,
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also write the rows as a Markdown support matrix (e.g. docs/support-matrix.md).
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
    /// One backend and mode of `compat`, in this process.
    #[command(hide = true)]
    CompatWorker {
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        #[arg(long)]
        backend: String,
        #[arg(long)]
        mode: String,
        #[arg(long)]
        all_cases: bool,
        #[arg(long, value_delimiter = ',')]
        cases: Vec<String>,
        #[arg(long)]
        json: PathBuf,
    },
    /// Load one model and print this process's peak memory, then its memory before the load, in MiB
    /// (for `compat`'s load_peak_mb).
    #[command(hide = true)]
    LoadProbe { model: PathBuf },
    /// Time Kiln against ONNX Runtime and PyTorch, and fused against eager (see docs/benchmarks.md).
    Bench {
        #[arg(long, value_enum, default_value = "ci")]
        set: Set,
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Batch for every model (default: 1 for page-level models, 64 for crop-level ones).
        #[arg(long)]
        batch: Option<usize>,
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = bench::Engine::ALL)]
        engines: Vec<bench::Engine>,
        /// Timed forwards per engine, after warm-up.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Threads for every CPU engine (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Run wgpu at the CPU shapes (on a real GPU); by default it runs batch 1 and pages at
        /// 256×256, which software Vulkan finishes in reasonable time.
        #[arg(long)]
        wgpu_full: bool,
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also write the report and its charts (e.g. docs/benchmarks.md).
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// Also time the whole OCR pipeline against docTR's Python ocr_predictor (pages/s and
        /// first-page latency), with Kiln's default models.
        #[arg(long)]
        e2e: bool,
    },
    /// One end-to-end Kiln measurement in a fresh process (for `bench --e2e`).
    #[command(hide = true)]
    BenchE2eWorker {
        #[arg(long)]
        mode: String,
        #[arg(long, default_value = "flex")]
        backend: String,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        files: Vec<PathBuf>,
    },
    /// Where one forward's time goes on a backend: per op type and the slowest nodes.
    Profile {
        model: String,
        /// Batch (default: as `bench`).
        #[arg(long)]
        batch: Option<usize>,
        #[arg(long, default_value = "flex")]
        backend: String,
        /// `fused` or `eager` (CubeCL backends; step times always sync, so they time eager work).
        #[arg(long, default_value = "eager")]
        mode: String,
        /// Profiled forwards after one warm-up; each step's time is its minimum over them (0: only the kernel launches).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// How many of the slowest nodes to list.
        #[arg(long, default_value_t = 15)]
        top: usize,
    },
    /// One Kiln engine of `bench`, answering requests on stdin.
    #[command(hide = true)]
    BenchWorker {
        #[arg(long)]
        backend: String,
        #[arg(long)]
        mode: String,
    },
    /// Reading accuracy on held-out real pages: Kiln's modes and PP-OCR models against Tesseract
    /// and rapidocr, clean, scan-like and turned (see docs/accuracy.md).
    Accuracy {
        /// `test`: the held-out pages of the reserved packages (the report); `val`: the
        /// validation packages, the only real pages models and settings are tuned on.
        #[arg(long, default_value = "test", value_parser = ["test", "val"])]
        split: String,
        /// Pages per package (the validation split was built with 10).
        #[arg(long, default_value_t = 4)]
        pages_per_package: usize,
        /// Comma-separated subset of the tools (names as in the report's rows).
        #[arg(long)]
        tools: Option<String>,
        /// Comma-separated subset of clean,scan,rot90,rot180,rot270.
        #[arg(long)]
        variants: Option<String>,
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
    /// The test command: CI fixtures, then every workspace test.
    Test,
}

fn main() -> Result<()> {
    // `RUST_LOG=kiln_graph=info cargo xtask compat` shows load and compile details.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().task {
        Task::Fixtures { set, models } => fixtures(set, &models),
        Task::Compat { set, models, backends, modes, all_cases, cases, json, markdown } => {
            compat(set, &models, &backends, &modes, CaseFilter { all_cases, cases }, json.as_deref(), markdown.as_deref())
        }
        Task::CompatWorker { models, backend, mode, all_cases, cases, json } => {
            compat_worker(&models, backend.parse()?, mode.parse()?, &CaseFilter { all_cases, cases }, &json)
        }
        Task::LoadProbe { model } => {
            let before = kiln_fixtures::rss_mb().context("no VmRSS on this system")?;
            kiln_graph::Graph::load(&model)?;
            println!("{} {before}", kiln_fixtures::peak_rss_mb().context("no VmHWM on this system")?);
            Ok(())
        }
        Task::Bench { set, models, batch, engines, runs, warmup, threads, wgpu_full, json, markdown, e2e } => {
            let manifest = Manifest::load(&fixtures_dir())?;
            let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
            let python = kiln_fixtures::cache_dir().join("venv/bin/python");
            let opts = bench::Options {
                models: selected(set, &models, &manifest),
                engines,
                batch,
                runs,
                warmup,
                threads,
                wgpu_full,
                python: python.exists().then_some(python),
                worker_script: repo_root().join("xtask/bench_worker.py"),
            };
            let (rows, python_versions) = bench::bench(&manifest, &opts)?;
            let (e2e_rows, first_pages) = if e2e {
                bench_e2e::run(&bench_e2e::E2eOptions {
                    runs: runs.min(3),
                    wgpu_first_page: opts.engines.contains(&bench::Engine::KilnWgpuFused),
                    threads,
                    python: opts.python.clone(),
                    script: repo_root().join("xtask/bench_e2e.py"),
                    models_dir: repo_root().join("models"),
                    pages_dir: fixtures_dir().join("pages"),
                })?
            } else {
                (vec![], vec![])
            };
            if let Some(path) = json {
                let all = serde_json::json!({ "forward": rows, "end_to_end": e2e_rows, "first_page_cubecl": first_pages });
                std::fs::write(&path, serde_json::to_string_pretty(&all)?)?;
                eprintln!("wrote {}", path.display());
            }
            if let Some(path) = markdown {
                let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
                let machine = bench_report::Machine { command, threads, python_versions };
                bench_report::write(&rows, &e2e_rows, &first_pages, &machine, &path)?;
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
        Task::Profile { model, batch, backend, mode, runs, top } => {
            let manifest = Manifest::load(&fixtures_dir())?;
            bench::profile(&manifest, &model, batch, backend.parse()?, mode.parse()?, runs, top)
        }
        Task::BenchWorker { backend, mode } => bench::worker(backend.parse()?, mode.parse()?),
        Task::BenchE2eWorker { mode, backend, runs, files } => bench_e2e::worker(&mode, backend.parse()?, runs, &files),
        Task::Accuracy { split, pages_per_package, tools, variants, json, markdown } => {
            accuracy::accuracy(&accuracy::Options { split, pages_per_package, tools, variants, json, markdown })
        }
        Task::Test => test(),
    }
}

pub(crate) fn repo_root() -> PathBuf {
    // `cargo xtask` sets the variable at run time; a binary built in another checkout that shares
    // the target dir would otherwise work on that checkout.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    let manifest = manifest.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.parent().expect("xtask lives in the repo").to_path_buf()
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// The fixture venv, (re)installed when `tests/fixtures/requirements.txt` changes.
pub(crate) fn venv() -> Result<PathBuf> {
    let venv = kiln_fixtures::cache_dir().join("venv");
    let python = venv.join("bin/python");
    let req = repo_root().join("tests/fixtures/requirements.txt");
    let stamp = venv.join(".kiln-requirements.txt");
    let wanted = std::fs::read_to_string(&req).with_context(|| format!("reading {}", req.display()))?;
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        run(Command::new(&python).args(["-m", "pip", "install", "--quiet", "--upgrade", "pip"]))?;
        run(Command::new(&python).args(["-m", "pip", "install", "--quiet", "-r"]).arg(&req))?;
        std::fs::write(&stamp, wanted)?;
    }
    Ok(python)
}

fn fixtures(set: Set, models: &[String]) -> Result<()> {
    let python = venv()?;
    let dir = fixtures_dir();
    let script = |name: &str| {
        let mut cmd = Command::new(&python);
        cmd.arg(repo_root().join("tests/fixtures").join(name));
        cmd
    };
    let mut cmd = script("make_fixtures.py");
    cmd.arg("--out").arg(&dir).args(["--set", if set == Set::Ci { "ci" } else { "all" }]);
    if !models.is_empty() {
        cmd.arg("--models").arg(models.join(","));
    }
    run(&mut cmd)?;
    // Pages of known words, for the OCR pipeline's end-to-end tests.
    run(script("make_pages.py").arg("--out").arg(dir.join("pages")))?;
    // docTR's own post-processing on inputs derived from those pages, for the golden tests.
    run(script("make_goldens.py").arg("--pages").arg(dir.join("pages")).arg("--out").arg(dir.join("goldens")))?;
    // docTR's Python ocr_predictor on those pages with Kiln's default models, for the
    // Kiln-vs-docTR test.
    run(script("make_predictions.py")
        .arg("--pages")
        .arg(dir.join("pages"))
        .arg("--models")
        .arg(repo_root().join("models"))
        .arg("--out")
        .arg(dir.join("predictions")))?;
    // ONNX's own node tests, for the conformance test.
    run(script("make_node_tests.py").arg("--out").arg(dir.join("onnx-node")))
}

/// Every model card naming a selected fixture must fit that model: one image input, the output
/// rank of its task, its vocabulary found. A card that drifted from its export fails here.
fn check_cards(names: &[String]) -> Result<()> {
    let mut bad = vec![];
    for card in kiln::ModelCard::all()? {
        let Some(fixture) = card.source.fixture.clone() else { continue };
        if names.contains(&fixture) {
            let path = fixtures_dir().join(&fixture).join("model.onnx");
            if let Err(e) = kiln::Model::load(card, Some(&path)) {
                bad.push(e.to_string());
            }
        }
    }
    if !bad.is_empty() {
        bail!("model cards that do not fit their models:\n{}", bad.join("\n"));
    }
    Ok(())
}

fn selected(set: Set, models: &[String], manifest: &Manifest) -> Vec<String> {
    if !models.is_empty() {
        return models.to_vec();
    }
    let set = if set == Set::Ci { "ci" } else { "all" };
    manifest.set(set).iter().map(|m| m.name.clone()).collect()
}

fn compat(
    set: Set,
    models: &[String],
    backends: &[String],
    modes: &[String],
    filter: CaseFilter,
    json: Option<&Path>,
    markdown: Option<&Path>,
) -> Result<()> {
    let manifest = Manifest::load(&fixtures_dir())?;
    let names = selected(set, models, &manifest);
    check_cards(&names)?;
    let exe = std::env::current_exe()?;
    // The workers' result files, removed when compat returns.
    let tmp = kiln_fixtures::ScratchDir::new("kiln-compat")?;
    let mut rows: Vec<Row> = vec![];
    for backend in backends {
        let b: Backend = backend.parse()?;
        let modes: Vec<&str> = if b.fuses() { modes.iter().map(String::as_str).collect() } else { vec!["eager"] };
        for mode in modes {
            // Fused and eager cannot share a process: one worker per backend and mode.
            let out = tmp.path().join(format!("{backend}-{mode}.json"));
            let mut cmd = Command::new(&exe);
            cmd.args(["compat-worker", "--backend", backend, "--mode", mode, "--json"]).arg(&out);
            cmd.arg("--models").arg(names.join(","));
            if filter.all_cases {
                cmd.arg("--all-cases");
            }
            if !filter.cases.is_empty() {
                cmd.arg("--cases").arg(filter.cases.join(","));
            }
            let status = cmd.status()?;
            match std::fs::read_to_string(&out) {
                Ok(text) => rows.extend(serde_json::from_str::<Vec<Row>>(&text)?),
                Err(_) => bail!("the {backend}/{mode} worker wrote no results ({status})"),
            }
        }
    }
    print_table(&rows);
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = markdown {
        let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
        std::fs::write(path, support_matrix(&rows, &command))?;
        eprintln!("wrote {}", path.display());
    }
    let bad = rows.iter().filter(|r| r.status != "pass").count();
    if bad > 0 {
        bail!("{bad} of {} rows did not pass", rows.len());
    }
    Ok(())
}

/// Which of a model's cases `compat` runs.
struct CaseFilter {
    all_cases: bool,
    cases: Vec<String>,
}

impl CaseFilter {
    fn runs(&self, case: &kiln_fixtures::Case, backend: Backend) -> bool {
        if !self.cases.is_empty() {
            return self.cases.contains(&case.name);
        }
        // Full-size cases on software Vulkan take minutes each, mostly autotuning at the new shapes.
        case.small || !backend.fuses() || self.all_cases
    }
}

fn compat_worker(models: &[String], backend: Backend, mode: Mode, filter: &CaseFilter, json: &Path) -> Result<()> {
    let manifest = Manifest::load(&fixtures_dir())?;
    let mut rows = vec![];
    for name in models {
        let entry = manifest.model(name)?;
        let cases: Vec<_> = entry.cases.iter().filter(|c| filter.runs(c, backend)).collect();
        if cases.is_empty() {
            continue;
        }
        let loaded = match load_model(&manifest, entry) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("{name}: {e}");
                rows.push(Row::load_error(name, backend, mode, e.to_string()));
                continue;
            }
        };
        let peak = load_peak_mb(&manifest.path(&entry.onnx));
        let onnx_mb = std::fs::metadata(manifest.path(&entry.onnx)).ok().map(|m| m.len() as f64 / (1 << 20) as f64);
        for case in cases {
            let mut row = check_case(&manifest, &loaded, entry, case, backend, mode);
            row.load_peak_mb = peak;
            row.onnx_mb = onnx_mb;
            eprintln!(
                "{:<38} {:<14} {:<5} {:<6} {:<5} diff {:.2e} (ref {:.2e}) kernels {:?} {}",
                row.model,
                row.case,
                row.backend,
                row.mode,
                row.status,
                row.max_abs_diff.unwrap_or(f64::NAN),
                row.ref_absmax.unwrap_or(f64::NAN),
                row.kernels,
                row.error.as_deref().unwrap_or("")
            );
            rows.push(row);
        }
    }
    std::fs::write(json, serde_json::to_string(&rows)?)?;
    Ok(())
}

/// Peak memory loading `model` adds, measured in a fresh process so nothing else is counted.
fn load_peak_mb(model: &Path) -> Option<f64> {
    let out = Command::new(std::env::current_exe().ok()?).arg("load-probe").arg(model).output().ok()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut values = stdout.split_whitespace().map(|v| v.parse::<f64>().ok());
    let (peak, before) = (values.next()??, values.next()??);
    Some(peak - before)
}

/// The rows as a Markdown support matrix, one line per model, case, backend and mode.
fn support_matrix(rows: &[Row], command: &str) -> String {
    let models: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.model.as_str()).collect();
    let passing: std::collections::BTreeSet<&str> =
        models.iter().copied().filter(|m| rows.iter().filter(|r| r.model == *m).all(|r| r.status == "pass")).collect();
    let mut out = format!(
        "# Kiln support matrix\n\nGenerated by `cargo xtask {command}`. A row passes when \
         `max|kiln − ort| ≤ 1e-4 · max(1, max|ort|)` for every output; fullgraph means no read back to the \
         host inside the forward (Kiln's read counter and Burn's capture device agree). Kernels: launches \
         in one steady-state forward (CubeCL backends). Load MiB: the peak memory loading adds to a \
         process that only loads the model, and its ratio to the file's size. {} of {} models pass every row.\n\n\
         | model | case | backend | mode | status | max diff / max ref | fullgraph | host reads | kernels | load ms | load MiB | forward ms |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        passing.len(),
        models.len()
    );
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map(f).unwrap_or_else(|| "–".into());
    for r in rows {
        let rel = r.rel_diff.map(|x| format!("{x:.1e}")).unwrap_or_else(|| "–".into());
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.model,
            r.case,
            r.backend,
            r.mode,
            if r.status == "pass" { "pass".to_string() } else { format!("**{}**", r.status) },
            rel,
            r.fullgraph.map(|b| if b { "yes" } else { "**no**" }).unwrap_or("–"),
            r.host_reads.map(|v| v.to_string()).unwrap_or_else(|| "–".into()),
            r.kernels.map(|v| v.to_string()).unwrap_or_else(|| "–".into()),
            opt(r.load_ms, &|x| format!("{x:.0}")),
            match (r.load_peak_mb, r.onnx_mb) {
                (Some(m), Some(f)) => format!("{m:.0} ({:.2}×)", m / f),
                _ => "–".into(),
            },
            opt(r.forward_ms, &|x| format!("{x:.0}")),
        );
    }
    out
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<38} {:<14} {:<6} {:<6} {:<6} {:>10} {:>10} {:>9} {:>8} {:>9} {:>9}",
        "model", "case", "backend", "mode", "status", "max diff", "ref max", "fullgraph", "kernels", "load ms", "fwd ms"
    );
    for r in rows {
        let f = |v: Option<f64>, p: usize| v.map(|x| format!("{x:.p$e}")).unwrap_or_else(|| "-".into());
        println!(
            "{:<38} {:<14} {:<6} {:<6} {:<6} {:>10} {:>10} {:>9} {:>8} {:>9} {:>9}",
            r.model,
            r.case,
            r.backend,
            r.mode,
            r.status,
            f(r.max_abs_diff, 2),
            f(r.ref_absmax, 2),
            r.fullgraph.map(|b| b.to_string()).unwrap_or("-".into()),
            r.kernels.map(|k| k.to_string()).unwrap_or("-".into()),
            r.load_ms.map(|x| format!("{x:.0}")).unwrap_or("-".into()),
            r.forward_ms.map(|x| format!("{x:.0}")).unwrap_or("-".into()),
        );
        if let Some(e) = &r.error {
            println!("    error: {e}");
        }
    }
}

fn test() -> Result<()> {
    fixtures(Set::Ci, &[])?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).current_dir(repo_root()).args(["test", "--release", "--workspace"]))
}

//! `cargo xtask bench`: Kiln against ONNX Runtime and PyTorch, eager against fused.
//!
//! Every engine runs in its own long-lived worker process (Kiln's fused and eager modes cannot
//! share a process; ORT and PyTorch live in Python). Per model, the workers load the model and warm
//! up, then the driver asks them for one timed forward each, in turn, round after round: the
//! engines see the same machine state, so their ratios hold on a noisy shared machine even where
//! the absolute times do not.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use kiln_fixtures::{Manifest, ModelEntry};
use kiln_graph::{Backend, Graph, LaunchCounter, Mode, Plan, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// An engine the benchmark can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    KilnFlex,
    KilnWgpuEager,
    KilnWgpuFused,
    Ort,
    Torch,
    TorchCompile,
}

impl Engine {
    pub const ALL: [Engine; 6] =
        [Engine::KilnFlex, Engine::KilnWgpuEager, Engine::KilnWgpuFused, Engine::Ort, Engine::Torch, Engine::TorchCompile];

    /// `(engine, backend, mode)` as the JSON rows name them.
    fn labels(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Engine::KilnFlex => ("kiln", "flex", "eager"),
            Engine::KilnWgpuEager => ("kiln", "wgpu", "eager"),
            Engine::KilnWgpuFused => ("kiln", "wgpu", "fused"),
            Engine::Ort => ("onnxruntime", "cpu", "eager"),
            Engine::Torch => ("pytorch", "cpu", "eager"),
            Engine::TorchCompile => ("pytorch", "cpu", "compiled"),
        }
    }

    fn is_gpu(self) -> bool {
        matches!(self, Engine::KilnWgpuEager | Engine::KilnWgpuFused)
    }

    fn is_torch(self) -> bool {
        matches!(self, Engine::Torch | Engine::TorchCompile)
    }
}

/// One row of `cargo xtask bench --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchRow {
    pub model: String,
    pub task: String,
    pub input_shape: Vec<usize>,
    pub engine: String,
    pub backend: String,
    pub mode: String,
    /// The device the engine ran on (the wgpu adapter's name, or "cpu").
    pub device: String,
    pub status: String,
    pub median_ms: Option<f64>,
    pub min_ms: Option<f64>,
    pub runs_ms: Vec<f64>,
    /// Kernel launches of one steady-state forward (Kiln on CubeCL backends).
    pub kernels: Option<usize>,
    /// The worker's peak resident memory (the whole process, interpreter and libraries included).
    pub peak_mb: Option<f64>,
    /// Kiln's median over ONNX Runtime's at the same input shape.
    pub ratio_vs_ort: Option<f64>,
    pub error: Option<String>,
}

pub struct Options {
    pub models: Vec<String>,
    pub engines: Vec<Engine>,
    pub batch: Option<usize>,
    pub runs: usize,
    pub warmup: usize,
    pub threads: usize,
    /// Run wgpu at the CPU engines' shapes (a real GPU) instead of small ones (software Vulkan).
    pub wgpu_full: bool,
    pub python: Option<PathBuf>,
    pub worker_script: PathBuf,
}

/// The shape a model is benchmarked at: docTR's size, batch 1 for page-level models and 64 for
/// crop-level ones (the batch docTR's predictor feeds them), unless `batch` says otherwise.
fn cpu_shape(entry: &ModelEntry, batch: Option<usize>) -> Vec<usize> {
    let full = entry.cases.iter().find(|c| !c.small).or(entry.cases.first()).expect("a model has cases");
    let mut shape = full.input_shape.clone();
    let page_level = entry.task == "detection" || entry.name.contains("page");
    shape[0] = batch.unwrap_or(if page_level { 1 } else { 64 });
    shape
}

/// The shape software Vulkan can run in reasonable time: batch 1, pages at 256×256.
fn small_shape(shape: &[usize]) -> Vec<usize> {
    let mut s = shape.to_vec();
    s[0] = 1;
    if s[2] > 256 && s[3] > 256 {
        s[2] = 256;
        s[3] = 256;
    }
    s
}

/// Runs the benchmark; also returns the Python engines' package versions.
pub fn bench(manifest: &Manifest, opts: &Options) -> Result<(Vec<BenchRow>, Option<Value>)> {
    let mut rows = vec![];
    let mut versions = None;
    for name in &opts.models {
        let entry = manifest.model(name)?;
        let onnx = manifest.path(&entry.onnx);
        let shape = cpu_shape(entry, opts.batch);
        let gpu_shape = if opts.wgpu_full { shape.clone() } else { small_shape(&shape) };
        // PP-OCR's models come from Paddle: they have no PyTorch twin.
        let has_torch = !name.starts_with("ppocr");
        let engines: Vec<Engine> = opts.engines.iter().copied().filter(|e| has_torch || !e.is_torch()).collect();
        let mut groups: Vec<(Vec<usize>, Vec<Engine>)> = vec![];
        for e in engines {
            let s = if e.is_gpu() { gpu_shape.clone() } else { shape.clone() };
            match groups.iter_mut().find(|(gs, _)| *gs == s) {
                Some((_, es)) => es.push(e),
                None => groups.push((s, vec![e])),
            }
        }
        for (shape, engines) in groups {
            eprintln!("{name} {shape:?}: {}", engines.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join(", "));
            rows.extend(bench_group(name, &entry.task, &onnx, &shape, &engines, opts, &mut versions));
        }
    }
    // Ratios against ORT at the same model and shape.
    let ort: Vec<(String, Vec<usize>, f64)> = rows
        .iter()
        .filter(|r| r.engine == "onnxruntime")
        .filter_map(|r| Some((r.model.clone(), r.input_shape.clone(), r.median_ms?)))
        .collect();
    for r in rows.iter_mut().filter(|r| r.engine == "kiln") {
        if let (Some(m), Some((_, _, o))) =
            (r.median_ms, ort.iter().find(|(n, s, _)| *n == r.model && *s == r.input_shape))
        {
            r.ratio_vs_ort = Some(m / o);
        }
    }
    Ok((rows, versions))
}

/// Loads one model in every engine's worker, then alternates timed forwards between them.
fn bench_group(
    name: &str,
    task: &str,
    onnx: &Path,
    shape: &[usize],
    engines: &[Engine],
    opts: &Options,
    versions: &mut Option<Value>,
) -> Vec<BenchRow> {
    let mut workers: Vec<(Engine, Result<Worker>, BenchRow)> = engines
        .iter()
        .map(|&e| {
            let (engine, backend, mode) = e.labels();
            let row = BenchRow {
                model: name.into(),
                task: task.into(),
                input_shape: shape.to_vec(),
                engine: engine.into(),
                backend: backend.into(),
                mode: mode.into(),
                device: "cpu".into(),
                status: "error".into(),
                median_ms: None,
                min_ms: None,
                runs_ms: vec![],
                kernels: None,
                peak_mb: None,
                ratio_vs_ort: None,
                error: None,
            };
            let worker = Worker::spawn(e, opts).and_then(|mut w| {
                let reply = w.ask(&json!({
                    "cmd": "load", "model": name, "onnx": onnx, "shape": shape, "warmup": opts.warmup,
                }))?;
                w.loaded = reply;
                Ok(w)
            });
            (e, worker, row)
        })
        .collect();
    for (_, worker, row) in &mut workers {
        match worker {
            Ok(w) => {
                row.kernels = w.loaded.get("kernels").and_then(Value::as_u64).map(|k| k as usize);
                if let Some(d) = w.loaded.get("device").and_then(Value::as_str) {
                    row.device = d.into();
                }
                if let Some(v) = w.loaded.get("versions") {
                    *versions = Some(v.clone());
                }
            }
            Err(e) => row.error = Some(format!("{e:#}")),
        }
    }
    for round in 0..opts.runs {
        for (e, worker, row) in &mut workers {
            let Ok(w) = worker else { continue };
            std::thread::sleep(std::time::Duration::from_millis(50));
            match w.ask(&json!({"cmd": "run"})).and_then(|r| r["ms"].as_f64().context("no time in the reply")) {
                Ok(ms) => row.runs_ms.push(ms),
                Err(err) => {
                    row.error = Some(format!("run {round}: {err:#}"));
                    eprintln!("  {e:?}: {err:#}");
                    *worker = Err(err);
                }
            }
        }
    }
    for (e, worker, row) in &mut workers {
        if let Ok(w) = worker {
            row.peak_mb = w.ask(&json!({"cmd": "peak"})).ok().and_then(|r| r["peak_mb"].as_f64());
        }
        if row.error.is_none() && !row.runs_ms.is_empty() {
            let mut sorted = row.runs_ms.clone();
            sorted.sort_by(f64::total_cmp);
            row.min_ms = Some(sorted[0]);
            row.median_ms = Some(median(&sorted));
            row.status = "ok".into();
        }
        eprintln!(
            "  {:<14} median {:>10} ms  min {:>10} ms  kernels {:>6}  peak {:>7} MB  {}",
            format!("{e:?}"),
            fmt(row.median_ms, 2),
            fmt(row.min_ms, 2),
            row.kernels.map(|k| k.to_string()).unwrap_or("-".into()),
            fmt(row.peak_mb, 0),
            row.error.as_deref().unwrap_or("")
        );
    }
    workers.into_iter().map(|(_, _, row)| row).collect()
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 }
}

fn fmt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}")).unwrap_or_else(|| "-".into())
}

/// A worker process answering one JSON request per line.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    loaded: Value,
}

impl Worker {
    fn spawn(engine: Engine, opts: &Options) -> Result<Self> {
        let threads = opts.threads.to_string();
        let mut cmd = match engine {
            Engine::KilnFlex | Engine::KilnWgpuEager | Engine::KilnWgpuFused => {
                let (_, backend, mode) = engine.labels();
                let mut c = Command::new(std::env::current_exe()?);
                c.args(["bench-worker", "--backend", backend, "--mode", mode]);
                c
            }
            Engine::Ort | Engine::Torch | Engine::TorchCompile => {
                let python = opts.python.as_ref().context("no Python venv: run `cargo xtask fixtures` first")?;
                let mut c = Command::new(python);
                let name = match engine {
                    Engine::Ort => "ort",
                    Engine::Torch => "torch",
                    _ => "torch-compile",
                };
                c.arg(&opts.worker_script).args(["--engine", name, "--threads", &threads]);
                c
            }
        };
        // Same thread count for every CPU engine: flex and Kiln's own CPU work run on rayon.
        cmd.env("RAYON_NUM_THREADS", &threads).env("OMP_NUM_THREADS", &threads);
        let mut child =
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().with_context(|| format!("starting {cmd:?}"))?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("worker stdout")?);
        Ok(Worker { child, stdin, stdout, loaded: Value::Null })
    }

    fn ask(&mut self, request: &Value) -> Result<Value> {
        writeln!(self.stdin, "{request}").context("the worker exited")?;
        self.stdin.flush()?;
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line)? == 0 {
                bail!("the worker exited before answering {request}");
            }
            // Libraries may print to stdout; the protocol's lines are JSON objects.
            if let Ok(v) = serde_json::from_str::<Value>(line.trim()) {
                if v.get("ok") == Some(&Value::Bool(true)) {
                    return Ok(v);
                }
                bail!("{}", v.get("error").and_then(Value::as_str).unwrap_or("the worker failed"));
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kiln's side of the worker protocol: `load`, `run` and `peak` requests on stdin.
pub fn worker(backend: Backend, mode: Mode) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let mut state: Option<(std::sync::Arc<Plan>, TensorData)> = None;
    for line in std::io::stdin().lock().lines() {
        let request: Value = serde_json::from_str(&line?)?;
        let reply = match handle(&request, backend, mode, &mut state) {
            Ok(v) => v,
            Err(e) => json!({"ok": false, "error": format!("{e:#}")}),
        };
        writeln!(out, "{reply}")?;
        out.flush()?;
    }
    Ok(())
}

fn handle(req: &Value, backend: Backend, mode: Mode, state: &mut Option<(std::sync::Arc<Plan>, TensorData)>) -> Result<Value> {
    match req["cmd"].as_str() {
        Some("load") => {
            let onnx = req["onnx"].as_str().context("load: no onnx path")?;
            let shape: Vec<usize> = serde_json::from_value(req["shape"].clone())?;
            let warmup = req["warmup"].as_u64().unwrap_or(2);
            let graph = Graph::load(onnx)?;
            let plan = graph.compile(backend, mode, std::slice::from_ref(&shape))?;
            let input = TensorData::new(noise(shape.iter().product()), shape);
            for _ in 0..warmup.max(1) {
                plan.run(std::slice::from_ref(&input))?;
            }
            let mut reply = json!({"ok": true, "device": kiln_graph::adapter_name(plan.device()).unwrap_or("cpu".into())});
            if backend.fuses() {
                kiln_graph::sync(plan.device())?;
                let counter = LaunchCounter::start();
                plan.run(std::slice::from_ref(&input))?;
                kiln_graph::sync(plan.device())?;
                reply["kernels"] = json!(counter.count());
            }
            *state = Some((plan, input));
            Ok(reply)
        }
        Some("run") => {
            let (plan, input) = state.as_ref().context("run before load")?;
            // A batch of its own each run, handed over as the pipeline hands over the batch it has
            // just built (ONNX Runtime, likewise, reads the caller's array where it lies).
            let batch = input.clone();
            let t = Instant::now();
            // Upload, forward and download, as ORT's `run` does.
            plan.run_owned(vec![batch])?;
            Ok(json!({"ok": true, "ms": t.elapsed().as_secs_f64() * 1e3}))
        }
        Some("peak") => Ok(json!({"ok": true, "peak_mb": kiln_fixtures::peak_rss_mb()})),
        other => bail!("unknown request {other:?}"),
    }
}

/// Deterministic inputs in [-1, 1): timings do not depend on the values, only on them being finite.
fn noise(n: usize) -> Vec<f32> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Prints where one forward's time goes: per op type, then the slowest nodes; on CubeCL backends
/// first the kernels one steady-state forward launches, by name, in `mode`.
pub fn profile(
    manifest: &Manifest,
    name: &str,
    batch: Option<usize>,
    backend: Backend,
    mode: Mode,
    runs: usize,
    top: usize,
) -> Result<()> {
    let entry = manifest.model(name)?;
    let shape = cpu_shape(entry, batch);
    // On CubeCL backends, the shape the fusion rows of `bench` use (software Vulkan runs pages slowly).
    let shape = if backend.fuses() && batch.is_none() { small_shape(&shape) } else { shape };
    let graph = Graph::load(manifest.path(&entry.onnx))?;
    let plan = graph.compile(backend, mode, std::slice::from_ref(&shape))?;
    let input = TensorData::new(noise(shape.iter().product()), shape.clone());
    plan.run(std::slice::from_ref(&input))?;
    if backend.fuses() {
        kiln_graph::sync(plan.device())?;
        let counter = LaunchCounter::start();
        plan.run(std::slice::from_ref(&input))?;
        kiln_graph::sync(plan.device())?;
        println!("{name} {shape:?} on {backend} {mode}: {} kernel launches", counter.count());
        for (kernel, n) in counter.by_kernel() {
            println!("{n:>6}  {kernel}");
        }
        println!();
    }
    if runs == 0 {
        return Ok(());
    }
    let mut best: Vec<kiln_graph::StepTime> = vec![];
    for _ in 0..runs {
        let times = plan.profile(std::slice::from_ref(&input))?;
        if best.is_empty() {
            best = times;
        } else {
            for (b, t) in best.iter_mut().zip(times) {
                b.ms = b.ms.min(t.ms);
            }
        }
    }
    let mut whole = f64::INFINITY;
    for _ in 0..runs {
        let t = Instant::now();
        plan.run(std::slice::from_ref(&input))?;
        whole = whole.min(t.elapsed().as_secs_f64() * 1e3);
    }
    let total: f64 = best.iter().map(|s| s.ms).sum();
    println!(
        "{name} {shape:?} on {backend}: {total:.1} ms over {} steps (min per step over {runs} runs); \
         whole forward {whole:.1} ms\n",
        best.len()
    );
    let mut by_op: std::collections::BTreeMap<&str, (f64, usize, usize)> = Default::default();
    for s in &best {
        let e = by_op.entry(s.op.as_str()).or_default();
        e.0 += s.ms;
        e.1 += 1;
        e.2 += s.kernels;
    }
    let mut by_op: Vec<_> = by_op.into_iter().collect();
    by_op.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    // Kernels per op: what each op launches unfused (steps are synced one by one).
    println!("{:<24} {:>6} {:>10} {:>6} {:>8}", "op", "steps", "ms", "%", "kernels");
    for (op, (ms, n, k)) in by_op {
        println!("{op:<24} {n:>6} {ms:>10.2} {:>6.1} {k:>8}", 100.0 * ms / total);
    }
    let mut slow = best.clone();
    slow.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    println!("\n{:<60} {:<18} {:>10} {:>8}", "node", "op", "ms", "kernels");
    for s in slow.iter().take(top) {
        println!("{:<60} {:<18} {:>10.2} {:>8}", s.node, s.op, s.ms, s.kernels);
    }
    Ok(())
}

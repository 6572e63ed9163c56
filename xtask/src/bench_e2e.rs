//! `cargo xtask bench --e2e`: the whole OCR pipeline, Kiln against docTR's Python `ocr_predictor`
//! with the same ONNX models (Kiln's defaults; ONNX Runtime serves them to docTR), on the
//! known-text fixture pages, one page per call: upright pages with straight boxes, and every page
//! (upright and turned) with rotated boxes. Reports steady-state pages per second and the time to
//! the first page's document from a cold start (Kiln: models loaded and compiled in a fresh
//! process; docTR: interpreter imports and model loading included). With wgpu among the engines,
//! also Kiln's first page on fused wgpu from a fresh process with CubeCL's on-disk autotune cache
//! empty, then again in a second process that reads what the first stored.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Serialize)]
pub struct E2eRow {
    pub engine: String,
    /// `straight` (assume_straight_pages) or `rotated`.
    pub mode: String,
    pub pages: usize,
    pub pages_per_s: f64,
    pub first_page_s: f64,
}

/// Kiln's first page on a CubeCL backend from a fresh process, by the state of the autotune cache.
#[derive(Debug, Clone, Serialize)]
pub struct FirstPageRow {
    pub backend: String,
    pub mode: String,
    /// `cold`: an empty cache directory; `warm`: the one the cold run filled.
    pub autotune_cache: String,
    pub first_page_s: f64,
}

pub struct E2eOptions {
    pub runs: usize,
    /// Also time the first page on fused wgpu with the autotune cache cold and warm.
    pub wgpu_first_page: bool,
    pub threads: usize,
    pub python: Option<PathBuf>,
    pub script: PathBuf,
    pub models_dir: PathBuf,
    pub pages_dir: PathBuf,
}

fn pages(dir: &Path, mode: &str) -> Result<Vec<PathBuf>> {
    let path = dir.join("pages.json");
    let index: Value = serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| format!("{} (cargo xtask fixtures)", path.display()))?)?;
    let pages = index["pages"].as_array().context("pages.json lists pages")?;
    Ok(pages
        .iter()
        .filter(|p| mode == "rotated" || p["rotation"].as_i64() == Some(0))
        .filter_map(|p| p["file"].as_str().map(|f| dir.join(f)))
        .collect())
}

/// One mode in this process: the first page from nothing, then pages per second (none when
/// `runs` is 0).
fn kiln(mode: &str, backend: kiln::Backend, files: &[PathBuf], runs: usize) -> Result<(f64, Option<f64>)> {
    let start = Instant::now();
    let mut options = kiln::Options { assume_straight_pages: mode == "straight", ..kiln::Options::default() };
    if backend.fuses() {
        (options.backend, options.mode) = (backend, kiln::Mode::Fused);
    }
    let predictor = kiln::Predictor::builder().options(options).build()?;
    let images = files.iter().map(|f| kiln::image_io::load_image(f)).collect::<Result<Vec<_>, _>>()?;
    predictor.predict(std::slice::from_ref(&images[0]))?;
    let first = start.elapsed().as_secs_f64();
    if runs == 0 {
        return Ok((first, None));
    }
    for img in &images {
        predictor.predict(std::slice::from_ref(img))?;
    }
    let start = Instant::now();
    for _ in 0..runs {
        for img in &images {
            predictor.predict(std::slice::from_ref(img))?;
        }
    }
    Ok((first, Some((images.len() * runs) as f64 / start.elapsed().as_secs_f64())))
}

fn doctr(opts: &E2eOptions, python: &Path, mode: &str, files: &[PathBuf]) -> Result<(f64, f64)> {
    let out = Command::new(python)
        .arg(&opts.script)
        .arg("--models")
        .arg(&opts.models_dir)
        .args(["--mode", mode, "--runs", &opts.runs.to_string(), "--threads", &opts.threads.to_string()])
        .args(files)
        .output()
        .context("starting the docTR end-to-end worker")?;
    if !out.status.success() {
        bail!("docTR end-to-end worker failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(line.lines().last().unwrap_or_default())?;
    Ok((v["first_page_s"].as_f64().context("first_page_s")?, v["pages_per_s"].as_f64().context("pages_per_s")?))
}

/// Runs Kiln's worker in a fresh process; `cache` sets `KILN_CACHE` (where CubeCL keeps tuning).
fn kiln_worker(opts: &E2eOptions, mode: &str, backend: &str, runs: usize, files: &[PathBuf], cache: Option<&Path>) -> Result<(f64, Option<f64>)> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["bench-e2e-worker", "--mode", mode, "--backend", backend, "--runs", &runs.to_string()])
        .args(files)
        .env("RAYON_NUM_THREADS", opts.threads.to_string());
    if let Some(dir) = cache {
        cmd.env("KILN_CACHE", dir);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("Kiln end-to-end worker ({backend}) failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default())?;
    Ok((v["first_page_s"].as_f64().context("first_page_s")?, v["pages_per_s"].as_f64()))
}

/// Kiln's first-page time is taken in a fresh process (this binary's `bench-e2e-worker`), as
/// docTR's is.
pub fn run(opts: &E2eOptions) -> Result<(Vec<E2eRow>, Vec<FirstPageRow>)> {
    let mut rows = vec![];
    for mode in ["straight", "rotated"] {
        let files = pages(&opts.pages_dir, mode)?;
        eprintln!("e2e {mode}: {} pages, Kiln", files.len());
        let (first, rate) = kiln_worker(opts, mode, "flex", opts.runs.max(1), &files, None)?;
        let rate = rate.context("pages_per_s")?;
        rows.push(E2eRow { engine: "kiln-flex".into(), mode: mode.into(), pages: files.len(), pages_per_s: rate, first_page_s: first });
        if let Some(python) = &opts.python {
            eprintln!("e2e {mode}: docTR");
            let (first, rate) = doctr(opts, python, mode, &files)?;
            rows.push(E2eRow { engine: "doctr-ort".into(), mode: mode.into(), pages: files.len(), pages_per_s: rate, first_page_s: first });
        }
    }
    let mut first_pages = vec![];
    if opts.wgpu_first_page {
        let files = pages(&opts.pages_dir, "straight")?;
        let cache = kiln_fixtures::ScratchDir::new("kiln-tune-cache")?;
        for state in ["cold", "warm"] {
            eprintln!("e2e straight: first page on fused wgpu, autotune cache {state}");
            let (first, _) = kiln_worker(opts, "straight", "wgpu", 0, &files[..1], Some(cache.path()))?;
            first_pages.push(FirstPageRow { backend: "wgpu".into(), mode: "fused".into(), autotune_cache: state.into(), first_page_s: first });
        }
    }
    Ok((rows, first_pages))
}

/// The worker: one mode, JSON on stdout.
pub fn worker(mode: &str, backend: kiln::Backend, runs: usize, files: &[PathBuf]) -> Result<()> {
    let (first, rate) = kiln(mode, backend, files, runs)?;
    println!("{}", serde_json::json!({ "first_page_s": first, "pages_per_s": rate }));
    Ok(())
}

//! `cargo xtask bench --e2e`: the whole OCR pipeline, Kiln against docTR's Python `ocr_predictor`
//! with the same ONNX models (Kiln's defaults; ONNX Runtime serves them to docTR), on the
//! known-text fixture pages, one page per call: upright pages with straight boxes, and every page
//! (upright and turned) with rotated boxes. Reports steady-state pages per second and the time to
//! the first page's document from a cold start (Kiln: models loaded and compiled in a fresh
//! process; docTR: interpreter imports and model loading included).

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

pub struct E2eOptions {
    pub runs: usize,
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

/// One mode in this process: the first page from nothing (when `cold`), then pages per second.
fn kiln(mode: &str, files: &[PathBuf], runs: usize) -> Result<(f64, f64)> {
    let start = Instant::now();
    let options = kiln::Options { assume_straight_pages: mode == "straight", ..kiln::Options::default() };
    let predictor = kiln::Predictor::builder().options(options).build()?;
    let images = files.iter().map(|f| kiln::image_io::load_image(f)).collect::<Result<Vec<_>, _>>()?;
    predictor.predict(std::slice::from_ref(&images[0]))?;
    let first = start.elapsed().as_secs_f64();
    for img in &images {
        predictor.predict(std::slice::from_ref(img))?;
    }
    let start = Instant::now();
    for _ in 0..runs {
        for img in &images {
            predictor.predict(std::slice::from_ref(img))?;
        }
    }
    Ok((first, (images.len() * runs) as f64 / start.elapsed().as_secs_f64()))
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

/// Kiln's first-page time is taken in a fresh process (this binary's `bench-e2e-worker`), as
/// docTR's is.
pub fn run(opts: &E2eOptions) -> Result<Vec<E2eRow>> {
    let mut rows = vec![];
    for mode in ["straight", "rotated"] {
        let files = pages(&opts.pages_dir, mode)?;
        eprintln!("e2e {mode}: {} pages, Kiln", files.len());
        let out = Command::new(std::env::current_exe()?)
            .args(["bench-e2e-worker", "--mode", mode, "--runs", &opts.runs.to_string()])
            .args(&files)
            .env("RAYON_NUM_THREADS", opts.threads.to_string())
            .output()?;
        if !out.status.success() {
            bail!("Kiln end-to-end worker failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default())?;
        let (first, rate) = (v["first_page_s"].as_f64().context("first_page_s")?, v["pages_per_s"].as_f64().context("pages_per_s")?);
        rows.push(E2eRow { engine: "kiln-flex".into(), mode: mode.into(), pages: files.len(), pages_per_s: rate, first_page_s: first });
        if let Some(python) = &opts.python {
            eprintln!("e2e {mode}: docTR");
            let (first, rate) = doctr(opts, python, mode, &files)?;
            rows.push(E2eRow { engine: "doctr-ort".into(), mode: mode.into(), pages: files.len(), pages_per_s: rate, first_page_s: first });
        }
    }
    Ok(rows)
}

/// The worker: one mode, JSON on stdout.
pub fn worker(mode: &str, runs: usize, files: &[PathBuf]) -> Result<()> {
    let (first, rate) = kiln(mode, files, runs)?;
    println!("{}", serde_json::json!({ "first_page_s": first, "pages_per_s": rate }));
    Ok(())
}

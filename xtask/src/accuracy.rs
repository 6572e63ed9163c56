//! `cargo xtask accuracy`: Kiln's reading accuracy on held-out real pages against Tesseract and
//! rapidocr (`xtask/python/accuracy.py` scores; `models/train/corpus.py` makes the pages).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{repo_root, run, venv};

/// Debian packages of the page renderer and the Tesseract peer (`osd`: its page orientation).
const PACKAGES: [&str; 3] = ["poppler-utils", "tesseract-ocr", "tesseract-ocr-osd"];

pub struct Options {
    pub split: String,
    pub pages_per_package: usize,
    pub tools: Option<String>,
    pub variants: Option<String>,
    pub json: Option<PathBuf>,
    pub markdown: Option<PathBuf>,
}

pub fn accuracy(o: &Options) -> Result<()> {
    ensure_packages()?;
    let python = venv()?;
    let cache = kiln_fixtures::cache_dir();
    // The held-out pages (the test split, never trained or tuned on) or the validation pages.
    let corpus = cache.join("corpus");
    run(Command::new(&python)
        .arg(repo_root().join("models/train/corpus.py"))
        .args(["--split", &o.split, "--pages-per-package", &o.pages_per_package.to_string(), "--out"])
        .arg(&corpus))?;
    // The PP-OCR models come from the rapidocr wheel, unpacked as fixtures.
    run(Command::new(&python)
        .arg(repo_root().join("tests/fixtures/make_fixtures.py"))
        .args(["--set", "ci", "--models", "ppocr_v4_det,ppocr_v4_rec,ppocr_v2_cls", "--out"])
        .arg(kiln_fixtures::fixtures_dir()))?;
    let kiln = kiln_binary()?;
    let mut cmd = Command::new(&python);
    cmd.arg(repo_root().join("xtask/python/accuracy.py"))
        .arg("--pages")
        .arg(corpus.join(&o.split))
        .arg("--work")
        .arg(cache.join("accuracy").join(&o.split))
        .arg("--kiln")
        .arg(&kiln)
        .arg("--command")
        .arg(format!("cargo xtask {}", std::env::args().skip(1).map(|a| quoted(&a)).collect::<Vec<_>>().join(" ")));
    if let Some(t) = &o.tools {
        cmd.args(["--tools", t]);
    }
    if let Some(v) = &o.variants {
        cmd.args(["--variants", v]);
    }
    if let Some(p) = &o.json {
        cmd.arg("--json").arg(p);
    }
    if let Some(p) = &o.markdown {
        cmd.arg("--markdown").arg(p);
    }
    run(&mut cmd)
}

/// The `kiln` CLI of this checkout, built beside this xtask binary.
fn kiln_binary() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).current_dir(repo_root()).args(["build", "--release", "--quiet", "-p", "kiln-cli"]))?;
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let kiln = exe.with_file_name("kiln");
    if !kiln.exists() {
        bail!("built kiln-cli but found no {}", kiln.display());
    }
    Ok(kiln)
}

/// Installs the Debian packages when run as root; otherwise says which to install.
fn ensure_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.into_iter().filter(|p| !dpkg_has(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
    if !root {
        bail!("cargo xtask accuracy needs the Debian packages {}: apt-get install {}", missing.join(", "), missing.join(" "));
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get").args(["install", "-y", "-qq"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive"))
}

fn dpkg_has(pkg: &str) -> bool {
    Command::new("dpkg").args(["-s", pkg]).output().map(|o| o.status.success()).unwrap_or(false)
}

/// An argument as a shell would need it typed.
fn quoted(arg: &str) -> String {
    if arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_=.,/:".contains(c)) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

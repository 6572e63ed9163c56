//! Issue 3's load bound: loading a docTR model holds at most twice its file in memory beyond what
//! the process held before (the weights once, plus the decoded graph and the passes' work). Each
//! model loads in a fresh process (this test binary, run again on one model), so no memory freed
//! by an earlier load is reused unseen.

use std::process::Command;

use kiln_fixtures::{Manifest, fixtures_dir, peak_rss_mb, rss_mb};

/// Set in the child process: the model it loads.
const CHILD: &str = "KILN_LOAD_MEMORY_MODEL";

#[test]
fn doctr_models_load_within_twice_their_file_size() {
    if let Some(path) = std::env::var_os(CHILD) {
        let before = rss_mb().unwrap();
        kiln_graph::Graph::load(&path).unwrap_or_else(|e| panic!("{e}"));
        println!("load-memory {before} {}", peak_rss_mb().unwrap());
        return;
    }
    let manifest = Manifest::load(&fixtures_dir()).unwrap_or_else(|e| panic!("{e}"));
    let models: Vec<_> = manifest.models.iter().filter(|m| m.source == "doctr" && manifest.path(&m.onnx).exists()).collect();
    // The CI set holds three docTR models (tests/fixtures/make_fixtures.py, CI_SET).
    assert!(models.len() >= 3, "only {} docTR fixture models", models.len());
    let mut over = vec![];
    for m in models {
        let path = manifest.path(&m.onnx);
        let file_mb = std::fs::metadata(&path).unwrap().len() as f64 / (1 << 20) as f64;
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["doctr_models_load_within_twice_their_file_size", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, &path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().find_map(|l| l.split("load-memory ").nth(1));
        let values: Option<Vec<f64>> = line.map(|l| l.split(' ').filter_map(|v| v.parse().ok()).collect());
        let Some(&[before, peak]) = values.as_deref() else {
            panic!("{}: the child printed no measurement:\n{stdout}\n{}", m.name, String::from_utf8_lossy(&out.stderr));
        };
        let used = peak - before;
        eprintln!("{:<38} file {file_mb:7.1} MiB, load peak {used:7.1} MiB beyond the process's {before:.1} ({:.2}×)", m.name, used / file_mb);
        if used > 2.0 * file_mb {
            over.push(format!("{}: {used:.1} MiB for a {file_mb:.1} MiB file", m.name));
        }
    }
    assert!(over.is_empty(), "loading took more than twice the file:\n{}", over.join("\n"));
}

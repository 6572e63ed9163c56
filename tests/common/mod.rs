//! Shared test helpers: the fixture parity loop, and the ONNX builder re-exported.
#![allow(dead_code, unused_imports)]

use kiln_fixtures::{Manifest, check_case, fixtures_dir, load_model};
use kiln_graph::{Backend, Mode};
pub use kiln_fixtures::onnx_builder::{A, FLOAT, INT64, OnnxBuilder};

/// Runs every CI-set fixture case this backend covers and asserts parity with ONNX Runtime.
pub fn ci_parity(backend: Backend, mode: Mode, small_only: bool) {
    let manifest = Manifest::load(&fixtures_dir()).unwrap_or_else(|e| panic!("{e}"));
    let mut failures = vec![];
    let mut ran = 0;
    let ci = manifest.set("ci");
    // Three docTR models and three PP-OCR ones (tests/fixtures/make_fixtures.py, CI_SET).
    assert!(ci.len() >= 6, "the fixture manifest tags only {} models as CI", ci.len());
    for entry in &ci {
        let name = &entry.name;
        let loaded = match load_model(&manifest, entry) {
            Ok(l) => l,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        // Software Vulkan takes minutes per batch-2 page: with `small_only` (CI on lavapipe) pages run at
        // batch 1 and crops at 1 and 2; `cargo xtask compat` runs every small case.
        let runs = |c: &&kiln_fixtures::Case| {
            !small_only || (c.small && (entry.task != "detection" || c.input_shape.first() == Some(&1)))
        };
        for case in entry.cases.iter().filter(runs) {
            let row = check_case(&manifest, &loaded, entry, case, backend, mode);
            ran += 1;
            eprintln!(
                "{name} {} {}/{}: {} max diff {:?} (ref max {:?}, relative {:?}), host reads {:?}, kernels {:?}",
                row.case,
                row.backend,
                row.mode,
                row.status,
                row.max_abs_diff,
                row.ref_absmax,
                row.rel_diff,
                row.host_reads,
                row.kernels
            );
            // The compat bound is lax for outputs far below 1 (random-init classifiers give ~1e-9):
            // also hold every output to a relative bound.
            if row.rel_diff.is_none_or(|r| r > 1e-3) {
                failures.push(format!("{name}/{}: relative difference {:?} > 1e-3", row.case, row.rel_diff));
            }
            if row.status != "pass" {
                failures.push(format!("{name}/{}: {} {}", row.case, row.status, row.error.unwrap_or_default()));
            }
            if row.fullgraph != Some(true) {
                failures.push(format!("{name}/{}: not fullgraph ({:?} host reads)", row.case, row.host_reads));
            }
            if backend.fuses() && row.kernels.unwrap_or(0) == 0 {
                failures.push(format!("{name}/{}: no kernel launches were observed", row.case));
            }
        }
    }
    assert!(ran >= ci.len(), "only {ran} cases ran");
    assert!(failures.is_empty(), "parity failures:\n{}", failures.join("\n"));
}

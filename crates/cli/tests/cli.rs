//! The `kiln` binary end to end: inspect, run, and errors that name the file.

use std::process::Command;

use kiln_fixtures::ScratchDir;
use kiln_fixtures::onnx_builder::{FLOAT, OnnxBuilder};
use kiln_graph::{TensorData, npy};

/// A directory removed when the test ends, pass or fail.
fn scratch() -> ScratchDir {
    ScratchDir::new("kiln-cli").unwrap()
}

fn kiln(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().unwrap()
}

#[test]
fn run_writes_outputs_as_npy() {
    let dir = scratch();
    let model = dir.path().join("scale.onnx");
    let bytes = OnnxBuilder::new(17)
        .input("x", FLOAT, &[-1, 3])
        .init_f32("k", &[3], &[1.0, 2.0, 3.0])
        .node("Mul", &["x", "k"], &["y"], &[])
        .output("y", FLOAT, &[-1, 3])
        .bytes();
    std::fs::write(&model, bytes).unwrap();
    let x = dir.path().join("x.npy");
    npy::write(&x, &TensorData::new(vec![1.0f32, 1.0, 1.0, 2.0, 2.0, 2.0], vec![2, 3])).unwrap();
    let out = dir.path().join("out");
    let o = kiln(&["run", model.to_str().unwrap(), "--input", x.to_str().unwrap(), "--out-dir", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let y = npy::read(&out.join("y.npy")).unwrap();
    assert_eq!(y.shape().as_slice(), &[2, 3]);
    assert_eq!(y.try_to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 2.0, 4.0, 6.0]);
}

/// CubeCL's tuning is kept in `$KILN_CACHE/cubecl`: the first process on wgpu tunes its matmul and
/// stores the result there, a second one with the same cache reads it and tunes nothing.
#[test]
fn wgpu_tuning_is_kept_in_kilns_cache_for_the_next_process() {
    let dir = scratch();
    let model = dir.path().join("matmul.onnx");
    let w: Vec<f32> = (0..64 * 48).map(|i| (i % 7) as f32 - 3.0).collect();
    let bytes = OnnxBuilder::new(17)
        .input("x", FLOAT, &[-1, 64])
        .init_f32("w", &[64, 48], &w)
        .node("MatMul", &["x", "w"], &["y"], &[])
        .output("y", FLOAT, &[-1, 48])
        .bytes();
    std::fs::write(&model, bytes).unwrap();
    let x = dir.path().join("x.npy");
    npy::write(&x, &TensorData::new(vec![1.0f32; 32 * 64], vec![32, 64])).unwrap();
    let cache = dir.path().join("cache");
    let run = || {
        let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["run", model.to_str().unwrap(), "--input", x.to_str().unwrap(), "--backend", "wgpu"])
            .args(["--out-dir", dir.path().join("out").to_str().unwrap()])
            .env("KILN_CACHE", &cache)
            .env("RUST_LOG", "cubecl_runtime::tune=info")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let y = npy::read(&dir.path().join("out/y.npy")).unwrap().try_to_vec::<f32>().unwrap();
        let want: Vec<f32> = (0..48).map(|j| (0..64).map(|k| w[k * 48 + j]).sum()).collect();
        assert_eq!(&y[..48], &want[..]);
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let first = run();
    assert!(first.contains("Tuning"), "the first process tuned nothing: {first}");
    let stored: u64 = walk(&cache.join("cubecl")).iter().map(|f| f.metadata().map(|m| m.len()).unwrap_or(0)).sum();
    assert!(stored > 0, "nothing stored under {}", cache.join("cubecl").display());
    let second = run();
    assert!(!second.contains("Tuning"), "the second process tuned again: {second}");
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = vec![];
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

#[test]
fn inspect_lists_ops_and_flags_unsupported_ones() {
    let dir = scratch();
    let model = dir.path().join("custom.onnx");
    let bytes = OnnxBuilder::new(17)
        .input("x", FLOAT, &[1, 3])
        .node("Relu", &["x"], &["r"], &[])
        .node("MysteryOp", &["r"], &["y"], &[])
        .output("y", FLOAT, &[1, 3])
        .bytes();
    std::fs::write(&model, bytes).unwrap();
    let o = kiln(&["inspect", model.to_str().unwrap()]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("Relu") && text.contains("MysteryOp") && text.contains("UNSUPPORTED"), "{text}");
    assert!(text.contains("unsupported ops: MysteryOp"), "{text}");
}

#[test]
fn corrupt_model_fails_naming_the_file() {
    let dir = scratch();
    let model = dir.path().join("broken.onnx");
    std::fs::write(&model, b"this is not a protobuf at all").unwrap();
    let x = dir.path().join("x.npy");
    npy::write(&x, &TensorData::new(vec![0.0f32; 3], vec![1, 3])).unwrap();
    let o = kiln(&["run", model.to_str().unwrap(), "--input", x.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("broken.onnx") && err.contains("decode"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// The README's main command: the bundled sample page through the default models (the docTR
/// architectures trained in models/train/, bundled in models/onnx/).
#[test]
fn ocr_reads_the_sample_page() {
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/sample-page.png");
    let dir = scratch();
    let json = dir.path().join("sample.json");
    let o = kiln(&["ocr", sample, "--text", "--json", json.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout).to_lowercase();
    // The words tests/fixtures/make_pages.py --sample draws.
    let truth = "model history kernel page village golden question device orange violet history silver \
                 confidence orange letter purple device careful";
    let read: Vec<&str> = text.split_whitespace().collect();
    let found = truth.split_whitespace().filter(|w| read.contains(w)).count();
    assert!(found * 10 >= truth.split_whitespace().count() * 9, "read {found} of the words:\n{text}");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(doc["pages"][0]["dimensions"], serde_json::json!([500, 900]));
}

#[test]
fn ocr_on_a_broken_image_names_it() {
    let dir = scratch();
    let bad = dir.path().join("broken.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff not really a jpeg").unwrap();
    let o = kiln(&["ocr", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("broken.jpg"), "{err}");
}

#[test]
fn models_lists_the_cards() {
    let o = kiln(&["models"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    for card in ["ppocr-v4-det", "ppocr-v4-rec", "ppocr-v2-cls", "db_mobilenet_v3_large"] {
        assert!(text.contains(card), "{text}");
    }
}

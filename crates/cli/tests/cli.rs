//! The `kiln` binary end to end: inspect, run, and errors that name the file.

use std::path::PathBuf;
use std::process::Command;

use kiln_fixtures::onnx_builder::{FLOAT, OnnxBuilder};
use kiln_graph::{TensorData, npy};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn kiln(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().unwrap()
}

#[test]
fn run_writes_outputs_as_npy() {
    let dir = scratch("run");
    let model = dir.join("scale.onnx");
    let bytes = OnnxBuilder::new(17)
        .input("x", FLOAT, &[-1, 3])
        .init_f32("k", &[3], &[1.0, 2.0, 3.0])
        .node("Mul", &["x", "k"], &["y"], &[])
        .output("y", FLOAT, &[-1, 3])
        .bytes();
    std::fs::write(&model, bytes).unwrap();
    let x = dir.join("x.npy");
    npy::write(&x, &TensorData::new(vec![1.0f32, 1.0, 1.0, 2.0, 2.0, 2.0], vec![2, 3])).unwrap();
    let out = dir.join("out");
    let o = kiln(&["run", model.to_str().unwrap(), "--input", x.to_str().unwrap(), "--out-dir", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let y = npy::read(&out.join("y.npy")).unwrap();
    assert_eq!(y.shape().as_slice(), &[2, 3]);
    assert_eq!(y.try_to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 2.0, 4.0, 6.0]);
}

#[test]
fn inspect_lists_ops_and_flags_unsupported_ones() {
    let dir = scratch("inspect");
    let model = dir.join("custom.onnx");
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
    let dir = scratch("corrupt");
    let model = dir.join("broken.onnx");
    std::fs::write(&model, b"this is not a protobuf at all").unwrap();
    let x = dir.join("x.npy");
    npy::write(&x, &TensorData::new(vec![0.0f32; 3], vec![1, 3])).unwrap();
    let o = kiln(&["run", model.to_str().unwrap(), "--input", x.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("broken.onnx") && err.contains("decode"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

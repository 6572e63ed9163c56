//! ONNX's backend node tests for every op Kiln implements, on flex. Each failing case must be listed
//! with a reason in `tests/conformance_known_failures.txt`; a listed case that passes must be
//! removed from it, so the list always says exactly what does not conform.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use kiln_graph::{Backend, ErrorKind, Graph, Mode, OnnxModel, TensorData, is_supported, op_histogram, tensor_from_proto};
use onnx_ir::{Message, TensorProto};

const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-5;

fn read_pb(path: &Path) -> Result<TensorData, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let t = TensorProto::parse_from_bytes(&bytes).map_err(|e| e.to_string())?;
    tensor_from_proto(&t).map_err(|e| e.to_string())
}

fn close(got: &TensorData, want: &TensorData) -> Result<(), String> {
    if got.shape() != want.shape() {
        return Err(format!("shape {:?}, expected {:?}", got.shape().as_slice(), want.shape().as_slice()));
    }
    let g = got.try_to_vec_as::<f64>().map_err(|e| format!("{e:?}"))?;
    let w = want.try_to_vec_as::<f64>().map_err(|e| format!("{e:?}"))?;
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let same = (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= ATOL + RTOL * b.abs();
        if !same {
            return Err(format!("value {i}: {a} vs expected {b}"));
        }
    }
    Ok(())
}

/// Runs one case directory; `Ok(None)` when it uses an op Kiln does not implement.
fn run_case(dir: &Path) -> Result<Option<BTreeSet<String>>, (BTreeSet<String>, String)> {
    let path = dir.join("model.onnx");
    let model = match OnnxModel::from_path(&path) {
        Ok(m) => m,
        // Other domains (ai.onnx.ml, ai.onnx.preview) are not ONNX's default ops: not Kiln's.
        Err(e) if e.kind == ErrorKind::UnsupportedOp || e.message.contains("default-domain opset") => return Ok(None),
        Err(e) => return Err((BTreeSet::new(), e.to_string())),
    };
    let ops: BTreeSet<String> = op_histogram(&model).into_keys().collect();
    if ops.iter().any(|op| !is_supported(op)) {
        return Ok(None);
    }
    let fail = |msg: String| (ops.clone(), msg);
    let mut graph = Graph::load(&path).map_err(|e| fail(e.to_string()))?;
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| fail(e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    sets.sort();
    for set in sets {
        let read_all = |prefix: &str| -> Result<Vec<TensorData>, String> {
            (0..).map(|i| set.join(format!("{prefix}_{i}.pb"))).take_while(|p| p.exists()).map(|p| read_pb(&p)).collect()
        };
        let mut inputs = read_all("input").map_err(&fail)?;
        let expected = read_all("output").map_err(&fail)?;
        // Inputs bound on an earlier data set stay bound (node tests repeat the same arguments).
        inputs.truncate(graph.inputs().len());
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|d| d.shape().to_vec()).collect();
        let plan = match graph.compile(Backend::Flex, Mode::Fused, &shapes) {
            Ok(p) => p,
            // Node tests feed shape arguments (axes, pads, scales…) as inputs; Kiln specialises on
            // them, as a user would by binding them: every input after the first becomes a constant.
            Err(e) if matches!(e.kind, ErrorKind::DynamicArgument | ErrorKind::InputMismatch) && inputs.len() > 1 => {
                let names: Vec<String> = graph.inputs().iter().map(|v| v.name.clone()).collect();
                let rest: Vec<TensorData> = inputs.drain(1..).collect();
                for (name, value) in names.iter().skip(1).zip(rest) {
                    graph.bind_input(name, value).map_err(|e| fail(e.to_string()))?;
                }
                graph.compile(Backend::Flex, Mode::Fused, &[shapes[0].clone()]).map_err(|e| fail(e.to_string()))?
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        let outputs = plan.run(&inputs).map_err(|e| fail(e.to_string()))?;
        for (k, (got, want)) in outputs.iter().zip(&expected).enumerate() {
            close(got, want).map_err(|m| fail(format!("output {k}: {m}")))?;
        }
    }
    Ok(Some(ops))
}

/// The error without the model path, as it is written in the known-failures list.
fn short(msg: &str) -> String {
    match msg.split_once("model.onnx: ") {
        Some((_, rest)) => rest.to_string(),
        None => msg.to_string(),
    }
}

fn known_failures() -> BTreeMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance_known_failures.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, reason) = l.split_once(':').unwrap_or((l, ""));
            (name.trim().to_string(), reason.trim().to_string())
        })
        .collect()
}

#[test]
fn onnx_node_tests_for_supported_ops() {
    let root = kiln_fixtures::fixtures_dir().join("onnx-node");
    assert!(root.is_dir(), "{} is missing: run `cargo xtask fixtures`", root.display());
    let known = known_failures();
    let mut cases: Vec<PathBuf> =
        std::fs::read_dir(&root).unwrap().filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
    cases.sort();
    let mut per_op: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let (mut unexpected, mut fixed) = (vec![], vec![]);
    let mut ran = 0;
    for dir in &cases {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let outcome = std::panic::catch_unwind(|| run_case(dir))
            .unwrap_or_else(|_| Err((BTreeSet::new(), "panicked".to_string())));
        let (ops, failure) = match outcome {
            Ok(None) => continue,
            Ok(Some(ops)) => (ops, None),
            Err((ops, msg)) => (ops, Some(msg)),
        };
        ran += 1;
        for op in &ops {
            let e = per_op.entry(op.clone()).or_default();
            if failure.is_none() { e.0 += 1 } else { e.1 += 1 }
        }
        match (failure, known.contains_key(&name)) {
            (Some(msg), false) => unexpected.push(format!("{name}: {}", short(&msg))),
            (None, true) => fixed.push(name),
            _ => {}
        }
    }
    eprintln!("{:<24} {:>6} {:>6}", "op", "passed", "failed");
    for (op, (p, f)) in &per_op {
        eprintln!("{op:<24} {p:>6} {f:>6}");
    }
    eprintln!("{ran} cases run, {} known failures listed", known.len());
    assert!(ran > 100, "only {ran} node test cases ran");
    assert!(unexpected.is_empty(), "unlisted failures ({}):\n{}", unexpected.len(), unexpected.join("\n"));
    assert!(fixed.is_empty(), "listed as failing but passing now (remove them): {fixed:?}");
}

//! Bad input gets a typed error that names the file, node and op — never a panic.

mod common;

use common::{A, FLOAT, INT64, OnnxBuilder};
use kiln_graph::{Backend, ErrorKind, Graph, Mode, TensorData};

fn relu_model() -> OnnxBuilder {
    OnnxBuilder::new(17)
        .input("x", FLOAT, &[-1, 4])
        .node("Relu", &["x"], &["y"], &[])
        .output("y", FLOAT, &[-1, 4])
}

fn kind_of(r: kiln_graph::Result<Graph>) -> kiln_graph::Error {
    match r {
        Ok(_) => panic!("loading should have failed"),
        Err(e) => e,
    }
}

#[test]
fn empty_file_is_a_decode_error() {
    let e = kind_of(Graph::from_bytes(vec![], "empty.onnx"));
    assert_eq!(e.kind, ErrorKind::Decode);
    assert!(e.to_string().contains("empty.onnx"), "{e}");
}

#[test]
fn random_bytes_are_a_decode_error() {
    // A fixed pseudo-random byte string (xorshift), not a protobuf.
    let mut x = 0x2545F4914F6CDD1Du64;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let e = kind_of(Graph::from_bytes(bytes, "random.onnx"));
    assert_eq!(e.kind, ErrorKind::Decode, "{e}");
}

#[test]
fn truncated_model_is_a_decode_error() {
    let b = OnnxBuilder::new(17)
        .input("x", FLOAT, &[1, 4])
        .init_f32("w", &[4, 4], &[0.5; 16])
        .node("MatMul", &["x", "w"], &["y"], &[])
        .output("y", FLOAT, &[1, 4])
        .bytes();
    let cut = b[..b.len() * 2 / 3].to_vec();
    let e = kind_of(Graph::from_bytes(cut, "truncated.onnx"));
    assert!(matches!(e.kind, ErrorKind::Decode | ErrorKind::InvalidGraph), "{e}");
    assert!(e.to_string().contains("truncated.onnx"));
}

#[test]
fn truncated_file_is_a_decode_error_at_every_cut() {
    // Loading streams the file field by field: a cut anywhere (inside a tag, a length, a weight,
    // a node) must end in a typed error naming the file.
    let b = OnnxBuilder::new(17)
        .input("x", FLOAT, &[1, 4])
        .init_f32_raw("w", &[4, 4], &[0.5; 16])
        .node("MatMul", &["x", "w"], &["y"], &[])
        .output("y", FLOAT, &[1, 4])
        .bytes();
    let dir = kiln_fixtures::ScratchDir::new("kiln-bad-input").unwrap();
    let path = dir.path().join("kiln-truncated.onnx");
    for cut in 1..b.len() {
        std::fs::write(&path, &b[..cut]).unwrap();
        match Graph::load(&path) {
            Ok(_) => panic!("a model cut at byte {cut} of {} loaded", b.len()),
            Err(e) => {
                assert!(matches!(e.kind, ErrorKind::Decode | ErrorKind::InvalidGraph), "cut {cut}: {e}");
                assert!(e.to_string().contains("kiln-truncated"), "cut {cut}: {e}");
            }
        }
    }
}

#[test]
fn missing_file_is_an_io_error() {
    let e = kind_of(Graph::load("/nonexistent/model.onnx"));
    assert_eq!(e.kind, ErrorKind::Io);
    assert!(e.to_string().contains("/nonexistent/model.onnx"));
}

#[test]
fn unknown_op_names_the_node_and_op() {
    let b = OnnxBuilder::new(17)
        .input("x", FLOAT, &[1, 4])
        .node("Relu", &["x"], &["r"], &[])
        .node("FrobnicateTensor", &["r"], &["y"], &[])
        .output("y", FLOAT, &[1, 4])
        .bytes();
    let e = kind_of(Graph::from_bytes(b, "custom.onnx"));
    assert_eq!(e.kind, ErrorKind::UnsupportedOp);
    assert_eq!(e.op.as_deref(), Some("FrobnicateTensor"));
    assert_eq!(e.node.as_deref(), Some("FrobnicateTensor_1"));
    let msg = e.to_string();
    assert!(msg.contains("custom.onnx") && msg.contains("FrobnicateTensor_1"), "{msg}");
}

#[test]
fn unsupported_attribute_names_the_node() {
    let b = OnnxBuilder::new(17)
        .input("x", FLOAT, &[1, 1, 4, 4])
        .init_f32("scales", &[4], &[1.0, 1.0, 2.0, 2.0])
        .node("Resize", &["x", "", "scales"], &["y"], &[("mode", A::Str("cubic"))])
        .output("y", FLOAT, &[1, 1, 8, 8])
        .bytes();
    let g = Graph::from_bytes(b, "resize.onnx").unwrap();
    let e = g.compile(Backend::Flex, Mode::Fused, &[vec![1, 1, 4, 4]]).err().expect("cubic is unsupported");
    assert_eq!(e.kind, ErrorKind::UnsupportedAttribute, "{e}");
    assert_eq!(e.node.as_deref(), Some("Resize_0"));
    assert_eq!(e.op.as_deref(), Some("Resize"));
}

#[test]
fn non_broadcastable_shapes_are_a_shape_error() {
    let b = OnnxBuilder::new(17)
        .input("x", FLOAT, &[2, 3])
        .init_f32("b", &[4], &[1.0; 4])
        .node("Add", &["x", "b"], &["y"], &[])
        .output("y", FLOAT, &[2, 3])
        .bytes();
    let g = Graph::from_bytes(b, "add.onnx").unwrap();
    let e = g.compile(Backend::Flex, Mode::Fused, &[vec![2, 3]]).err().expect("shapes do not broadcast");
    assert_eq!(e.kind, ErrorKind::ShapeMismatch);
    assert_eq!(e.node.as_deref(), Some("Add_0"));
}

#[test]
fn wrong_input_rank_is_rejected_at_compile() {
    let g = Graph::from_bytes(relu_model().bytes(), "relu.onnx").unwrap();
    let e = g.compile(Backend::Flex, Mode::Fused, &[vec![2, 4, 1]]).err().expect("rank 3 for a rank-2 input");
    assert_eq!(e.kind, ErrorKind::InputMismatch);
    let e = g.compile(Backend::Flex, Mode::Fused, &[vec![0, 4]]).err().expect("zero-size input");
    assert_eq!(e.kind, ErrorKind::InputMismatch);
}

#[test]
fn wrong_input_at_run_time_is_rejected() {
    let g = Graph::from_bytes(relu_model().bytes(), "relu.onnx").unwrap();
    let plan = g.compile(Backend::Flex, Mode::Fused, &[vec![2, 4]]).unwrap();
    let wrong_shape = TensorData::new(vec![1.0f32; 12], vec![3, 4]);
    assert_eq!(plan.run(&[wrong_shape]).unwrap_err().kind, ErrorKind::InputMismatch);
    let wrong_type = TensorData::new(vec![1i64; 8], vec![2, 4]);
    assert_eq!(plan.run(&[wrong_type]).unwrap_err().kind, ErrorKind::InputMismatch);
    assert_eq!(plan.run(&[]).unwrap_err().kind, ErrorKind::InputMismatch);
}

#[test]
fn nan_input_is_rejected() {
    let g = Graph::from_bytes(relu_model().bytes(), "relu.onnx").unwrap();
    let plan = g.compile(Backend::Flex, Mode::Fused, &[vec![1, 4]]).unwrap();
    let nan = TensorData::new(vec![1.0f32, f32::NAN, 0.0, 2.0], vec![1, 4]);
    let e = plan.run(&[nan]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NonFiniteInput);
    assert!(e.to_string().contains("'x'"), "{e}");
    // Past the first of the chunks the upload copies and checks in parallel; and as f64.
    let n = 1 << 18;
    let plan = g.compile(Backend::Flex, Mode::Fused, &[vec![1, n]]).unwrap();
    let mut v = vec![1.0f32; n];
    v[n - 1] = f32::INFINITY;
    assert_eq!(plan.run(&[TensorData::new(v.clone(), vec![1, n])]).unwrap_err().kind, ErrorKind::NonFiniteInput);
    assert_eq!(plan.run_owned(vec![TensorData::new(v.clone(), vec![1, n])]).unwrap_err().kind, ErrorKind::NonFiniteInput);
    v[n - 1] = -2.0;
    let out = plan.run_owned(vec![TensorData::new(v, vec![1, n])]).unwrap();
    assert_eq!(out[0].as_slice::<f32>().unwrap()[n - 2..], [1.0, 0.0]);
    let plan = g.compile(Backend::Flex, Mode::Fused, &[vec![1, 4]]).unwrap();
    let nan64 = TensorData::new(vec![1.0f64, 0.0, f64::NAN, 2.0], vec![1, 4]);
    assert_eq!(plan.run(&[nan64]).unwrap_err().kind, ErrorKind::NonFiniteInput);
    let fine64 = TensorData::new(vec![1.0f64, 0.0, -3.0, 2.0], vec![1, 4]);
    assert_eq!(plan.run(&[fine64]).unwrap()[0].try_to_vec::<f32>().unwrap(), [1.0, 0.0, 0.0, 2.0]);
}

#[test]
fn int_graph_input_is_checked() {
    let b = OnnxBuilder::new(17)
        .input("ids", INT64, &[3])
        .init_f32("table", &[4, 2], &[0., 1., 2., 3., 4., 5., 6., 7.])
        .node("Gather", &["table", "ids"], &["y"], &[])
        .output("y", FLOAT, &[3, 2])
        .bytes();
    let g = Graph::from_bytes(b, "gather.onnx").unwrap();
    let plan = g.compile(Backend::Flex, Mode::Fused, &[vec![3]]).unwrap();
    let out = plan.run(&[TensorData::new(vec![3i64, 0, -1], vec![3])]).unwrap();
    assert_eq!(out[0].try_to_vec::<f32>().unwrap(), vec![6., 7., 0., 1., 6., 7.]);
    let floats = TensorData::new(vec![0f32; 3], vec![3]);
    assert_eq!(plan.run(&[floats]).unwrap_err().kind, ErrorKind::InputMismatch);
}

#[test]
fn missing_fixtures_are_a_typed_error() {
    let dir = kiln_fixtures::ScratchDir::new("kiln-bad-input").unwrap();
    let e = kiln_fixtures::Manifest::load(dir.path()).unwrap_err();
    assert!(matches!(e, kiln_fixtures::FixtureError::Missing(_)), "{e}");
    assert!(e.to_string().contains("cargo xtask fixtures"));
}

#[test]
fn one_process_cannot_mix_fused_and_eager() {
    kiln_graph::set_mode(Mode::Fused).unwrap();
    let e = kiln_graph::set_mode(Mode::Eager).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Device);
}

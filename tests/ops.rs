//! Op and pass semantics on small hand-checked graphs (flex backend; wgpu where its route differs).

mod common;

use common::{A, FLOAT, OnnxBuilder};
use kiln_graph::{Backend, Graph, Mode, TensorData};

fn run(b: OnnxBuilder, input: TensorData) -> (Vec<TensorData>, Graph, usize) {
    run_on(Backend::Flex, b, input)
}

fn run_on(backend: Backend, b: OnnxBuilder, input: TensorData) -> (Vec<TensorData>, Graph, usize) {
    let g = Graph::from_bytes(b.bytes(), "test.onnx").unwrap();
    let plan = g.compile(backend, Mode::Fused, &[input.shape().to_vec()]).unwrap();
    let (out, stats) = plan.run_with_stats(&[input]).unwrap();
    assert_eq!(stats.host_reads, 0, "a forward must not read back to the host");
    let steps = plan.num_steps();
    (out, g, steps)
}

fn floats(d: &TensorData) -> Vec<f32> {
    d.try_to_vec::<f32>().unwrap()
}

#[test]
fn batchnorm_folds_into_conv() {
    // y = ((2x + 1) − mean) / sqrt(var) · scale + shift = ((2x+1) − 1)/2·3 + 0.5 = 3x + 0.5
    let b = OnnxBuilder::new(17)
        .input("x", FLOAT, &[1, 1, 2, 2])
        .init_f32("w", &[1, 1, 1, 1], &[2.0])
        .init_f32("b", &[1], &[1.0])
        .init_f32("scale", &[1], &[3.0])
        .init_f32("shift", &[1], &[0.5])
        .init_f32("mean", &[1], &[1.0])
        .init_f32("var", &[1], &[4.0])
        .node("Conv", &["x", "w", "b"], &["c"], &[("kernel_shape", A::Ints(vec![1, 1]))])
        .node("BatchNormalization", &["c", "scale", "shift", "mean", "var"], &["y"], &[("epsilon", A::Float(0.0))])
        .output("y", FLOAT, &[1, 1, 2, 2]);
    let (out, g, steps) = run(b, TensorData::new(vec![0.0f32, 1.0, -1.0, 2.0], vec![1, 1, 2, 2]));
    assert_eq!(g.load_stats().batchnorms_folded, 1);
    assert_eq!(steps, 1, "only the conv should remain");
    assert_eq!(floats(&out[0]), vec![0.5, 3.5, -2.5, 6.5]);
}

/// FAST's RepConv block as docTR exports it: `relu(conv3×3(x) + conv3×1(x) + conv1×3(x) + id(x))`,
/// `id` a BatchNorm of `x` or a constant (a scalar at stride 1, per channel at stride 2). With
/// `keep`, the branches are also graph outputs, which must stop the merge.
fn rep_conv_block(stride: i64, norm: bool, keep: bool) -> OnnxBuilder {
    // Deterministic values in (-0.5, 0.5), different for each tensor.
    let mut tensor = 0;
    let mut rand = |n: usize| -> Vec<f32> {
        tensor += 1;
        (0..n).map(|i| ((i * 7 + tensor * 13) as f32 * 0.7).sin() * 0.5).collect()
    };
    let conv = |k: [i64; 2], pads: [i64; 4]| vec![("kernel_shape", A::Ints(k.to_vec())), ("pads", A::Ints(pads.to_vec())), ("strides", A::Ints(vec![stride, stride]))];
    let (c, out) = (4, if stride == 1 { [7, 6] } else { [4, 3] });
    let mut b = OnnxBuilder::new(17)
        .input("x", FLOAT, &[1, c, 7, 6])
        .init_f32("w33", &[c, c, 3, 3], &rand(144))
        .init_f32("b33", &[c], &rand(4))
        .init_f32("w31", &[c, c, 3, 1], &rand(48))
        .init_f32("b31", &[c], &rand(4))
        .init_f32("w13", &[c, c, 1, 3], &rand(48))
        .init_f32("scale", &[c], &rand(4))
        .init_f32("shift", &[c], &rand(4))
        .init_f32("mean", &[c], &rand(4))
        .init_f32("var", &[c], &rand(4).iter().map(|v| v + 1.0).collect::<Vec<_>>())
        .init_f32("k", &[], &[0.25])
        .init_f32("kc", &[1, c, 1, 1], &[0.5, -0.25, 0.75, 0.1])
        .node("Conv", &["x", "w33", "b33"], &["c33"], &conv([3, 3], [1, 1, 1, 1]))
        .node("Conv", &["x", "w31", "b31"], &["c31"], &conv([3, 1], [1, 0, 1, 0]))
        .node("Conv", &["x", "w13"], &["c13"], &conv([1, 3], [0, 1, 0, 1]))
        .node("Add", &["c33", "c31"], &["s1"], &[])
        .node("Add", &["s1", "c13"], &["s2"], &[]);
    b = if norm {
        b.node("BatchNormalization", &["x", "scale", "shift", "mean", "var"], &["id"], &[]).node("Add", &["s2", "id"], &["s3"], &[])
    } else {
        // A scalar, or (strided) one value per channel.
        b.node("Add", &[if stride == 1 { "k" } else { "kc" }, "s2"], &["s3"], &[])
    };
    b = b.node("Relu", &["s3"], &["y"], &[]).output("y", FLOAT, &[1, c, out[0], out[1]]);
    if keep {
        for v in ["c33", "c31", "c13"] {
            b = b.output(v, FLOAT, &[1, c, out[0], out[1]]);
        }
    }
    b
}

#[test]
fn rep_conv_branches_merge_into_one_conv() {
    let x = TensorData::new((0..168).map(|v| ((v * 37 % 23) as f32 - 11.0) / 7.0).collect::<Vec<_>>(), vec![1, 4, 7, 6]);
    for (stride, norm) in [(1, true), (1, false), (2, false)] {
        let (merged, g, steps) = run(rep_conv_block(stride, norm, false), x.clone());
        assert_eq!(g.load_stats().conv_branches_merged, 3, "stride {stride}, norm {norm}");
        assert_eq!(steps, 1, "one conv, its ReLU fused, should remain (stride {stride}, norm {norm})");
        let (branches, g, _) = run(rep_conv_block(stride, norm, true), x.clone());
        assert_eq!(g.load_stats().conv_branches_merged, 0, "branches that are graph outputs must stay");
        let (want, got) = (floats(&branches[0]), floats(&merged[0]));
        assert!(want.iter().any(|&v| v > 0.1), "the block should not be all zeros");
        let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "merged conv off by {worst} (stride {stride}, norm {norm})");
    }
}

#[test]
fn shape_subgraph_folds_to_a_reshape() {
    // y = Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])): batch-preserving flatten.
    let b = OnnxBuilder::new(17)
        .input("x", FLOAT, &[-1, 2, 3])
        .init_i64("zero", &[], &[0])
        .init_i64("axes", &[1], &[0])
        .init_i64("minus1", &[1], &[-1])
        .node("Shape", &["x"], &["s"], &[])
        .node("Gather", &["s", "zero"], &["n"], &[])
        .node("Unsqueeze", &["n", "axes"], &["n1"], &[])
        .node("Concat", &["n1", "minus1"], &["shape"], &[("axis", A::Int(0))])
        .node("Reshape", &["x", "shape"], &["y"], &[])
        .output("y", FLOAT, &[-1, 6]);
    let x = TensorData::new((0..12).map(|v| v as f32).collect::<Vec<_>>(), vec![2, 2, 3]);
    let (out, g, steps) = run(b, x);
    assert_eq!(steps, 1);
    assert_eq!(out[0].shape().as_slice(), &[2, 6]);
    let report = g.check_fullgraph(&[vec![2, 2, 3]]).unwrap();
    assert!(report.fullgraph, "{:?}", report.graph_break);
    assert!(report.recorded_ops >= 1);
    assert_eq!(floats(&out[0]), (0..12).map(|v| v as f32).collect::<Vec<_>>());
}

#[test]
fn slice_with_negative_step_reverses() {
    let b = OnnxBuilder::new(17)
        .input("x", FLOAT, &[1, 5])
        .init_i64("starts", &[1], &[-1])
        .init_i64("ends", &[1], &[i64::MIN])
        .init_i64("axes", &[1], &[1])
        .init_i64("steps", &[1], &[-2])
        .node("Slice", &["x", "starts", "ends", "axes", "steps"], &["y"], &[])
        .output("y", FLOAT, &[1, 3]);
    let (out, _, _) = run(b, TensorData::new(vec![0.0f32, 1.0, 2.0, 3.0, 4.0], vec![1, 5]));
    assert_eq!(floats(&out[0]), vec![4.0, 2.0, 0.0]);
}

#[test]
fn gemm_and_matmul_broadcast() {
    // Gemm with transB: y = x·wᵀ + b; then a batched MatMul against a 2-D weight. A second Gemm
    // shares `w`: both read the one [K, N] copy the load makes of it.
    let b = OnnxBuilder::new(17)
        .input("x", FLOAT, &[2, 3])
        .init_f32("w", &[2, 3], &[1., 0., 0., 0., 1., 1.])
        .init_f32("b", &[2], &[10., 20.])
        .init_f32("m", &[2, 1], &[1., -1.])
        .node("Gemm", &["x", "w", "b"], &["g"], &[("transB", A::Int(1))])
        .node("Gemm", &["x", "w"], &["g2"], &[("transB", A::Int(1)), ("alpha", A::Float(2.0))])
        .node("MatMul", &["g", "m"], &["y"], &[])
        .output("y", FLOAT, &[2, 1])
        .output("g2", FLOAT, &[2, 2]);
    let (out, g, _) = run(b, TensorData::new(vec![1.0f32, 2., 3., 4., 5., 6.], vec![2, 3]));
    assert_eq!(g.load_stats().gemm_weights_transposed, 2);
    // rows: [1+10, 5+20] → 11−25 = −14 ; [4+10, 11+20] → 14−31 = −17
    assert_eq!(floats(&out[0]), vec![-14.0, -17.0]);
    assert_eq!(floats(&out[1]), vec![2.0, 10.0, 8.0, 22.0]);
}

#[test]
fn matmul_bias_folds_into_the_matmul() {
    // x [2, 2, 3] · w [3, 2] + b: the bias on either side of the Add; a product that is also a
    // graph output keeps its Add.
    let build = |bias_first: bool, keep: bool| {
        let add = if bias_first { ["b", "p"] } else { ["p", "b"] };
        let mut b = OnnxBuilder::new(17)
            .input("x", FLOAT, &[2, 2, 3])
            .init_f32("w", &[3, 2], &[1., 0., 0., 1., 1., 1.])
            .init_f32("b", &[2], &[10., -10.])
            .node("MatMul", &["x", "w"], &["p"], &[])
            .node("Add", &add, &["y"], &[])
            .output("y", FLOAT, &[2, 2, 2]);
        if keep {
            b = b.output("p", FLOAT, &[2, 2, 2]);
        }
        b
    };
    let x = TensorData::new((0..12).map(|v| v as f32).collect::<Vec<_>>(), vec![2, 2, 3]);
    // Rows (x0, x1, x2) → (x0 + x2 + 10, x1 + x2 − 10).
    let want = vec![12.0, -7.0, 18.0, -1.0, 24.0, 5.0, 30.0, 11.0];
    for bias_first in [false, true] {
        let (out, g, steps) = run(build(bias_first, false), x.clone());
        assert_eq!(g.load_stats().matmul_biases_fused, 1);
        assert_eq!(steps, 1, "the Add should be gone");
        assert_eq!(floats(&out[0]), want);
    }
    let (out, g, _) = run(build(false, true), x);
    assert_eq!(g.load_stats().matmul_biases_fused, 0, "a product that is a graph output keeps its Add");
    assert_eq!(floats(&out[0]), want);
}

/// ResNet's block ends: `relu(conv3×3(t) + shortcut)` with `t = relu(x)`, the shortcut `x`
/// itself or (`project`) a 1×1 conv of it placed after the 3×3 conv in node order. `keep` lists
/// convs whose outputs are also graph outputs, which must stop them taking the Add.
fn residual_block(project: bool, keep: &[&str], w: usize) -> OnnxBuilder {
    let c = 16;
    let wave = |n: i64, seed: usize| (0..n as usize).map(|i| ((i * 7 + seed * 13) as f32 * 0.7).sin() * 0.3).collect::<Vec<_>>();
    let conv = |k: i64| vec![("kernel_shape", A::Ints(vec![k, k])), ("pads", A::Ints(vec![k / 2; 4]))];
    let shape = [2, c, 5, w as i64];
    let mut b = OnnxBuilder::new(17)
        .input("x", FLOAT, &shape)
        .init_f32("w", &[c, c, 3, 3], &wave(c * c * 9, 1))
        .init_f32("b", &[c], &wave(c, 2))
        .init_f32("wp", &[c, c, 1, 1], &wave(c * c, 3))
        .node("Relu", &["x"], &["t"], &[])
        .node("Conv", &["t", "w", "b"], &["y"], &conv(3));
    let shortcut = if project {
        b = b.node("Conv", &["x", "wp"], &["s"], &conv(1));
        "s"
    } else {
        "x"
    };
    b = b.node("Add", &["y", shortcut], &["sum"], &[]).node("Relu", &["sum"], &["out"], &[]).output("out", FLOAT, &shape);
    for v in keep {
        b = b.output(v, FLOAT, &shape);
    }
    b
}

#[test]
fn residual_add_folds_into_the_conv() {
    // 32 wide, the CPU's direct conv adds the shortcut in registers; 20 wide, a gemm route runs
    // and one pass adds it after. With a projection, it takes the Add (the later conv), or with
    // its output kept, the 3×3 conv does, moved after the projection it now reads.
    for w in [20, 32] {
        for (project, keep) in [(false, &[][..]), (true, &[]), (true, &["s"])] {
            let x = TensorData::new((0..2 * 16 * 5 * w).map(|v| ((v * 37 % 23) as f32 - 11.0) / 7.0).collect::<Vec<_>>(), vec![2, 16, 5, w]);
            let (fused, g, steps) = run(residual_block(project, keep, w), x.clone());
            assert_eq!(g.load_stats().conv_residuals_fused, 1, "project {project}, keep {keep:?}");
            assert_eq!(steps, if project { 3 } else { 2 }, "the Add and its Relu should be gone (project {project})");
            let (plain, g, _) = run(residual_block(project, &["y", "s"][..if project { 2 } else { 1 }], w), x);
            assert_eq!(g.load_stats().conv_residuals_fused, 0, "conv outputs that are graph outputs keep their Add");
            let (want, got) = (floats(&plain[0]), floats(&fused[0]));
            assert!(want.iter().any(|&v| v > 0.1) && want.iter().any(|&v| v == 0.0), "the block should be partly rectified");
            let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "fused block off by {worst} (width {w}, project {project}, keep {keep:?})");
        }
    }
}

/// LinkNet's decoder tail, `relu(conv1×1(x)) + sigmoid(x)`, then FAST's head, a 1×1 conv to one
/// channel. With `keep` the first conv's output is also a graph output, which stops the folds.
fn decoder_tail(keep: bool) -> OnnxBuilder {
    let wave = |n: usize, seed: usize| (0..n).map(|i| ((i * 7 + seed * 13) as f32 * 0.7).sin() * 0.4).collect::<Vec<_>>();
    let mut b = OnnxBuilder::new(17)
        .input("x", FLOAT, &[2, 8, 6, 7])
        .init_f32("w", &[8, 8, 1, 1], &wave(64, 1))
        .init_f32("b", &[8], &wave(8, 2))
        .init_f32("w1", &[1, 8, 1, 1], &wave(8, 3))
        .init_f32("b1", &[1], &[0.25])
        .node("Conv", &["x", "w", "b"], &["y"], &[])
        .node("Relu", &["y"], &["r"], &[])
        .node("Sigmoid", &["x"], &["s"], &[])
        .node("Add", &["r", "s"], &["sum"], &[])
        .node("Conv", &["sum", "w1", "b1"], &["p"], &[])
        .output("p", FLOAT, &[2, 1, 6, 7]);
    if keep {
        b = b.output("y", FLOAT, &[2, 8, 6, 7]);
    }
    b
}

#[test]
fn add_after_the_activation_folds_into_the_conv() {
    let x = TensorData::new((0..2 * 8 * 6 * 7).map(|v| ((v * 37 % 23) as f32 - 11.0) / 7.0).collect::<Vec<_>>(), vec![2, 8, 6, 7]);
    let (plain, g, _) = run(decoder_tail(true), x.clone());
    assert_eq!(g.load_stats().conv_residuals_fused, 0, "a conv whose output is a graph output keeps its Add");
    let want = floats(&plain[0]);
    // On wgpu the Add joins the matmul's epilogue and the one-channel conv is a reduction.
    for backend in [Backend::Flex, Backend::Wgpu] {
        let (fused, g, steps) = run_on(backend, decoder_tail(false), x.clone());
        assert_eq!(g.load_stats().conv_residuals_fused, 1, "{backend:?}");
        assert_eq!(steps, 3, "{backend:?}: the Sigmoid and two convs, the Relu and the Add inside the first");
        let got = floats(&fused[0]);
        let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "{backend:?}: off by {worst}");
    }
}

/// FAST's neck in small: `cat(relu(conv(x)), resize(relu(conv_s2(x))))`. With `keep` the first
/// conv's output is also a graph output, which keeps its bias and ReLU in place.
fn neck_concat(keep: bool) -> OnnxBuilder {
    let mut rand = uniform(11);
    let pads = || ("pads", A::Ints(vec![1, 1, 1, 1]));
    let mut b = OnnxBuilder::new(13)
        .input("x", FLOAT, &[2, 4, 6, 6])
        .init_f32("w0", &[3, 4, 3, 3], &rand(3 * 4 * 9))
        .init_f32("b0", &[3], &[0.3, -0.2, 0.1])
        .init_f32("w1", &[2, 4, 3, 3], &rand(2 * 4 * 9))
        .init_f32("b1", &[2], &[-0.1, 0.2])
        .init_i64("sizes", &[4], &[2, 2, 6, 6])
        .node("Conv", &["x", "w0", "b0"], &["y0"], &[pads()])
        .node("Relu", &["y0"], &["r0"], &[])
        .node("Conv", &["x", "w1", "b1"], &["y1"], &[pads(), ("strides", A::Ints(vec![2, 2]))])
        .node("Relu", &["y1"], &["r1"], &[])
        .node("Resize", &["r1", "", "", "sizes"], &["u1"], &[("mode", A::Str("linear"))])
        .node("Concat", &["r0", "u1"], &["cat"], &[("axis", A::Int(1))])
        .output("cat", FLOAT, &[2, 5, 6, 6]);
    if keep {
        b = b.output("r0", FLOAT, &[2, 3, 6, 6]);
    }
    b
}

#[test]
fn conv_bias_and_relu_move_past_the_concat() {
    let x = TensorData::new(uniform(5)(2 * 4 * 36), vec![2, 4, 6, 6]);
    let (plain, g, _) = run(neck_concat(true), x.clone());
    assert_eq!(g.load_stats().concat_relus_deferred, 0, "a conv whose output is a graph output keeps its ReLU");
    let want = floats(&plain[0]);
    assert!(want.iter().all(|&v| v >= 0.0) && want.iter().filter(|&&v| v == 0.0).count() > 10, "the ReLUs must cut");
    // On wgpu the Concat adds the bias and applies the ReLU; flex keeps them in the conv.
    for backend in [Backend::Flex, Backend::Wgpu] {
        let (moved, g, _) = run_on(backend, neck_concat(false), x.clone());
        assert_eq!(g.load_stats().concat_relus_deferred, 1, "{backend:?}");
        let got = floats(&moved[0]);
        let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "{backend:?}: off by {worst}");
    }
}

/// Attention over `[2, 3, 5, 4]` heads: `softmax((q·s)·kᵀ)·v` as ViPTR writes it (`scale_query`),
/// or `softmax(where(mask, -1e9, q·kᵀ / c))·v` as PARSeq does.
fn attention(scale_query: bool) -> OnnxBuilder {
    let mut rand = uniform(3);
    let dims = [2, 3, 5, 4];
    let b = OnnxBuilder::new(17)
        .input("q", FLOAT, &dims)
        .init_f32("k", &dims, &rand(120))
        .init_f32("v", &dims, &rand(120))
        .init_f32("c", &[], &[0.5])
        .init_f32("neg", &[], &[-1e9])
        .node("Transpose", &["k"], &["kt"], &[("perm", A::Ints(vec![0, 1, 3, 2]))]);
    let b = if scale_query {
        b.node("Mul", &["q", "c"], &["qs"], &[]).node("MatMul", &["qs", "kt"], &["scores"], &[])
    } else {
        let mask: Vec<f32> = (0..25).map(|i| f32::from(u8::from(i % 5 > i / 5))).collect();
        b.init_f32("maskf", &[1, 1, 5, 5], &mask)
            .node("Cast", &["maskf"], &["mask"], &[("to", A::Int(9))])
            .node("MatMul", &["q", "kt"], &["raw"], &[])
            .node("Div", &["raw", "c"], &["scaled"], &[])
            .node("Where", &["mask", "neg", "scaled"], &["scores"], &[])
    };
    b.node("Softmax", &["scores"], &["p"], &[("axis", A::Int(-1))]).node("MatMul", &["p", "v"], &["y"], &[]).output("y", FLOAT, &dims)
}

/// The definition, for one head at a time.
fn attention_reference(q: &[f32], k: &[f32], v: &[f32], scale: f32, causal: bool) -> Vec<f32> {
    let (n, d) = (5, 4);
    let mut y = vec![];
    for h in 0..6 {
        let at = |t: &[f32], i: usize, j: usize| t[h * n * d + i * d + j];
        for i in 0..n {
            let s: Vec<f32> = (0..n).map(|j| if causal && j > i { -1e9 } else { (0..d).map(|e| at(q, i, e) * at(k, j, e)).sum::<f32>() * scale }).collect();
            let m = s.iter().cloned().fold(f32::MIN, f32::max);
            let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f32 = e.iter().sum();
            y.extend((0..d).map(|c| (0..n).map(|j| e[j] / z * at(v, j, c)).sum::<f32>()));
        }
    }
    y
}

#[test]
fn attention_softmax_runs_after_its_scale() {
    let q = uniform(9)(120);
    let (k, v) = { let mut r = uniform(3); (r(120), r(120)) };
    for scale_query in [true, false] {
        let (scale, causal) = if scale_query { (0.5, false) } else { (2.0, true) };
        let want = attention_reference(&q, &k, &v, scale, causal);
        for backend in [Backend::Flex, Backend::Wgpu] {
            let (out, g, _) = run_on(backend, attention(scale_query), TensorData::new(q.clone(), vec![2, 3, 5, 4]));
            assert_eq!(g.load_stats().attention_softmaxes, 1, "{backend:?}");
            let got = floats(&out[0]);
            let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "{backend:?}, scale on the query {scale_query}: off by {worst}");
        }
    }
}

#[test]
fn repeated_conv_stays_shared_rather_than_taking_shortcuts() {
    // The same conv twice (as SAR's decoder repeats its attention's at every step), each copy
    // feeding an Add with its own shortcut: merged into one conv computed once, which then has two
    // consumers and takes neither Add.
    let b = OnnxBuilder::new(17)
        .input("x", FLOAT, &[1, 4, 3, 3])
        .init_f32("w", &[4, 4, 1, 1], &(0..16).map(|v| v as f32 / 8.0 - 1.0).collect::<Vec<_>>())
        .node("Conv", &["x", "w"], &["y1"], &[])
        .node("Conv", &["x", "w"], &["y2"], &[])
        .node("Relu", &["x"], &["a"], &[])
        .node("Sigmoid", &["x"], &["s"], &[])
        .node("Add", &["y1", "a"], &["o1"], &[])
        .node("Add", &["y2", "s"], &["o2"], &[])
        .output("o1", FLOAT, &[1, 4, 3, 3])
        .output("o2", FLOAT, &[1, 4, 3, 3]);
    let (_, g, steps) = run(b, TensorData::new((0..36).map(|v| v as f32 / 9.0 - 2.0).collect::<Vec<_>>(), vec![1, 4, 3, 3]));
    assert_eq!(g.load_stats().nodes_deduplicated, 1);
    assert_eq!(g.load_stats().conv_residuals_fused, 0);
    assert_eq!(steps, 5, "one conv, the Relu, the Sigmoid and both Adds");
}

#[test]
fn softmax_and_reduce_mean() {
    let b = OnnxBuilder::new(17)
        .input("x", FLOAT, &[2, 2])
        .node("Softmax", &["x"], &["s"], &[("axis", A::Int(-1))])
        .node("ReduceMean", &["s"], &["y"], &[("axes", A::Ints(vec![1])), ("keepdims", A::Int(0))])
        .output("y", FLOAT, &[2]);
    let (out, _, _) = run(b, TensorData::new(vec![0.0f32, 0.0, 1.0, 3.0], vec![2, 2]));
    let y = floats(&out[0]);
    assert_eq!(y.len(), 2);
    assert!((y[0] - 0.5).abs() < 1e-6 && (y[1] - 0.5).abs() < 1e-6, "{y:?}");
}

#[test]
fn max_pool_with_asymmetric_padding() {
    let b = OnnxBuilder::new(17)
        .input("x", FLOAT, &[1, 1, 1, 4])
        .node(
            "MaxPool",
            &["x"],
            &["y"],
            &[("kernel_shape", A::Ints(vec![1, 2])), ("strides", A::Ints(vec![1, 2])), ("pads", A::Ints(vec![0, 1, 0, 0]))],
        )
        .output("y", FLOAT, &[1, 1, 1, 2]);
    let (out, _, _) = run(b, TensorData::new(vec![-1.0f32, -2.0, -3.0, -4.0], vec![1, 1, 1, 4]));
    // windows over [pad, -1, -2, -3, -4]: (pad,-1) → -1, (-2,-3) → -2
    assert_eq!(floats(&out[0]), vec![-1.0, -2.0]);
}

#[test]
fn scatter_nd_writes_rows() {
    let b = OnnxBuilder::new(17)
        .input("x", FLOAT, &[3, 2])
        .init_i64("idx", &[2, 1], &[2, -3])
        .init_f32("upd", &[2, 2], &[7., 8., 9., 10.])
        .node("ScatterND", &["x", "idx", "upd"], &["y"], &[])
        .output("y", FLOAT, &[3, 2]);
    let (out, _, _) = run(b, TensorData::new(vec![1.0f32, 2., 3., 4., 5., 6.], vec![3, 2]));
    assert_eq!(floats(&out[0]), vec![9., 10., 3., 4., 7., 8.]);
}

/// docTR's exportable `AdaptiveAvgPool2d` as torch unrolls it: for each cell written, Slice → Slice
/// → ReduceMean → Expand → Reshape → ScatterND, starting from a constant. Every other cell uses the
/// indices viptr's export has, `[N, C, 1, 1, 4]` with updates `[N, C, 1, 1]`.
fn adaptive_pool_chain(h: i64, w: i64, (ho, wo): (i64, i64), cells: &[(i64, i64)]) -> OnnxBuilder {
    let mut b = OnnxBuilder::new(18)
        .input("x", FLOAT, &[1, 2, h, w])
        .init_f32("empty", &[1, 2, ho, wo], &vec![0.0; (2 * ho * wo) as usize])
        .init_i64("axis_h", &[1], &[2])
        .init_i64("axis_w", &[1], &[3])
        .init_i64("hw", &[2], &[-2, -1])
        .init_i64("nc", &[2], &[1, 2])
        .init_i64("nc11", &[4], &[1, 2, 1, 1]);
    let mut data = "empty".to_string();
    for (k, &(oh, ow)) in cells.iter().enumerate() {
        let v = |s: &str| format!("{s}{k}");
        let (h0, h1) = (oh * h / ho, ((oh + 1) * h + ho - 1) / ho);
        let (w0, w1) = (ow * w / wo, ((ow + 1) * w + wo - 1) / wo);
        let (idx_shape, upd_shape): (&[i64], &str) = if k % 2 == 0 { (&[1, 2, 4], "nc") } else { (&[1, 2, 1, 1, 4], "nc11") };
        b = b
            .init_i64(&v("h0"), &[1], &[h0])
            .init_i64(&v("h1"), &[1], &[h1])
            .init_i64(&v("w0"), &[1], &[w0])
            .init_i64(&v("w1"), &[1], &[w1])
            .init_i64(&v("idx"), idx_shape, &[0, 0, oh, ow, 0, 1, oh, ow])
            .node("Slice", &["x", &v("h0"), &v("h1"), "axis_h"], &[&v("sh")], &[])
            .node("Slice", &[&v("sh"), &v("w0"), &v("w1"), "axis_w"], &[&v("sw")], &[])
            .node("ReduceMean", &[&v("sw"), "hw"], &[&v("mean")], &[("keepdims", A::Int(0))])
            .node("Expand", &[&v("mean"), "nc"], &[&v("e")], &[])
            .node("Reshape", &[&v("e"), upd_shape], &[&v("r")], &[])
            .node("ScatterND", &[&data, &v("idx"), &v("r")], &[&v("out")], &[]);
        data = v("out");
    }
    b.node("Identity", &[&data], &["y"], &[]).output("y", FLOAT, &[1, 2, ho, wo])
}

/// Adaptive average pooling of `[1, 2, h, w]` by its definition; cells not in `cells` stay 0.
fn adaptive_pool_reference(x: &[f32], h: usize, w: usize, (ho, wo): (usize, usize), cells: &[(i64, i64)]) -> Vec<f32> {
    let mut out = vec![0.0; 2 * ho * wo];
    for &(oh, ow) in cells {
        let (oh, ow) = (oh as usize, ow as usize);
        let (h0, h1) = (oh * h / ho, ((oh + 1) * h).div_ceil(ho));
        let (w0, w1) = (ow * w / wo, ((ow + 1) * w).div_ceil(wo));
        for c in 0..2 {
            let sum: f32 = (h0..h1).flat_map(|i| (w0..w1).map(move |j| (i, j))).map(|(i, j)| x[(c * h + i) * w + j]).sum();
            out[(c * ho + oh) * wo + ow] = sum / ((h1 - h0) * (w1 - w0)) as f32;
        }
    }
    out
}

#[test]
fn unrolled_adaptive_pool_becomes_one_reduction() {
    // (h, w, out, cells written, steps expected): a complete chain with uniform windows becomes
    // the pool alone; a chain that skips a cell, or has overlapping windows (5 rows into 2, 3 into 4),
    // stays a chain of scatters, and every one is still right.
    let all = |ho: i64, wo: i64| -> Vec<(i64, i64)> { (0..ho).flat_map(|i| (0..wo).map(move |j| (i, j))).collect() };
    let cases: Vec<(i64, i64, (i64, i64), Vec<(i64, i64)>, Option<usize>)> = vec![
        (4, 6, (2, 3), all(2, 3), Some(1)),
        (8, 5, (8, 1), all(8, 1), Some(1)),
        // viptr's shape of pool: more cells than rows (each row repeated), the columns averaged.
        (2, 6, (8, 1), all(8, 1), Some(1)),
        (4, 6, (2, 3), all(2, 3)[1..].to_vec(), None),
        (3, 6, (4, 3), all(4, 3), None),
        (5, 6, (2, 3), all(2, 3), None),
    ];
    for (h, w, out, cells, want_steps) in cases {
        let x: Vec<f32> = (0..2 * h * w).map(|v| ((v * 7) % 11) as f32 - 3.0).collect();
        let (ho, wo) = (out.0 as usize, out.1 as usize);
        let want = adaptive_pool_reference(&x, h as usize, w as usize, (ho, wo), &cells);
        let (got, _, steps) = run(adaptive_pool_chain(h, w, out, &cells), TensorData::new(x, vec![1, 2, h as usize, w as usize]));
        match want_steps {
            Some(n) => assert_eq!(steps, n, "{h}x{w} -> {out:?}: the chain should be one pool step"),
            None => assert!(steps > cells.len(), "{h}x{w} -> {out:?}: {steps} steps, the chain must stay"),
        }
        for (a, b) in floats(&got[0]).iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5, "{h}x{w} -> {out:?}: {a} vs {b}");
        }
    }
}

#[test]
fn hardswish_chain_becomes_one_op() {
    // x · clip(x + 3, 0, 6) / 6, as PaddleOCR exports it.
    let b = OnnxBuilder::new(13)
        .input("x", FLOAT, &[1, 6])
        .init_f32("three", &[1], &[3.0])
        .init_f32("zero", &[], &[0.0])
        .init_f32("six", &[], &[6.0])
        .init_f32("six_d", &[1], &[6.0])
        .node("Add", &["x", "three"], &["a"], &[])
        .node("Clip", &["a", "zero", "six"], &["c"], &[])
        .node("Mul", &["x", "c"], &["m"], &[])
        .node("Div", &["m", "six_d"], &["y"], &[])
        .output("y", FLOAT, &[1, 6]);
    let x = vec![-4.0f32, -3.0, -1.5, 0.0, 1.5, 4.0];
    let (out, g, steps) = run(b, TensorData::new(x.clone(), vec![1, 6]));
    assert_eq!(g.load_stats().hardswish_fused, 1);
    assert_eq!(steps, 1, "one HardSwish should remain");
    let want: Vec<f32> = x.iter().map(|v| v * (v + 3.0).clamp(0.0, 6.0) / 6.0).collect();
    for (a, b) in floats(&out[0]).iter().zip(&want) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
}

#[test]
fn conv_scale_and_shift_fold_into_the_weights() {
    // y = (conv(x) · [2, −1]) + 0.5 per output channel.
    let b = OnnxBuilder::new(17)
        .input("x", FLOAT, &[1, 1, 2, 2])
        .init_f32("w", &[2, 1, 1, 1], &[1.0, 3.0])
        .init_f32("s", &[1, 2, 1, 1], &[2.0, -1.0])
        .init_f32("t", &[1], &[0.5])
        .node("Conv", &["x", "w"], &["c"], &[("kernel_shape", A::Ints(vec![1, 1]))])
        .node("Mul", &["s", "c"], &["m"], &[])
        .node("Add", &["m", "t"], &["y"], &[])
        .output("y", FLOAT, &[1, 2, 2, 2]);
    let (out, g, steps) = run(b, TensorData::new(vec![0.0f32, 1.0, -1.0, 2.0], vec![1, 1, 2, 2]));
    assert_eq!(g.load_stats().conv_affines_folded, 1);
    assert_eq!(steps, 1, "only the conv should remain");
    assert_eq!(floats(&out[0]), vec![0.5, 2.5, -1.5, 4.5, 0.5, -2.5, 3.5, -5.5]);
}

/// Reproducible values in [-0.5, 0.5): a linear congruential generator from `seed`.
fn uniform(mut seed: u32) -> impl FnMut(usize) -> Vec<f32> {
    move |len| {
        (0..len)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }
}

/// Direct NCHW convolution, the definition, for checking Kiln's CPU kernel.
#[allow(clippy::too_many_arguments)]
fn conv_reference(x: &[f32], xs: [usize; 4], w: &[f32], ws: [usize; 4], b: &[f32], stride: usize, dil: usize, pads: [usize; 4], groups: usize) -> (Vec<f32>, [usize; 4]) {
    let [n, c, h, wd] = xs;
    let [m, cg, kh, kw] = ws;
    let oh = (h + pads[0] + pads[2] - dil * (kh - 1) - 1) / stride + 1;
    let ow = (wd + pads[1] + pads[3] - dil * (kw - 1) - 1) / stride + 1;
    let mg = m / groups;
    let mut out = vec![0f32; n * m * oh * ow];
    for i in 0..n {
        for co in 0..m {
            let g = co / mg;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = b[co];
                    for ci in 0..cg {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * stride + ky * dil) as isize - pads[0] as isize;
                                let ix = (ox * stride + kx * dil) as isize - pads[1] as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xv = x[((i * c + g * cg + ci) * h + iy as usize) * wd + ix as usize];
                                acc += xv * w[((co * cg + ci) * kh + ky) * kw + kx];
                            }
                        }
                    }
                    out[((i * m + co) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    (out, [n, m, oh, ow])
}

#[test]
fn conv_matches_its_definition() {
    // (input, weight, stride, dilation, pads t/l/b/r, groups): an RGB stem, a strided grouped
    // conv, a dilated one with asymmetric pads, a pointwise one, a depthwise one, two wide stride-1
    // ones (one gemm per tap), the second with asymmetric pads, then more depthwise and stems.
    let cases: &[([usize; 4], [usize; 4], usize, usize, [usize; 4], usize)] = &[
        ([1, 64, 5, 7], [8, 64, 3, 3], 1, 1, [1, 1, 1, 1], 1),
        ([2, 64, 4, 6], [5, 64, 3, 2], 1, 1, [0, 1, 2, 0], 1),
        ([2, 3, 17, 20], [8, 3, 3, 3], 2, 1, [1, 1, 1, 1], 1),
        ([1, 4, 9, 11], [6, 2, 3, 3], 2, 1, [1, 1, 1, 1], 2),
        ([1, 3, 10, 12], [4, 3, 3, 2], 1, 2, [2, 0, 1, 3], 1),
        ([3, 5, 6, 7], [7, 5, 1, 1], 1, 1, [0, 0, 0, 0], 1),
        ([1, 6, 9, 9], [6, 1, 5, 5], 2, 1, [2, 2, 2, 2], 6),
        // Depthwise and RGB-stem convs run over row and column phases: odd pads, odd widths,
        // dilation, stride 3.
        ([2, 4, 12, 13], [4, 1, 3, 3], 2, 1, [1, 1, 1, 1], 4),
        ([2, 3, 16, 15], [3, 1, 5, 5], 2, 1, [2, 1, 2, 2], 3),
        ([1, 5, 10, 9], [5, 1, 3, 3], 1, 2, [2, 2, 2, 2], 5),
        ([1, 2, 14, 17], [2, 1, 3, 3], 3, 1, [1, 0, 1, 1], 2),
        ([1, 3, 13, 16], [4, 3, 3, 3], 3, 1, [0, 0, 0, 0], 1),
        ([2, 3, 15, 17], [6, 3, 3, 3], 2, 1, [1, 2, 0, 1], 1),
        // Depthwise taps that read only padding are skipped: planes one or two rows high (CRNN's
        // after its height is pooled away), one column wide.
        ([2, 4, 1, 20], [4, 1, 5, 5], 1, 1, [2, 2, 2, 2], 4),
        ([1, 3, 2, 9], [3, 1, 5, 5], 2, 1, [2, 2, 2, 2], 3),
        ([1, 2, 6, 1], [2, 1, 3, 3], 1, 1, [1, 1, 1, 1], 2),
        // RGB stems large enough to run in several bands of output rows (strided with asymmetric
        // pads, dilated).
        ([1, 3, 200, 300], [8, 3, 3, 3], 1, 1, [1, 1, 1, 1], 1),
        ([2, 3, 190, 250], [6, 3, 3, 3], 2, 1, [1, 0, 2, 1], 1),
        ([1, 3, 160, 200], [5, 3, 3, 3], 1, 2, [2, 2, 2, 2], 1),
        // Sixteen channels per pass (AVX-512) plus four, over rows that end in a partial block.
        ([2, 3, 40, 70], [20, 3, 3, 3], 2, 1, [1, 1, 1, 1], 1),
        // ResNet's 7×7 stride-2 stem (147 taps), 18 channels: one 16-channel block and a tail.
        ([1, 3, 45, 70], [18, 3, 7, 7], 2, 1, [3, 3, 3, 3], 1),
        // A shallow 1×1 conv over a large plane (summed in registers, not a gemm).
        ([1, 20, 64, 70], [18, 20, 1, 1], 1, 1, [0, 0, 0, 0], 1),
        // Small planes, several images per gemm: CRNN-like 1×1 and 3×3 convs over a few rows.
        ([7, 16, 1, 32], [24, 16, 1, 1], 1, 1, [0, 0, 0, 0], 1),
        ([5, 8, 3, 10], [12, 8, 3, 3], 1, 1, [1, 1, 1, 1], 1),
        ([3, 12, 6, 9], [10, 12, 3, 3], 2, 1, [1, 1, 1, 1], 1),
        // Low planes whose edge rows read padding through some kernel rows (one gemm per output
        // row over its live kernel rows): CRNN VGG's 2-row maps, a dilated 5-row one.
        ([3, 8, 2, 16], [6, 8, 3, 3], 1, 1, [1, 1, 1, 1], 1),
        ([2, 5, 5, 12], [7, 5, 3, 3], 1, 2, [2, 1, 1, 2], 1),
        // Register-blocked direct convs (AVX-512): channels past a block of 8, rows past a block
        // of 32 positions, asymmetric pads.
        ([2, 64, 17, 40], [11, 64, 3, 3], 1, 1, [1, 1, 1, 1], 1),
        ([1, 64, 9, 20], [9, 64, 3, 2], 1, 1, [0, 1, 2, 0], 1),
        // 3×3 stride-1 convs as Winograd F(2×2, 3×3) (AVX-512): odd output sizes, a batch,
        // asymmetric pads.
        ([2, 32, 9, 62], [10, 32, 3, 3], 1, 1, [1, 1, 1, 1], 1),
        ([1, 24, 10, 33], [7, 24, 3, 3], 1, 1, [0, 1, 2, 0], 1),
        // Direct convs strided by two (de-interleaved rows): ResNet's 3×3 downsampling, with
        // asymmetric pads.
        ([1, 32, 20, 127], [9, 32, 3, 3], 2, 1, [1, 1, 1, 1], 1),
        ([2, 16, 9, 63], [5, 16, 3, 3], 2, 1, [0, 1, 1, 0], 1),
        // 1×1 convs strided by two: every second row and column, then a pointwise route
        // (shallow) or a gemm (deep).
        ([2, 20, 9, 70], [12, 20, 1, 1], 2, 1, [0, 0, 0, 0], 1),
        ([1, 300, 6, 40], [8, 300, 1, 1], 2, 1, [0, 0, 0, 0], 1),
        // 5×5 depthwise convs with the lanes across channels (AVX-512): a block of sixteen and
        // a tail, strided with asymmetric pads, over an 8×8 plane, dilated.
        ([2, 24, 16, 16], [24, 1, 5, 5], 2, 1, [2, 2, 1, 2], 24),
        ([3, 40, 8, 8], [40, 1, 5, 5], 1, 1, [2, 2, 2, 2], 40),
        ([1, 20, 11, 13], [20, 1, 5, 5], 1, 2, [4, 3, 4, 5], 20),
    ];
    let mut rand = uniform(1);
    // Each case also with an activation after it, which a load pass folds into the conv.
    let activations: [(&str, fn(f32) -> f32); 4] = [
        ("", |v| v),
        ("Relu", |v| v.max(0.0)),
        ("Clip", |v| v.clamp(-0.1, 0.2)),
        ("HardSwish", |v| v * (v / 6.0 + 0.5).clamp(0.0, 1.0)),
    ];
    for (case, &(xs, ws, stride, dil, pads, groups)) in cases.iter().enumerate() {
        let (x, w, bias) = (rand(xs.iter().product()), rand(ws.iter().product()), rand(ws[0]));
        let (conv, os) = conv_reference(&x, xs, &w, ws, &bias, stride, dil, pads, groups);
        let (act, f) = activations[(case + 1) % activations.len()];
        let want: Vec<f32> = conv.iter().map(|&v| f(v)).collect();
        let i64s = |v: &[usize]| v.iter().map(|&d| d as i64).collect::<Vec<_>>();
        let mut b = OnnxBuilder::new(17)
            .input("x", FLOAT, &i64s(&xs))
            .init_f32("w", &i64s(&ws), &w)
            .init_f32("b", &[ws[0] as i64], &bias)
            .init_f32("lo", &[], &[-0.1])
            .init_f32("hi", &[], &[0.2])
            .node(
                "Conv",
                &["x", "w", "b"],
                &[if act.is_empty() { "y" } else { "c" }],
                &[
                    ("kernel_shape", A::Ints(i64s(&ws[2..]))),
                    ("strides", A::Ints(vec![stride as i64; 2])),
                    ("dilations", A::Ints(vec![dil as i64; 2])),
                    ("pads", A::Ints(i64s(&pads))),
                    ("group", A::Int(groups as i64)),
                ],
            );
        b = match act {
            "" => b,
            "Clip" => b.node("Clip", &["c", "lo", "hi"], &["y"], &[]),
            op => b.node(op, &["c"], &["y"], &[]),
        };
        let b = b.output("y", FLOAT, &i64s(&os));
        let (out, g, steps) = run(b, TensorData::new(x, xs.to_vec()));
        assert_eq!(out[0].shape().as_slice(), os.as_slice(), "case {xs:?} {ws:?}");
        assert_eq!(g.load_stats().conv_activations_fused, usize::from(!act.is_empty()), "{act}");
        assert_eq!(steps, 1, "{act}: the activation runs inside the conv");
        let got = floats(&out[0]);
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "case {xs:?} {ws:?} stride {stride} dilation {dil} pads {pads:?} {act}: off by {worst}");
    }
}

/// Transposed NCHW convolution by its definition: input `(iy, ix)` through tap `(ky, kx)` adds
/// into output `(iy·s + ky·d − top, ix·s + kx·d − left)`.
#[allow(clippy::too_many_arguments)]
fn conv_transpose_reference(x: &[f32], xs: [usize; 4], w: &[f32], ws: [usize; 4], b: &[f32], stride: usize, dil: usize, pads: [usize; 4], out_pad: usize, groups: usize) -> (Vec<f32>, [usize; 4]) {
    let [n, c, h, wd] = xs;
    let [_, mg, kh, kw] = ws;
    let (cg, m) = (c / groups, mg * groups);
    let oh = stride * (h - 1) + out_pad + dil * (kh - 1) + 1 - pads[0] - pads[2];
    let ow = stride * (wd - 1) + out_pad + dil * (kw - 1) + 1 - pads[1] - pads[3];
    let mut out = vec![0f32; n * m * oh * ow];
    for i in 0..n {
        for co in 0..m {
            out[(i * m + co) * oh * ow..(i * m + co + 1) * oh * ow].fill(b[co]);
        }
        for ci in 0..c {
            let grp = ci / cg;
            for j in 0..mg {
                let co = grp * mg + j;
                for iy in 0..h {
                    for ix in 0..wd {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let oy = (iy * stride + ky * dil) as isize - pads[0] as isize;
                                let ox = (ix * stride + kx * dil) as isize - pads[1] as isize;
                                if oy < 0 || ox < 0 || oy >= oh as isize || ox >= ow as isize {
                                    continue;
                                }
                                out[((i * m + co) * oh + oy as usize) * ow + ox as usize] +=
                                    x[((i * c + ci) * h + iy) * wd + ix] * w[((ci * mg + j) * kh + ky) * kw + kx];
                            }
                        }
                    }
                }
            }
        }
    }
    (out, [n, m, oh, ow])
}

#[test]
fn conv_transpose_with_batchnorm_and_relu_matches_its_definition() {
    conv_transpose_cases(Backend::Flex);
}

/// On the CubeCL backends transposed convs with constant weights run as a stride-1 conv over
/// every output phase and an interleave.
#[test]
fn conv_transpose_in_sub_pixel_form_matches_its_definition_on_wgpu() {
    conv_transpose_cases(Backend::Wgpu);
}

fn conv_transpose_cases(backend: Backend) {
    // (input, weight [C, M/g, kh, kw], stride, dilation, pads t/l/b/r, output padding, groups):
    // DB's 2×2 stride-2 head, LinkNet's 3×3 stride-2 decoder, a dilated one with asymmetric pads,
    // a grouped one (Burn's kernel), more below.
    let cases: &[([usize; 4], [usize; 4], usize, usize, [usize; 4], usize, usize)] = &[
        ([2, 3, 5, 6], [3, 4, 2, 2], 2, 1, [0, 0, 0, 0], 0, 1),
        ([1, 4, 5, 5], [4, 3, 3, 3], 2, 1, [1, 1, 1, 1], 1, 1),
        ([1, 2, 4, 3], [2, 3, 3, 2], 1, 2, [1, 0, 0, 1], 0, 1),
        ([1, 4, 3, 3], [4, 2, 2, 2], 2, 1, [0, 0, 0, 0], 0, 2),
        // Kernel = stride tiles the output (written once, 3 taps per row), and with an output
        // padding it does not (bias fill and adds).
        ([2, 2, 4, 5], [2, 3, 3, 3], 3, 1, [0, 0, 0, 0], 0, 1),
        ([1, 3, 4, 4], [3, 2, 2, 2], 2, 1, [0, 0, 0, 0], 1, 1),
        // Sub-pixel phases with uneven pads, pads past the stride, and a crop of the last phase.
        ([1, 2, 4, 5], [2, 3, 4, 3], 2, 1, [1, 0, 2, 1], 1, 1),
        ([2, 3, 3, 4], [3, 2, 5, 5], 3, 1, [2, 4, 3, 2], 2, 1),
    ];
    let mut rand = uniform(7);
    for &(xs, ws, stride, dil, pads, out_pad, groups) in cases {
        let m = ws[1] * groups;
        let (x, w, bias) = (rand(xs.iter().product()), rand(ws.iter().product()), rand(m));
        let (scale, shift, mean) = (rand(m), rand(m), rand(m));
        let var: Vec<f32> = rand(m).iter().map(|v| v + 1.0).collect();
        let (conv, os) = conv_transpose_reference(&x, xs, &w, ws, &bias, stride, dil, pads, out_pad, groups);
        let want: Vec<f32> = conv
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let ch = (i / (os[2] * os[3])) % m;
                ((v - mean[ch]) / (var[ch] + 1e-5).sqrt() * scale[ch] + shift[ch]).max(0.0)
            })
            .collect();
        let i64s = |v: &[usize]| v.iter().map(|&d| d as i64).collect::<Vec<_>>();
        let b = OnnxBuilder::new(17)
            .input("x", FLOAT, &i64s(&xs))
            .init_f32("w", &i64s(&ws), &w)
            .init_f32("b", &[m as i64], &bias)
            .init_f32("scale", &[m as i64], &scale)
            .init_f32("shift", &[m as i64], &shift)
            .init_f32("mean", &[m as i64], &mean)
            .init_f32("var", &[m as i64], &var)
            .node(
                "ConvTranspose",
                &["x", "w", "b"],
                &["c"],
                &[
                    ("kernel_shape", A::Ints(i64s(&ws[2..]))),
                    ("strides", A::Ints(vec![stride as i64; 2])),
                    ("dilations", A::Ints(vec![dil as i64; 2])),
                    ("pads", A::Ints(i64s(&pads))),
                    ("output_padding", A::Ints(vec![out_pad as i64; 2])),
                    ("group", A::Int(groups as i64)),
                ],
            )
            .node("BatchNormalization", &["c", "scale", "shift", "mean", "var"], &["n"], &[])
            .node("Relu", &["n"], &["y"], &[])
            .output("y", FLOAT, &i64s(&os));
        let (out, g, steps) = run_on(backend, b, TensorData::new(x, xs.to_vec()));
        assert_eq!(out[0].shape().as_slice(), os.as_slice(), "case {xs:?} {ws:?}");
        assert_eq!(g.load_stats().batchnorms_folded, 1, "case {xs:?} {ws:?}");
        assert_eq!(steps, 1, "case {xs:?} {ws:?}: BatchNormalization and Relu run inside the ConvTranspose");
        let got = floats(&out[0]);
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "{backend:?} case {xs:?} {ws:?} stride {stride} dilation {dil} pads {pads:?} groups {groups}: off by {worst}");
    }
}

/// ONNX's bilinear resize of one plane, by its definition: each output pixel maps back to a source
/// coordinate (align_corners or half_pixel, clamped) and blends its four neighbours.
fn bilinear_reference(x: &[f32], (h, w): (usize, usize), (oh, ow): (usize, usize), align: bool) -> Vec<f32> {
    let src = |d: usize, len: usize, out: usize| -> f32 {
        let s = if align { if out > 1 { d as f32 * (len - 1) as f32 / (out - 1) as f32 } else { 0.0 } } else { (d as f32 + 0.5) * len as f32 / out as f32 - 0.5 };
        s.clamp(0.0, (len - 1) as f32)
    };
    let mut out = vec![];
    for oy in 0..oh {
        for ox in 0..ow {
            let (sy, sx) = (src(oy, h, oh), src(ox, w, ow));
            let (y0, x0) = (sy.floor() as usize, sx.floor() as usize);
            let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
            let (fy, fx) = (sy - y0 as f32, sx - x0 as f32);
            let at = |y: usize, c: usize| x[y * w + c];
            let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
            let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
            out.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    out
}

#[test]
fn bilinear_resize_matches_its_definition_and_to_its_own_size_is_free() {
    // Up-sampling (interpolated along columns first), down-sampling (along rows first), a mixed
    // one, and DB's resize of a branch to its own size, which becomes no step at all.
    let cases = [((3, 5), (12, 10)), ((8, 6), (4, 3)), ((4, 4), (2, 12)), ((5, 7), (5, 7))];
    let mut rand = uniform(7);
    for ((h, w), (oh, ow)) in cases {
        for align in [true, false] {
            let x = rand(2 * h * w);
            let ctm = if align { "align_corners" } else { "half_pixel" };
            let b = OnnxBuilder::new(13)
                .input("x", FLOAT, &[1, 2, h as i64, w as i64])
                .init_i64("sizes", &[4], &[1, 2, oh as i64, ow as i64])
                .node("Resize", &["x", "", "", "sizes"], &["y"], &[("mode", A::Str("linear")), ("coordinate_transformation_mode", A::Str(ctm))])
                .output("y", FLOAT, &[1, 2, oh as i64, ow as i64]);
            let (out, _, steps) = run(b, TensorData::new(x.clone(), vec![1, 2, h, w]));
            let got = floats(&out[0]);
            let want: Vec<f32> = x.chunks(h * w).flat_map(|p| bilinear_reference(p, (h, w), (oh, ow), align)).collect();
            let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(diff < 1e-5, "{h}×{w} → {oh}×{ow} ({ctm}): max diff {diff}");
            assert_eq!(steps, usize::from((h, w) != (oh, ow)), "{h}×{w} → {oh}×{ow}: steps");
        }
    }
}

#[test]
fn raw_weights_load_exactly_at_every_byte_offset() {
    // Names of 1 to 4 bytes put each weight's raw data at a different offset modulo 4 in the
    // file; loading gives each weight an aligned buffer of its own (or copies it), from a file
    // and from memory alike.
    let mut b = OnnxBuilder::new(17).input("x", FLOAT, &[1, 3]);
    let mut prev = "x".to_string();
    for (i, name) in ["a", "bb", "ccc", "dddd"].iter().enumerate() {
        let v = [i as f32 + 0.25, -(i as f32) * 10.0, 1e-3 * i as f32];
        let out = format!("s{i}");
        b = b.init_f32_raw(name, &[1, 3], &v).node("Add", &[&prev, name], &[&out], &[]);
        prev = out;
    }
    let b = b.output(&prev, FLOAT, &[1, 3]);
    let want: Vec<f32> = (0..3)
        .map(|j| (0..4).map(|i| [i as f32 + 0.25, -(i as f32) * 10.0, 1e-3 * i as f32][j]).fold(1.0, |a, v| a + v))
        .collect();
    let dir = kiln_fixtures::ScratchDir::new("kiln-ops").unwrap();
    let path = dir.path().join("offsets.onnx");
    std::fs::write(&path, b.bytes()).unwrap();
    let from_file = Graph::load(&path).unwrap();
    for g in [from_file, Graph::from_bytes(b.bytes(), "offsets.onnx").unwrap()] {
        let plan = g.compile(Backend::Flex, Mode::Fused, &[vec![1, 3]]).unwrap();
        let out = plan.run(&[TensorData::new(vec![1.0f32; 3], vec![1, 3])]).unwrap();
        assert_eq!(floats(&out[0]), want);
    }
}

/// The CPUs a thread may run on, from `/proc` (`thread-self`: the calling thread).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn cpus_allowed(who: &str) -> Vec<usize> {
    let status = std::fs::read_to_string(format!("/proc/{who}/status")).unwrap();
    let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap().trim();
    list.split(',')
        .flat_map(|r| match r.split_once('-') {
            Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).collect::<Vec<usize>>(),
            None => vec![r.parse().unwrap()],
        })
        .collect()
}

/// With a rayon worker per CPU (the default where no CPU quota holds the process below its CPUs),
/// loading a graph pins each worker to its own CPU; a pool of another size, or
/// `KILN_PIN_THREADS=0`, stays unpinned.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn cpu_workers_are_pinned_one_to_a_cpu() {
    let allowed = cpus_allowed("self");
    let workers = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&t: &usize| t > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().unwrap().get());
    let expected = allowed.len() >= 2 && workers == allowed.len() && std::env::var("KILN_PIN_THREADS").map_or(true, |v| v != "0");
    let b = OnnxBuilder::new(17).input("x", FLOAT, &[2]).node("Relu", &["x"], &["y"], &[]).output("y", FLOAT, &[2]);
    Graph::from_bytes(b.bytes(), "test.onnx").unwrap();
    assert_eq!(kiln_graph::pin_cpu_workers(), expected);
    let mut per_worker: Vec<Vec<usize>> = rayon::broadcast(|_| cpus_allowed("thread-self"));
    if expected {
        assert!(per_worker.iter().all(|c| c.len() == 1), "{per_worker:?}");
        per_worker.sort();
        assert_eq!(per_worker.concat(), allowed);
    } else {
        assert!(per_worker.iter().all(|c| c == &allowed), "{per_worker:?}");
    }
}

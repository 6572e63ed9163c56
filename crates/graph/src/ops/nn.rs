//! Neural-network ops: convolutions, pooling, normalisation, matrix products, softmax, resize.
//! One-dimensional convolutions and pools run as their 2-D forms with a unit height.

use burn_backend::TensorData;
use burn_backend::ops::{
    ActivationOps, ConvOptions, ConvTransposeOptions, FloatTensorOps, InterpolateMode, InterpolateOptions, ModuleOps,
    PadMode,
};

use super::{
    Input, Lowering, TypeInfo, axis, broadcast, const_floats, const_ints, device_dims, input, kernel, kernel_with,
    kernel_with_cubecl, opt_input,
};
use super::cpu_kernels::{self, ConvGeometry, Epilogue};
use super::subpixel;
use crate::error::{Result, bail, err};
use crate::model::{ElemType, Node};
use crate::ir::{Activation, Shortcut};
use crate::tensor::{B, T, expand, is_flex, permute, reshape, shape, slice, to_rank};

pub const OPS: &[&str] = &[
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "BatchNormalization", "LayerNormalization", "Softmax", "LogSoftmax", "Gemm", "MatMul", "Resize",
];

pub fn handles(op: &str) -> bool {
    OPS.contains(&op)
}

pub fn lower(node: &Node, inputs: &[Option<Input>], opset: i64) -> Result<Lowering> {
    match node.op.as_str() {
        "Conv" => lower_conv(node, inputs),
        "ConvTranspose" => lower_conv_transpose(node, inputs),
        "MaxPool" | "AveragePool" => lower_pool(node, inputs),
        "GlobalAveragePool" | "GlobalMaxPool" => {
            let x = float_input(inputs, 0, node)?;
            let mut out = x.ty.shape.clone();
            let dims: Vec<usize> = (2..out.len()).collect();
            for &d in &dims {
                out[d] = 1;
            }
            let max = node.op == "GlobalMaxPool";
            // One reduction over the flattened spatial dims: one kernel instead of one per dim.
            // On the CubeCL backends activations are channels-last (Burn's convs leave them so),
            // where the spatial dims flatten as a view only with channels last.
            let (n, c, hw) = (x.ty.shape[0], x.ty.shape[1], x.ty.shape[2..].iter().product());
            let rank = out.len();
            kernel(vec![TypeInfo::new(ElemType::F32, out.clone())], vec![0], move |ctx, mut v| {
                let x = v.remove(0);
                let reduce = |t, dim| if max { B::float_max_dim(t, dim) } else { B::float_mean_dim(t, dim) };
                if is_flex(&x) {
                    if let Some(y) = cpu_kernels::reduce_rows(ctx, &x, hw, max) {
                        return vec![reshape(y, &out)];
                    }
                    return vec![reshape(reduce(reshape(x, &[n, c, hw]), 2), &out)];
                }
                let last: Vec<usize> = std::iter::once(0).chain(2..rank).chain([1]).collect();
                let t = reduce(reshape(permute(x, &last), &[n, hw, c]), 1);
                vec![reshape(t, &out)]
            })
        }
        "BatchNormalization" => lower_batchnorm(node, inputs),
        "LayerNormalization" => lower_layernorm(node, inputs),
        "Softmax" | "LogSoftmax" => lower_softmax(node, inputs, opset),
        "Gemm" => lower_gemm(node, inputs),
        "MatMul" => lower_matmul(node, inputs),
        "Resize" => lower_resize(node, inputs, opset),
        other => bail!(UnsupportedOp, "nn op {other}"),
    }
}

fn float_input<'a>(inputs: &'a [Option<Input<'a>>], i: usize, node: &Node) -> Result<Input<'a>> {
    let x = input(inputs, i, node)?;
    if x.ty.elem != ElemType::F32 {
        bail!(UnsupportedAttribute, "{} input {i} must be float32, got {:?}", node.op, x.ty.elem);
    }
    Ok(x)
}

/// Spatial attributes shared by Conv, ConvTranspose and the pools, normalised to 2-D.
struct Window {
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    /// (begin, end) per spatial axis.
    pads: [(usize, usize); 2],
    /// The input had one spatial dimension (lifted to height 1).
    one_d: bool,
}

fn window(node: &Node, spatial: &[usize], kernel: Option<Vec<usize>>) -> Result<Window> {
    let nd = spatial.len();
    if nd == 0 || nd > 2 {
        bail!(UnsupportedAttribute, "{}-D {} (only 1-D and 2-D are supported)", nd, node.op);
    }
    let kernel: Vec<usize> = match node.ints("kernel_shape")? {
        Some(k) => k.iter().map(|&v| v as usize).collect(),
        None => kernel.ok_or_else(|| err!(InvalidGraph, "{} needs kernel_shape", node.op))?,
    };
    let get = |name: &str, default: usize| -> Result<Vec<usize>> {
        Ok(node.ints(name)?.map(|v| v.iter().map(|&x| x.max(0) as usize).collect()).unwrap_or(vec![default; nd]))
    };
    let stride = get("strides", 1)?;
    let dilation = get("dilations", 1)?;
    if kernel.len() != nd || stride.len() != nd || dilation.len() != nd || stride.contains(&0) || dilation.contains(&0) {
        bail!(InvalidGraph, "{} kernel/strides/dilations do not match {nd} spatial dims", node.op);
    }
    let auto_pad = node.string("auto_pad", "NOTSET")?;
    let mut pads = vec![(0usize, 0usize); nd];
    match auto_pad.as_str() {
        "NOTSET" => {
            if let Some(p) = node.ints("pads")? {
                if p.len() != 2 * nd || p.iter().any(|&v| v < 0) {
                    bail!(InvalidGraph, "{} pads {p:?} invalid for {nd} spatial dims", node.op);
                }
                for i in 0..nd {
                    pads[i] = (p[i] as usize, p[i + nd] as usize);
                }
            }
        }
        "VALID" => {}
        "SAME_UPPER" | "SAME_LOWER" if node.op != "ConvTranspose" => {
            for i in 0..nd {
                let out = spatial[i].div_ceil(stride[i]);
                let need = ((out - 1) * stride[i] + (kernel[i] - 1) * dilation[i] + 1).saturating_sub(spatial[i]);
                let small = need / 2;
                pads[i] = if auto_pad == "SAME_UPPER" { (small, need - small) } else { (need - small, small) };
            }
        }
        other => bail!(UnsupportedAttribute, "auto_pad '{other}'"),
    }
    let lift = |v: &[usize], fill: usize| if nd == 1 { [fill, v[0]] } else { [v[0], v[1]] };
    Ok(Window {
        kernel: lift(&kernel, 1),
        stride: lift(&stride, 1),
        dilation: lift(&dilation, 1),
        pads: if nd == 1 { [(0, 0), pads[0]] } else { [pads[0], pads[1]] },
        one_d: nd == 1,
    })
}

impl Window {
    fn symmetric(&self) -> bool {
        self.pads.iter().all(|(b, e)| b == e)
    }
    /// Output size of a sliding window along spatial axis `i` (of the lifted 2-D form).
    fn out_len(&self, i: usize, len: usize, ceil: bool) -> Result<usize> {
        let (b, e) = self.pads[i];
        let span = self.dilation[i] * (self.kernel[i] - 1) + 1;
        let padded = len + b + e;
        if padded < span {
            bail!(ShapeMismatch, "window of {span} does not fit input of {len} (+{b}+{e} padding)");
        }
        let n = padded - span;
        let mut out = if ceil { n.div_ceil(self.stride[i]) } else { n / self.stride[i] } + 1;
        // ONNX (and PyTorch) drop a last window that starts inside the end padding.
        if ceil && (out - 1) * self.stride[i] >= len + b {
            out -= 1;
        }
        Ok(out)
    }
}

/// `[N, C, L]` → `[N, C, 1, L]` for 1-D ops.
fn lift_dims(shape: &[usize]) -> Vec<usize> {
    let mut s = shape.to_vec();
    s.insert(2, 1);
    s
}

fn lower_conv(node: &Node, inputs: &[Option<Input>]) -> Result<Lowering> {
    let (x, w) = (float_input(inputs, 0, node)?, float_input(inputs, 1, node)?);
    let bias = opt_input(inputs, 2);
    let xs = &x.ty.shape;
    let ws = &w.ty.shape;
    if xs.len() < 3 || ws.len() != xs.len() {
        bail!(ShapeMismatch, "Conv input {xs:?} and weight {ws:?} ranks do not fit");
    }
    let groups = node.int("group", 1)?.max(1) as usize;
    if xs[1] != ws[1] * groups || ws[0] % groups != 0 {
        bail!(ShapeMismatch, "Conv input channels {} != weight {:?} × group {groups}", xs[1], ws);
    }
    let win = window(node, &xs[2..], Some(ws[2..].to_vec()))?;
    let (x4, w4) = if win.one_d { (lift_dims(xs), lift_dims(ws)) } else { (xs.clone(), ws.clone()) };
    let oh = win.out_len(0, x4[2], false)?;
    let ow = win.out_len(1, x4[3], false)?;
    let out4 = vec![xs[0], ws[0], oh, ow];
    let out = if win.one_d { vec![xs[0], ws[0], ow] } else { out4.clone() };
    // Burn takes (begin, end) pads; asymmetric ones are padded explicitly first, in case a
    // backend only implements symmetric padding.
    let explicit = (!win.symmetric()).then_some(win.pads);
    let options = ConvOptions::new_with_padding(
        win.stride,
        if explicit.is_some() { [(0, 0); 2] } else { win.pads },
        win.dilation,
        groups,
    );
    let mut uses = vec![0, 1];
    if bias.is_some() {
        uses.push(2);
    }
    // A shortcut a load pass folded in (`passes::fuse_conv_residual`), added before the epilogue
    // or after it; the output takes its shape where it broadcasts wider.
    let shortcut = node.fused().shortcut;
    let after = shortcut == Some(Shortcut::AfterActivation);
    let marked = shortcut.is_some();
    let residual = marked.then(|| opt_input(inputs, 3)).flatten();
    if marked && residual.is_none() {
        bail!(InvalidGraph, "Conv marked with a residual has no fourth input");
    }
    let out = match residual {
        Some(r) => broadcast(&out, &r.ty.shape)?,
        None => out,
    };
    let out_shape = out.clone();
    // The CPU kernel adds a shortcut of the conv's own shape.
    let same_shape = residual.is_some_and(|r| r.ty.shape.iter().product::<usize>() == out4.iter().product::<usize>() && r.ty.shape == out);
    let has_residual = residual.is_some();
    if has_residual {
        uses.push(3);
    }
    let one_d = win.one_d;
    let epilogue = conv_epilogue(node);
    let geometry = ConvGeometry {
        input: [x4[0], x4[1], x4[2], x4[3]],
        output: [out4[0], out4[1], out4[2], out4[3]],
        kernel: [w4[2], w4[3]],
        stride: win.stride,
        dilation: win.dilation,
        pad: [win.pads[0].0, win.pads[1].0],
        groups,
    };
    let pointwise = groups == 1 && w4[2..] == [1, 1] && win.stride == [1, 1] && win.pads == [(0, 0); 2];
    let packed = w.konst.is_some().then(cpu_kernels::PackedWeights::default);
    let has_bias = bias.is_some();
    let in_concat = node.fused().epilogue_in_concat;
    kernel(vec![TypeInfo::new(ElemType::F32, out)], uses, move |ctx, mut v| {
        let mut r = has_residual.then(|| v.pop().expect("the residual input"));
        let mut b = has_bias.then(|| v.remove(2));
        let w = reshape(v.remove(1), &w4);
        let mut x = reshape(v.remove(0), &x4);
        let mut epilogue = epilogue;
        // The Concat after it adds the bias and applies the ReLU (`passes::defer_concat_relu`).
        if in_concat && !is_flex(&x) {
            (b, epilogue) = (None, None);
        }
        let lift = |y| if one_d { reshape(y, &[out4[0], out4[1], out4[3]]) } else { y };
        if is_flex(&x) && (r.is_none() || same_shape) {
            let r4 = r.map(|r| reshape(r, &out4));
            // The CPU kernel adds a shortcut before the epilogue; one after it is added here.
            let (before, later) = if after { (None, r4) } else { (r4, None) };
            if let Some(y) = cpu_kernels::conv2d(ctx, &x, &w, b.as_ref(), &geometry, epilogue, before.as_ref(), packed.as_ref()) {
                let y = lift(y);
                return vec![match later {
                    Some(r) => B::float_add(y, reshape(r, &out_shape)),
                    None => y,
                }];
            }
            r = before.or(later).map(|r| reshape(r, &out_shape));
        }
        if pointwise && (r.is_none() || same_shape) {
            let shortcut = r.map(|r| (reshape(r, &out4), after));
            return vec![lift(pointwise_matmul(x, w, b, &geometry, epilogue, shortcut))];
        }
        // Without the CPU kernel or the matmul: the conv, then the shortcut and the epilogue in
        // the order the graph had them.
        let y = if pointwise {
            pointwise_matmul(x, w, b, &geometry, None, None)
        } else {
            if let Some(p) = explicit {
                x = B::float_pad(x, &[(0, 0), (0, 0), p[0], p[1]], PadMode::Constant(0.0));
            }
            with_bias(x, b, |x, b| B::conv2d(x, w, b, options.clone()))
        };
        let y = lift(y);
        vec![match r {
            Some(r) if after => B::float_add(apply_epilogue(y, epilogue), r),
            Some(r) => apply_epilogue(B::float_add(y, r), epilogue),
            None => apply_epilogue(y, epilogue),
        }]
    })
}

/// The activation a load pass folded into this conv (`passes::fuse_patterns`).
fn conv_epilogue(node: &Node) -> Option<Epilogue> {
    node.fused().activation.map(|a| match a {
        Activation::Relu => Epilogue::Relu,
        Activation::HardSwish => Epilogue::HardSwish,
        Activation::Clip(lo, hi) => Epilogue::Clip(lo, hi),
    })
}

fn lower_conv_transpose(node: &Node, inputs: &[Option<Input>]) -> Result<Lowering> {
    let (x, w) = (float_input(inputs, 0, node)?, float_input(inputs, 1, node)?);
    let bias = opt_input(inputs, 2);
    let (xs, ws) = (&x.ty.shape, &w.ty.shape);
    if xs.len() != 4 || ws.len() != 4 {
        bail!(UnsupportedAttribute, "only 2-D ConvTranspose is supported (input {xs:?}, weight {ws:?})");
    }
    if node.attr("output_shape").is_some() {
        bail!(UnsupportedAttribute, "ConvTranspose output_shape");
    }
    let groups = node.int("group", 1)?.max(1) as usize;
    if xs[1] != ws[0] {
        bail!(ShapeMismatch, "ConvTranspose input channels {} != weight {:?}", xs[1], ws);
    }
    let win = window(node, &xs[2..], Some(ws[2..].to_vec()))?;
    let op: Vec<usize> = node.ints("output_padding")?.map(|v| v.iter().map(|&x| x.max(0) as usize).collect()).unwrap_or(vec![0, 0]);
    let full = |i: usize| win.stride[i] * (xs[2 + i] - 1) + op[i] + (ws[2 + i] - 1) * win.dilation[i] + 1;
    let out_hw = [0, 1].map(|i| full(i) - win.pads[i].0 - win.pads[i].1);
    let out = vec![xs[0], ws[1] * groups, out_hw[0], out_hw[1]];
    let sym = win.symmetric();
    // Asymmetric pads: run unpadded, then crop.
    let options = ConvTransposeOptions::new(
        win.stride,
        if sym { [win.pads[0].0, win.pads[1].0] } else { [0, 0] },
        [op[0], op[1]],
        win.dilation,
        groups,
    );
    let crop = (!sym).then(|| {
        vec![
            burn_backend::Slice::new(0, None, 1),
            burn_backend::Slice::new(0, None, 1),
            burn_backend::Slice::new(win.pads[0].0 as isize, Some((win.pads[0].0 + out_hw[0]) as isize), 1),
            burn_backend::Slice::new(win.pads[1].0 as isize, Some((win.pads[1].0 + out_hw[1]) as isize), 1),
        ]
    });
    let mut uses = vec![0, 1];
    if bias.is_some() {
        uses.push(2);
    }
    let epilogue = conv_epilogue(node);
    let geometry = ConvGeometry {
        input: [xs[0], xs[1], xs[2], xs[3]],
        output: [out[0], out[1], out[2], out[3]],
        kernel: [ws[2], ws[3]],
        stride: win.stride,
        dilation: win.dilation,
        pad: [win.pads[0].0, win.pads[1].0],
        groups,
    };
    // On the CubeCL backends, the sub-pixel form where it applies (`subpixel`): constant weights
    // and bias, one group, no dilation.
    let sub = (groups == 1 && win.dilation == [1, 1] && bias.is_none_or(|b| b.konst.is_some()))
        .then(|| {
            let axes = [0, 1].map(|i| subpixel::Axis::new(xs[2 + i], ws[2 + i], win.stride[i], win.pads[i], op[i]));
            Some([axes[0]?, axes[1]?])
        })
        .flatten()
        .filter(|a| a[0].out == out_hw[0] && a[1].out == out_hw[1]);
    let mut extra = vec![];
    if let (Some(axes), Some(wk)) = (sub, w.konst) {
        let wv = wk.try_to_vec_as::<f32>().map_err(|e| err!(InvalidGraph, "ConvTranspose weight: {e:?}"))?;
        extra.push(subpixel::weights(&wv, ws[0], ws[1], axes));
        if let Some(b) = bias {
            extra.push(subpixel::bias(&const_floats(b, "ConvTranspose bias")?, axes));
        }
    }
    let sub = sub.filter(|_| !extra.is_empty());
    let has_bias = bias.is_some();
    kernel_with_cubecl(vec![TypeInfo::new(ElemType::F32, out.clone())], uses, extra, move |ctx, mut v| {
        let sub_bias = (sub.is_some() && has_bias).then(|| v.pop().expect("the sub-pixel bias"));
        // Where the plan was built for flex, the extras are empty stand-ins (Burn's capture device).
        let sub_weight = sub.is_some().then(|| v.pop().expect("the sub-pixel weight")).filter(|w| shape(w).len() == 4);
        let b = has_bias.then(|| v.remove(2));
        let w = v.remove(1);
        let x = v.remove(0);
        if let Some(y) = cpu_kernels::conv_transpose2d(ctx, &x, &w, b.as_ref(), &geometry, epilogue) {
            return vec![y];
        }
        if let (Some(axes), Some(w)) = (sub, sub_weight) {
            return vec![sub_pixel_conv_transpose(x, w, sub_bias, axes, out[1], epilogue)];
        }
        // Burn's transposed convs add the bias as they scatter, so it stays inside (unlike `with_bias`).
        let y = B::conv_transpose2d(x, w, b, options.clone());
        let y = match &crop {
            Some(c) => slice(y, c),
            None => y,
        };
        vec![apply_epilogue(y, epilogue)]
    })
}

/// A transposed conv as a stride-1 conv over every output phase, then the phases interleaved
/// (`subpixel`). `w` holds the conv's weights channels-last, as `[C, TH, TW, IC]`.
fn sub_pixel_conv_transpose(x: T, w: T, b: Option<T>, axes: [subpixel::Axis; 2], oc: usize, epilogue: Option<Epilogue>) -> T {
    let [ay, ax] = axes;
    let xs = shape(&x);
    let w = permute(w, &[0, 3, 1, 2]);
    let channels = ay.stride * ax.stride * oc;
    let geometry = ConvGeometry {
        input: [xs[0], xs[1], xs[2], xs[3]],
        output: [xs[0], channels, ay.rows, ax.rows],
        kernel: [ay.taps, ax.taps],
        stride: [1, 1],
        dilation: [1, 1],
        pad: [ay.pad.0, ax.pad.0],
        groups: 1,
    };
    let y = if [ay.taps, ax.taps] == [1, 1] && [ay.pad, ax.pad] == [(0, 0); 2] {
        pointwise_matmul(x, w, b, &geometry, epilogue, None)
    } else {
        let options = ConvOptions::new_with_padding([1, 1], [ay.pad, ax.pad], [1, 1], 1);
        apply_epilogue(with_bias(x, b, |x, b| B::conv2d(x, w, b, options)), epilogue)
    };
    let n = xs[0];
    let y = if ay.stride * ax.stride == 1 {
        y
    } else {
        // Channels-last, the phases of a position are adjacent: `[N, R, C, sh, sw, OC]` →
        // `[N, R, sh, C, sw, OC]` is the output, channels-last.
        let nhwc = reshape(permute(y, &[0, 2, 3, 1]), &[n, ay.rows, ax.rows, ay.stride, ax.stride, oc]);
        let full = reshape(permute(nhwc, &[0, 1, 3, 2, 4, 5]), &[n, ay.rows * ay.stride, ax.rows * ax.stride, oc]);
        permute(full, &[0, 3, 1, 2])
    };
    if ay.rows * ay.stride == ay.out && ax.rows * ax.stride == ax.out {
        return y;
    }
    let all = burn_backend::Slice::new(0, None, 1);
    slice(y, &[all, all, burn_backend::Slice::new(0, Some(ay.out as isize), 1), burn_backend::Slice::new(0, Some(ax.out as isize), 1)])
}

/// Runs a conv through Burn. On the fusing backends the bias is added after the conv rather than
/// inside it, as an op in the fusion stream, so it fuses with the activation or residual add that
/// follows (inside Burn's conv it is an extra kernel of its own after a matmul-based conv).
fn with_bias(x: T, bias: Option<T>, conv: impl FnOnce(T, Option<T>) -> T) -> T {
    match bias {
        Some(b) if !is_flex(&x) => {
            let m = shape(&b).iter().product();
            B::float_add(conv(x, None), reshape(b, &[1, m, 1, 1]))
        }
        b => conv(x, b),
    }
}

/// A 1×1 stride-1 conv as a matmul over channels-last pixels (`[N, HW, C] × [C, OC]`), on the
/// CubeCL backends. Burn runs such a conv as a matmul anyway, but inside its conv op, where fusion
/// cannot reach; as a matmul op of its own, the bias and the activation a load pass folded into the
/// conv can fuse into its epilogue, and so can a shortcut added before or after the activation
/// (they come before the output is viewed as NCHW, which the matmul fuser does not follow).
/// Channels-last is the layout Burn's convs leave their outputs in, so the permutes are views.
fn pointwise_matmul(x: T, w: T, b: Option<T>, g: &ConvGeometry, epilogue: Option<Epilogue>, shortcut: Option<(T, bool)>) -> T {
    let ([n, c, h, wd], oc) = (g.input, g.output[1]);
    if oc == 1 {
        let y = single_channel_pointwise(x, w, b, c);
        return with_shortcut(y, shortcut, epilogue);
    }
    let pixels = reshape(permute(x, &[0, 2, 3, 1]), &[n, h * wd, c]);
    let weight = permute(reshape(w, &[1, oc, c]), &[0, 2, 1]);
    // Reshaped before the matmul is queued: an unrelated op between the matmul and its epilogue
    // ends the matmul fuser's block. A shortcut of the output's shape joins the epilogue, in the
    // same channels-last view.
    let bias = b.map(|b| reshape(b, &[1, 1, oc]));
    let shortcut = shortcut.map(|(r, after)| (reshape(permute(r, &[0, 2, 3, 1]), &[n, h * wd, oc]), after));
    let y = B::float_matmul(pixels, weight);
    let y = match bias {
        Some(b) => B::float_add(y, b),
        None => y,
    };
    permute(reshape(with_shortcut(y, shortcut, epilogue), &[n, h, wd, oc]), &[0, 3, 1, 2])
}

/// The epilogue, with a shortcut added before it or (`true`) after it.
fn with_shortcut(y: T, shortcut: Option<(T, bool)>, epilogue: Option<Epilogue>) -> T {
    match shortcut {
        Some((r, true)) => B::float_add(apply_epilogue(y, epilogue), r),
        Some((r, false)) => apply_epilogue(B::float_add(y, r), epilogue),
        None => apply_epilogue(y, epilogue),
    }
}

/// A 1×1 conv to one output channel (FAST's probability head) as a multiply and a sum over
/// channels. As a matmul it was a product with one column, whose strided operand Burn's matmul
/// copied first; as a reduction it needs no copy. (Burn's reduce fuser could also take the multiply
/// and the elementwise work still pending from the conv before into the reduction's read, but Burn
/// 0.22's planner scores that block no higher than the plain element-wise one and keeps the latter.)
fn single_channel_pointwise(x: T, w: T, b: Option<T>, c: usize) -> T {
    let y = B::float_sum_dim(B::float_mul(x, reshape(w, &[1, c, 1, 1])), 1);
    match b {
        Some(b) => B::float_add(y, reshape(b, &[1, 1, 1, 1])),
        None => y,
    }
}

/// The activation a load pass folded into a conv, on backends without Kiln's CPU kernels.
fn apply_epilogue(y: T, epilogue: Option<Epilogue>) -> T {
    match epilogue {
        None => y,
        Some(Epilogue::Relu) => B::relu(y),
        Some(Epilogue::HardSwish) => {
            let g = B::hard_sigmoid(y.clone(), (1.0f64 / 6.0).into(), 0.5f64.into());
            B::float_mul(y, g)
        }
        Some(Epilogue::Clip(lo, hi)) => B::float_clamp(y, (lo as f64).into(), (hi as f64).into()),
    }
}

fn lower_pool(node: &Node, inputs: &[Option<Input>]) -> Result<Lowering> {
    let x = float_input(inputs, 0, node)?;
    if node.outputs.len() > 1 && !node.outputs[1].is_empty() {
        bail!(UnsupportedAttribute, "MaxPool Indices output");
    }
    let xs = &x.ty.shape;
    if xs.len() < 3 {
        bail!(ShapeMismatch, "{} input rank {} < 3", node.op, xs.len());
    }
    let win = window(node, &xs[2..], None)?;
    let ceil = node.int("ceil_mode", 0)? != 0;
    let x4 = if win.one_d { lift_dims(xs) } else { xs.clone() };
    let oh = win.out_len(0, x4[2], ceil)?;
    let ow = win.out_len(1, x4[3], ceil)?;
    let out = if win.one_d { vec![xs[0], xs[1], ow] } else { vec![xs[0], xs[1], oh, ow] };
    let max = node.op == "MaxPool";
    let include_pad = node.int("count_include_pad", 0)? != 0;
    if !max && !win.symmetric() && !include_pad {
        bail!(UnsupportedAttribute, "AveragePool with asymmetric pads and count_include_pad=0");
    }
    let explicit = (!win.symmetric()).then_some(win.pads);
    let pad = if explicit.is_some() { [0, 0] } else { [win.pads[0].0, win.pads[1].0] };
    let (k, s, d) = (win.kernel, win.stride, win.dilation);
    if !max && d != [1, 1] {
        bail!(UnsupportedAttribute, "AveragePool with dilations {d:?}");
    }
    let out_dev = out.clone();
    let geometry = ConvGeometry {
        input: [x4[0], x4[1], x4[2], x4[3]],
        output: [x4[0], x4[1], oh, ow],
        kernel: k,
        stride: s,
        dilation: d,
        pad: [win.pads[0].0, win.pads[1].0],
        groups: 1,
    };
    kernel(vec![TypeInfo::new(ElemType::F32, out)], vec![0], move |ctx, mut v| {
        let mut t = reshape(v.remove(0), &x4);
        if max && let Some(y) = cpu_kernels::max_pool2d(ctx, &t, &geometry) {
            return vec![reshape(y, &out_dev)];
        }
        if let Some(p) = explicit {
            let fill = if max { f32::NEG_INFINITY } else { 0.0 };
            t = B::float_pad(t, &[(0, 0), (0, 0), p[0], p[1]], PadMode::Constant(fill));
        }
        let y = if max {
            B::max_pool2d(t, k, s, pad, d, ceil)
        } else {
            B::avg_pool2d(t, k, s, pad, include_pad, ceil)
        };
        vec![reshape(y, &out_dev)]
    })
}

fn lower_batchnorm(node: &Node, inputs: &[Option<Input>]) -> Result<Lowering> {
    let x = float_input(inputs, 0, node)?;
    if node.int("training_mode", 0)? != 0 || node.outputs.iter().skip(1).any(|o| !o.is_empty()) {
        bail!(UnsupportedAttribute, "BatchNormalization in training mode");
    }
    let c = *x.ty.shape.get(1).ok_or_else(|| err!(ShapeMismatch, "BatchNormalization input rank < 2"))?;
    let get = |i: usize, what: &str| -> Result<Vec<f32>> {
        let v = const_floats(input(inputs, i, node)?, what)?;
        if v.len() != c {
            bail!(ShapeMismatch, "BatchNormalization {what} has {} values for {c} channels", v.len());
        }
        Ok(v)
    };
    let (scale, bias, mean, var) = (get(1, "scale")?, get(2, "bias")?, get(3, "mean")?, get(4, "var")?);
    let eps = node.float("epsilon", 1e-5)?;
    let (a, b) = batchnorm_affine(&scale, &bias, &mean, &var, eps);
    let mut bshape = vec![c];
    bshape.extend(std::iter::repeat_n(1, x.ty.rank().saturating_sub(2)));
    let extra = vec![TensorData::new(a, bshape.clone()), TensorData::new(b, bshape)];
    let rank = x.ty.rank();
    kernel_with(vec![x.ty.clone()], vec![0], extra, move |_, mut v| {
        let b = to_rank(v.remove(2), rank);
        let a = to_rank(v.remove(1), rank);
        vec![B::float_add(B::float_mul(v.remove(0), a), b)]
    })
}

/// Inference BatchNorm as `x·a + b` per channel.
pub(crate) fn batchnorm_affine(scale: &[f32], bias: &[f32], mean: &[f32], var: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let a: Vec<f32> = scale.iter().zip(var).map(|(s, v)| s / (v + eps).sqrt()).collect();
    let b = bias.iter().zip(mean).zip(&a).map(|((b, m), a)| b - m * a).collect();
    (a, b)
}

fn lower_layernorm(node: &Node, inputs: &[Option<Input>]) -> Result<Lowering> {
    let x = float_input(inputs, 0, node)?;
    let r = x.ty.rank();
    let a = axis(node.int("axis", -1)?, r)?;
    let eps = node.float("epsilon", 1e-5)? as f64;
    let inner: usize = x.ty.shape[a..].iter().product();
    let outer = x.ty.shape[..a].to_vec();
    let has_bias = opt_input(inputs, 2).is_some();
    let mut flat = outer.clone();
    flat.push(inner);
    let out = x.ty.shape.clone();
    let dev = device_dims(&out);
    let mut uses = vec![0, 1];
    if has_bias {
        uses.push(2);
    }
    if node.outputs.iter().skip(1).all(String::is_empty) {
        return kernel(vec![x.ty.clone()], uses, move |_, mut v| {
            let beta = (v.len() == 3).then(|| reshape(v.remove(2), &[inner]));
            let gamma = reshape(v.remove(1), &[inner]);
            let t = reshape(v.remove(0), &flat);
            vec![reshape(B::layer_norm(t, gamma, beta, eps), &dev)]
        });
    }
    // Mean and InvStdDev asked for too: the statistics spelled out, shaped [outer…, 1, …].
    let mut stat = outer.clone();
    stat.extend(std::iter::repeat_n(1, r - a));
    let stat_ty = TypeInfo::new(ElemType::F32, stat.clone());
    let stat_dev = device_dims(&stat);
    kernel(vec![x.ty.clone(), stat_ty.clone(), stat_ty], uses, move |_, mut v| {
        let beta = (v.len() == 3).then(|| reshape(v.remove(2), &[inner]));
        let gamma = reshape(v.remove(1), &[inner]);
        let t = reshape(v.remove(0), &flat);
        let last = flat.len() - 1;
        let mean = B::float_mean_dim(t.clone(), last);
        let centered = B::float_sub(t, mean.clone());
        let var = B::float_mean_dim(B::float_mul(centered.clone(), centered.clone()), last);
        let inv = B::float_recip(B::float_sqrt(B::float_add_scalar(var, eps.into())));
        let mut y = B::float_mul(B::float_mul(centered, inv.clone()), to_rank(gamma, flat.len()));
        if let Some(b) = beta {
            y = B::float_add(y, to_rank(b, flat.len()));
        }
        vec![reshape(y, &dev), reshape(mean, &stat_dev), reshape(inv, &stat_dev)]
    })
}

fn lower_softmax(node: &Node, inputs: &[Option<Input>], opset: i64) -> Result<Lowering> {
    let x = float_input(inputs, 0, node)?;
    let r = x.ty.rank();
    let log = node.op == "LogSoftmax";
    let a = axis(node.int("axis", if opset < 13 { 1 } else { -1 })?, r)?;
    let shape = x.ty.shape.clone();
    // Before opset 13 the input is coerced to 2-D at `axis`; the same as a per-axis softmax only
    // when `axis` is the last one.
    let (flat, dim) = if opset < 13 && a != r - 1 {
        (Some(vec![shape[..a].iter().product::<usize>(), shape[a..].iter().product()]), 1)
    } else {
        (None, a)
    };
    // Over the last axis, flex runs Kiln's kernel on the tensor in place.
    let row = match &flat {
        Some(f) => f[1],
        None if a == r - 1 => shape[a],
        None => 0,
    };
    kernel(vec![x.ty.clone()], vec![0], move |_, mut v| {
        let mut t = v.remove(0);
        if row > 0 {
            match cpu_kernels::softmax_in_place(t, row, log) {
                Ok(y) => return vec![y],
                Err(back) => t = back,
            }
        }
        if let Some(f) = &flat {
            t = reshape(t, f);
        }
        let y = if log { B::log_softmax(t, dim) } else { B::softmax(t, dim) };
        vec![reshape(y, &shape)]
    })
}

fn lower_gemm(node: &Node, inputs: &[Option<Input>]) -> Result<Lowering> {
    let (a, b) = (float_input(inputs, 0, node)?, float_input(inputs, 1, node)?);
    let c = opt_input(inputs, 2);
    let (ta, tb) = (node.int("transA", 0)? != 0, node.int("transB", 0)? != 0);
    let (alpha, beta) = (node.float("alpha", 1.0)? as f64, node.float("beta", 1.0)? as f64);
    if a.ty.rank() != 2 || b.ty.rank() != 2 {
        bail!(ShapeMismatch, "Gemm takes 2-D inputs, got {:?} and {:?}", a.ty.shape, b.ty.shape);
    }
    let (m, k) = if ta { (a.ty.shape[1], a.ty.shape[0]) } else { (a.ty.shape[0], a.ty.shape[1]) };
    let (k2, n) = if tb { (b.ty.shape[1], b.ty.shape[0]) } else { (b.ty.shape[0], b.ty.shape[1]) };
    if k != k2 {
        bail!(ShapeMismatch, "Gemm inner dimensions {k} and {k2} differ");
    }
    let out = vec![m, n];
    if let Some(c) = c {
        broadcast(&c.ty.shape, &out)?;
    }
    let mut uses = vec![0, 1];
    if c.is_some() {
        uses.push(2);
    }
    // One bias per output column: Kiln's CPU matmul seeds its rows with it.
    let row_bias = c.is_none_or(|c| beta == 1.0 && c.ty.shape.last() == Some(&n) && c.ty.shape.iter().product::<usize>() == n);
    let plain = !ta && !tb && alpha == 1.0 && row_bias;
    kernel(vec![TypeInfo::new(ElemType::F32, out)], uses, move |ctx, mut v| {
        let c = (v.len() == 3).then(|| v.remove(2));
        let mut b = v.remove(1);
        let mut a = v.remove(0);
        if plain && let Some(y) = cpu_kernels::matmul(ctx, &a, &b, [m, k, n], c.as_ref()) {
            return vec![y];
        }
        if ta {
            a = B::float_transpose(a);
        }
        if tb {
            b = B::float_transpose(b);
        }
        let mut y = B::float_matmul(a, b);
        if alpha != 1.0 {
            y = B::float_mul_scalar(y, alpha.into());
        }
        if let Some(c) = c {
            let c = to_rank(c, 2);
            y = B::float_add(y, if beta != 1.0 { B::float_mul_scalar(c, beta.into()) } else { c });
        }
        vec![y]
    })
}

fn lower_matmul(node: &Node, inputs: &[Option<Input>]) -> Result<Lowering> {
    let (a, b) = (float_input(inputs, 0, node)?, float_input(inputs, 1, node)?);
    let (sa, sb) = (a.ty.shape.clone(), b.ty.shape.clone());
    if sa.is_empty() || sb.is_empty() {
        bail!(ShapeMismatch, "MatMul of a scalar");
    }
    // 1-D operands get a unit dimension that is removed from the result.
    let a2 = if sa.len() == 1 { vec![1, sa[0]] } else { sa.clone() };
    let b2 = if sb.len() == 1 { vec![sb[0], 1] } else { sb.clone() };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if k != k2 {
        bail!(ShapeMismatch, "MatMul inner dimensions of {sa:?} and {sb:?} differ");
    }
    let batch = broadcast(&a2[..a2.len() - 2], &b2[..b2.len() - 2])?;
    let mut out: Vec<usize> = batch.clone();
    if sa.len() > 1 {
        out.push(m);
    }
    if sb.len() > 1 {
        out.push(n);
    }
    let dev = device_dims(&out);
    // A constant bias `[N]` the load folded in (`passes::fuse_matmul_bias`), stored at the
    // output's rank: reshaping it in every forward would queue an op between the matmul and its
    // add, which ends the fuser's block (as the Add's own lowering stores it).
    let bias = match opt_input(inputs, 2) {
        Some(c) if b2.len() == 2 && c.ty.shape == [n] => {
            let mut dims = vec![1; dev.len().max(1) - 1];
            dims.push(n);
            vec![TensorData::new(const_floats(c, "MatMul bias")?, dims)]
        }
        Some(c) => bail!(ShapeMismatch, "MatMul bias {:?} for a product {sa:?} · {sb:?}", c.ty.shape),
        None => vec![],
    };
    let has_bias = !bias.is_empty();
    let add_bias = move |y: T, c: Option<T>| match c {
        Some(c) => B::float_add(y, c),
        None => y,
    };
    if b2.len() == 2 && a2.len() >= 2 {
        // Weights-style right operand: fold every leading dimension of `a` into rows.
        // On the CubeCL backends `a` keeps its rank and `b` broadcasts over it instead, so that no
        // reshape follows the matmul: the matmul fuser then takes the bias add after it.
        let rows: usize = a2[..a2.len() - 1].iter().product();
        let mut b_rank = vec![1; a2.len() - 2];
        b_rank.extend([k, n]);
        return kernel_with(vec![TypeInfo::new(ElemType::F32, out)], vec![0, 1], bias, move |ctx, mut v| {
            let c = has_bias.then(|| v.pop().expect("the bias"));
            let a = v.remove(0);
            if a2.len() > 2 && !is_flex(&a) {
                let b = reshape(v.remove(0), &b_rank);
                return vec![add_bias(reshape(B::float_matmul(reshape(a, &a2), b), &dev), c)];
            }
            let b = reshape(v.remove(0), &[k, n]);
            let a = reshape(a, &[rows, k]);
            if let Some(y) = cpu_kernels::matmul(ctx, &a, &b, [rows, k, n], c.as_ref()) {
                return vec![reshape(y, &dev)];
            }
            vec![add_bias(reshape(B::float_matmul(a, b), &dev), c)]
        });
    }
    let mut ea = batch.clone();
    ea.extend([m, k]);
    let mut eb = batch.clone();
    eb.extend([k, n]);
    let rank = ea.len();
    // Attention scores (`passes::mark_attention_scores`): viewed as rows and back, which ends
    // the matmul's fused block, so the element-wise ops after it open the softmax's.
    let scores = node.fused().attention_scores.then(|| [out.iter().product::<usize>() / n.max(1), n]);
    kernel_with(vec![TypeInfo::new(ElemType::F32, out)], vec![0, 1], bias, move |_, mut v| {
        let c = has_bias.then(|| v.pop().expect("the bias"));
        let b = expand(to_rank(reshape(v.remove(1), &b2), rank), &eb);
        let a = expand(to_rank(reshape(v.remove(0), &a2), rank), &ea);
        let y = reshape(B::float_matmul(a, b), &dev);
        let y = match scores {
            Some(rows) if !is_flex(&y) && dev.len() > 2 => reshape(reshape(y, &rows), &dev),
            _ => y,
        };
        vec![add_bias(y, c)]
    })
}

fn lower_resize(node: &Node, inputs: &[Option<Input>], opset: i64) -> Result<Lowering> {
    let x = float_input(inputs, 0, node)?;
    let xs = x.ty.shape.clone();
    if xs.len() != 4 {
        bail!(UnsupportedAttribute, "Resize of a rank-{} tensor (only NCHW)", xs.len());
    }
    let (scales_at, sizes_at) = if opset < 11 { (1, usize::MAX) } else { (2, 3) };
    let sizes = opt_input(inputs, sizes_at).map(|s| const_ints(s, "Resize sizes")).transpose()?.filter(|s| !s.is_empty());
    let scales = opt_input(inputs, scales_at).map(|s| const_floats(s, "Resize scales")).transpose()?.filter(|s| !s.is_empty());
    if node.attr("axes").is_some() || node.int("antialias", 0)? != 0 {
        bail!(UnsupportedAttribute, "Resize axes/antialias");
    }
    let out: Vec<usize> = match (&sizes, &scales) {
        (Some(s), _) if s.len() == 4 => s.iter().map(|&v| v as usize).collect(),
        (None, Some(s)) if s.len() == 4 => {
            // ONNX maps coordinates with the given scale; Burn with the size ratio. They agree only
            // when the scale gives a whole output size.
            if xs.iter().zip(s).any(|(&d, &f)| (d as f32 * f).fract() != 0.0) {
                bail!(UnsupportedAttribute, "Resize scales {s:?} do not give whole sizes for {xs:?}");
            }
            xs.iter().zip(s).map(|(&d, &f)| (d as f32 * f) as usize).collect()
        }
        _ => bail!(InvalidGraph, "Resize needs 4 scales or sizes"),
    };
    if out[0] != xs[0] || out[1] != xs[1] {
        bail!(UnsupportedAttribute, "Resize over batch or channels ({xs:?} → {out:?})");
    }
    let mode = node.string("mode", "nearest")?;
    let ctm = node.string("coordinate_transformation_mode", if opset < 11 { "asymmetric" } else { "half_pixel" })?;
    // To its own size, every coordinate mode but crop-and-resize maps each pixel onto itself (DB's
    // FPN "resizes" its finest branch so, a full pass over 4M floats at 1024×1024).
    if out == xs && matches!(mode.as_str(), "nearest" | "linear") && ctm != "tf_crop_and_resize" {
        return Ok(Lowering::Alias(0));
    }
    let nearest_mode = node.string("nearest_mode", "round_prefer_floor")?;
    let integer_up = out[2] % xs[2] == 0 && out[3] % xs[3] == 0;
    let options = match mode.as_str() {
        "nearest" => {
            // Burn's nearest is floor(dst · in/out), i.e. ONNX asymmetric + floor; for integer
            // up-sampling the half-pixel and round-prefer variants pick the same pixels.
            let ok = match (ctm.as_str(), nearest_mode.as_str()) {
                ("asymmetric", "floor") => true,
                ("asymmetric", "round_prefer_floor") => integer_up,
                ("half_pixel" | "pytorch_half_pixel", "round_prefer_floor" | "round_prefer_ceil") => integer_up,
                _ => false,
            };
            if !ok {
                bail!(UnsupportedAttribute, "Resize nearest with {ctm}/{nearest_mode} for {xs:?} → {out:?}");
            }
            InterpolateOptions::new(InterpolateMode::Nearest)
        }
        "linear" => {
            let align = match ctm.as_str() {
                "align_corners" => true,
                "half_pixel" => false,
                "pytorch_half_pixel" if out[2] > 1 && out[3] > 1 => false,
                other => bail!(UnsupportedAttribute, "Resize linear with coordinate_transformation_mode '{other}'"),
            };
            let mut o = InterpolateOptions::new(InterpolateMode::Bilinear);
            o.align_corners = align;
            o
        }
        other => bail!(UnsupportedAttribute, "Resize mode '{other}'"),
    };
    let size = [out[2], out[3]];
    let bilinear = (mode == "linear").then_some(options.align_corners);
    let in_shape = xs.clone();
    kernel(vec![TypeInfo::new(ElemType::F32, out)], vec![0], move |ctx, mut v| {
        let x = v.remove(0);
        if let Some(y) = bilinear.and_then(|align| cpu_kernels::resize_bilinear(ctx, &x, &in_shape, size, align)) {
            return vec![y];
        }
        vec![B::interpolate(x, size, options.clone())]
    })
}

//! Shape and data-movement ops. Every shape argument is read at lowering time from a constant, which
//! is what makes a specialised plan free of host reads.

use burn_backend::ops::{ActivationOps, BoolTensorOps, FloatTensorOps, IntTensorOps, PadMode};
use burn_backend::{Slice, TensorData};

use super::{
    Input, Lowering, Relayout, TypeInfo, axis, broadcast, const_ints, cpu_kernels, device_dims, input, ints_data,
    kernel, kernel_with, opt_input, relayout_kernel,
};
use crate::error::{Result, bail, err};
use crate::model::{Attr, ElemType, Node};
use crate::tensor::{B, Ctx, Kind, T, by_kind, cat, expand, flip, gather, is_flex, kind, reshape, select, slice, to_rank};

pub const OPS: &[&str] = &[
    "Shape", "Size", "Constant", "ConstantOfShape", "Range", "Reshape", "Flatten", "Transpose", "Squeeze",
    "Unsqueeze", "Concat", "Slice", "Gather", "GatherElements", "Split", "Expand", "Tile", "Pad", "Trilu",
    "CumSum", "ScatterND",
];

pub fn handles(op: &str) -> bool {
    OPS.contains(&op)
}

pub fn lower(node: &Node, inputs: &[Option<Input>], opset: i64) -> Result<Lowering> {
    match node.op.as_str() {
        "Shape" => {
            let x = input(inputs, 0, node)?;
            let r = x.ty.rank() as i64;
            let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let start = clampi(node.int("start", 0)?);
            let end = clampi(node.int("end", r)?);
            let dims: Vec<i64> = x.ty.shape[start..end.max(start)].iter().map(|&d| d as i64).collect();
            let n = dims.len();
            Ok(Lowering::Consts(vec![ints_data(dims, vec![n])]))
        }
        "Size" => {
            let x = input(inputs, 0, node)?;
            Ok(Lowering::Consts(vec![ints_data(vec![x.ty.numel() as i64], vec![])]))
        }
        "Constant" => lower_constant(node),
        "ConstantOfShape" => {
            let dims: Vec<usize> = const_ints(input(inputs, 0, node)?, "ConstantOfShape shape")?
                .into_iter()
                .map(|d| usize::try_from(d).map_err(|_| err!(InvalidGraph, "negative dimension {d}")))
                .collect::<Result<_>>()?;
            let n: usize = dims.iter().product();
            let data = match node.attr("value") {
                None => TensorData::new(vec![0f32; n], dims),
                Some(Attr::Tensor(v)) => match crate::tensor::kind_of(v.dtype()) {
                    Kind::Float => TensorData::new(vec![v.try_to_vec::<f32>().map_err(data_err)?[0]; n], dims),
                    Kind::Int => TensorData::new(vec![v.try_to_vec::<i64>().map_err(data_err)?[0]; n], dims),
                    Kind::Bool => TensorData::new(vec![v.try_to_vec::<bool>().map_err(data_err)?[0]; n], dims),
                },
                Some(other) => bail!(InvalidGraph, "ConstantOfShape value {other:?}"),
            };
            Ok(Lowering::Consts(vec![data]))
        }
        "Range" => lower_range(node, inputs),
        "Reshape" => {
            let x = input(inputs, 0, node)?;
            let spec = const_ints(input(inputs, 1, node)?, "Reshape shape")?;
            let allow_zero = node.int("allowzero", 0)? != 0;
            let out = reshape_dims(&x.ty.shape, &spec, allow_zero)?;
            reshape_kernel(x.ty.elem, out)
        }
        "Flatten" => {
            let x = input(inputs, 0, node)?;
            let r = x.ty.rank();
            let a = node.int("axis", 1)?;
            let a = if a < 0 { a + r as i64 } else { a };
            if a < 0 || a > r as i64 {
                bail!(InvalidGraph, "Flatten axis {a} out of range for rank {r}");
            }
            let (l, rr) = x.ty.shape.split_at(a as usize);
            reshape_kernel(x.ty.elem, vec![l.iter().product(), rr.iter().product()])
        }
        "Squeeze" => {
            let x = input(inputs, 0, node)?;
            let axes = axes_arg(node, inputs, opset, 13)?;
            let r = x.ty.rank();
            let axes: Vec<usize> = match axes {
                Some(a) => a.iter().map(|&a| axis(a, r)).collect::<Result<_>>()?,
                None => (0..r).filter(|&d| x.ty.shape[d] == 1).collect(),
            };
            for &a in &axes {
                if x.ty.shape[a] != 1 {
                    bail!(ShapeMismatch, "cannot squeeze axis {a} of size {}", x.ty.shape[a]);
                }
            }
            let out = (0..r).filter(|d| !axes.contains(d)).map(|d| x.ty.shape[d]).collect();
            reshape_kernel(x.ty.elem, out)
        }
        "Unsqueeze" => {
            let x = input(inputs, 0, node)?;
            let axes = axes_arg(node, inputs, opset, 13)?
                .ok_or_else(|| err!(InvalidGraph, "Unsqueeze needs axes"))?;
            let r = x.ty.rank() + axes.len();
            let mut axes: Vec<usize> = axes.iter().map(|&a| axis(a, r)).collect::<Result<_>>()?;
            axes.sort_unstable();
            let mut out = x.ty.shape.clone();
            for a in axes {
                out.insert(a, 1);
            }
            reshape_kernel(x.ty.elem, out)
        }
        "Transpose" => {
            let x = input(inputs, 0, node)?;
            let r = x.ty.rank();
            let perm: Vec<usize> = match node.ints("perm")? {
                Some(p) => p.iter().map(|&a| axis(a, r)).collect::<Result<_>>()?,
                None => (0..r).rev().collect(),
            };
            let mut seen = vec![false; r];
            for &p in &perm {
                if p >= r || std::mem::replace(&mut seen[p], true) {
                    bail!(InvalidGraph, "perm {perm:?} is not a permutation of rank {r}");
                }
            }
            if perm.len() != r {
                bail!(InvalidGraph, "perm {perm:?} does not match rank {r}");
            }
            let out = perm.iter().map(|&p| x.ty.shape[p]).collect();
            relayout_kernel(TypeInfo::new(x.ty.elem, out), Relayout::Permute(perm.clone()), move |_, mut v| {
                vec![crate::tensor::permute(v.remove(0), &perm)]
            })
        }
        "Concat" => lower_concat(node, inputs),
        "Slice" => lower_slice(node, inputs, opset),
        "Gather" => lower_gather(node, inputs),
        "GatherElements" => {
            let (x, idx) = (input(inputs, 0, node)?, input(inputs, 1, node)?);
            let a = axis(node.int("axis", 0)?, x.ty.rank())?;
            if idx.ty.rank() != x.ty.rank() {
                bail!(ShapeMismatch, "GatherElements indices rank {} != data rank {}", idx.ty.rank(), x.ty.rank());
            }
            let dim = x.ty.shape[a] as i64;
            kernel(vec![TypeInfo::new(x.ty.elem, idx.ty.shape.clone())], vec![0, 1], move |ctx, mut v| {
                let idx = wrap_negative(ctx, v.remove(1), dim);
                vec![gather(a, v.remove(0), idx)]
            })
        }
        "Split" => lower_split(node, inputs, opset),
        "Expand" => {
            let x = input(inputs, 0, node)?;
            let spec: Vec<usize> = const_ints(input(inputs, 1, node)?, "Expand shape")?
                .into_iter()
                .map(|d| d.max(0) as usize)
                .collect();
            let out = broadcast(&x.ty.shape, &spec)?;
            let (rank, dev) = (out.len(), device_dims(&out));
            kernel(vec![TypeInfo::new(x.ty.elem, out)], vec![0], move |_, mut v| {
                vec![expand(to_rank(v.remove(0), rank), &dev)]
            })
        }
        "Tile" => {
            let x = input(inputs, 0, node)?;
            let reps = const_ints(input(inputs, 1, node)?, "Tile repeats")?;
            if reps.len() != x.ty.rank() || reps.iter().any(|&r| r < 0) {
                bail!(InvalidGraph, "Tile repeats {reps:?} do not fit rank {}", x.ty.rank());
            }
            let out = x.ty.shape.iter().zip(&reps).map(|(&d, &r)| d * r as usize).collect();
            kernel(vec![TypeInfo::new(x.ty.elem, out)], vec![0], move |_, mut v| {
                let mut t = v.remove(0);
                for (d, &r) in reps.iter().enumerate() {
                    if r != 1 {
                        let r = r as usize;
                        t = by_kind!(t, |x| float_repeat_dim(x, d, r), int_repeat_dim(x, d, r), bool_repeat_dim(x, d, r));
                    }
                }
                vec![t]
            })
        }
        "Pad" => lower_pad(node, inputs, opset),
        "ScatterND" => lower_scatter_nd(node, inputs),
        "Trilu" => lower_trilu(node, inputs),
        "CumSum" => {
            let x = input(inputs, 0, node)?;
            let a = axis(const_ints(input(inputs, 1, node)?, "CumSum axis")?[0], x.ty.rank())?;
            let exclusive = node.int("exclusive", 0)? != 0;
            let reverse = node.int("reverse", 0)? != 0;
            if x.ty.elem == ElemType::Bool {
                bail!(UnsupportedAttribute, "CumSum on bool");
            }
            kernel(vec![x.ty.clone()], vec![0], move |_, mut v| {
                let mut t = v.remove(0);
                if reverse {
                    t = flip(t, &[a]);
                }
                let float = kind(&t) == Kind::Float;
                let mut c = if float { B::float_cumsum(t.clone(), a) } else { B::int_cumsum(t.clone(), a) };
                if exclusive {
                    c = if float { B::float_sub(c, t) } else { B::int_sub(c, t) };
                }
                if reverse {
                    c = flip(c, &[a]);
                }
                vec![c]
            })
        }
        other => bail!(UnsupportedOp, "shape op {other}"),
    }
}

fn data_err(e: burn_backend::DataError) -> crate::error::Error {
    err!(InvalidGraph, "bad constant: {e:?}")
}

fn reshape_kernel(elem: ElemType, out: Vec<usize>) -> Result<Lowering> {
    let dev = device_dims(&out);
    let f = move |_: &Ctx, mut v: Vec<T>| vec![reshape(v.remove(0), &dev)];
    if out.is_empty() {
        // A scalar lives on the device as one element: not a plain view of the input's layout.
        return kernel(vec![TypeInfo::new(elem, out)], vec![0], f);
    }
    relayout_kernel(TypeInfo::new(elem, out.clone()), Relayout::Reshape(out), f)
}

/// ONNX Reshape semantics: 0 copies the input dimension (unless `allowzero`), -1 is inferred.
pub(crate) fn reshape_dims(input: &[usize], spec: &[i64], allow_zero: bool) -> Result<Vec<usize>> {
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allow_zero => out.push(*input.get(i).ok_or_else(|| err!(ShapeMismatch, "Reshape 0 at {i} beyond input rank"))?),
            d if d >= 0 => out.push(d as usize),
            _ => bail!(ShapeMismatch, "invalid Reshape shape {spec:?}"),
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || total % known != 0 {
            bail!(ShapeMismatch, "cannot reshape {input:?} to {spec:?}");
        }
        out[i] = total / known;
    } else if known != total {
        bail!(ShapeMismatch, "cannot reshape {input:?} ({total} values) to {spec:?}");
    }
    Ok(out)
}

/// Axes given as an attribute before `input_from` and as input 1 from then on.
fn axes_arg(node: &Node, inputs: &[Option<Input>], opset: i64, input_from: i64) -> Result<Option<Vec<i64>>> {
    if opset < input_from {
        node.ints("axes")
    } else {
        opt_input(inputs, 1).map(|a| const_ints(a, "axes")).transpose()
    }
}

fn lower_constant(node: &Node) -> Result<Lowering> {
    let data = if let Some(Attr::Tensor(t)) = node.attr("value") {
        (**t).clone()
    } else if let Some(Attr::Float(f)) = node.attr("value_float") {
        TensorData::new(vec![*f], Vec::<usize>::new())
    } else if let Some(Attr::Floats(f)) = node.attr("value_floats") {
        TensorData::new(f.clone(), vec![f.len()])
    } else if let Some(Attr::Int(i)) = node.attr("value_int") {
        ints_data(vec![*i], vec![])
    } else if let Some(Attr::Ints(i)) = node.attr("value_ints") {
        ints_data(i.clone(), vec![i.len()])
    } else {
        bail!(UnsupportedAttribute, "Constant without a supported value attribute");
    };
    Ok(Lowering::Consts(vec![data]))
}

fn lower_range(node: &Node, inputs: &[Option<Input>]) -> Result<Lowering> {
    let start = input(inputs, 0, node)?;
    if start.ty.elem.is_float() {
        let f = |i| super::const_floats(input(inputs, i, node)?, "Range argument").map(|v| v[0] as f64);
        let (s, l, d) = (f(0)?, f(1)?, f(2)?);
        if d == 0.0 {
            bail!(InvalidGraph, "Range delta is 0");
        }
        let n = ((l - s) / d).ceil().max(0.0) as usize;
        let v: Vec<f32> = (0..n).map(|i| (s + i as f64 * d) as f32).collect();
        Ok(Lowering::Consts(vec![TensorData::new(v, vec![n])]))
    } else {
        let f = |i| const_ints(input(inputs, i, node)?, "Range argument").map(|v| v[0]);
        let (s, l, d) = (f(0)?, f(1)?, f(2)?);
        if d == 0 {
            bail!(InvalidGraph, "Range delta is 0");
        }
        let n = ((l - s) as f64 / d as f64).ceil().max(0.0) as usize;
        let v: Vec<i64> = (0..n as i64).map(|i| s + i * d).collect();
        Ok(Lowering::Consts(vec![ints_data(v, vec![n])]))
    }
}

fn lower_concat(node: &Node, inputs: &[Option<Input>]) -> Result<Lowering> {
    let carriers = &node.fused().bias_relu_of;
    if !carriers.is_empty() {
        return lower_concat_bias_relu(node, inputs, carriers);
    }
    let present: Vec<(usize, Input)> =
        inputs.iter().enumerate().filter_map(|(i, x)| x.map(|x| (i, x))).collect();
    let first = present.first().ok_or_else(|| err!(InvalidGraph, "Concat without inputs"))?.1;
    let r = first.ty.rank();
    let a = axis(node.int("axis", 0)?, r)?;
    let mut out = first.ty.shape.clone();
    out[a] = 0;
    let mut uses = vec![];
    for (i, x) in &present {
        if x.ty.rank() != r {
            bail!(ShapeMismatch, "Concat inputs have ranks {r} and {}", x.ty.rank());
        }
        for d in 0..r {
            if d != a && x.ty.shape[d] != first.ty.shape[d] {
                bail!(ShapeMismatch, "Concat inputs {:?} and {:?} differ off axis {a}", first.ty.shape, x.ty.shape);
            }
        }
        out[a] += x.ty.shape[a];
        if x.ty.shape[a] > 0 {
            uses.push(*i);
        }
    }
    if uses.is_empty() {
        uses.push(present[0].0);
    }
    kernel(vec![TypeInfo::new(first.ty.elem, out)], uses, move |_, v| vec![cat(v, a)])
}

/// A channel Concat that also applies the bias and ReLU of some convs before it
/// (`passes::defer_concat_relu`): their biases follow the data inputs. On flex the convs applied
/// them already; elsewhere the Concat adds every bias, padded by zeros to all its channels, and
/// applies the ReLU, which leaves the other (non-negative) inputs as they were.
fn lower_concat_bias_relu(node: &Node, inputs: &[Option<Input>], carriers: &[usize]) -> Result<Lowering> {
    let data = inputs.len().checked_sub(carriers.len()).filter(|&n| n > 0);
    let Some(n) = data.filter(|&n| inputs.iter().all(Option::is_some) && carriers.iter().all(|&i| i < n)) else {
        bail!(InvalidGraph, "Concat carries biases for inputs {carriers:?} of {}", inputs.len());
    };
    let xs: Vec<&TypeInfo> = inputs[..n].iter().flatten().map(|x| x.ty).collect();
    let (first, channels) = (xs[0], xs.iter().map(|t| t.shape.get(1).copied().unwrap_or(0)).sum::<usize>());
    if first.rank() != 4 || node.int("axis", 0)? != 1 || xs.iter().any(|t| t.rank() != 4 || t.shape[0] != first.shape[0] || t.shape[2..] != first.shape[2..]) {
        bail!(ShapeMismatch, "Concat with conv biases needs NCHW inputs of one size along axis 1");
    }
    let mut offsets = vec![0];
    offsets.extend(xs.iter().scan(0, |o, t| {
        *o += t.shape[1];
        Some(*o)
    }));
    let mut bias = vec![0f32; channels];
    for (k, &i) in carriers.iter().enumerate() {
        let values = super::const_floats(inputs[n + k].expect("checked present"), "Concat conv bias")?;
        if values.len() != xs[i].shape[1] {
            bail!(ShapeMismatch, "conv bias of {} values for an input of {} channels", values.len(), xs[i].shape[1]);
        }
        bias[offsets[i]..offsets[i + 1]].copy_from_slice(&values);
    }
    let mut out = first.shape.clone();
    out[1] = channels;
    let extra = vec![TensorData::new(bias, [1, channels, 1, 1])];
    kernel_with(vec![TypeInfo::new(ElemType::F32, out)], (0..n).collect(), extra, move |_, mut v| {
        let bias = v.pop().expect("the padded bias");
        let flex = is_flex(&v[0]);
        let y = cat(v, 1);
        vec![if flex { y } else { B::relu(B::float_add(y, bias)) }]
    })
}

fn lower_slice(node: &Node, inputs: &[Option<Input>], opset: i64) -> Result<Lowering> {
    let x = input(inputs, 0, node)?;
    let r = x.ty.rank();
    let (starts, ends, axes, steps) = if opset < 10 {
        let starts = node.ints("starts")?.ok_or_else(|| err!(InvalidGraph, "Slice needs starts"))?;
        let ends = node.ints("ends")?.ok_or_else(|| err!(InvalidGraph, "Slice needs ends"))?;
        (starts, ends, node.ints("axes")?, None)
    } else {
        let get = |i: usize, what: &str| opt_input(inputs, i).map(|v| const_ints(v, what)).transpose();
        (
            get(1, "Slice starts")?.ok_or_else(|| err!(InvalidGraph, "Slice needs starts"))?,
            get(2, "Slice ends")?.ok_or_else(|| err!(InvalidGraph, "Slice needs ends"))?,
            get(3, "Slice axes")?,
            get(4, "Slice steps")?,
        )
    };
    let axes: Vec<usize> = match axes {
        Some(a) => a.iter().map(|&a| axis(a, r)).collect::<Result<_>>()?,
        None => (0..starts.len()).collect(),
    };
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        bail!(InvalidGraph, "Slice argument lengths differ");
    }
    let mut out = x.ty.shape.clone();
    let mut slices: Vec<Slice> = (0..r).map(|_| Slice::new(0, None, 1)).collect();
    // Negative steps become a `select` with explicit indices.
    let mut reversed: Vec<(usize, Vec<i64>)> = vec![];
    for i in 0..starts.len() {
        let (a, step) = (axes[i], steps[i]);
        let dim = x.ty.shape[a] as i64;
        if step == 0 {
            bail!(InvalidGraph, "Slice step 0");
        }
        let norm = |v: i64| if v < 0 { v + dim } else { v };
        if step > 0 {
            let s = norm(starts[i]).clamp(0, dim);
            let e = norm(ends[i]).clamp(0, dim);
            let n = if e > s { (e - s + step - 1) / step } else { 0 };
            out[a] = n as usize;
            slices[a] = Slice::new(s as isize, Some(e.max(s) as isize), step as isize);
        } else {
            let s = norm(starts[i]).clamp(-1, dim - 1);
            let e = norm(ends[i]).clamp(-1, dim - 1);
            let idx: Vec<i64> = (0..).map(|k| s + k * step).take_while(|&v| v > e).collect();
            out[a] = idx.len();
            reversed.push((a, idx));
        }
    }
    let extra: Vec<TensorData> = reversed.iter().map(|(_, idx)| ints_data(idx.clone(), vec![idx.len()])).collect();
    let rev_axes: Vec<usize> = reversed.iter().map(|(a, _)| *a).collect();
    let full = slices.iter().all(|s| s.start == 0 && s.end.is_none() && s.step == 1);
    kernel_with(vec![TypeInfo::new(x.ty.elem, out)], vec![0], extra, move |_, mut v| {
        let mut t = v.remove(0);
        if !full {
            t = slice(t, &slices);
        }
        for (a, idx) in rev_axes.iter().zip(v) {
            t = select(t, *a, idx);
        }
        vec![t]
    })
}

/// `idx < 0 ? idx + dim : idx` on the device, for run-time indices.
fn wrap_negative(ctx: &crate::tensor::Ctx, idx: T, dim: i64) -> T {
    let neg = B::int_lower_elem(idx.clone(), 0i64.into(), ctx.bool);
    let shifted = B::int_add_scalar(idx.clone(), dim.into());
    B::int_mask_where(idx, neg, shifted)
}

fn lower_gather(node: &Node, inputs: &[Option<Input>]) -> Result<Lowering> {
    let (x, idx) = (input(inputs, 0, node)?, input(inputs, 1, node)?);
    if !idx.ty.elem.is_int() {
        bail!(ShapeMismatch, "Gather indices must be integers, got {:?}", idx.ty.elem);
    }
    let r = x.ty.rank();
    let a = axis(node.int("axis", 0)?, r)?;
    let dim = x.ty.shape[a] as i64;
    let mut out: Vec<usize> = x.ty.shape[..a].to_vec();
    out.extend(&idx.ty.shape);
    out.extend(&x.ty.shape[a + 1..]);
    let n = idx.ty.numel();
    let dev = device_dims(&out);
    let ty = TypeInfo::new(x.ty.elem, out);
    if let Some(k) = idx.konst {
        // Constant indices: check and wrap them now, upload once.
        let mut vals = const_ints(Input { ty: idx.ty, konst: Some(k) }, "Gather indices")?;
        for v in &mut vals {
            if *v < -dim || *v >= dim {
                bail!(ShapeMismatch, "Gather index {v} out of range for axis of size {dim}");
            }
            if *v < 0 {
                *v += dim;
            }
        }
        if n == 1 && x.konst.is_none() {
            // A single index is a slice: cheaper than a gather and fusable.
            let i = vals[0] as usize;
            if !ty.shape.is_empty() {
                let select = Relayout::Select { axis: a, index: i, out: ty.shape.clone() };
                return relayout_kernel(ty, select, move |_, mut v| {
                    let t = v.remove(0);
                    let rank = crate::tensor::shape(&t).len();
                    vec![reshape(slice(t, &crate::tensor::axis_slice(rank, a, i, i + 1)), &dev)]
                });
            }
            return kernel(vec![ty], vec![0], move |_, mut v| {
                let t = v.remove(0);
                let rank = crate::tensor::shape(&t).len();
                vec![reshape(slice(t, &crate::tensor::axis_slice(rank, a, i, i + 1)), &dev)]
            });
        }
        return kernel_with(vec![ty], vec![0], vec![ints_data(vals, vec![n])], move |_, mut v| {
            let idx = v.remove(1);
            vec![reshape(select(v.remove(0), a, idx), &dev)]
        });
    }
    kernel(vec![ty], vec![0, 1], move |ctx, mut v| {
        let idx = wrap_negative(ctx, reshape(v.remove(1), &[n]), dim);
        vec![reshape(select(v.remove(0), a, idx), &dev)]
    })
}

fn lower_split(node: &Node, inputs: &[Option<Input>], opset: i64) -> Result<Lowering> {
    let x = input(inputs, 0, node)?;
    let a = axis(node.int("axis", 0)?, x.ty.rank())?;
    let dim = x.ty.shape[a];
    let n_out = node.outputs.len();
    let sizes: Vec<usize> = match if opset < 13 { node.ints("split")? } else {
        opt_input(inputs, 1).map(|s| const_ints(s, "Split sizes")).transpose()?
    } {
        Some(s) => s.iter().map(|&v| v.max(0) as usize).collect(),
        None => {
            let parts = if opset >= 18 { node.int("num_outputs", n_out as i64)? as usize } else { n_out };
            let chunk = dim.div_ceil(parts.max(1));
            (0..parts).map(|i| chunk.min(dim.saturating_sub(i * chunk))).collect()
        }
    };
    if sizes.iter().sum::<usize>() != dim || sizes.len() != n_out {
        bail!(ShapeMismatch, "Split sizes {sizes:?} do not cover axis of size {dim} in {n_out} outputs");
    }
    let rank = x.ty.rank();
    let outputs = sizes
        .iter()
        .map(|&s| {
            let mut sh = x.ty.shape.clone();
            sh[a] = s;
            TypeInfo::new(x.ty.elem, sh)
        })
        .collect();
    kernel(outputs, vec![0], move |_, mut v| {
        let t = v.remove(0);
        let mut start = 0;
        sizes
            .iter()
            .map(|&s| {
                let part = slice(t.clone(), &crate::tensor::axis_slice(rank, a, start, start + s));
                start += s;
                part
            })
            .collect()
    })
}

fn lower_pad(node: &Node, inputs: &[Option<Input>], opset: i64) -> Result<Lowering> {
    let x = input(inputs, 0, node)?;
    let r = x.ty.rank();
    let mode = node.string("mode", "constant")?;
    let (pads, value, axes) = if opset < 11 {
        let pads = node.ints("pads")?.ok_or_else(|| err!(InvalidGraph, "Pad needs pads"))?;
        (pads, node.float("value", 0.0)?, None)
    } else {
        let pads = const_ints(input(inputs, 1, node)?, "Pad pads")?;
        let value = match opt_input(inputs, 2) {
            Some(v) => super::const_floats(v, "Pad value")?.first().copied().unwrap_or(0.0),
            None => 0.0,
        };
        let axes = opt_input(inputs, 3).map(|a| const_ints(a, "Pad axes")).transpose()?;
        (pads, value, axes)
    };
    let axes: Vec<usize> = match axes {
        Some(a) => a.iter().map(|&a| axis(a, r)).collect::<Result<_>>()?,
        None => (0..r).collect(),
    };
    if pads.len() != 2 * axes.len() {
        bail!(InvalidGraph, "Pad has {} pads for {} axes", pads.len(), axes.len());
    }
    let mut padding = vec![(0usize, 0usize); r];
    let mut out = x.ty.shape.clone();
    for (i, &a) in axes.iter().enumerate() {
        let (b, e) = (pads[i], pads[i + axes.len()]);
        if b < 0 || e < 0 {
            bail!(UnsupportedAttribute, "negative Pad values {pads:?}");
        }
        padding[a] = (b as usize, e as usize);
        out[a] += (b + e) as usize;
    }
    let mode = match mode.as_str() {
        "constant" => PadMode::Constant(value),
        "reflect" => {
            if padding.iter().zip(&x.ty.shape).any(|(&(b, e), &d)| b >= d || e >= d) {
                bail!(UnsupportedAttribute, "reflect padding {pads:?} as large as the input {:?}", x.ty.shape);
            }
            PadMode::Reflect
        }
        "edge" => PadMode::Edge,
        other => bail!(UnsupportedAttribute, "Pad mode '{other}'"),
    };
    if !x.ty.elem.is_float() {
        bail!(UnsupportedAttribute, "Pad on {:?} tensors", x.ty.elem);
    }
    kernel(vec![TypeInfo::new(x.ty.elem, out)], vec![0], move |_, mut v| {
        vec![B::float_pad(v.remove(0), &padding, mode)]
    })
}

/// ScatterND with constant indices (the decoders' "write step i" pattern): a constant map from each
/// output position to the update it takes, so the kernel is a gather and a select, both fusable.
fn lower_scatter_nd(node: &Node, inputs: &[Option<Input>]) -> Result<Lowering> {
    let (x, idx, upd) = (input(inputs, 0, node)?, input(inputs, 1, node)?, input(inputs, 2, node)?);
    if node.string("reduction", "none")? != "none" {
        bail!(UnsupportedAttribute, "ScatterND reduction other than none");
    }
    let indices = const_ints(idx, "ScatterND indices")?;
    let ishape = &idx.ty.shape;
    let k = *ishape.last().ok_or_else(|| err!(ShapeMismatch, "ScatterND indices must have rank >= 1"))?;
    let dims = &x.ty.shape;
    if k > dims.len() {
        bail!(ShapeMismatch, "ScatterND index depth {k} exceeds data rank {}", dims.len());
    }
    let mut want: Vec<usize> = ishape[..ishape.len() - 1].to_vec();
    want.extend(&dims[k..]);
    if upd.ty.shape != want {
        bail!(ShapeMismatch, "ScatterND updates {:?}, expected {want:?}", upd.ty.shape);
    }
    let inner: usize = dims[k..].iter().product();
    let total: usize = dims.iter().product();
    let strides: Vec<usize> = (0..k).map(|j| dims[j + 1..].iter().product()).collect();
    let mut take = vec![0i64; total];
    let mut mask = vec![false; total];
    let mut writes = vec![];
    for (i, tuple) in indices.chunks(k.max(1)).enumerate() {
        let mut base = 0;
        for (j, &v) in tuple.iter().enumerate().take(k) {
            let d = dims[j] as i64;
            if v < -d || v >= d {
                bail!(ShapeMismatch, "ScatterND index {v} out of range for axis of size {d}");
            }
            base += (if v < 0 { v + d } else { v }) as usize * strides[j];
        }
        for s in 0..inner {
            take[base + s] = (i * inner + s) as i64;
            mask[base + s] = true;
        }
        writes.push((base, i * inner));
    }
    let n_upd = upd.ty.numel();
    let dev = device_dims(dims);
    // The mask is a bool constant, uploaded once: no compare kernel per forward.
    let extra = vec![ints_data(take, vec![total]), TensorData::new(mask, vec![total])];
    kernel_with(vec![x.ty.clone()], vec![0, 2], extra, move |_, mut v| {
        // On flex, a float tensor this step owns is written in place (the gather below makes a
        // pass over all of it, for every ScatterND of a chain).
        let data = v.remove(0);
        let data = match kind(&data) {
            Kind::Float => match cpu_kernels::scatter_in_place(data, &v[0], &writes, inner) {
                Ok(t) => return vec![t],
                Err(data) => data,
            },
            _ => data,
        };
        let mask = v.remove(2);
        let take = v.remove(1);
        let updates = reshape(v.remove(0), &[n_upd]);
        let data = reshape(data, &[total]);
        let moved = select(updates, 0, take);
        vec![reshape(crate::tensor::mask_where(data, mask, moved), &dev)]
    })
}

fn lower_trilu(node: &Node, inputs: &[Option<Input>]) -> Result<Lowering> {
    let x = input(inputs, 0, node)?;
    let r = x.ty.rank();
    if r < 2 {
        bail!(ShapeMismatch, "Trilu needs rank >= 2, got {r}");
    }
    let k = match opt_input(inputs, 1) {
        Some(k) => const_ints(k, "Trilu k")?[0],
        None => 0,
    };
    let upper = node.int("upper", 1)? != 0;
    let (rows, cols) = (x.ty.shape[r - 2], x.ty.shape[r - 1]);
    let keep: Vec<i64> = (0..rows as i64)
        .flat_map(|i| (0..cols as i64).map(move |j| if upper { j - i >= k } else { j - i <= k }))
        .map(i64::from)
        .collect();
    let mut mshape = vec![1; r - 2];
    mshape.extend([rows, cols]);
    let mask = ints_data(keep, mshape);
    kernel_with(vec![x.ty.clone()], vec![0], vec![mask], move |ctx, mut v| {
        let mask = v.remove(1);
        let t = v.remove(0);
        vec![match kind(&t) {
            Kind::Float => B::float_mul(t, B::int_into_float(mask, ctx.float)),
            Kind::Int => B::int_mul(t, mask),
            Kind::Bool => {
                let m = B::int_not_equal_elem(mask, 0i64.into(), ctx.bool);
                B::bool_and(t, m)
            }
        }]
    })
}

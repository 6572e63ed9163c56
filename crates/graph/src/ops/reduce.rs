//! Reductions and arg-reductions over constant axes.

use burn_backend::ops::{FloatTensorOps, IntTensorOps};

use super::{Input, Lowering, TypeInfo, axis, const_ints, device_dims, input, kernel, opt_input};
use crate::error::{Result, bail};
use crate::model::{ElemType, Node};
use crate::tensor::{B, Kind, kind, reshape};

pub const OPS: &[&str] = &[
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceSumSquare", "ArgMax",
    "ArgMin",
];

pub fn handles(op: &str) -> bool {
    OPS.contains(&op)
}

pub fn lower(node: &Node, inputs: &[Option<Input>], opset: i64) -> Result<Lowering> {
    let x = input(inputs, 0, node)?;
    let r = x.ty.rank();
    let keep = node.int("keepdims", 1)? != 0;
    if node.op.starts_with("Arg") {
        let a = axis(node.int("axis", 0)?, r)?;
        if node.int("select_last_index", 0)? != 0 {
            bail!(UnsupportedAttribute, "{} select_last_index=1", node.op);
        }
        let mut out = x.ty.shape.clone();
        if keep {
            out[a] = 1;
        } else {
            out.remove(a);
        }
        let dev = device_dims(&out);
        let max = node.op == "ArgMax";
        return kernel(vec![TypeInfo::new(ElemType::I64, out)], vec![0], move |ctx, mut v| {
            let t = v.remove(0);
            let i = match (kind(&t), max) {
                (Kind::Float, true) => B::float_argmax(t, a, ctx.int),
                (Kind::Float, false) => B::float_argmin(t, a, ctx.int),
                (_, true) => B::int_argmax(t, a),
                (_, false) => B::int_argmin(t, a),
            };
            vec![reshape(i, &dev)]
        });
    }
    // Axes moved from an attribute to input 1 in opset 18 (13 for ReduceSum).
    let input_from = if node.op == "ReduceSum" { 13 } else { 18 };
    let axes = if opset < input_from {
        node.ints("axes")?
    } else {
        opt_input(inputs, 1).map(|a| const_ints(a, "reduce axes")).transpose()?
    };
    let noop = node.int("noop_with_empty_axes", 0)? != 0;
    let mut axes: Vec<usize> = match axes {
        Some(a) if !a.is_empty() => a.iter().map(|&a| axis(a, r)).collect::<Result<_>>()?,
        _ if noop => return Ok(Lowering::Alias(0)),
        _ => (0..r).collect(),
    };
    axes.sort_unstable();
    axes.dedup();
    if !x.ty.elem.is_float() && !matches!(node.op.as_str(), "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd") {
        bail!(UnsupportedAttribute, "{} on {:?} tensors", node.op, x.ty.elem);
    }
    let mut out = x.ty.shape.clone();
    for &a in &axes {
        out[a] = 1;
    }
    if !keep {
        out = out.iter().enumerate().filter(|(d, _)| !axes.contains(d)).map(|(_, &s)| s).collect();
    }
    let dev = device_dims(&out);
    let op = node.op.clone();
    kernel(vec![TypeInfo::new(x.ty.elem, out)], vec![0], move |_, mut v| {
        let mut t = v.remove(0);
        let float = kind(&t) == Kind::Float;
        if matches!(op.as_str(), "ReduceL2" | "ReduceSumSquare") {
            t = B::float_mul(t.clone(), t);
        }
        for &a in &axes {
            t = match (op.as_str(), float) {
                ("ReduceMean", _) => B::float_mean_dim(t, a),
                ("ReduceMax", true) => B::float_max_dim(t, a),
                ("ReduceMax", false) => B::int_max_dim(t, a),
                ("ReduceMin", true) => B::float_min_dim(t, a),
                ("ReduceMin", false) => B::int_min_dim(t, a),
                ("ReduceProd", true) => B::float_prod_dim(t, a),
                ("ReduceProd", false) => B::int_prod_dim(t, a),
                (_, true) => B::float_sum_dim(t, a),
                (_, false) => B::int_sum_dim(t, a),
            };
        }
        if op == "ReduceL2" {
            t = B::float_sqrt(t);
        }
        vec![reshape(t, &dev)]
    })
}

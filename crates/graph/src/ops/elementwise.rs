//! Element-wise ops: activations, arithmetic with broadcasting, comparisons, logic, casts. These are
//! what Burn's fusion merges into single kernels, so they stay plain Burn ops with no host work.

use burn_backend::ops::{ActivationOps, BoolTensorOps, FloatTensorOps, IntTensorOps};
use burn_backend::Scalar;

use super::{Input, Lowering, TypeInfo, broadcast, device_dims, input, kernel, kernel_with, opt_input};
use super::cpu_kernels;
use crate::error::{Result, bail, err};
use crate::model::{ElemType, Node};
use crate::tensor::{B, Ctx, Kind, T, cast, kind, mask_where, reshape, reshape_data, to_rank};

pub const OPS: &[&str] = &[
    "Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Abs", "Neg", "Reciprocal", "Floor", "Ceil", "Round",
    "Sin", "Cos", "Erf", "Sign", "Not", "HardSigmoid", "HardSwish", "LeakyRelu", "Gelu", "Softplus", "Add",
    "Sub", "Mul", "Div", "Pow", "Mod", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And",
    "Or", "Xor", "Max", "Min", "Sum", "Mean", "Where", "Clip", "Cast", "PRelu",
];

pub fn handles(op: &str) -> bool {
    OPS.contains(&op)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Bin {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Mod,
    Max,
    Min,
    Eq,
    Lt,
    Gt,
    Le,
    Ge,
    And,
    Or,
    Xor,
}

impl Bin {
    fn of(op: &str) -> Option<Self> {
        Some(match op {
            "Add" | "Sum" => Self::Add,
            "Sub" => Self::Sub,
            "Mul" => Self::Mul,
            "Div" => Self::Div,
            "Pow" => Self::Pow,
            "Mod" => Self::Mod,
            "Max" => Self::Max,
            "Min" => Self::Min,
            "Equal" => Self::Eq,
            "Less" => Self::Lt,
            "Greater" => Self::Gt,
            "LessOrEqual" => Self::Le,
            "GreaterOrEqual" => Self::Ge,
            "And" => Self::And,
            "Or" => Self::Or,
            "Xor" => Self::Xor,
            _ => return None,
        })
    }
    fn is_comparison(self) -> bool {
        matches!(self, Self::Eq | Self::Lt | Self::Gt | Self::Le | Self::Ge)
    }
    fn is_logic(self) -> bool {
        matches!(self, Self::And | Self::Or | Self::Xor)
    }
}

/// Applies a binary op to tensors already brought to the same rank.
fn binary(ctx: &Ctx, op: Bin, a: T, b: T) -> T {
    let bd = ctx.bool;
    match kind(&a) {
        Kind::Float => match op {
            Bin::Add => B::float_add(a, b),
            Bin::Sub => B::float_sub(a, b),
            Bin::Mul => B::float_mul(a, b),
            Bin::Div => B::float_div(a, b),
            Bin::Pow => B::float_powf(a, b),
            Bin::Mod => B::float_remainder(a, b),
            Bin::Max => {
                let m = B::float_lower(a.clone(), b.clone(), bd);
                B::float_mask_where(a, m, b)
            }
            Bin::Min => {
                let m = B::float_greater(a.clone(), b.clone(), bd);
                B::float_mask_where(a, m, b)
            }
            Bin::Eq => B::float_equal(a, b, bd),
            Bin::Lt => B::float_lower(a, b, bd),
            Bin::Gt => B::float_greater(a, b, bd),
            Bin::Le => B::float_lower_equal(a, b, bd),
            Bin::Ge => B::float_greater_equal(a, b, bd),
            Bin::And | Bin::Or | Bin::Xor => unreachable!("logic ops are checked to take bools"),
        },
        Kind::Int => match op {
            Bin::Add => B::int_add(a, b),
            Bin::Sub => B::int_sub(a, b),
            Bin::Mul => B::int_mul(a, b),
            Bin::Div => B::int_div(a, b),
            Bin::Pow => B::int_powi(a, b),
            Bin::Mod => B::int_remainder(a, b),
            Bin::Max => {
                let m = B::int_lower(a.clone(), b.clone(), bd);
                B::int_mask_where(a, m, b)
            }
            Bin::Min => {
                let m = B::int_greater(a.clone(), b.clone(), bd);
                B::int_mask_where(a, m, b)
            }
            Bin::Eq => B::int_equal(a, b, bd),
            Bin::Lt => B::int_lower(a, b, bd),
            Bin::Gt => B::int_greater(a, b, bd),
            Bin::Le => B::int_lower_equal(a, b, bd),
            Bin::Ge => B::int_greater_equal(a, b, bd),
            Bin::And | Bin::Or | Bin::Xor => unreachable!("logic ops are checked to take bools"),
        },
        Kind::Bool => match op {
            Bin::And => B::bool_and(a, b),
            Bin::Or => B::bool_or(a, b),
            Bin::Xor => B::bool_xor(a, b),
            Bin::Eq => B::bool_equal(a, b),
            _ => unreachable!("arithmetic on bools is rejected at lowering"),
        },
    }
}

/// A binary op with a constant scalar right-hand side, which Burn takes without a tensor.
fn binary_scalar(op: Bin, a: T, s: f64) -> Option<T> {
    let float = kind(&a) == Kind::Float;
    let sc = if float { Scalar::from(s) } else { Scalar::from(s as i64) };
    Some(match (float, op) {
        (true, Bin::Add) => B::float_add_scalar(a, sc),
        (true, Bin::Sub) => B::float_sub_scalar(a, sc),
        (true, Bin::Mul) => B::float_mul_scalar(a, sc),
        (true, Bin::Div) => B::float_div_scalar(a, sc),
        (true, Bin::Pow) => B::float_powf_scalar(a, sc),
        (false, Bin::Add) => B::int_add_scalar(a, sc),
        (false, Bin::Sub) => B::int_sub_scalar(a, sc),
        (false, Bin::Mul) => B::int_mul_scalar(a, sc),
        _ => return None,
    })
}

pub fn lower(node: &Node, inputs: &[Option<Input>], opset: i64) -> Result<Lowering> {
    let op = node.op.as_str();
    if op == "Mod" && node.int("fmod", 0)? != 0 {
        return lower_fmod(node, inputs);
    }
    if let Some(bin) = Bin::of(op) {
        return lower_binary(node, inputs, bin);
    }
    match op {
        "Mean" => lower_mean(node, inputs),
        "Where" => lower_where(node, inputs),
        "Clip" => lower_clip(node, inputs, opset),
        "Cast" => lower_cast(node, inputs),
        "PRelu" => lower_prelu(node, inputs),
        _ => lower_unary(node, inputs),
    }
}

fn lower_unary(node: &Node, inputs: &[Option<Input>]) -> Result<Lowering> {
    let x = input(inputs, 0, node)?;
    let ty = x.ty.clone();
    let want_float = node.op != "Not" && node.op != "Neg" && node.op != "Abs" && node.op != "Sign";
    if want_float && !ty.elem.is_float() {
        bail!(UnsupportedAttribute, "{} on {:?} tensors is not supported", node.op, ty.elem);
    }
    if node.op == "Not" && ty.elem != ElemType::Bool {
        bail!(ShapeMismatch, "Not takes a bool tensor, got {:?}", ty.elem);
    }
    let f: Box<dyn Fn(T) -> T + Send + Sync> = match node.op.as_str() {
        "Relu" => Box::new(B::relu),
        "Sigmoid" => Box::new(|t: T| cpu_kernels::sigmoid_in_place(t).unwrap_or_else(B::sigmoid)),
        "Tanh" => Box::new(|t: T| cpu_kernels::tanh_in_place(t).unwrap_or_else(B::float_tanh)),
        "Exp" => Box::new(B::float_exp),
        "Log" => Box::new(B::float_log),
        "Sqrt" => Box::new(B::float_sqrt),
        "Reciprocal" => Box::new(B::float_recip),
        "Floor" => Box::new(B::float_floor),
        "Ceil" => Box::new(B::float_ceil),
        "Round" => Box::new(B::float_round),
        "Sin" => Box::new(B::float_sin),
        "Cos" => Box::new(B::float_cos),
        "Erf" => Box::new(|t: T| cpu_kernels::erf_in_place(t).unwrap_or_else(B::float_erf)),
        "Softplus" => Box::new(|t| B::float_log1p(B::float_exp(t))),
        "Not" => Box::new(B::bool_not),
        "Neg" => Box::new(|t| if kind(&t) == Kind::Float { B::float_neg(t) } else { B::int_neg(t) }),
        "Abs" => Box::new(|t| if kind(&t) == Kind::Float { B::float_abs(t) } else { B::int_abs(t) }),
        "Sign" => Box::new(|t| if kind(&t) == Kind::Float { B::float_sign(t) } else { B::int_sign(t) }),
        "HardSigmoid" => {
            let (a, b) = (node.float("alpha", 0.2)? as f64, node.float("beta", 0.5)? as f64);
            Box::new(move |t| B::hard_sigmoid(t, a.into(), b.into()))
        }
        "HardSwish" => Box::new(|t: T| match cpu_kernels::map_in_place(t, |x| x * (x / 6.0 + 0.5).clamp(0.0, 1.0)) {
            Ok(t) => t,
            Err(t) => {
                let g = B::hard_sigmoid(t.clone(), (1.0f64 / 6.0).into(), 0.5f64.into());
                B::float_mul(t, g)
            }
        }),
        "LeakyRelu" => {
            let a = node.float("alpha", 0.01)? as f64;
            Box::new(move |t| B::leaky_relu(t, a.into()))
        }
        "Gelu" => match node.string("approximate", "none")?.as_str() {
            "none" => Box::new(|t: T| cpu_kernels::gelu_in_place(t).unwrap_or_else(B::gelu)),
            "tanh" => Box::new(|t: T| {
                // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
                let x3 = B::float_mul(B::float_mul(t.clone(), t.clone()), t.clone());
                let inner = B::float_add(t.clone(), B::float_mul_scalar(x3, 0.044715f64.into()));
                let th = B::float_tanh(B::float_mul_scalar(inner, (2.0f64 / std::f64::consts::PI).sqrt().into()));
                B::float_mul(B::float_mul_scalar(t, 0.5f64.into()), B::float_add_scalar(th, 1.0f64.into()))
            }),
            other => bail!(UnsupportedAttribute, "Gelu approximate='{other}'"),
        },
        other => bail!(UnsupportedOp, "unary op {other}"),
    };
    kernel(vec![ty], vec![0], move |_, mut v| vec![f(v.remove(0))])
}

/// Pow with base and exponent of different kinds: computed in float, returned in the base's kind.
fn lower_mixed_pow(base: Input, exp: Input) -> Result<Lowering> {
    let out = broadcast(&base.ty.shape, &exp.ty.shape)?;
    let (rank, dev) = (out.len(), device_dims(&out));
    let base_kind = if base.ty.elem.is_float() { Kind::Float } else { Kind::Int };
    kernel(vec![TypeInfo::new(base.ty.elem, out)], vec![0, 1], move |ctx, mut v| {
        let e = to_rank(cast(ctx, v.remove(1), Kind::Float), rank);
        let b = to_rank(cast(ctx, v.remove(0), Kind::Float), rank);
        vec![reshape(cast(ctx, B::float_powf(b, e), base_kind), &dev)]
    })
}

fn lower_binary(node: &Node, inputs: &[Option<Input>], bin: Bin) -> Result<Lowering> {
    if bin == Bin::Pow {
        let (b, e) = (input(inputs, 0, node)?, input(inputs, 1, node)?);
        if b.ty.elem.is_float() != e.ty.elem.is_float() {
            return lower_mixed_pow(b, e);
        }
    }
    let present: Vec<(usize, Input)> =
        inputs.iter().enumerate().filter_map(|(i, x)| x.map(|x| (i, x))).collect();
    if present.is_empty() {
        bail!(InvalidGraph, "{} has no inputs", node.op);
    }
    let elem = present[0].1.ty.elem;
    for (_, x) in &present {
        if x.ty.elem.is_float() != elem.is_float() || (x.ty.elem == ElemType::Bool) != (elem == ElemType::Bool) {
            bail!(ShapeMismatch, "{} mixes element types {:?} and {:?}", node.op, elem, x.ty.elem);
        }
    }
    if bin.is_logic() != (elem == ElemType::Bool) && !(bin == Bin::Eq && elem == ElemType::Bool) {
        bail!(ShapeMismatch, "{} does not take {:?} tensors", node.op, elem);
    }
    let mut out_shape = present[0].1.ty.shape.clone();
    for (_, x) in &present[1..] {
        out_shape = broadcast(&out_shape, &x.ty.shape)?;
    }
    let out_elem = if bin.is_comparison() { ElemType::Bool } else { elem };
    let rank = out_shape.len();
    let out_dev = device_dims(&out_shape);

    // Two operands, one a constant scalar: use Burn's scalar form and skip the upload.
    if present.len() == 2 {
        let (a, b) = (present[0], present[1]);
        let scalar_of = |x: Input| -> Option<f64> {
            let k = x.konst?;
            if k.num_elements() == 1 { k.try_to_vec_as::<f64>().ok().map(|v| v[0]) } else { None }
        };
        let commutative = matches!(bin, Bin::Add | Bin::Mul);
        let pick = if let Some(s) = scalar_of(b.1).filter(|_| a.1.ty.shape == out_shape) {
            Some((a.0, s))
        } else if commutative {
            scalar_of(a.1).filter(|_| b.1.ty.shape == out_shape).map(|s| (b.0, s))
        } else {
            None
        };
        if let Some((keep, s)) = pick {
            let probe_float = elem.is_float();
            let supported = matches!((probe_float, bin), (true, Bin::Add | Bin::Sub | Bin::Mul | Bin::Div | Bin::Pow) | (false, Bin::Add | Bin::Sub | Bin::Mul));
            if supported {
                return kernel(vec![TypeInfo::new(out_elem, out_shape)], vec![keep], move |_, mut v| {
                    vec![binary_scalar(bin, v.remove(0), s).expect("checked at lowering")]
                });
            }
        }
    }

    // Small constants of lower rank (biases) are stored at the output's rank: reshaping them in
    // every forward queues an op between a matmul and its bias add, which ends the fuser's block.
    let (mut uses, mut extra, mut order) = (vec![], vec![], vec![]);
    for (i, x) in &present {
        match x.konst {
            Some(k) if x.ty.rank() < rank && k.num_elements() <= 1 << 16 => {
                let mut dims = vec![1; rank - x.ty.rank()];
                dims.extend(&x.ty.shape);
                order.push(Operand::Extra(extra.len()));
                extra.push(reshape_data(k.clone(), dims));
            }
            _ => {
                order.push(Operand::Use(uses.len()));
                uses.push(*i);
            }
        }
    }
    let used = uses.len();
    // Max/Min select with a mask, which wants both operands at the full shape.
    let full = matches!(bin, Bin::Max | Bin::Min);
    kernel_with(vec![TypeInfo::new(out_elem, out_shape)], uses, extra, move |ctx, v| {
        let mut v: Vec<Option<T>> = v.into_iter().map(Some).collect();
        let operands: Vec<T> = order
            .iter()
            .map(|o| match *o {
                Operand::Use(u) => v[u].take(),
                Operand::Extra(e) => v[used + e].take(),
            })
            .map(|t| t.expect("each operand is taken once"))
            .collect();
        let mut it = operands.into_iter().map(|t| {
            let t = to_rank(t, rank);
            if full { crate::tensor::expand(t, &out_dev) } else { t }
        });
        let mut acc = it.next().expect("at least one input");
        for t in it {
            acc = binary(ctx, bin, acc, t);
        }
        vec![reshape(acc, &out_dev)]
    })
}

/// Where a binary op's operand comes from: a graph value or a constant the lowering reshaped.
#[derive(Clone, Copy)]
enum Operand {
    Use(usize),
    Extra(usize),
}

/// `Mod` with `fmod=1`: the remainder takes the dividend's sign, `a − b·trunc(a / b)`.
fn lower_fmod(node: &Node, inputs: &[Option<Input>]) -> Result<Lowering> {
    let (a, b) = (input(inputs, 0, node)?, input(inputs, 1, node)?);
    let out = broadcast(&a.ty.shape, &b.ty.shape)?;
    let (rank, dev) = (out.len(), device_dims(&out));
    let kind = if a.ty.elem.is_float() { Kind::Float } else { Kind::Int };
    kernel(vec![TypeInfo::new(a.ty.elem, out)], vec![0, 1], move |ctx, mut v| {
        let y = to_rank(cast(ctx, v.remove(1), Kind::Float), rank);
        let x = to_rank(cast(ctx, v.remove(0), Kind::Float), rank);
        let q = B::float_trunc(B::float_div(x.clone(), y.clone()));
        vec![reshape(cast(ctx, B::float_sub(x, B::float_mul(y, q)), kind), &dev)]
    })
}

fn lower_mean(node: &Node, inputs: &[Option<Input>]) -> Result<Lowering> {
    let Lowering::Kernel(sum) = lower_binary(node, inputs, Bin::Add)? else { unreachable!() };
    let n = sum.uses.len() as f64;
    let k = sum.kernel.clone();
    kernel(sum.outputs, sum.uses, move |ctx, v| {
        let s = k(ctx, v).remove(0);
        vec![B::float_div_scalar(s, n.into())]
    })
}

fn lower_where(node: &Node, inputs: &[Option<Input>]) -> Result<Lowering> {
    let (c, x, y) = (input(inputs, 0, node)?, input(inputs, 1, node)?, input(inputs, 2, node)?);
    if c.ty.elem != ElemType::Bool {
        bail!(ShapeMismatch, "Where condition must be bool, got {:?}", c.ty.elem);
    }
    let out = broadcast(&broadcast(&c.ty.shape, &x.ty.shape)?, &y.ty.shape)?;
    let dev = device_dims(&out);
    let rank = out.len();
    kernel(vec![TypeInfo::new(x.ty.elem, out)], vec![0, 1, 2], move |_, v| {
        let mut v = v.into_iter().map(|t| crate::tensor::expand(to_rank(t, rank), &dev));
        let (c, x, y) = (v.next().unwrap(), v.next().unwrap(), v.next().unwrap());
        vec![mask_where(y, c, x)]
    })
}

fn lower_clip(node: &Node, inputs: &[Option<Input>], opset: i64) -> Result<Lowering> {
    let x = input(inputs, 0, node)?;
    let bound = |i: usize, attr: &str, default: f32| -> Result<f32> {
        if opset < 11 {
            return node.float(attr, default);
        }
        match opt_input(inputs, i) {
            None => Ok(default),
            Some(b) => Ok(super::const_floats(b, "Clip bound")?[0]),
        }
    };
    let lo = bound(1, "min", f32::NEG_INFINITY)? as f64;
    let hi = bound(2, "max", f32::INFINITY)? as f64;
    if !x.ty.elem.is_float() {
        bail!(UnsupportedAttribute, "Clip on {:?} tensors", x.ty.elem);
    }
    kernel(vec![x.ty.clone()], vec![0], move |_, mut v| {
        let t = v.remove(0);
        vec![match (lo.is_finite(), hi.is_finite()) {
            (true, true) => B::float_clamp(t, lo.into(), hi.into()),
            (true, false) => B::float_clamp_min(t, lo.into()),
            (false, true) => B::float_clamp_max(t, hi.into()),
            (false, false) => t,
        }]
    })
}

fn lower_cast(node: &Node, inputs: &[Option<Input>]) -> Result<Lowering> {
    let x = input(inputs, 0, node)?;
    let to = node.int("to", 0)?;
    let elem = ElemType::from_onnx(to as i32).ok_or_else(|| err!(UnsupportedAttribute, "Cast to ONNX type {to}"))?;
    let kind = if elem.is_float() {
        Kind::Float
    } else if elem == ElemType::Bool {
        Kind::Bool
    } else {
        Kind::Int
    };
    kernel(vec![TypeInfo::new(elem, x.ty.shape.clone())], vec![0], move |ctx, mut v| vec![cast(ctx, v.remove(0), kind)])
}

fn lower_prelu(node: &Node, inputs: &[Option<Input>]) -> Result<Lowering> {
    let (x, s) = (input(inputs, 0, node)?, input(inputs, 1, node)?);
    let out = broadcast(&x.ty.shape, &s.ty.shape)?;
    let rank = out.len();
    kernel(vec![TypeInfo::new(x.ty.elem, out)], vec![0, 1], move |ctx, mut v| {
        let slope = to_rank(v.remove(1), rank);
        let x = v.remove(0);
        let neg = B::float_lower_elem(x.clone(), 0f32.into(), ctx.bool);
        let scaled = B::float_mul(x.clone(), slope);
        vec![B::float_mask_where(x, neg, scaled)]
    })
}

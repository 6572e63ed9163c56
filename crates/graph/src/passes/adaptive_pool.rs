//! docTR's export-friendly `AdaptiveAvgPool2d` (viptr's last stage) is a Python loop: every output
//! cell `(oh, ow)` is written by `Slice → Slice → ReduceMean → Expand → Reshape → ScatterND` into a
//! zero tensor, 256 chains in viptr_tiny and some 1 300 kernel launches per forward. Once shapes are
//! specialised the windows and indices are constants, so the specialiser follows such a chain, and
//! when it has written every cell with the mean over adaptive pooling's window it replaces the whole
//! chain by a mean reduction or a repeat per axis (the partial chain is then dead and dropped). viptr
//! pools `[N, H, W, C]` to `(C, 1)`: a mean over C and each of the W positions repeated C / W times.

use std::collections::HashMap;

use burn_backend::ops::FloatTensorOps;

use super::program::Value;
use crate::model::{ElemType, Node};
use crate::ops::{Kernel, TypeInfo};
use crate::tensor::{B, Ctx, T, reshape};

/// A non-constant value's producing node and its inputs, kept for the ops a pool chain is made of.
pub(super) struct Producer {
    pub node: Node,
    pub inputs: Vec<Option<Value>>,
    pub output: TypeInfo,
}

/// The ops whose producers the chain matcher needs.
pub(super) fn tracks(op: &str) -> bool {
    matches!(op, "Slice" | "ReduceMean" | "Expand" | "Reshape")
}

/// A chain of ScatterNDs that so far writes adaptive-pool means of `x` into some cells.
#[derive(Clone)]
pub(super) struct PoolChain {
    /// The value pooled, `[N, C, H, W]`.
    pub x: String,
    x_shape: [usize; 4],
    /// `[Ho, Wo]`.
    out: [usize; 2],
    written: Vec<bool>,
}

impl PoolChain {
    pub fn complete(&self) -> bool {
        self.written.iter().all(|&w| w)
    }

    pub fn output(&self) -> TypeInfo {
        let [n, c, ..] = self.x_shape;
        TypeInfo::new(ElemType::F32, vec![n, c, self.out[0], self.out[1]])
    }

    /// The pool per axis (each axis divides or is divided by its output, checked when the chain
    /// started): shrinking is a reshape to `(out, k)` and a mean over `k` (a plain mean when `out` is 1);
    /// growing makes every window one element, so each is repeated `out / len` times.
    pub fn kernel(&self) -> Kernel {
        let [n, c, h, w] = self.x_shape;
        let [ho, wo] = self.out;
        std::sync::Arc::new(move |_: &Ctx, mut v: Vec<T>| {
            let mut t = v.remove(0);
            if w > wo {
                t = match wo {
                    1 => B::float_mean_dim(t, 3),
                    _ => reshape(B::float_mean_dim(reshape(t, &[n, c, h, wo, w / wo]), 4), &[n, c, h, wo]),
                };
            } else if w < wo {
                let t5 = reshape(t, &[n, c, h, w, 1]);
                t = reshape(B::float_expand(t5, [n, c, h, w, wo / w].into()), &[n, c, h, wo]);
            }
            if h > ho {
                t = match ho {
                    1 => B::float_mean_dim(t, 2),
                    _ => reshape(B::float_mean_dim(reshape(t, &[n, c, ho, h / ho, wo]), 3), &[n, c, ho, wo]),
                };
            } else if h < ho {
                let t5 = reshape(t, &[n, c, h, 1, wo]);
                t = reshape(B::float_expand(t5, [n, c, h, ho / h, wo].into()), &[n, c, ho, wo]);
            }
            vec![t]
        })
    }
}

/// The chain `node` (a ScatterND) extends or starts, or `None` when it is not part of one.
pub(super) fn extend(
    node: &Node,
    values: &[Option<Value>],
    chains: &HashMap<String, PoolChain>,
    producers: &HashMap<String, Producer>,
) -> Option<PoolChain> {
    let [Some(data), Some(indices), Some(update)] = values else { return None };
    if node.string("reduction", "none").ok()? != "none" {
        return None;
    }
    let (x, window) = pooled_window(update, producers)?;
    let x_shape: [usize; 4] = x.ty.shape.clone().try_into().ok()?;
    let [n, c, h, w] = x_shape;
    let mut chain = match &data.konst {
        // The chain starts on a constant (ONNX's `torch.empty`): every cell gets overwritten.
        Some(_) => {
            let [dn, dc, ho, wo]: [usize; 4] = data.ty.shape.clone().try_into().ok()?;
            let fits = |len: usize, out: usize| len > 0 && out > 0 && (len % out == 0 || out % len == 0);
            if (dn, dc) != (n, c) || !fits(h, ho) || !fits(w, wo) || !x.ty.elem.is_float() {
                return None;
            }
            PoolChain { x: x.source.clone(), x_shape, out: [ho, wo], written: vec![false; ho * wo] }
        }
        None => chains.get(&data.source).filter(|ch| ch.x == x.source)?.clone(),
    };
    let [ho, wo] = chain.out;
    // Indices `[N, C, 4]` (torch's export may keep unit axes, `[N, C, 1, 1, 4]`), row-major over
    // (n, c), all for one cell.
    let idx = indices.konst.as_ref()?.try_to_vec_as::<i64>().ok()?;
    let shape = &indices.ty.shape;
    let unit_middle = shape.len() >= 3 && shape[2..shape.len() - 1].iter().all(|&d| d == 1);
    if !unit_middle || shape[..2] != [n, c] || shape.last() != Some(&4) || n * c == 0 {
        return None;
    }
    let cell = |v: i64, d: usize| usize::try_from(if v < 0 { v + d as i64 } else { v }).ok().filter(|&v| v < d);
    let (oh, ow) = (cell(idx[2], ho)?, cell(idx[3], wo)?);
    let ok = idx.chunks(4).enumerate().all(|(i, t)| {
        [cell(t[0], n), cell(t[1], c), cell(t[2], ho), cell(t[3], wo)] == [Some(i / c), Some(i % c), Some(oh), Some(ow)]
    });
    let span = |o: usize, out: usize, len: usize| (o * len / out, ((o + 1) * len).div_ceil(out));
    if !ok || window != [span(oh, ho, h), span(ow, wo, w)] || chain.written[oh * wo + ow] {
        return None;
    }
    chain.written[oh * wo + ow] = true;
    Some(chain)
}

/// Follows an update back through Reshape/Expand (order-preserving), a ReduceMean over the last two
/// axes without keepdims, and Slices: the pooled value and the window `[(h0, h1), (w0, w1)]`.
fn pooled_window<'a>(update: &Value, producers: &'a HashMap<String, Producer>) -> Option<(&'a Value, [(usize, usize); 2])> {
    let mut p = producers.get(&update.source)?;
    while matches!(p.node.op.as_str(), "Reshape" | "Expand") {
        let input = p.inputs.first()?.as_ref()?;
        if p.node.op == "Expand" && input.ty.shape != p.output.shape {
            return None;
        }
        p = producers.get(&input.source)?;
    }
    if p.node.op != "ReduceMean" || p.node.int("keepdims", 1).ok()? != 0 {
        return None;
    }
    let axes = match p.inputs.get(1) {
        Some(Some(a)) => a.konst.as_ref()?.try_to_vec_as::<i64>().ok()?,
        _ => p.node.ints("axes").ok()??,
    };
    let mut axes: Vec<i64> = axes.iter().map(|&a| if a < 0 { a + 4 } else { a }).collect();
    axes.sort_unstable();
    if axes != [2, 3] {
        return None;
    }
    // The Slices, last first; then applied from the pooled value forward.
    let mut slices = vec![];
    let mut v = p.inputs.first()?.as_ref()?;
    while let Some(s) = producers.get(&v.source).filter(|s| s.node.op == "Slice") {
        slices.push(s);
        v = s.inputs.first()?.as_ref()?;
    }
    if slices.is_empty() || v.ty.rank() != 4 {
        return None;
    }
    let mut window = [(0, v.ty.shape[2]), (0, v.ty.shape[3])];
    for s in slices.iter().rev() {
        let arg = |i: usize| -> Option<Option<Vec<i64>>> {
            match s.inputs.get(i) {
                Some(Some(a)) => Some(Some(a.konst.as_ref()?.try_to_vec_as::<i64>().ok()?)),
                _ => Some(None),
            }
        };
        let (starts, ends) = (arg(1)??, arg(2)??);
        let axes = arg(3)?.unwrap_or_else(|| (0..starts.len() as i64).collect());
        if arg(4)?.is_some_and(|st| st.iter().any(|&st| st != 1)) || ends.len() != starts.len() || axes.len() != starts.len() {
            return None;
        }
        let input = s.inputs.first()?.as_ref()?;
        for ((&a, &st), &en) in axes.iter().zip(&starts).zip(&ends) {
            let a = usize::try_from(if a < 0 { a + 4 } else { a }).ok()?;
            let dim = *input.ty.shape.get(a)? as i64;
            let norm = |v: i64| (if v < 0 { v + dim } else { v }).clamp(0, dim) as usize;
            let (lo, hi) = (norm(st), norm(en).max(norm(st)));
            match a {
                2 | 3 => {
                    let (base, _) = window[a - 2];
                    window[a - 2] = (base + lo, base + hi);
                }
                // Slicing N or C must keep all of it.
                _ if lo == 0 && hi == dim as usize => {}
                _ => return None,
            }
        }
    }
    Some((v, window))
}

//! ONNX LSTM (docTR's CRNN and SAR heads), unrolled over the sequence length known at lowering.
//! The input projection for all time steps is one matmul; each step is a small matmul plus
//! element-wise gates, which the fused backends merge. On flex, Kiln's kernel runs the same
//! recurrence in place (`cpu_kernels::lstm`).

use burn_backend::ops::{ActivationOps, FloatTensorOps};
use burn_backend::{Shape, TensorData};

use super::cpu_kernels::{self, LstmWeights};
use super::{Input, Lowering, TypeInfo, const_floats, input, kernel_with, opt_input};
use crate::error::{Result, bail};
use crate::model::{ElemType, Node};
use crate::tensor::{B, T, axis_slice, cat, permute, reshape, slice};

/// Row-major `[rows, cols]` → `[cols, rows]` on the host.
fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

pub fn lower(node: &Node, inputs: &[Option<Input>]) -> Result<Lowering> {
    let x = input(inputs, 0, node)?;
    let (w, r) = (input(inputs, 1, node)?, input(inputs, 2, node)?);
    let hidden = node.int("hidden_size", 0)? as usize;
    let direction = node.string("direction", "forward")?;
    let dirs = if direction == "bidirectional" { 2 } else { 1 };
    let layout = node.int("layout", 0)?;
    if let Some(acts) = node.attr("activations") {
        let crate::model::Attr::Strings(a) = acts else { bail!(InvalidGraph, "LSTM activations") };
        let default = ["Sigmoid", "Tanh", "Tanh"];
        if a.iter().enumerate().any(|(i, s)| s != default[i % 3]) {
            bail!(UnsupportedAttribute, "LSTM activations {a:?}");
        }
    }
    if node.attr("clip").is_some() || node.int("input_forget", 0)? != 0 {
        bail!(UnsupportedAttribute, "LSTM clip/input_forget");
    }
    if opt_input(inputs, 4).is_some() {
        bail!(UnsupportedAttribute, "LSTM sequence_lens");
    }
    if opt_input(inputs, 7).is_some() {
        bail!(UnsupportedAttribute, "LSTM peepholes");
    }
    if x.ty.rank() != 3 {
        bail!(ShapeMismatch, "LSTM input rank {}", x.ty.rank());
    }
    let (seq, batch, isz) = if layout == 0 {
        (x.ty.shape[0], x.ty.shape[1], x.ty.shape[2])
    } else {
        (x.ty.shape[1], x.ty.shape[0], x.ty.shape[2])
    };
    let g = 4 * hidden;
    if w.ty.shape != [dirs, g, isz] || r.ty.shape != [dirs, g, hidden] {
        bail!(ShapeMismatch, "LSTM weights {:?}/{:?} do not fit input {:?}, hidden {hidden}", w.ty.shape, r.ty.shape, x.ty.shape);
    }
    let wv = const_floats(w, "LSTM W")?;
    let rv = const_floats(r, "LSTM R")?;
    let bv = match opt_input(inputs, 3) {
        Some(b) => const_floats(b, "LSTM B")?,
        None => vec![0.0; dirs * 2 * g],
    };
    let reverse_only = direction == "reverse";
    // Host copies for the flex kernel (transposed, biases summed), with each direction's sense.
    let host = std::sync::Arc::new(LstmWeights {
        w: transpose(&wv, dirs * g, isz),
        dirs: (0..dirs)
            .map(|d| {
                let b = &bv[d * 2 * g..(d + 1) * 2 * g];
                let summed = (0..g).map(|i| b[i] + b[g + i]).collect();
                (transpose(&rv[d * g * hidden..(d + 1) * g * hidden], g, hidden), summed, reverse_only || d == 1)
            })
            .collect(),
    });
    let mut extra = vec![];
    for d in 0..dirs {
        extra.push(TensorData::new(transpose(&wv[d * g * isz..(d + 1) * g * isz], g, isz), vec![isz, g]));
        extra.push(TensorData::new(transpose(&rv[d * g * hidden..(d + 1) * g * hidden], g, hidden), vec![hidden, g]));
        let b = &bv[d * 2 * g..(d + 1) * 2 * g];
        extra.push(TensorData::new((0..g).map(|i| b[i] + b[g + i]).collect::<Vec<f32>>(), vec![1, g]));
    }
    let has_h0 = opt_input(inputs, 5).is_some();
    let has_c0 = opt_input(inputs, 6).is_some();
    let mut uses = vec![0];
    if has_h0 {
        uses.push(5);
    }
    if has_c0 {
        uses.push(6);
    }
    let y_shape = if layout == 0 { vec![seq, dirs, batch, hidden] } else { vec![batch, seq, dirs, hidden] };
    let s_shape = if layout == 0 { vec![dirs, batch, hidden] } else { vec![batch, dirs, hidden] };
    let outputs = vec![
        TypeInfo::new(ElemType::F32, y_shape),
        TypeInfo::new(ElemType::F32, s_shape.clone()),
        TypeInfo::new(ElemType::F32, s_shape),
    ];
    kernel_with(outputs, uses, extra, move |ctx, mut v| {
        let weights: Vec<T> = v.split_off(v.len() - 3 * dirs);
        let mut v = v.into_iter();
        let mut x = v.next().unwrap();
        if layout != 0 {
            x = permute(x, &[1, 0, 2]);
        }
        let state = |t: Option<T>| {
            t.map(|t| if layout != 0 { permute(t, &[1, 0, 2]) } else { t })
        };
        let h0 = if has_h0 { state(v.next()) } else { None };
        let c0 = if has_c0 { state(v.next()) } else { None };
        if layout == 0 {
            if let Some(out) = cpu_kernels::lstm(ctx, &x, h0.as_ref(), c0.as_ref(), &host, [seq, batch, isz, hidden]) {
                return out.into();
            }
        }
        let zeros = || B::float_zeros(Shape::from(vec![batch, hidden]), &ctx.device, ctx.float);
        let pick = |s: &Option<T>, d: usize| match s {
            Some(s) => reshape(slice(s.clone(), &axis_slice(3, 0, d, d + 1)), &[batch, hidden]),
            None => zeros(),
        };
        let xf = reshape(x, &[seq * batch, isz]);
        let (mut ys, mut hs, mut cs) = (vec![], vec![], vec![]);
        for d in 0..dirs {
            let (wt, rt, b) = (weights[3 * d].clone(), weights[3 * d + 1].clone(), weights[3 * d + 2].clone());
            let xw = reshape(B::float_add(B::float_matmul(xf.clone(), wt), b), &[seq, batch, g]);
            let (mut h, mut c) = (pick(&h0, d), pick(&c0, d));
            let backward = reverse_only || d == 1;
            let mut steps: Vec<T> = Vec::with_capacity(seq);
            for s in 0..seq {
                let t = if backward { seq - 1 - s } else { s };
                let xt = reshape(slice(xw.clone(), &axis_slice(3, 0, t, t + 1)), &[batch, g]);
                let gates = B::float_add(xt, B::float_matmul(h.clone(), rt.clone()));
                let gate = |k: usize| slice(gates.clone(), &axis_slice(2, 1, k * hidden, (k + 1) * hidden));
                let (i, o, f, cc) = (B::sigmoid(gate(0)), B::sigmoid(gate(1)), B::sigmoid(gate(2)), B::float_tanh(gate(3)));
                c = B::float_add(B::float_mul(f, c), B::float_mul(i, cc));
                h = B::float_mul(o, B::float_tanh(c.clone()));
                steps.push(reshape(h.clone(), &[1, 1, batch, hidden]));
            }
            if backward {
                steps.reverse();
            }
            ys.push(cat(steps, 0));
            hs.push(reshape(h, &[1, batch, hidden]));
            cs.push(reshape(c, &[1, batch, hidden]));
        }
        let mut y = cat(ys, 1);
        let (mut yh, mut yc) = (cat(hs, 0), cat(cs, 0));
        if layout != 0 {
            y = permute(y, &[2, 0, 1, 3]);
            yh = permute(yh, &[1, 0, 2]);
            yc = permute(yc, &[1, 0, 2]);
        }
        vec![y, yh, yc]
    })
}

//! Kiln's own kernels for the flex CPU backend, where profiles show Burn's slow for docTR's
//! graphs: dense 2-D convolution as NCHW im2col in row tiles + `gemm` (Burn runs the RGB stems —
//! 3 input channels, stride 2 — through scalar strided loops), depthwise convolution plane by
//! plane, bilinear resizing with the interpolation weights computed once per row and column (DB's
//! FPN upsampling), and element-wise activations in place (Burn's HardSwish is two passes and an allocation). They read and write flex tensors
//! in place; other backends, and tensors flex holds as strided views, keep Burn's ops.

use std::cell::RefCell;

use burn_backend::TensorData;
use burn_backend::ops::FloatTensorOps;
use burn_dispatch::{BackendTensor, DispatchTensorKind};
use rayon::prelude::*;

use crate::tensor::{B, Ctx, T};

/// Applies `f` to every element in place when `t` is a contiguous f32 flex tensor this step owns
/// alone; otherwise hands `t` back.
pub fn map_in_place(t: T, f: impl Fn(f32) -> f32 + Sync) -> Result<T, T> {
    if !enabled() {
        return Err(t);
    }
    let T { kind, autodiff } = t;
    match kind {
        DispatchTensorKind::Flex(BackendTensor::Float(mut x))
            if x.layout().contiguous_offsets() == Some((0, x.layout().num_elements()))
                && x.dtype() == burn_backend::DType::F32 =>
        {
            let n = x.layout().num_elements();
            match x.try_storage_mut::<f32>() {
                Some(v) => {
                    v[..n].par_chunks_mut(1 << 14).for_each(|c| c.iter_mut().for_each(|v| *v = f(*v)));
                    Ok(T { kind: DispatchTensorKind::Flex(BackendTensor::Float(x)), autodiff })
                }
                None => Err(T { kind: DispatchTensorKind::Flex(BackendTensor::Float(x)), autodiff }),
            }
        }
        kind => Err(T { kind, autodiff }),
    }
}

/// Bilinear resize of an NCHW tensor to `size`, with ONNX's `align_corners` or `half_pixel`
/// coordinates (the latter clamped at the border, as PyTorch and ONNX Runtime do).
pub fn resize_bilinear(ctx: &Ctx, x: &T, shape: &[usize], size: [usize; 2], align_corners: bool) -> Option<T> {
    if !enabled() || shape.len() != 4 {
        return None;
    }
    let xs = flex_slice(x)?;
    let [n, c, h, w] = [shape[0], shape[1], shape[2], shape[3]];
    let [oh, ow] = size;
    if xs.len() != n * c * h * w || h == 0 || w == 0 {
        return None;
    }
    // Source index pairs and the weight of the second, per output coordinate.
    let taps = |len: usize, out: usize| -> Vec<(usize, usize, f32)> {
        (0..out)
            .map(|d| {
                let src = if align_corners {
                    if out > 1 { d as f32 * (len - 1) as f32 / (out - 1) as f32 } else { 0.0 }
                } else {
                    ((d as f32 + 0.5) * len as f32 / out as f32 - 0.5).max(0.0)
                };
                let i0 = (src.floor() as usize).min(len - 1);
                let i1 = (i0 + 1).min(len - 1);
                (i0, i1, if i1 == i0 { 0.0 } else { src - i0 as f32 })
            })
            .collect()
    };
    let (ty, tx) = (taps(h, oh), taps(w, ow));
    let mut out = vec![0f32; n * c * oh * ow];
    out.par_chunks_mut(oh * ow).enumerate().for_each(|(p, o)| {
        let plane = &xs[p * h * w..(p + 1) * h * w];
        for (orow, &(y0, y1, wy)) in o.chunks_mut(ow).zip(&ty) {
            let (r0, r1) = (&plane[y0 * w..(y0 + 1) * w], &plane[y1 * w..(y1 + 1) * w]);
            for (v, &(x0, x1, wx)) in orow.iter_mut().zip(&tx) {
                let top = r0[x0] + wx * (r0[x1] - r0[x0]);
                let bottom = r1[x0] + wx * (r1[x1] - r1[x0]);
                *v = top + wy * (bottom - top);
            }
        }
    });
    Some(B::float_from_data(TensorData::new(out, vec![n, c, oh, ow]), &ctx.device))
}

/// A convolution's geometry, fixed at lowering.
#[derive(Debug, Clone)]
pub struct ConvGeometry {
    /// Input `[N, C, H, W]` and output `[N, M, OH, OW]`.
    pub input: [usize; 4],
    pub output: [usize; 4],
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// Leading pads (the trailing ones follow from the output size).
    pub pad: [usize; 2],
    pub groups: usize,
}

/// Im2col buffers above this many floats are split into row tiles (keeps them in L2/L3).
const TILE_FLOATS: usize = 1 << 20;

thread_local! {
    static COLS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn flex_slice(t: &T) -> Option<&[f32]> {
    match &t.kind {
        DispatchTensorKind::Flex(BackendTensor::Float(f)) => f.as_slice::<f32>(),
        _ => None,
    }
}

/// `KILN_CPU_KERNELS=0` runs Burn's flex kernels instead of Kiln's, for comparisons.
fn enabled() -> bool {
    static ON: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(|| std::env::var("KILN_CPU_KERNELS").map_or(true, |v| v != "0"));
    *ON
}

/// An activation applied to a convolution's output tile right after its gemm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Epilogue {
    Relu,
    HardSwish,
    Clip(f32, f32),
}

impl Epilogue {
    fn apply(self, v: &mut [f32]) {
        match self {
            Epilogue::Relu => v.iter_mut().for_each(|x| *x = x.max(0.0)),
            Epilogue::HardSwish => v.iter_mut().for_each(|x| *x *= (*x / 6.0 + 0.5).clamp(0.0, 1.0)),
            Epilogue::Clip(lo, hi) => v.iter_mut().for_each(|x| *x = x.clamp(lo, hi)),
        }
    }
}

/// Runs the convolution when `x`, `w` (and `bias`) are contiguous f32 flex tensors; `None` leaves
/// it to Burn. The bias seeds each output tile before its gemm accumulates into it, and the
/// epilogue runs on the tile after, while it is still in cache.
pub fn conv2d(ctx: &Ctx, x: &T, w: &T, bias: Option<&T>, g: &ConvGeometry, epilogue: Option<Epilogue>) -> Option<T> {
    if !enabled() {
        return None;
    }
    let xs = flex_slice(x)?;
    let ws = flex_slice(w)?;
    let bs = match bias {
        Some(b) => Some(flex_slice(b)?),
        None => None,
    };
    let [n, c, _, _] = g.input;
    let [_, m, oh, ow] = g.output;
    if xs.len() != g.input.iter().product::<usize>() || ws.len() != m * (c / g.groups) * g.kernel[0] * g.kernel[1] {
        return None;
    }
    let mut out = vec![0f32; n * m * oh * ow];
    if c / g.groups == 1 && g.kernel != [1, 1] {
        // Depthwise: im2col would copy every input k² times for one multiply-add each.
        if m != g.groups {
            return None;
        }
        depthwise(xs, ws, bs, epilogue, &mut out, g);
    } else {
        grouped(xs, ws, bs, epilogue, &mut out, g);
    }
    Some(B::float_from_data(TensorData::new(out, g.output.to_vec()), &ctx.device))
}

/// `[lo, hi)`: the output positions whose input index `o·stride + k·dilation − pad` is in `[0, len)`.
fn valid(k: usize, g_stride: usize, dilation: usize, pad: usize, len: usize, out: usize) -> (usize, usize) {
    let off = k * dilation;
    let lo = if off >= pad { 0 } else { (pad - off).div_ceil(g_stride) };
    // o·s + off − pad ≤ len − 1  ⇔  o ≤ (len − 1 + pad − off) / s
    let hi = if len + pad > off { ((len - 1 + pad - off) / g_stride + 1).min(out) } else { 0 };
    (lo.min(hi), hi)
}

/// Dense and grouped convolutions: per image, group and tile of output rows, im2col then one gemm
/// `out[Mg, rows·OW] = W[Mg, K] · cols[K, rows·OW]`. 1×1 stride-1 unpadded convs read the input
/// in place.
fn grouped(xs: &[f32], ws: &[f32], bias: Option<&[f32]>, epilogue: Option<Epilogue>, out: &mut [f32], g: &ConvGeometry) {
    let [n, c, h, wd] = g.input;
    let [_, m, oh, ow] = g.output;
    let [kh, kw] = g.kernel;
    let (cg, mg) = (c / g.groups, m / g.groups);
    let k = cg * kh * kw;
    let pointwise = kh == 1 && kw == 1 && g.stride == [1, 1] && g.pad == [0, 0];
    let rows = (TILE_FLOATS / (k * ow).max(1)).clamp(1, oh);
    let tiles = oh.div_ceil(rows);
    let tasks = n * g.groups * tiles;
    let threads = rayon::current_num_threads();
    // Enough independent tiles: one single-threaded gemm each; else let the gemm parallelise.
    let inner = if tasks >= threads { gemm::Parallelism::None } else { gemm::Parallelism::Rayon(threads) };
    let out_ptr = SendPtr(out.as_mut_ptr());
    let run = |task: usize| {
        let (img, rest) = (task / (g.groups * tiles), task % (g.groups * tiles));
        let (grp, tile) = (rest / tiles, rest % tiles);
        let (oy0, oy1) = (tile * rows, ((tile + 1) * rows).min(oh));
        let cols_n = (oy1 - oy0) * ow;
        let x = &xs[(img * c + grp * cg) * h * wd..(img * c + (grp + 1) * cg) * h * wd];
        let lhs = ws[grp * mg * k..].as_ptr();
        // SAFETY: tasks write disjoint blocks: image `img`, channels `grp·mg..`, rows `oy0..oy1`.
        let dst = unsafe { out_ptr.get().add(((img * m + grp * mg) * oh + oy0) * ow) };
        // The tile's rows, one per output channel of the group: `cols_n` floats, `oh·ow` apart.
        let rows_of = |f: &dyn Fn(usize, &mut [f32])| {
            for j in 0..mg {
                // SAFETY: inside this task's disjoint block (see above).
                let row = unsafe { std::slice::from_raw_parts_mut(dst.add(j * oh * ow), cols_n) };
                f(grp * mg + j, row);
            }
        };
        if let Some(b) = bias {
            rows_of(&|ch, row| row.fill(b[ch]));
        }
        let gemm = |rhs: *const f32, rhs_rs: isize| unsafe {
            gemm::gemm(
                mg, cols_n, k, dst, 1, (oh * ow) as isize, bias.is_some(), lhs, 1, k as isize, rhs, 1, rhs_rs, 1.0f32,
                1.0f32, false, false, false, inner,
            )
        };
        if pointwise {
            gemm(x[oy0 * ow..].as_ptr(), (h * wd) as isize);
        } else {
            COLS.with(|cell| {
                let mut cols = cell.borrow_mut();
                cols.resize(k * cols_n, 0.0);
                im2col(x, &mut cols, g, oy0, oy1);
                gemm(cols.as_ptr(), cols_n as isize);
            });
        }
        if let Some(e) = epilogue {
            rows_of(&|_, row| e.apply(row));
        }
    };
    if tasks > 1 && matches!(inner, gemm::Parallelism::None) {
        (0..tasks).into_par_iter().for_each(run);
    } else {
        (0..tasks).for_each(run);
    }
}

/// Depthwise convolution (one filter per channel), one output plane per task: the plane starts
/// at the bias and each filter tap adds its weight times the shifted input rows, so the inner
/// loop is a contiguous multiply-add the compiler vectorises (strided when the conv is).
fn depthwise(xs: &[f32], ws: &[f32], bias: Option<&[f32]>, epilogue: Option<Epilogue>, out: &mut [f32], g: &ConvGeometry) {
    let [_, c, h, wd] = g.input;
    let [_, _, oh, ow] = g.output;
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [dh, dw] = g.dilation;
    let [ph, pw] = g.pad;
    out.par_chunks_mut(oh * ow).enumerate().for_each(|(p, o)| {
        let ch = p % c;
        let plane = &xs[p * h * wd..(p + 1) * h * wd];
        let taps = &ws[ch * kh * kw..(ch + 1) * kh * kw];
        o.fill(bias.map_or(0.0, |b| b[ch]));
        for ki in 0..kh {
            let (vy0, vy1) = valid(ki, sh, dh, ph, h, oh);
            for kj in 0..kw {
                let (ox0, ox1) = valid(kj, sw, dw, pw, wd, ow);
                if ox0 >= ox1 {
                    continue;
                }
                let wt = taps[ki * kw + kj];
                let x0 = ox0 * sw + kj * dw - pw;
                for oy in vy0..vy1 {
                    let src = &plane[(oy * sh + ki * dh - ph) * wd..][..wd];
                    let dst = &mut o[oy * ow + ox0..oy * ow + ox1];
                    if sw == 1 {
                        dst.iter_mut().zip(&src[x0..x0 + (ox1 - ox0)]).for_each(|(d, s)| *d += wt * s);
                    } else {
                        dst.iter_mut().zip(src[x0..].iter().step_by(sw)).for_each(|(d, s)| *d += wt * s);
                    }
                }
            }
        }
        if let Some(e) = epilogue {
            e.apply(o);
        }
    });
}

/// Fills `cols[K, (oy1−oy0)·OW]` for one group's channels `x[Cg, H, W]`.
fn im2col(x: &[f32], cols: &mut [f32], g: &ConvGeometry, oy0: usize, oy1: usize) {
    let [_, _, h, wd] = g.input;
    let ow = g.output[3];
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [dh, dw] = g.dilation;
    let [ph, pw] = g.pad;
    let width = (oy1 - oy0) * ow;
    for (r, row) in cols.chunks_mut(width).enumerate() {
        let (ci, ki, kj) = (r / (kh * kw), (r / kw) % kh, r % kw);
        let plane = &x[ci * h * wd..(ci + 1) * h * wd];
        let (vy0, vy1) = valid(ki, sh, dh, ph, h, g.output[2]);
        let (ox0, ox1) = valid(kj, sw, dw, pw, wd, ow);
        for (i, oy) in (oy0..oy1).enumerate() {
            let dst = &mut row[i * ow..(i + 1) * ow];
            if oy < vy0 || oy >= vy1 || ox0 >= ox1 {
                dst.fill(0.0);
                continue;
            }
            dst[..ox0].fill(0.0);
            dst[ox1..].fill(0.0);
            let src = &plane[(oy * sh + ki * dh - ph) * wd..][..wd];
            let x0 = ox0 * sw + kj * dw - pw;
            if sw == 1 {
                dst[ox0..ox1].copy_from_slice(&src[x0..x0 + (ox1 - ox0)]);
            } else {
                for (j, d) in dst[ox0..ox1].iter_mut().enumerate() {
                    *d = src[x0 + j * sw];
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: every task writes a disjoint part of the output (see `grouped`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

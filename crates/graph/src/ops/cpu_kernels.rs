//! Kiln's own kernels for the flex CPU backend, where profiles show Burn's slow for docTR's
//! graphs: dense 2-D convolution as NCHW im2col in tiles + `gemm`; RGB stems (3 input channels,
//! stride 2) and depthwise convolutions as sums held in registers over column-phase planes;
//! transposed convolution as gemm + col2im (DB's upsampling head); bilinear resizing with the
//! interpolation weights computed once per row and column (DB's FPN upsampling); element-wise
//! activations in place (Burn's HardSwish is two passes and an allocation). They read and write
//! flex tensors in place; other backends, and tensors flex holds as strided views, keep Burn's ops.

use std::cell::RefCell;

use burn_backend::TensorData;
use burn_backend::ops::FloatTensorOps;
use burn_dispatch::{BackendTensor, DispatchTensorKind};
use rayon::prelude::*;

use super::aligned::AlignedBuf;
use crate::tensor::{B, Ctx, T};

/// The widest vector unit this CPU has: 2 AVX-512, 1 AVX2 with FMA, 0 neither.
#[cfg(target_arch = "x86_64")]
fn simd_level() -> u8 {
    static LEVEL: std::sync::LazyLock<u8> = std::sync::LazyLock::new(|| {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
            2
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            1
        } else {
            0
        }
    });
    *LEVEL
}

/// Defines a function whose body is compiled three times — for AVX-512, for AVX2 with FMA and for
/// baseline x86-64 — and runs the widest the CPU has. Kiln is built for baseline x86-64 (SSE2), so
/// its loops would otherwise use 4-wide vectors on machines with 16-wide ones.
macro_rules! simd_fn {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn v4($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn v3($($arg: $ty),*) {
                    body($($arg),*)
                }
                match simd_level() {
                    // SAFETY: the CPU has the features these versions are compiled for.
                    2 => return unsafe { v4($($arg),*) },
                    1 => return unsafe { v3($($arg),*) },
                    _ => {}
                }
            }
            body($($arg),*)
        }
    };
}

/// Applies `f` to every element in place when `t` is a contiguous f32 flex tensor this step owns
/// alone; otherwise hands `t` back.
pub fn map_in_place(t: T, f: impl Fn(f32) -> f32 + Sync) -> Result<T, T> {
    with_storage_mut(t, |v| v.par_chunks_mut(1 << 14).for_each(|c| c.iter_mut().for_each(|v| *v = f(*v))))
}

/// Runs `f` on the values of `t` when it is a contiguous f32 flex tensor this step owns alone;
/// otherwise hands `t` back untouched.
fn with_storage_mut(t: T, f: impl FnOnce(&mut [f32])) -> Result<T, T> {
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
                    f(&mut v[..n]);
                    Ok(T { kind: DispatchTensorKind::Flex(BackendTensor::Float(x)), autodiff })
                }
                None => Err(T { kind: DispatchTensorKind::Flex(BackendTensor::Float(x)), autodiff }),
            }
        }
        kind => Err(T { kind, autodiff }),
    }
}

/// Exact GELU (`0.5·x·(1 + erf(x/√2))`) in place, on flex tensors this step owns alone.
pub fn gelu_in_place(t: T) -> Result<T, T> {
    with_storage_mut(t, |v| v.par_chunks_mut(1 << 14).for_each(|c| gelu_slice(c)))
}

/// `erf` in place, on flex tensors this step owns alone.
pub fn erf_in_place(t: T) -> Result<T, T> {
    with_storage_mut(t, |v| v.par_chunks_mut(1 << 14).for_each(|c| erf_slice(c)))
}

/// `tanh` in place, on flex tensors this step owns alone (Burn's flex calls libm per element:
/// SAR's 30 attention steps spent 1.4 s of a 4.5 s forward there).
pub fn tanh_in_place(t: T) -> Result<T, T> {
    with_storage_mut(t, |v| v.par_chunks_mut(1 << 14).for_each(|c| tanh_slice(c)))
}

/// The logistic sigmoid in place, on flex tensors this step owns alone.
pub fn sigmoid_in_place(t: T) -> Result<T, T> {
    with_storage_mut(t, |v| v.par_chunks_mut(1 << 14).for_each(|c| sigmoid_slice(c)))
}

simd_fn! {
fn tanh_slice(v: &mut [f32]) {
    map16(v, tanh_accurate);
}
}

simd_fn! {
fn sigmoid_slice(v: &mut [f32]) {
    map16(v, sigmoid);
}
}

simd_fn! {
fn gelu_slice(v: &mut [f32]) {
    map16(v, |x| 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)));
}
}

simd_fn! {
fn erf_slice(v: &mut [f32]) {
    map16(v, erf);
}
}

/// `f` on every value, sixteen at a time through a fixed-size array, which LLVM turns into whole
/// vector registers (over a plain slice it leaves such bodies partly scalar). Inlined into the
/// `simd_fn` callers, so it is compiled for their target features.
#[inline(always)]
fn map16(v: &mut [f32], f: impl Fn(f32) -> f32) {
    let mut chunks = v.chunks_exact_mut(16);
    for c in &mut chunks {
        let mut lanes: [f32; 16] = (&*c).try_into().expect("16 lanes");
        for x in &mut lanes {
            *x = f(*x);
        }
        c.copy_from_slice(&lanes);
    }
    for x in chunks.into_remainder() {
        *x = f(*x);
    }
}

/// Mean (or maximum) of each run of `row` contiguous values of a flex tensor: global pooling
/// over NCHW planes, parallel over planes with sixteen partial sums each. Burn's flex reduction
/// took twice as long on MobileNet's squeeze-and-excite pools (240 channels at 16×16, batch 64:
/// 0.47 ms). `None` on other tensors.
pub fn reduce_rows(ctx: &Ctx, x: &T, row: usize, max: bool) -> Option<T> {
    if !enabled() || row == 0 {
        return None;
    }
    let xs = flex_slice(x)?;
    if xs.len() % row != 0 {
        return None;
    }
    let mut out = vec![0f32; xs.len() / row];
    let per_task = (1usize << 14).div_ceil(row);
    out.par_chunks_mut(per_task).zip(xs.par_chunks(per_task * row)).for_each(|(o, x)| reduce_chunk(o, x, row, max));
    Some(B::float_from_data(TensorData::new(out, vec![xs.len() / row]), &ctx.device))
}

simd_fn! {
fn reduce_chunk(o: &mut [f32], x: &[f32], row: usize, max: bool) {
    let body = row / 16 * 16;
    for (o, r) in o.iter_mut().zip(x.chunks_exact(row)) {
        let mut acc = [if max { f32::NEG_INFINITY } else { 0.0 }; 16];
        for k in (0..body).step_by(16) {
            let v: [f32; 16] = r[k..k + 16].try_into().expect("16 lanes");
            for l in 0..16 {
                acc[l] = if max { acc[l].max(v[l]) } else { acc[l] + v[l] };
            }
        }
        *o = if max {
            r[body..].iter().chain(&acc).fold(f32::NEG_INFINITY, |a, &v| a.max(v))
        } else {
            (r[body..].iter().sum::<f32>() + acc.iter().sum::<f32>()) / row as f32
        };
    }
}
}

/// Softmax (or log-softmax) over rows of `row` contiguous values, in place, on flex tensors this
/// step owns alone.
pub fn softmax_in_place(t: T, row: usize, log: bool) -> Result<T, T> {
    if row == 0 {
        return Err(t);
    }
    with_storage_mut(t, |v| {
        let rows = (1usize << 14).div_ceil(row);
        v.par_chunks_mut(rows * row).for_each(|c| softmax_rows(c, row, log))
    })
}

simd_fn! {
fn softmax_rows(v: &mut [f32], row: usize, log: bool) {
    // Sixteen partial maxima and sums: a single running sum would keep the loop (and the exp in
    // it) scalar, since float addition may not be reordered.
    let body = row / 16 * 16;
    let lanes = |r: &[f32], k: usize| -> [f32; 16] { r[k..k + 16].try_into().expect("16 lanes") };
    for r in v.chunks_exact_mut(row) {
        let mut m = [f32::NEG_INFINITY; 16];
        for k in (0..body).step_by(16) {
            let x = lanes(r, k);
            for l in 0..16 {
                m[l] = m[l].max(x[l]);
            }
        }
        let max = r[body..].iter().chain(&m).fold(f32::NEG_INFINITY, |a, &x| a.max(x));
        let mut acc = [0f32; 16];
        for k in (0..body).step_by(16) {
            let mut e = lanes(r, k);
            for l in 0..16 {
                e[l] = exp(e[l] - max);
                acc[l] += e[l];
            }
            if !log {
                r[k..k + 16].copy_from_slice(&e);
            }
        }
        let mut sum: f32 = acc.iter().sum();
        for x in &mut r[body..] {
            let e = exp(*x - max);
            sum += e;
            if !log {
                *x = e;
            }
        }
        if log {
            let shift = max + sum.ln();
            r.iter_mut().for_each(|x| *x -= shift);
        } else {
            let inv = 1.0 / sum;
            r.iter_mut().for_each(|x| *x *= inv);
        }
    }
}
}

/// Writes `updates[src .. src + inner]` at `dst` in `data`, for every `(dst, src)` pair, in place
/// when `data` is a contiguous f32 flex tensor this step owns alone (ScatterND with constant
/// indices; a chain of them then costs the updates, not a pass over the whole tensor each).
pub fn scatter_in_place(data: T, updates: &T, writes: &[(usize, usize)], inner: usize) -> Result<T, T> {
    let Some(src) = flex_slice(updates) else { return Err(data) };
    if writes.iter().any(|&(_, s)| s + inner > src.len()) {
        return Err(data);
    }
    let mut fits = true;
    let out = with_storage_mut(data, |dst| {
        fits = writes.iter().all(|&(d, _)| d + inner <= dst.len());
        if fits {
            for &(d, s) in writes {
                dst[d..d + inner].copy_from_slice(&src[s..s + inner]);
            }
        }
    })?;
    // Offsets come from the lowering's shapes, so they always fit; checked so a mismatch cannot
    // write out of bounds.
    if fits { Ok(out) } else { Err(out) }
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
    // SAFETY: `resize_plane` writes every row of every output plane.
    let mut out = unsafe { output_buffer(n * c * oh * ow) };
    out.par_chunks_mut(oh * ow).enumerate().for_each_init(Vec::new, |mid, (p, o)| {
        resize_plane(&xs[p * h * w..(p + 1) * h * w], w, o, &ty, &tx, mid)
    });
    Some(B::float_from_data(out.into_data(vec![n, c, oh, ow]), &ctx.device))
}

simd_fn! {
/// One plane of [`resize_bilinear`]. The column taps are a gather, the row taps a vectorised
/// blend of two rows, so the gather runs over whichever has fewer rows: when up-sampling, every
/// input row is interpolated to the output width once into `mid` and each output row blends two of
/// those (DB's FPN: 8× fewer gathers for its 32→256 branch); otherwise each output row blends its
/// two input rows into `mid` and gathers from it.
fn resize_plane(plane: &[f32], w: usize, o: &mut [f32], ty: &[(usize, usize, f32)], tx: &[(usize, usize, f32)], mid: &mut Vec<f32>) {
    let ow = tx.len();
    let h = plane.len() / w;
    let gather = |dst: &mut [f32], row: &[f32]| {
        for (v, &(x0, x1, wx)) in dst.iter_mut().zip(tx) {
            *v = row[x0] + wx * (row[x1] - row[x0]);
        }
    };
    if ty.len() > h {
        mid.resize(h * ow, 0.0);
        for (dst, row) in mid.chunks_mut(ow).zip(plane.chunks(w)) {
            gather(dst, row);
        }
        for (orow, &(y0, y1, wy)) in o.chunks_mut(ow).zip(ty) {
            let (r0, r1) = (&mid[y0 * ow..(y0 + 1) * ow], &mid[y1 * ow..(y1 + 1) * ow]);
            orow.iter_mut().zip(r0.iter().zip(r1)).for_each(|(v, (&a, &b))| *v = a + wy * (b - a));
        }
        return;
    }
    mid.resize(w, 0.0);
    for (orow, &(y0, y1, wy)) in o.chunks_mut(ow).zip(ty) {
        let (r0, r1) = (&plane[y0 * w..(y0 + 1) * w], &plane[y1 * w..(y1 + 1) * w]);
        mid.iter_mut().zip(r0.iter().zip(r1)).for_each(|(m, (&a, &b))| *m = a + wy * (b - a));
        gather(orow, mid);
    }
}
}

/// Max pooling of an NCHW flex tensor over the windows `g` describes (its leading pads; the output
/// size, ceil mode included, fixes the trailing ones), one plane per task. Burn's flex kernel took
/// 100 ms on SAR's first 2×2 pool at batch 64 (`[64, 128, 32, 128]`).
pub fn max_pool2d(ctx: &Ctx, x: &T, g: &ConvGeometry) -> Option<T> {
    if !enabled() {
        return None;
    }
    let xs = flex_slice(x)?;
    let [n, c, h, w] = g.input;
    let [_, _, oh, ow] = g.output;
    if xs.len() != n * c * h * w {
        return None;
    }
    let offs = g.tap_offsets(0, 1);
    if offs.is_empty() {
        return None;
    }
    // SAFETY: `max_pool_plane` writes every row of every output plane.
    let mut out = unsafe { output_buffer(n * c * oh * ow) };
    out.par_chunks_mut(oh * ow).enumerate().for_each_init(Vec::new, |phases, (p, o)| {
        max_pool_plane(&xs[p * h * w..(p + 1) * h * w], o, g, &offs, phases)
    });
    Some(B::float_from_data(out.into_data(g.output.to_vec()), &ctx.device))
}

simd_fn! {
/// One plane of [`max_pool2d`], split into its stride phases over `−∞` padding (as depthwise
/// convolutions do, see [`fill_phases`]), so each tap is a contiguous run per output row and the
/// row's max is taken in vector registers. LinkNet's 3×3 stride-2 pool over 64 planes of 512×512:
/// 19.5 ms with a strided walk per tap.
fn max_pool_plane(plane: &[f32], o: &mut [f32], g: &ConvGeometry, offs: &[usize], phases: &mut Vec<f32>) {
    let (hq, wq) = g.phase_dims();
    let ow = g.output[3];
    phases.clear();
    phases.resize(g.stride[0] * g.stride[1] * hq * wq, f32::NEG_INFINITY);
    fill_phases(plane, g, phases);
    for (oy, row) in o.chunks_mut(ow).enumerate() {
        let at = oy * wq;
        row.copy_from_slice(&phases[at + offs[0]..][..ow]);
        for &off in &offs[1..] {
            row.iter_mut().zip(&phases[at + off..][..ow]).for_each(|(d, &v)| *d = d.max(v));
        }
    }
}
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

impl ConvGeometry {
    /// The zero-padded rows and columns the taps reach.
    fn padded_dims(&self) -> (usize, usize) {
        let ([oh, ow], [kh, kw]) = ([self.output[2], self.output[3]], self.kernel);
        let ([sh, sw], [dh, dw]) = (self.stride, self.dilation);
        ((oh - 1) * sh + (kh - 1) * dh + 1, (ow - 1) * sw + (kw - 1) * dw + 1)
    }

    /// The rows and columns of one phase (see [`fill_phases`]).
    fn phase_dims(&self) -> (usize, usize) {
        let (hp, wp) = self.padded_dims();
        (hp.div_ceil(self.stride[0]), wp.div_ceil(self.stride[1]))
    }

    /// Where tap `(ki, kj)` of output `(0, 0)` reads in the phases, so that output `(oy, ox)`
    /// reads at `oy·wq + ox` past it: every output of a plane is one run of the same offsets.
    fn tap_offsets(&self, channel_stride: usize, channels: usize) -> Vec<usize> {
        let ([kh, kw], [sh, sw], [dh, dw]) = (self.kernel, self.stride, self.dilation);
        let (hq, wq) = self.phase_dims();
        (0..channels * kh * kw)
            .map(|t| {
                let (ci, ki, kj) = (t / (kh * kw), t / kw % kh, t % kw);
                let (y, x) = (ki * dh, kj * dw);
                ci * channel_stride + ((y % sh * sw + x % sw) * hq + y / sh) * wq + x / sw
            })
            .collect()
    }
}

/// Depthwise convolutions over output planes up to this size, whose rows are as wide as their
/// input's, run as `avx512::depthwise_masked` where the CPU has AVX-512. Measured at batch 64 (2
/// threads): 576 channels at 8×8, 5×5 taps 2.9 → 1.1 ms; 240 at 16×16 2.7 → 2.3; CRNN's 240 at
/// 2×32 0.53 → 0.30, its height-strided 72 at 32×32 → 16×32 (3×3) 0.90 → 0.69. From 32×32 up the
/// phase route was faster when first measured (88 channels, 3×3: 1.7 ms against 2.7); on the Zen
/// 4 of the current benchmarks it still is for one image, not for batches (below).
const DEPTHWISE_MASKED_PLANE: usize = 512;

/// ... and, in batches, up to this size, where the planes no longer fit in cache and the phase
/// route's copy of each costs more than the masks save it (batch 64, 3×3 at 32×32: 88 channels
/// 2.19 → 1.38 ms, 72 channels 1.50 → 1.07; 5×5, 96 channels 4.15 → 3.56; two images of 240
/// channels 0.159 → 0.138). One image's planes stay on the phase route (88 channels, 3×3: 0.038
/// against 0.054 ms).
const DEPTHWISE_MASKED_BATCH_PLANE: usize = 1024;

/// Depthwise convolutions with at least this many taps (MobileNet's 5×5 layers), and batches of
/// 3×3 ones strided by two, run with the vector lanes across channels (`depthwise_channels`)
/// where the CPU has AVX-512. Measured (2 threads, against the better of the masked and phase
/// routes): batch 64, 5×5: 288 channels 16×16 → 8×8 1.98 → 1.24 ms, 240 at 16×16 2.98 → 2.32, 96
/// at 32×32 → 16×16 2.17 → 1.90, CRNN's 240 at 4×32 1.21 → 1.14; batch 64, 3×3 stride 2: 16
/// channels 128×128 → 64×64 4.78 → 3.51, 72 at 64×64 → 32×32 5.27 → 4.20; one 512×512 page, 5×5:
/// 576 at 16×16 0.129 → 0.074, 288 at 32×32 → 16×16 0.121 → 0.068, 240 at 32×32 0.159 → 0.134.
/// The transposes in and out do not pay for nine taps at stride 1 (88 channels at 32×32: 2.31
/// against 2.68 ms) nor for one image's strided 3×3 (0.12 against 0.22). Strided by two, the
/// routes along planes are now `avx512::depthwise_strided`, which beats these on large planes
/// (see there); a conv with constant weights times the two on its first forward.
const CHANNEL_LANE_TAPS: usize = 25;

/// ... except over planes of at most this many outputs, whose rows are as wide as their input's:
/// sixteen-lane masks cover such a plane in four vectors, as the transposes' work would not pay
/// back (576 channels at 8×8, batch 64: 1.45 ms masked, 1.79 across channels).
const MASKED_BEFORE_CHANNELS: usize = 64;

/// Stride-1 convolutions with at least this many input channels run as [`shifted_taps`] (below,
/// each tap's gemm is too shallow to beat im2col's one deep gemm).
const TAP_GEMM_CHANNELS: usize = 64;

/// Stride-1 convolutions with at least this many input channels run as `avx512::conv` where the
/// CPU has AVX-512, which sums in registers however shallow the input: LinkNet's 32 → 32 3×3
/// head conv at 512×512, 18.6 ms as im2col + gemm, 16.7 this way (8 × 32 blocks; 14.4 with the
/// 4 × 64 ones).
const DIRECT_CHANNELS: usize = 16;

/// 1×1 convolutions over at most this many input channels run as `avx512::pointwise` where
/// the CPU has AVX-512: a gemm this shallow runs at half speed (MobileNet's expansions: 48 → 288
/// channels at 32×32, 0.32 → 0.17 ms; 40 → 240, 0.28 → 0.13). Deeper ones keep the gemm, which at
/// batch 64 runs the projections (240 → 40 at 16×16) near the FMA units' peak...
const POINTWISE_CHANNELS: usize = 64;

/// ... except for one image, where a gemm has few tiles to share (240 → 40 at 32×32: 0.22 →
/// 0.13 ms); past this depth the gemm wins again (576 → 96 at 16×16: 0.15 ms, 0.21 this way).
const POINTWISE_CHANNELS_ONE_IMAGE: usize = 256;

/// Dense convolutions with output planes smaller than this run as [`batched`].
const SMALL_PLANE: usize = 256;

/// Pointwise convolutions with output planes from this size up to `SMALL_PLANE` run as
/// [`pointwise_per_image`].
const PER_IMAGE_PLANE: usize = 32;

/// Dense convolutions with at most this many taps per output run as [`small_dense`]...
const SMALL_K: usize = 32;

/// (1×1 convs only over planes of at least `LARGE_PLANE` positions, where a gemm only `C` deep
/// ran at half the speed: DB's FPN `in_branches.0`, 24 → 256 channels at 256×256, 9.3–11 → 5.4–5.6 ms,
/// MobileNet's 16 → 64 expansion there 7.7–9.3 → 5.4–6.1)...
const LARGE_PLANE: usize = 4096;

/// ... and so do image stems (at most 4 input channels) with up to this many: ResNet's 7×7
/// stride-2 stem (147 taps) over a 1024×1024 page, 48–54 ms as im2col + gemm, 26 ms this way.
const STEM_K: usize = 160;

/// A conv tile's working set in floats (im2col block plus output block), sized for L2.
const TILE_FLOATS: usize = 1 << 18;

thread_local! {
    static COLS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `n` floats for a kernel that writes every one before anything reads it, on a
/// 64-byte boundary (see `aligned`). `vec![0.0; n]` would zero it first, and glibc zeroes reused
/// heap memory by hand: one more pass over each output, which on DB's 64 MB feature maps at
/// 1024×1024 cost its 1×1 `in_branches.0` 12.6 → 10.6 ms and its ×8 Resize 10.5 → 7.1 ms. Burn's
/// flex allocates its outputs the same way.
///
/// # Safety
/// The caller writes every element before any is read.
pub(crate) unsafe fn output_buffer(n: usize) -> AlignedBuf {
    // SAFETY: the caller's.
    unsafe { AlignedBuf::uninit(n) }
}

/// A contiguous copy of a flex float tensor held as a strided view; `None` on other backends.
fn contiguous_flex(t: &T) -> Option<T> {
    match &t.kind {
        DispatchTensorKind::Flex(BackendTensor::Float(f)) => {
            Some(T { kind: DispatchTensorKind::Flex(BackendTensor::Float(f.to_contiguous())), autodiff: t.autodiff })
        }
        _ => None,
    }
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
    #[inline(always)]
    pub(super) fn apply(self, v: &mut [f32]) {
        match self {
            Epilogue::Relu => v.iter_mut().for_each(|x| *x = x.max(0.0)),
            Epilogue::HardSwish => v.iter_mut().for_each(|x| *x *= (*x / 6.0 + 0.5).clamp(0.0, 1.0)),
            Epilogue::Clip(lo, hi) => v.iter_mut().for_each(|x| *x = x.clamp(lo, hi)),
        }
    }
}

/// A conv's input, weights and bias as slices, when all are contiguous f32 flex tensors.
#[allow(clippy::type_complexity)]
fn conv_operands<'a>(x: &'a T, w: &'a T, bias: Option<&'a T>) -> Option<(&'a [f32], &'a [f32], Option<&'a [f32]>)> {
    let bias = match bias {
        Some(b) => Some(flex_slice(b)?),
        None => None,
    };
    Some((flex_slice(x)?, flex_slice(w)?, bias))
}

/// A conv's weights in a route's packed layout, made on the first forward and kept for the plan's
/// life, for weights that are constants: packing is a pass over every weight (5 ms for ResNet's
/// 512-channel 3×3 convs, as long as a third of the conv itself at batch 1). A depthwise conv
/// keeps here which of its two routes ran faster on that forward.
#[derive(Default)]
pub struct PackedWeights(std::sync::OnceLock<Vec<f32>>, std::sync::OnceLock<bool>);

impl PackedWeights {
    pub(super) fn get_or_pack(&self, pack: impl FnOnce() -> Vec<f32>) -> &[f32] {
        self.0.get_or_init(pack)
    }
}

/// Whether route `a` writes `out` faster than `b`, the better of two runs each (both write all of
/// `out`; `a` returns false, writing nothing, where it does not apply).
fn first_is_faster(out: &mut [f32], mut a: impl FnMut(&mut [f32]) -> bool, mut b: impl FnMut(&mut [f32])) -> bool {
    let best = |run: &mut dyn FnMut(&mut [f32]) -> bool, out: &mut [f32]| {
        (0..2)
            .map(|_| {
                let t = std::time::Instant::now();
                run(out).then(|| t.elapsed())
            })
            .min()
            .flatten()
    };
    let ta = best(&mut a, out);
    let tb = best(&mut |o| { b(o); true }, out);
    ta.is_some_and(|ta| tb.is_none_or(|tb| ta < tb))
}

/// Runs the convolution when `x`, `w` (and `bias`) are contiguous f32 flex tensors; `None` leaves
/// it to Burn. The bias seeds each output tile before its gemm accumulates into it, and the
/// epilogue runs on the tile after, while it is still in cache.
/// `residual`, of the output's shape, is added before the epilogue. `packed` caches the weights'
/// packed form across forwards; pass it only for constant weights.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    ctx: &Ctx,
    x: &T,
    w: &T,
    bias: Option<&T>,
    g: &ConvGeometry,
    epilogue: Option<Epilogue>,
    residual: Option<&T>,
    packed: Option<&PackedWeights>,
) -> Option<T> {
    if !enabled() {
        return None;
    }
    let (xs, ws, bs) = conv_operands(x, w, bias)?;
    let [n, c, _, _] = g.input;
    let [_, m, oh, ow] = g.output;
    if xs.len() != g.input.iter().product::<usize>() || ws.len() != m * (c / g.groups) * g.kernel[0] * g.kernel[1] {
        return None;
    }
    let res = match residual {
        Some(r) => Some(flex_slice(r).filter(|r| r.len() == n * m * oh * ow)?),
        None => None,
    };
    // The direct conv adds the shortcut in registers; after other routes, one pass adds it and
    // applies the epilogue.
    let mut post = res.is_some();
    let epilogue_in_route = if post { None } else { epilogue };
    if c / g.groups.max(1) == 0 || g.kernel.contains(&0) {
        return None;
    }
    // SAFETY: every route below writes each output once before reading it: the bias (or a gemm
    // that does not read its destination, `k > 0`) seeds it, or a register sum stores it.
    let mut out = unsafe { output_buffer(n * m * oh * ow) };
    // 1×1 convs strided by two (ResNet's downsampling shortcuts) run as stride-1 ones over every
    // second row and column, copied out first: the pointwise routes beat im2col's gemm (256 →
    // 512 channels at 256×256: 19.1 → 12 ms).
    let strided_1x1 = g.groups == 1 && g.kernel == [1, 1] && g.stride == [2, 2] && g.pad == [0, 0] && g.dilation == [1, 1];
    let (sub, g1);
    let (xs, g) = if strided_1x1 {
        g1 = ConvGeometry { input: [n, c, oh, ow], stride: [1, 1], ..*g };
        sub = super::avx512::even_rows_and_columns(xs, g.input, [oh, ow]);
        (&sub[..], &g1)
    } else {
        (xs, g)
    };
    let pointwise = g.groups == 1 && g.kernel == [1, 1] && g.stride == [1, 1] && g.pad == [0, 0];
    let shallow = c <= POINTWISE_CHANNELS || (n == 1 && c <= POINTWISE_CHANNELS_ONE_IMAGE);
    if pointwise && oh * ow == 1 {
        pointwise_vectors(xs, ws, bs, epilogue_in_route, &mut out, g, packed);
    } else if pointwise && shallow && oh * ow >= PER_IMAGE_PLANE && super::avx512::pointwise(xs, ws, bs, epilogue_in_route, &mut out, g) {
        // Done: register-blocked on AVX-512.
    } else if c / g.groups == 1 && g.kernel != [1, 1] {
        // Depthwise: im2col would copy every input k² times for one multiply-add each.
        if m != g.groups {
            return None;
        }
        let across_channels = g.kernel[0] * g.kernel[1] >= CHANNEL_LANE_TAPS || (g.stride == [2, 2] && n > 1);
        let channels = |out: &mut [f32]| super::depthwise_channels::conv(xs, ws, bs, epilogue_in_route, out, g);
        let along_planes = |out: &mut [f32]| {
            let masked = oh * ow <= DEPTHWISE_MASKED_PLANE || (n > 1 && oh * ow <= DEPTHWISE_MASKED_BATCH_PLANE);
            if !(super::avx512::depthwise_strided(xs, ws, bs, epilogue_in_route, out, g)
                || masked && super::avx512::depthwise_masked(xs, ws, bs, epilogue_in_route, out, g))
            {
                depthwise(xs, ws, bs, epilogue_in_route, out, g);
            }
        };
        if !(oh * ow <= MASKED_BEFORE_CHANNELS && super::avx512::depthwise_masked(xs, ws, bs, epilogue_in_route, &mut out, g)) {
            // Which route wins depends on the CPU as much as on the shape (240 channels 5×5 at
            // 16×16, batch 64: 2.3 ms across channels against 3.0 on a Zen 5, 3.3 against 2.2 on
            // a Zen 4), so a conv with constant weights times both on its first forward.
            let across_channels = across_channels
                && match packed {
                    Some(p) => *p.1.get_or_init(|| first_is_faster(&mut out, channels, along_planes)),
                    None => true,
                };
            if !(across_channels && channels(&mut out)) {
                along_planes(&mut out);
            }
        }
    } else if g.groups == 1 && (g.kernel != [1, 1] || oh * ow >= LARGE_PLANE) && (c * g.kernel[0] * g.kernel[1] <= SMALL_K || (c <= 4 && c * g.kernel[0] * g.kernel[1] <= STEM_K)) {
        // Bands of output rows, every output channel at once: a band's input phases stay in
        // cache while all channels are summed over them, and large images give every thread work.
        let row_floats = c * g.stride[0] * g.padded_dims().1;
        let band = (BAND_FLOATS / row_floats.max(1)).clamp(1, oh);
        let bands = oh.div_ceil(band);
        let plane = oh * ow;
        let op = SendPtr(out.as_mut_ptr());
        (0..n * bands).into_par_iter().for_each_init(Default::default, |scratch, t| {
            let (img, b) = (t / bands, t % bands);
            let rows = b * band..((b + 1) * band).min(oh);
            let at = |j: usize| (img * m + j) * plane + rows.start * ow;
            // SAFETY: rows `rows` of image `img`'s output planes belong to this task alone.
            let mut outs: Vec<&mut [f32]> =
                (0..m).map(|j| unsafe { std::slice::from_raw_parts_mut(op.get().add(at(j)), rows.len() * ow) }).collect();
            small_dense(xs, ws, bs, epilogue_in_route, g, img, rows, &mut outs, scratch)
        });
    } else if g.kernel == [3, 3]
        && c >= DIRECT_CHANNELS
        && super::winograd::fills_lanes(ow)
        && super::winograd::conv(xs, ws, bs, epilogue, res, &mut out, g, packed)
    {
        // Done: Winograd F(2×2, 3×3) on AVX-512, with the shortcut and epilogue.
        post = false;
    } else if g.groups == 1
        && match g.stride {
            [1, 1] => n == 1 || oh * ow >= SMALL_PLANE || super::avx512::fills_lanes(ow),
            [2, 2] => super::avx512::fills_lanes(ow),
            _ => false,
        }
        && g.dilation == [1, 1]
        && g.kernel != [1, 1]
        && c >= DIRECT_CHANNELS
        && super::avx512::conv(xs, ws, bs, epilogue, res, &mut out, g, packed)
    {
        // Done: the register-blocked direct convolution on AVX-512 (1×1 convs measured slower
        // that way than as one gemm; small planes whose rows leave lanes idle too). Strided by
        // two it beats im2col where its rows fill the lanes (ResNet's 3×3 downsampling convs at
        // 1024×1024: 128 channels 18.8 → 12.6 ms, 256: 14.6 → 11.0, 512: 14.0 → 11.7; at 8×8
        // the im2col route stays, 1.2 ms against 1.7).
        post = false;
    } else if g.groups == 1 && n > 1 && g.kernel == [1, 1] && g.stride == [1, 1] && g.pad == [0, 0] && (PER_IMAGE_PLANE..SMALL_PLANE).contains(&(oh * ow)) {
        pointwise_per_image(xs, ws, bs, epilogue_in_route, &mut out, g);
    } else if g.groups == 1 && n > 1 && oh * ow < SMALL_PLANE {
        match row_taps(g) {
            taps if taps.is_empty() => batched(xs, ws, bs, epilogue_in_route, &mut out, g),
            taps => batched_rows(xs, ws, bs, epilogue_in_route, &mut out, g, &taps),
        }
    } else if g.groups == 1 && g.stride == [1, 1] && g.dilation == [1, 1] && g.kernel != [1, 1] && c >= TAP_GEMM_CHANNELS {
        shifted_taps(xs, ws, bs, epilogue_in_route, &mut out, g);
    } else {
        grouped(xs, ws, bs, epilogue_in_route, &mut out, g);
    }
    if let (true, Some(r)) = (post, res) {
        out.par_chunks_mut(1 << 14).zip(r.par_chunks(1 << 14)).for_each(|(o, r)| {
            for (o, r) in o.iter_mut().zip(r) {
                *o += r;
            }
            if let Some(e) = epilogue {
                e.apply(o);
            }
        });
    }
    Some(B::float_from_data(out.into_data(g.output.to_vec()), &ctx.device))
}

/// `a [M, K] · b [K, N] (+ bias [N])` as one gemm into an uninitialised buffer, the bias seeding
/// the rows it accumulates into: Burn's flex matmul zero-fills its output first (a memset of 26 MB
/// for MASTER's feed-forward layers at batch 64) and the bias costs another pass. `None` unless
/// the operands are contiguous f32 flex tensors of those sizes.
pub fn matmul(ctx: &Ctx, a: &T, b: &T, [m, k, n]: [usize; 3], bias: Option<&T>) -> Option<T> {
    if !enabled() {
        return None;
    }
    let (xs, ws) = (flex_slice(a)?, flex_slice(b)?);
    let bs = match bias {
        Some(t) => Some(flex_slice(t)?),
        None => None,
    };
    if xs.len() != m * k || ws.len() != k * n || bs.is_some_and(|b| b.len() != n) || m * n * k == 0 {
        return None;
    }
    // SAFETY: the bias rows or the gemm (not reading its destination) write every element.
    let mut out = unsafe { output_buffer(m * n) };
    if let Some(b) = bs {
        out.par_chunks_mut(n).for_each(|row| row.copy_from_slice(b));
    }
    let parallelism = if m * n * k >= 192 * 192 * 192 { gemm::Parallelism::Rayon(rayon::current_num_threads()) } else { gemm::Parallelism::None };
    // SAFETY: row-major `out [M, N]`, `xs [M, K]`, `ws [K, N]`, all in bounds.
    unsafe {
        gemm::gemm(
            m, n, k, out.as_mut_ptr(), 1, n as isize, bs.is_some(), xs.as_ptr(), 1, k as isize, ws.as_ptr(), 1, n as isize,
            1.0f32, 1.0f32, false, false, false, parallelism,
        );
    }
    Some(B::float_from_data(out.into_data(vec![m, n]), &ctx.device))
}

/// Transposed convolution (groups 1) as one gemm per tile of input rows,
/// `cols[M·kh·kw, rows·W] = Wᵀ · x[C, rows·W]`, whose rows are then added into the output planes
/// at their strided positions (col2im, parallel over output channels). Burn's flex kernel runs
/// DB's 2×2 stride-2 upsampling heads at ~5 GFLOP/s.
pub fn conv_transpose2d(ctx: &Ctx, x: &T, w: &T, bias: Option<&T>, g: &ConvGeometry, epilogue: Option<Epilogue>) -> Option<T> {
    if !enabled() || g.groups != 1 {
        return None;
    }
    let (xs, ws, bs) = conv_operands(x, w, bias)?;
    let [n, c, h, wd] = g.input;
    let [_, m, oh, ow] = g.output;
    let [kh, kw] = g.kernel;
    let mk = m * kh * kw;
    if xs.len() != n * c * h * wd || ws.len() != c * mk || h * wd == 0 {
        return None;
    }
    // Kernel = stride, no padding, output = input × stride: every output is one tap's value, written
    // once with its bias (DB's 2×2 stride-2 heads), instead of a bias fill and strided adds.
    let tiles_output = g.kernel == g.stride && g.pad == [0, 0] && g.dilation == [1, 1] && oh == h * kh && ow == wd * kw;
    // SAFETY: each image's planes are filled with the bias before col2im adds into them, or every
    // output is written by `col2im_tiles`.
    let mut out = unsafe { output_buffer(n * m * oh * ow) };
    let rows = (TILE_FLOATS / (mk * wd).max(1)).clamp(1, h);
    let mut cols = vec![0f32; mk * rows * wd];
    let threads = rayon::current_num_threads();
    for (img, planes) in out.chunks_mut(m * oh * ow).enumerate() {
        if !tiles_output {
            planes.par_chunks_mut(oh * ow).enumerate().for_each(|(ch, p)| p.fill(bs.map_or(0.0, |b| b[ch])));
        }
        let x = &xs[img * c * h * wd..(img + 1) * c * h * wd];
        for iy0 in (0..h).step_by(rows) {
            let iy1 = (iy0 + rows).min(h);
            let cols_n = (iy1 - iy0) * wd;
            // SAFETY: `cols` holds `mk · cols_n` floats; Wᵀ is `[mk, C]` with column stride `mk`,
            // the input tile `[C, cols_n]` with row stride `H·W`, both in bounds.
            unsafe {
                gemm::gemm(
                    mk, cols_n, c, cols.as_mut_ptr(), 1, cols_n as isize, false, ws.as_ptr(), mk as isize, 1,
                    x[iy0 * wd..].as_ptr(), 1, (h * wd) as isize, 0.0f32, 1.0f32, false, false, false,
                    gemm::Parallelism::Rayon(threads),
                );
            }
            let cols = &cols[..mk * cols_n];
            planes.par_chunks_mut(oh * ow).enumerate().for_each(|(ch, plane)| {
                let taps = &cols[ch * kh * kw * cols_n..(ch + 1) * kh * kw * cols_n];
                if tiles_output {
                    col2im_tiles(plane, taps, bs.map_or(0.0, |b| b[ch]), g, iy0, iy1);
                } else {
                    col2im_add(plane, taps, g, iy0, iy1);
                }
            });
        }
        if let Some(e) = epilogue {
            planes.par_chunks_mut(oh * ow).for_each(|p| e.apply(p));
        }
    }
    Some(B::float_from_data(out.into_data(g.output.to_vec()), &ctx.device))
}

/// Writes one output channel's `[kh·kw, rows·W]` gemm rows, plus `bias`, to its output plane when
/// the taps tile it (kernel = stride, no padding): input `(iy, ix)` through tap `(ki, kj)` is
/// output `(iy·kh + ki, ix·kw + kj)`, so each output row interleaves the `kw` taps of one `ki`.
fn col2im_tiles(plane: &mut [f32], cols: &[f32], bias: f32, g: &ConvGeometry, iy0: usize, iy1: usize) {
    let [_, _, _, wd] = g.input;
    let [kh, kw] = g.kernel;
    let ow = wd * kw;
    let cols_n = (iy1 - iy0) * wd;
    for iy in iy0..iy1 {
        for ki in 0..kh {
            let row = &mut plane[(iy * kh + ki) * ow..][..ow];
            let tap = |kj: usize| &cols[(ki * kw + kj) * cols_n + (iy - iy0) * wd..][..wd];
            if kw == 2 {
                for (o, (&a, &b)) in row.chunks_exact_mut(2).zip(tap(0).iter().zip(tap(1))) {
                    o[0] = a + bias;
                    o[1] = b + bias;
                }
            } else {
                for kj in 0..kw {
                    row[kj..].iter_mut().step_by(kw).zip(tap(kj)).for_each(|(o, &v)| *o = v + bias);
                }
            }
        }
    }
}

/// Adds one output channel's `[kh·kw, rows·W]` gemm rows into its output plane: input `(iy, ix)`
/// through tap `(ki, kj)` lands on `(iy·s + ki·d − pad, ix·s + kj·d − pad)`.
fn col2im_add(plane: &mut [f32], cols: &[f32], g: &ConvGeometry, iy0: usize, iy1: usize) {
    let [_, _, _, wd] = g.input;
    let [_, _, oh, ow] = g.output;
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [dh, dw] = g.dilation;
    let [ph, pw] = g.pad;
    let cols_n = (iy1 - iy0) * wd;
    for ki in 0..kh {
        for kj in 0..kw {
            let taps = &cols[(ki * kw + kj) * cols_n..][..cols_n];
            // Input columns whose output column `ix·sw + kj·dw − pw` is inside `[0, ow)`.
            let off = kj * dw;
            let ix0 = if off >= pw { 0 } else { (pw - off).div_ceil(sw) };
            let ix1 = if ow + pw > off { ((ow + pw - off - 1) / sw + 1).min(wd) } else { 0 };
            if ix0 >= ix1 {
                continue;
            }
            for iy in iy0..iy1 {
                let oy = (iy * sh + ki * dh) as isize - ph as isize;
                if oy < 0 || oy >= oh as isize {
                    continue;
                }
                let src = &taps[(iy - iy0) * wd + ix0..(iy - iy0) * wd + ix1];
                let row = &mut plane[oy as usize * ow..(oy as usize + 1) * ow];
                let ox0 = ix0 * sw + off - pw;
                if sw == 1 {
                    row[ox0..ox0 + src.len()].iter_mut().zip(src).for_each(|(d, s)| *d += s);
                } else {
                    row[ox0..].iter_mut().step_by(sw).zip(src).for_each(|(d, s)| *d += s);
                }
            }
        }
    }
}

/// `[lo, hi)`: the output positions whose input index `o·stride + k·dilation − pad` is in `[0, len)`.
fn valid(k: usize, g_stride: usize, dilation: usize, pad: usize, len: usize, out: usize) -> (usize, usize) {
    let off = k * dilation;
    let lo = if off >= pad { 0 } else { (pad - off).div_ceil(g_stride) };
    // o·s + off − pad ≤ len − 1  ⇔  o ≤ (len − 1 + pad − off) / s
    let hi = if len + pad > off { ((len - 1 + pad - off) / g_stride + 1).min(out) } else { 0 };
    (lo.min(hi), hi)
}

/// Dense and grouped convolutions: per image, group and tile of output positions, im2col then one
/// gemm `out[Mg, tile] = W[Mg, K] · cols[K, tile]`. 1×1 stride-1 unpadded convs read the input in
/// place. A tile's im2col block and output block together fit in `TILE_FLOATS`, so the bias fill,
/// the gemm and the epilogue pass over it while it is in cache (whole rows of the image
/// for im2col; any run of positions for pointwise convs).
pub(super) fn grouped(xs: &[f32], ws: &[f32], bias: Option<&[f32]>, epilogue: Option<Epilogue>, out: &mut [f32], g: &ConvGeometry) {
    let [n, c, h, wd] = g.input;
    let [_, m, oh, ow] = g.output;
    let [kh, kw] = g.kernel;
    let (cg, mg) = (c / g.groups, m / g.groups);
    let k = cg * kh * kw;
    let plane = oh * ow;
    let pointwise = kh == 1 && kw == 1 && g.stride == [1, 1] && g.pad == [0, 0];
    let fit = (TILE_FLOATS / (k + mg).max(1)).max(1);
    let span = if pointwise { fit.clamp(64.min(plane), plane) } else { (fit / ow).clamp(1, oh) * ow };
    let tiles = plane.div_ceil(span);
    let tasks = n * g.groups * tiles;
    let threads = rayon::current_num_threads();
    // Enough independent tiles: one single-threaded gemm each; else let the gemm parallelise.
    let inner = if tasks >= threads { gemm::Parallelism::None } else { gemm::Parallelism::Rayon(threads) };
    let out_ptr = SendPtr(out.as_mut_ptr());
    let run = |task: usize| {
        let (img, rest) = (task / (g.groups * tiles), task % (g.groups * tiles));
        let (grp, tile) = (rest / tiles, rest % tiles);
        let (p0, p1) = (tile * span, ((tile + 1) * span).min(plane));
        let cols_n = p1 - p0;
        let x = &xs[(img * c + grp * cg) * h * wd..(img * c + (grp + 1) * cg) * h * wd];
        let lhs = ws[grp * mg * k..].as_ptr();
        // SAFETY: tasks write disjoint blocks: image `img`, channels `grp·mg..`, positions `p0..p1`.
        let dst = unsafe { out_ptr.get().add((img * m + grp * mg) * plane + p0) };
        // The tile's rows, one per output channel of the group: `cols_n` floats, a plane apart.
        let rows_of = |f: &dyn Fn(usize, &mut [f32])| {
            for j in 0..mg {
                // SAFETY: inside this task's disjoint block (see above).
                let row = unsafe { std::slice::from_raw_parts_mut(dst.add(j * plane), cols_n) };
                f(grp * mg + j, row);
            }
        };
        if let Some(b) = bias {
            rows_of(&|ch, row| row.fill(b[ch]));
        }
        let gemm = |rhs: *const f32, rhs_rs: isize| unsafe {
            gemm::gemm(
                mg, cols_n, k, dst, 1, plane as isize, bias.is_some(), lhs, 1, k as isize, rhs, 1, rhs_rs, 1.0f32,
                1.0f32, false, false, false, inner,
            )
        };
        if pointwise {
            gemm(x[p0..].as_ptr(), (h * wd) as isize);
        } else {
            COLS.with(|cell| {
                let mut cols = cell.borrow_mut();
                cols.resize(k * cols_n, 0.0);
                im2col(x, &mut cols, cols_n, g, p0 / ow, p1 / ow);
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

/// Pointwise convolutions over planes of 32 to 255 positions in a batch (CRNN's after its height is
/// pooled away): one gemm per image, `out[M, P] = W[M, C] · x[C, P]`, straight from the input into
/// the output, images in parallel. Narrow, but [`batched`]'s copies in and out cost more here:
/// CRNN mobilenet small at batch 64, 33–34 → 30–31 ms a forward.
fn pointwise_per_image(xs: &[f32], ws: &[f32], bias: Option<&[f32]>, epilogue: Option<Epilogue>, out: &mut [f32], g: &ConvGeometry) {
    let [_, c, _, _] = g.input;
    let [_, m, oh, ow] = g.output;
    let plane = oh * ow;
    out.par_chunks_mut(m * plane).enumerate().for_each(|(img, o)| {
        let x = &xs[img * c * plane..(img + 1) * c * plane];
        if let Some(b) = bias {
            for (row, &v) in o.chunks_mut(plane).zip(b) {
                row.fill(v);
            }
        }
        // SAFETY: `o` is [m, plane] row-major, `ws` [m, c] and `x` [c, plane].
        unsafe {
            gemm::gemm(
                m, plane, c, o.as_mut_ptr(), 1, plane as isize, bias.is_some(), ws.as_ptr(), 1, c as isize, x.as_ptr(), 1,
                plane as isize, 1.0f32, 1.0f32, false, false, false, gemm::Parallelism::None,
            );
        }
        if let Some(e) = epilogue {
            e.apply(o);
        }
    });
}

/// Dense convolutions (groups 1) with small output planes (CRNN's backbone after its height is
/// pooled away: 32 to 128 positions; the classifiers' last stages), where one gemm per image is
/// too narrow to run at speed: the inputs of several images go side by side into one
/// `cols[K, images·plane]` (copied for 1×1 convs, im2col otherwise), one gemm fills an output tile
/// `[M, images·plane]` seeded with the bias, and the tile's rows go back to their images.
fn batched(xs: &[f32], ws: &[f32], bias: Option<&[f32]>, epilogue: Option<Epilogue>, out: &mut [f32], g: &ConvGeometry) {
    let [n, c, h, wd] = g.input;
    let [_, m, oh, ow] = g.output;
    let [kh, kw] = g.kernel;
    let (k, plane) = (c * kh * kw, oh * ow);
    let pointwise = kh == 1 && kw == 1 && g.stride == [1, 1] && g.pad == [0, 0];
    let (images, inner) = image_groups(n, k, m, plane);
    let run = |(task, o): (usize, &mut [f32])| {
        let (img0, count) = (task * images, o.len() / (m * plane));
        let cols_n = count * plane;
        COLS.with(|cols| {
            TILE.with(|tile| {
                let (mut cols, mut tile) = (cols.borrow_mut(), tile.borrow_mut());
                cols.resize(k * cols_n, 0.0);
                tile.resize(m * cols_n, 0.0);
                for b in 0..count {
                    let x = &xs[(img0 + b) * c * h * wd..(img0 + b + 1) * c * h * wd];
                    if pointwise {
                        for (ci, src) in x.chunks(plane).enumerate() {
                            cols[ci * cols_n + b * plane..ci * cols_n + (b + 1) * plane].copy_from_slice(src);
                        }
                    } else {
                        im2col(x, &mut cols[b * plane..], cols_n, g, 0, oh);
                    }
                }
                for (j, row) in tile.chunks_mut(cols_n).enumerate() {
                    row.fill(bias.map_or(0.0, |b| b[j]));
                }
                // SAFETY: `tile` is [m, cols_n] row-major, `ws` [m, k] and `cols` [k, cols_n].
                unsafe {
                    gemm::gemm(
                        m, cols_n, k, tile.as_mut_ptr(), 1, cols_n as isize, bias.is_some(), ws.as_ptr(), 1, k as isize,
                        cols.as_ptr(), 1, cols_n as isize, 1.0f32, 1.0f32, false, false, false, inner,
                    )
                };
                if let Some(e) = epilogue {
                    e.apply(&mut tile);
                }
                for (b, dst) in o.chunks_mut(m * plane).enumerate() {
                    for (j, d) in dst.chunks_mut(plane).enumerate() {
                        d.copy_from_slice(&tile[j * cols_n + b * plane..j * cols_n + (b + 1) * plane]);
                    }
                }
            })
        })
    };
    for_each_group(out, images * m * plane, inner, run);
}

/// A 1×1 conv over 1×1 planes (squeeze-and-excitation's two layers), `[N, C] · Wᵀ`: one gemm
/// over the batch, its right operand the weights transposed to `[C, M]` once (`packed` keeps
/// them; the gemm packs a transposed operand at half the speed), on every thread when the batch
/// gives it work. The im2col route of [`batched`] copied each image's channels one float at a
/// time (CRNN's SE layers at batch 64: 0.17 ms each).
fn pointwise_vectors(xs: &[f32], ws: &[f32], bias: Option<&[f32]>, epilogue: Option<Epilogue>, out: &mut [f32], g: &ConvGeometry, packed: Option<&PackedWeights>) {
    let ([n, c, _, _], m) = (g.input, g.output[1]);
    let transpose = || (0..c).flat_map(|k| (0..m).map(move |j| ws[j * c + k])).collect::<Vec<f32>>();
    let local;
    let wt = match packed {
        Some(p) => p.get_or_pack(transpose),
        None => {
            local = transpose();
            &local[..]
        }
    };
    if let Some(b) = bias {
        out.chunks_exact_mut(m).for_each(|row| row.copy_from_slice(b));
    }
    let parallelism = if n * m * c >= 1 << 18 { gemm::Parallelism::Rayon(rayon::current_num_threads()) } else { gemm::Parallelism::None };
    // SAFETY: `out` is [n, m] row-major, `xs` [n, c] and `wt` [c, m].
    unsafe {
        gemm::gemm(
            n, m, c, out.as_mut_ptr(), 1, m as isize, bias.is_some(), xs.as_ptr(), 1, c as isize, wt.as_ptr(), 1, m as isize,
            1.0f32, 1.0f32, false, false, false, parallelism,
        )
    };
    if let Some(e) = epilogue {
        e.apply(out);
    }
}

/// How [`batched`] and [`batched_rows`] split a batch into groups of images whose columns (`cols`
/// per image) go side by side into one gemm `K` deep with `M` rows: at least `SMALL_PLANE` columns
/// per gemm, within the tile budget, and a group for every thread. Returns the images per group and
/// the gemm's own parallelism (none when the groups already give every thread work).
fn image_groups(n: usize, k: usize, m: usize, cols: usize) -> (usize, gemm::Parallelism) {
    let threads = rayon::current_num_threads();
    let fit = (TILE_FLOATS / ((k + m) * cols).max(1)).max(1);
    let images = SMALL_PLANE.div_ceil(cols).max(fit).min(n.div_ceil(threads)).max(1);
    let inner = if n.div_ceil(images) >= threads { gemm::Parallelism::None } else { gemm::Parallelism::Rayon(threads) };
    (images, inner)
}

/// Runs `run` on each `chunk` of `out` with its index: groups in parallel when each gemm runs on
/// one thread, else one after the other.
fn for_each_group(out: &mut [f32], chunk: usize, inner: gemm::Parallelism, run: impl Fn((usize, &mut [f32])) + Sync) {
    if out.len() > chunk && matches!(inner, gemm::Parallelism::None) {
        out.par_chunks_mut(chunk).enumerate().for_each(&run);
    } else {
        out.chunks_mut(chunk).enumerate().for_each(run);
    }
}

/// Per output row, the kernel rows `ki0..ki1` whose input row is inside the image, when some row
/// of a low plane has fewer than all (a 3×3 conv padded by 1 over CRNN's 2-row maps: each row
/// reads two of three); empty when every output row uses every kernel row.
fn row_taps(g: &ConvGeometry) -> Vec<(usize, usize)> {
    let [_, _, h, _] = g.input;
    let oh = g.output[2];
    let taps: Vec<(usize, usize)> = (0..oh)
        .map(|oy| {
            let ok = |ki: usize| (oy * g.stride[0] + ki * g.dilation[0]).checked_sub(g.pad[0]).is_some_and(|iy| iy < h);
            let ki0 = (0..g.kernel[0]).find(|&ki| ok(ki)).unwrap_or(0);
            let ki1 = (ki0..g.kernel[0]).find(|&ki| !ok(ki)).unwrap_or(g.kernel[0]);
            (ki0, ki1)
        })
        .collect();
    if taps.iter().all(|&(a, b)| a == 0 && b == g.kernel[0]) || taps.iter().any(|&(a, b)| a >= b) {
        return Vec::new();
    }
    taps
}

/// [`batched`] for low planes whose top and bottom output rows read padding through some kernel
/// rows: one gemm per output row over its live kernel rows only. The weights are reordered to
/// `[M, kh, C, kw]` so each row's live taps are one contiguous block of `K`, and the im2col rows
/// follow. CRNN VGG's 3×3 convs over 2-row maps at batch 64 skip a third of their multiply-adds
/// (ONNX Runtime's direct convolution skips them too).
#[allow(clippy::too_many_arguments)]
fn batched_rows(
    xs: &[f32],
    ws: &[f32],
    bias: Option<&[f32]>,
    epilogue: Option<Epilogue>,
    out: &mut [f32],
    g: &ConvGeometry,
    taps: &[(usize, usize)],
) {
    let [n, c, h, wd] = g.input;
    let [_, m, oh, ow] = g.output;
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [dh, dw] = g.dilation;
    let [ph, pw] = g.pad;
    let (k, plane) = (c * kh * kw, oh * ow);
    let mut wr = vec![0f32; m * k];
    for (dst, src) in wr.chunks_mut(k).zip(ws.chunks(k)) {
        for ci in 0..c {
            for ki in 0..kh {
                dst[(ki * c + ci) * kw..][..kw].copy_from_slice(&src[(ci * kh + ki) * kw..][..kw]);
            }
        }
    }
    let (images, inner) = image_groups(n, k, m, ow);
    let run = |(task, o): (usize, &mut [f32])| {
        let (img0, count) = (task * images, o.len() / (m * plane));
        let cols_n = count * ow;
        COLS.with(|cols| {
            TILE.with(|tile| {
                let (mut cols, mut tile) = (cols.borrow_mut(), tile.borrow_mut());
                for (oy, &(ki0, ki1)) in taps.iter().enumerate() {
                    let rows = (ki1 - ki0) * c * kw;
                    cols.resize(rows * cols_n, 0.0);
                    tile.resize(m * cols_n, 0.0);
                    for (r, row) in cols.chunks_mut(cols_n).take(rows).enumerate() {
                        let (ki, ci, kj) = (ki0 + r / (c * kw), r / kw % c, r % kw);
                        let iy = oy * sh + ki * dh - ph;
                        let (ox0, ox1) = valid(kj, sw, dw, pw, wd, ow);
                        for (b, dst) in row.chunks_mut(ow).enumerate() {
                            let src = &xs[((img0 + b) * c + ci) * h * wd + iy * wd..][..wd];
                            dst[..ox0.min(ow)].fill(0.0);
                            dst[ox1.max(ox0)..].fill(0.0);
                            for (ox, d) in (ox0..ox1).zip(&mut dst[ox0..ox1.max(ox0)]) {
                                *d = src[ox * sw + kj * dw - pw];
                            }
                        }
                    }
                    for (j, row) in tile.chunks_mut(cols_n).enumerate() {
                        row.fill(bias.map_or(0.0, |b| b[j]));
                    }
                    // SAFETY: `tile` is [m, cols_n], the live block of `wr` [m, rows] with row stride
                    // `k`, `cols` [rows, cols_n].
                    unsafe {
                        gemm::gemm(
                            m, cols_n, rows, tile.as_mut_ptr(), 1, cols_n as isize, bias.is_some(),
                            wr[ki0 * c * kw..].as_ptr(), 1, k as isize, cols.as_ptr(), 1, cols_n as isize, 1.0f32,
                            1.0f32, false, false, false, inner,
                        )
                    };
                    if let Some(e) = epilogue {
                        e.apply(&mut tile);
                    }
                    for (b, dst) in o.chunks_mut(m * plane).enumerate() {
                        for (j, d) in dst.chunks_mut(plane).enumerate() {
                            d[oy * ow..(oy + 1) * ow].copy_from_slice(&tile[j * cols_n + b * ow..][..ow]);
                        }
                    }
                }
            })
        })
    };
    for_each_group(out, images * m * plane, inner, run);
}

/// Stride-1 convolutions over many channels on CPUs without AVX-512 (with it, `avx512::conv` runs
/// them; DB's 3×3 FPN and head convs: 256 channels, 64 → 55 ms each at 1024×1024 this way, 47 ms
/// there) as one gemm per filter tap, accumulating into the output tile:
/// `out[M, rows·Wp] += W[:, :, ki, kj] · xpad[C, rows·Wp]` shifted by `ki·Wp + kj`, over a
/// zero-padded copy of the tile's input rows (row width `Wp = OW + kw − 1`). The input is copied
/// once per tile instead of kh·kw times as im2col does; the `kw − 1` columns between output rows are
/// computed and dropped.
pub(super) fn shifted_taps(xs: &[f32], ws: &[f32], bias: Option<&[f32]>, epilogue: Option<Epilogue>, out: &mut [f32], g: &ConvGeometry) {
    let [n, c, h, wd] = g.input;
    let [_, m, oh, ow] = g.output;
    let [kh, kw] = g.kernel;
    let [ph, pw] = g.pad;
    let wp = ow + kw - 1;
    let rows = (TILE_FLOATS / ((c + m) * wp).max(1)).clamp(1, oh);
    let tiles = oh.div_ceil(rows);
    let tasks = n * tiles;
    let threads = rayon::current_num_threads();
    let inner = if tasks >= threads { gemm::Parallelism::None } else { gemm::Parallelism::Rayon(threads) };
    let out_ptr = SendPtr(out.as_mut_ptr());
    let run = |task: usize, (xpad, acc): &mut (Vec<f32>, Vec<f32>)| {
        let (img, tile) = (task / tiles, task % tiles);
        let (oy0, oy1) = (tile * rows, ((tile + 1) * rows).min(oh));
        let (r, rp) = (oy1 - oy0, oy1 - oy0 + kh - 1);
        let x = &xs[img * c * h * wd..(img + 1) * c * h * wd];
        xpad.clear();
        xpad.resize(c * rp * wp + kw - 1, 0.0);
        for ci in 0..c {
            for rr in 0..rp {
                let iy = (oy0 + rr) as isize - ph as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let src = &x[(ci * h + iy as usize) * wd..][..wd];
                let dst = &mut xpad[(ci * rp + rr) * wp + pw..][..wd.min(wp - pw)];
                dst.copy_from_slice(&src[..dst.len()]);
            }
        }
        let cols_n = r * wp;
        acc.clear();
        match bias {
            Some(b) => (0..m).for_each(|j| acc.extend(std::iter::repeat_n(b[j], cols_n))),
            None => acc.resize(m * cols_n, 0.0),
        }
        for ki in 0..kh {
            for kj in 0..kw {
                // SAFETY: W's tap `(ki, kj)` is `[M, C]` with strides `C·kh·kw` and `kh·kw`; the
                // shifted input `[C, cols_n]` stays inside `xpad` (see the `kw − 1` floats of slack).
                unsafe {
                    gemm::gemm(
                        m, cols_n, c, acc.as_mut_ptr(), 1, cols_n as isize, true, ws[ki * kw + kj..].as_ptr(),
                        (kh * kw) as isize, (c * kh * kw) as isize, xpad[ki * wp + kj..].as_ptr(), 1, (rp * wp) as isize,
                        1.0f32, 1.0f32, false, false, false, inner,
                    );
                }
            }
        }
        for j in 0..m {
            // SAFETY: tasks write disjoint blocks: image `img`, output rows `oy0..oy1`.
            let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(((img * m + j) * oh + oy0) * ow), r * ow) };
            for (rr, row) in dst.chunks_mut(ow).enumerate() {
                row.copy_from_slice(&acc[j * cols_n + rr * wp..][..ow]);
            }
            if let Some(e) = epilogue {
                e.apply(dst);
            }
        }
    };
    if tasks > 1 && matches!(inner, gemm::Parallelism::None) {
        (0..tasks).into_par_iter().for_each_init(|| (Vec::new(), Vec::new()), |s, t| run(t, s));
    } else {
        let mut scratch = (Vec::new(), Vec::new());
        (0..tasks).for_each(|t| run(t, &mut scratch));
    }
}

/// Depthwise convolution (one filter per channel), one output plane per task. The plane is
/// copied once into a zero-padded buffer split into its row and column phases (see
/// [`fill_phases`]), so every filter tap reads contiguous floats and a narrow plane is one run of
/// outputs (rows `wq` apart, the columns past `OW` computed and dropped), which keeps the vector
/// units busy on MobileNet's 8×8 and 16×16 planes where row-by-row loops would not. Measured on
/// the crop classifier at batch 64: its 5×5 depthwise layers 12.8 → 3.3 ms each. Taps that read
/// only padding for every output are dropped: CRNN's 5×5 layers on planes one or two rows high
/// (after its height is pooled away) keep 5 or 15 of their 25.
fn depthwise(xs: &[f32], ws: &[f32], bias: Option<&[f32]>, epilogue: Option<Epilogue>, out: &mut [f32], g: &ConvGeometry) {
    let [_, c, h, wd] = g.input;
    let [_, _, oh, ow] = g.output;
    let [kh, kw] = g.kernel;
    let reaches = |k: usize, axis: usize, len: usize, out: usize| {
        let (lo, hi) = valid(k, g.stride[axis], g.dilation[axis], g.pad[axis], len, out);
        lo < hi
    };
    let live: Vec<usize> = (0..kh * kw).filter(|t| reaches(t / kw, 0, h, oh) && reaches(t % kw, 1, wd, ow)).collect();
    let all_offs = g.tap_offsets(0, 1);
    let offs: Vec<usize> = live.iter().map(|&t| all_offs[t]).collect();
    let taps: Vec<f32> = (0..c).flat_map(|ch| live.iter().map(move |&t| ws[ch * kh * kw + t])).collect();
    out.par_chunks_mut(oh * ow).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(phases, acc), (p, o)| depthwise_plane(xs, &taps, bias, epilogue, g, &offs, p, o, phases, acc),
    );
}

simd_fn! {
/// One output plane of [`depthwise`]; `offs` are the live taps' offsets into `phases`, `ws` their
/// weights, per channel; `phases`, like `acc`, is scratch reused across planes.
#[allow(clippy::too_many_arguments)]
fn depthwise_plane(
    xs: &[f32],
    ws: &[f32],
    bias: Option<&[f32]>,
    epilogue: Option<Epilogue>,
    g: &ConvGeometry,
    offs: &[usize],
    p: usize,
    o: &mut [f32],
    phases: &mut Vec<f32>,
    acc: &mut Vec<f32>,
) {
    let [_, c, h, wd] = g.input;
    let (hq, wq) = g.phase_dims();
    let ch = p % c;
    let plane = &xs[p * h * wd..(p + 1) * h * wd];
    let taps = &ws[ch * offs.len()..(ch + 1) * offs.len()];
    phases.clear();
    phases.resize(g.stride[0] * g.stride[1] * hq * wq, 0.0);
    fill_phases(plane, g, phases);
    plane_run(o, bias.map_or(0.0, |b| b[ch]), phases, offs, taps, g.output[3], wq, acc);
    if let Some(e) = epilogue {
        e.apply(o);
    }
}
}

/// Output rows at least this wide are summed row by row straight into the output; narrower ones
/// as one run over the whole plane (see [`plane_run`]).
const WIDE_ROW: usize = 32;

/// One output plane `o` (rows of `ow`) summed by [`tap_sum`] over the phases, where output
/// `(oy, ox)` reads at `oy·wq + ox`: wide rows one by one into `o`, narrow ones as a single run
/// whose `wq − ow` columns past each row are computed into `acc` and dropped.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn plane_run(o: &mut [f32], init: f32, phases: &[f32], offs: &[usize], wts: &[f32], ow: usize, wq: usize, acc: &mut Vec<f32>) {
    let oh = o.len() / ow;
    if wq == ow {
        tap_sum(o, init, phases, offs, wts);
        return;
    }
    if ow >= WIDE_ROW {
        for (oy, row) in o.chunks_mut(ow).enumerate() {
            tap_sum(row, init, &phases[oy * wq..], offs, wts);
        }
        return;
    }
    let len = (oh - 1) * wq + ow;
    acc.resize(len, 0.0);
    tap_sum(&mut acc[..len], init, phases, offs, wts);
    for (oy, row) in o.chunks_mut(ow).enumerate() {
        row.copy_from_slice(&acc[oy * wq..oy * wq + ow]);
    }
}

/// `out[i] = init + Σₜ wts[t] · src[offs[t] + i]`, summed in registers over blocks of outputs so
/// each output is stored once rather than read and written back once per tap.
#[inline(always)]
fn tap_sum(out: &mut [f32], init: f32, src: &[f32], offs: &[usize], wts: &[f32]) {
    #[inline(always)]
    fn block<const B: usize>(out: &mut [f32], x: usize, init: f32, src: &[f32], offs: &[usize], wts: &[f32]) {
        let mut acc = [init; B];
        for (&o, &w) in offs.iter().zip(wts) {
            let s: &[f32; B] = src[o + x..o + x + B].try_into().expect("block of B floats");
            for i in 0..B {
                acc[i] += w * s[i];
            }
        }
        out[x..x + B].copy_from_slice(&acc);
    }
    let n = out.len();
    let mut x = 0;
    // 32 floats: two AVX-512 registers, two independent sums per tap, which LLVM keeps in
    // registers (a 64-float block is summed in memory on the stack).
    while x + 32 <= n {
        block::<32>(out, x, init, src, offs, wts);
        x += 32;
    }
    while x + 16 <= n {
        block::<16>(out, x, init, src, offs, wts);
        x += 16;
    }
    while x + 4 <= n {
        block::<4>(out, x, init, src, offs, wts);
        x += 4;
    }
    while x < n {
        block::<1>(out, x, init, src, offs, wts);
        x += 1;
    }
}

/// [`tap_sum`] for four runs of `len` that read the same source at the same offsets, each with its
/// own weights (`wts[g·T + t]`) into `outs[g][at..at + len]`: every source block is loaded once for
/// all four (a stem's output channels). Blocks of 8 floats, 32 sums in all: what LLVM keeps in
/// registers (larger blocks are summed on the stack).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tap_sum4(outs: &mut [&mut [f32]], at: usize, len: usize, init: [f32; 4], src: &[f32], offs: &[usize], wts: &[f32]) {
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn block<const B: usize>(outs: &mut [&mut [f32]], at: usize, x: usize, init: [f32; 4], src: &[f32], offs: &[usize], wts: &[f32]) {
        let taps = offs.len();
        let (w0, w1, w2, w3) = (&wts[..taps], &wts[taps..2 * taps], &wts[2 * taps..3 * taps], &wts[3 * taps..4 * taps]);
        let (mut a0, mut a1, mut a2, mut a3) = ([init[0]; B], [init[1]; B], [init[2]; B], [init[3]; B]);
        for (t, &o) in offs.iter().enumerate() {
            let s: &[f32; B] = src[o + x..o + x + B].try_into().expect("block of B floats");
            let (v0, v1, v2, v3) = (w0[t], w1[t], w2[t], w3[t]);
            for i in 0..B {
                a0[i] += v0 * s[i];
                a1[i] += v1 * s[i];
                a2[i] += v2 * s[i];
                a3[i] += v3 * s[i];
            }
        }
        for (out, a) in outs.iter_mut().zip([a0, a1, a2, a3]) {
            out[at + x..at + x + B].copy_from_slice(&a);
        }
    }
    let mut x = 0;
    while x + 8 <= len {
        block::<8>(outs, at, x, init, src, offs, wts);
        x += 8;
    }
    while x < len {
        block::<1>(outs, at, x, init, src, offs, wts);
        x += 1;
    }
}

/// Copies one input plane into its `sh·sw` phases, `phases[qy·sw + qx][r][t] =
/// padded[r·sh + qy][t·sw + qx]` (zeros where padded, the buffer zeroed by the caller), so that
/// strided taps read contiguous floats and a whole output plane is one run (see
/// [`ConvGeometry::tap_offsets`]).
#[inline(always)]
fn fill_phases(plane: &[f32], g: &ConvGeometry, phases: &mut [f32]) {
    let [_, _, h, wd] = g.input;
    let [sh, sw] = g.stride;
    let [ph, pw] = g.pad;
    let (hp, wp) = g.padded_dims();
    let (hq, wq) = g.phase_dims();
    // Input columns the taps reach.
    let n = wd.min(wp.saturating_sub(pw));
    for ir in 0..h {
        let r = ir + ph;
        if r >= hp {
            break;
        }
        let src = &plane[ir * wd..ir * wd + n];
        let row = |qx: usize| ((r % sh * sw + qx) * hq + r / sh) * wq;
        match sw {
            1 => {
                let d = row(0) + pw;
                phases[d..d + n].copy_from_slice(src);
            }
            2 => {
                // Column j goes to phase (j + pw) mod 2, index (j + pw) / 2.
                let (ra, rb) = (row(pw % 2), row((pw + 1) % 2));
                let (oa, ob) = (pw / 2, pw.div_ceil(2));
                let pairs = n / 2;
                let (lo, hi) = phases.split_at_mut(ra.max(rb));
                let (a, b) = if ra < rb { (&mut lo[ra..], &mut hi[..]) } else { (&mut hi[..], &mut lo[rb..]) };
                let (a, b) = (&mut a[oa..oa + pairs + n % 2], &mut b[ob..ob + pairs]);
                for ((x, y), p) in a.iter_mut().zip(b.iter_mut()).zip(src.chunks_exact(2)) {
                    *x = p[0];
                    *y = p[1];
                }
                if n % 2 == 1 {
                    a[pairs] = src[n - 1];
                }
            }
            _ => {
                for (j, &v) in src.iter().enumerate() {
                    let c = j + pw;
                    phases[row(c % sw) + c / sw] = v;
                }
            }
        }
    }
}

/// Input floats (all channels' phases) one band of [`small_dense`] spans: half a typical L2.
const BAND_FLOATS: usize = 1 << 16;

simd_fn! {
/// Dense convolutions with few taps per output (RGB stems: 3 channels × 3×3), where im2col would
/// copy the image nine times to feed a gemm only 27 deep. One task per image and band of output
/// rows: the band's input rows are split into phases once (see [`fill_phases`]), then each output
/// channel's rows are summed over channels and taps by [`tap_sum4`], four channels per pass. (The
/// crop classifier's stem at batch 64: 25 → 17 ms as one task per image; in bands, DB's at
/// 1024×1024 no longer re-reads 12.6 MB of phases per four channels.)
#[allow(clippy::too_many_arguments)]
fn small_dense(
    xs: &[f32],
    ws: &[f32],
    bias: Option<&[f32]>,
    epilogue: Option<Epilogue>,
    g: &ConvGeometry,
    img: usize,
    rows: std::ops::Range<usize>,
    outs: &mut [&mut [f32]],
    scratch: &mut (Vec<f32>, Vec<f32>),
) {
    let [_, c, h, wd] = g.input;
    let [kh, kw] = g.kernel;
    let ([sh, _], [dh, _], [ph, _]) = (g.stride, g.dilation, g.pad);
    // The band as a convolution of its own: the input rows its taps reach (padded coordinates
    // r0..r1), with what is left of the leading pad.
    let (r0, r1) = (rows.start * sh, (rows.end - 1) * sh + (kh - 1) * dh + 1);
    let (lo, hi) = (r0.saturating_sub(ph).min(h), r1.saturating_sub(ph).min(h));
    let bg = ConvGeometry {
        input: [1, c, hi - lo, wd],
        output: [1, g.output[1], rows.len(), g.output[3]],
        pad: [ph.saturating_sub(r0), g.pad[1]],
        ..g.clone()
    };
    let (hq, wq) = bg.phase_dims();
    let (phases, acc) = scratch;
    let per = g.stride[0] * g.stride[1] * hq * wq;
    phases.clear();
    phases.resize(c * per, 0.0);
    for ci in 0..c {
        let plane = &xs[((img * c + ci) * h + lo) * wd..((img * c + ci) * h + hi) * wd];
        fill_phases(plane, &bg, &mut phases[ci * per..(ci + 1) * per]);
    }
    let offs = bg.tap_offsets(per, c);
    let [_, _, oh, ow] = bg.output;
    let (taps, len) = (c * kh * kw, (oh - 1) * wq + ow);
    let init = |m: usize| bias.map_or(0.0, |b| b[m]);
    // Every channel register-blocked over wide rows where the CPU has AVX-512; else four
    // channels per pass, the rest one at a time.
    if ow >= WIDE_ROW {
        let packed = super::avx512::Packed::new(ws, bias, outs.len(), taps, ow);
        if super::avx512::tap_rows(phases, &offs, wq, ow, 0..oh, &packed, epilogue, outs, acc) {
            return;
        }
    }
    for (group, o) in (0..outs.len()).step_by(4).zip(outs.chunks_mut(4)) {
        let wts = &ws[group * taps..];
        if o.len() == 4 {
            let init = std::array::from_fn(|k| init(group + k));
            if ow >= WIDE_ROW {
                for oy in 0..oh {
                    tap_sum4(o, oy * ow, ow, init, &phases[oy * wq..], &offs, wts);
                }
            } else {
                acc.resize(4 * len, 0.0);
                let mut runs: Vec<&mut [f32]> = acc.chunks_mut(len).collect();
                tap_sum4(&mut runs, 0, len, init, phases, &offs, wts);
                for (p, run) in o.iter_mut().zip(&runs) {
                    for (oy, row) in p.chunks_mut(ow).enumerate() {
                        row.copy_from_slice(&run[oy * wq..oy * wq + ow]);
                    }
                }
            }
        } else {
            for (k, p) in o.iter_mut().enumerate() {
                plane_run(p, init(group + k), phases, &offs, &wts[k * taps..(k + 1) * taps], ow, wq, acc);
            }
        }
        if let Some(e) = epilogue {
            o.iter_mut().for_each(|p| e.apply(p));
        }
    }
}
}

/// Fills `cols[K, (oy1−oy0)·OW]`, rows `stride` floats apart, for one group's channels
/// `x[Cg, H, W]`.
fn im2col(x: &[f32], cols: &mut [f32], stride: usize, g: &ConvGeometry, oy0: usize, oy1: usize) {
    let [_, c, h, wd] = g.input;
    let ow = g.output[3];
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [dh, dw] = g.dilation;
    let [ph, pw] = g.pad;
    let width = (oy1 - oy0) * ow;
    for r in 0..c / g.groups * kh * kw {
        let row = &mut cols[r * stride..r * stride + width];
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
pub(super) struct SendPtr(pub(super) *mut f32);
// SAFETY: every task writes a disjoint part of the output (see `grouped`, `lstm` and
// `avx512`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

/// An LSTM's weights for [`lstm`] (ONNX's gate order i, o, f, c), transposed: the gemm packs a
/// row-major right operand about twice as fast as a transposed view (SAR's encoder LSTMs at batch
/// 64, 44 → 25 ms each).
pub struct LstmWeights {
    /// Every direction's `Wᵀ [I, 4H]`, side by side `[I, D·4H]`: one gemm projects the input for
    /// all of them.
    pub w: Vec<f32>,
    /// Per direction: `Rᵀ [H, 4H]`, the summed biases `Wb + Rb [4H]`, and whether it runs backward.
    pub dirs: Vec<(Vec<f32>, Vec<f32>, bool)>,
}

/// A sequence-first (`layout = 0`) LSTM: one gemm projects every time step's input for every
/// direction, then each step adds `h · Rᵀ` into its gate rows with one small gemm and updates `c`
/// and `h` in one pass over the gates, adding the bias there (Burn's ops spend ~10 allocations and
/// passes per step). Returns `Y` `[S, D, N, H]`, `Y_h` and `Y_c` `[D, N, H]`; `None` leaves it to
/// Burn's ops.
pub fn lstm(
    ctx: &Ctx,
    x: &T,
    h0: Option<&T>,
    c0: Option<&T>,
    weights: &LstmWeights,
    [seq, batch, input, hidden]: [usize; 4],
) -> Option<[T; 3]> {
    if !enabled() {
        return None;
    }
    // Sequence-first input often arrives as a transposed view (CRNN's features).
    let (tiled, contiguous);
    let xs = match flex_slice(x) {
        Some(xs) => xs,
        None => match strided_copy(x) {
            Some(c) => {
                tiled = c;
                &tiled[..]
            }
            None => {
                contiguous = contiguous_flex(x)?;
                flex_slice(&contiguous)?
            }
        },
    };
    let nd = weights.dirs.len();
    fn state(t: Option<&T>, len: usize) -> Option<Option<&[f32]>> {
        match t {
            None => Some(None),
            Some(t) => flex_slice(t).filter(|s| s.len() == len).map(Some),
        }
    }
    let (h0, c0) = (state(h0, nd * batch * hidden)?, state(c0, nd * batch * hidden)?);
    let g = 4 * hidden;
    let gw = nd * g;
    if hidden == 0 || xs.len() != seq * batch * input || weights.w.len() != gw * input {
        return None;
    }
    // SAFETY: every step of every direction writes its rows of `y`.
    let mut y = unsafe { output_buffer(seq * nd * batch * hidden) };
    let mut yh = vec![0f32; nd * batch * hidden];
    let mut yc = vec![0f32; nd * batch * hidden];
    if let Some(h0) = h0 {
        yh.copy_from_slice(h0);
    }
    if let Some(c0) = c0 {
        yc.copy_from_slice(c0);
    }
    let threads = rayon::current_num_threads();
    // Gates `[S·N, D·4H]` = x · Wᵀ, every direction side by side in a row.
    // SAFETY: the gemm below writes every gate (it does not read `dst`).
    let mut gates = unsafe { output_buffer(seq * batch * gw) };
    // SAFETY: x `[S·N, I]` and Wᵀ `[I, D·4H]` row-major; all in bounds.
    unsafe {
        gemm::gemm(
            seq * batch, gw, input, gates.as_mut_ptr(), 1, gw as isize, false, xs.as_ptr(), 1, input as isize,
            weights.w.as_ptr(), 1, gw as isize, 0.0f32, 1.0f32, false, false, false,
            gemm::Parallelism::Rayon(threads),
        );
    }
    // The recurrence: batch rows and directions are independent, so each task runs a block of
    // rows of one direction through every step (the per-step gemms are too small to split).
    let chunks = (threads / nd).clamp(1, batch);
    let rows = batch.div_ceil(chunks);
    let (yp, hp, cp, gp) = (SendPtr(y.as_mut_ptr()), SendPtr(yh.as_mut_ptr()), SendPtr(yc.as_mut_ptr()), SendPtr(gates.as_mut_ptr()));
    (0..nd * chunks).into_par_iter().for_each(|task| {
        let (d, k) = (task / chunks, task % chunks);
        let (b0, b1) = (k * rows, ((k + 1) * rows).min(batch));
        if b0 >= b1 {
            return;
        }
        let n = b1 - b0;
        let (r, b, backward) = &weights.dirs[d];
        // SAFETY: this task alone touches rows b0..b1 of direction d in `yh`, `yc` and `y`, and
        // columns d·4H..(d+1)·4H of those rows in `gates`.
        let (h, c) = unsafe {
            let at = (d * batch + b0) * hidden;
            (
                std::slice::from_raw_parts_mut(hp.get().add(at), n * hidden),
                std::slice::from_raw_parts_mut(cp.get().add(at), n * hidden),
            )
        };
        for s in 0..seq {
            let t = if *backward { seq - 1 - s } else { s };
            // SAFETY: as above; step rows `[n, 4H]` (`D·4H` apart) += h `[n, H]` · Rᵀ (row-major `[H, 4H]`).
            let step = unsafe { gp.get().add((t * batch + b0) * gw + d * g) };
            unsafe {
                gemm::gemm(
                    n, g, hidden, step, 1, gw as isize, true, h.as_ptr(), 1, hidden as isize,
                    r.as_ptr(), 1, g as isize, 1.0f32, 1.0f32, false, false, false, gemm::Parallelism::None,
                );
            }
            for j in 0..n {
                // SAFETY: as above.
                let row = unsafe { std::slice::from_raw_parts(step.add(j * gw), g) };
                lstm_cell(row, b, &mut c[j * hidden..(j + 1) * hidden], &mut h[j * hidden..(j + 1) * hidden]);
            }
            for (j, hj) in h.chunks_exact(hidden).enumerate() {
                // SAFETY: as above; `y` is laid out `[S, N, D, H]`.
                let out = unsafe { std::slice::from_raw_parts_mut(yp.get().add(((t * batch + b0 + j) * nd + d) * hidden), hidden) };
                out.copy_from_slice(hj);
            }
        }
    });
    let t = |v: Vec<f32>, shape: Vec<usize>| B::float_from_data(TensorData::new(v, shape), &ctx.device);
    Some([
        // ONNX's `[S, D, N, H]` as a view of `[S, N, D, H]`: a bidirectional LSTM's reader
        // transposes it back to that and merges the directions (CRNN, PP-OCR), now without a copy.
        B::float_permute(B::float_from_data(y.into_data(vec![seq, batch, nd, hidden]), &ctx.device), &[0, 2, 1, 3]),
        t(yh, vec![nd, batch, hidden]),
        t(yc, vec![nd, batch, hidden]),
    ])
}

/// The values of a flex float view, row-major, when its last axis is not the one laid out
/// contiguously (a permuted view: CRNN's `[W, N, C]` features, attention heads split and
/// transposed). The view is copied in 16×16 tiles of its last axis and its most tightly strided
/// one, so that reads and writes both stay in cache lines, parallel over the other axes. Burn's
/// flex walks such views one element at a time (1.6 ms of CRNN's 39 at batch 64; 21 ms of
/// viptr_tiny's reshapes). `None` when flex's own copy is as good (unit last stride) or the view
/// is not a plain f32 flex view with non-negative strides.
pub fn strided_copy(t: &T) -> Option<AlignedBuf> {
    let DispatchTensorKind::Flex(BackendTensor::Float(f)) = &t.kind else { return None };
    let layout = f.layout();
    let (shape, strides) = (layout.shape().as_slice(), layout.strides());
    let rank = shape.len();
    if f.dtype() != burn_backend::DType::F32 || rank < 2 || strides.iter().any(|&s| s < 0) || strides[rank - 1] == 1 {
        return None;
    }
    let strides: Vec<usize> = strides.iter().map(|&s| s as usize).collect();
    let numel: usize = shape.iter().product();
    let src = f.storage::<f32>();
    let offset = layout.start_offset();
    if numel == 0 {
        // SAFETY: nothing to write.
        return Some(unsafe { output_buffer(0) });
    }
    let last = offset + shape.iter().zip(&strides).map(|(&d, &s)| (d - 1) * s).sum::<usize>();
    if last >= src.len() {
        return None;
    }
    let c = rank - 1;
    // The other tile axis: the most tightly strided of the rest (ties: the innermost).
    let a = (0..c).filter(|&i| shape[i] > 1).min_by_key(|&i| (strides[i], usize::MAX - i)).unwrap_or(0);
    let mut dst_strides = vec![1usize; rank];
    for i in (0..c).rev() {
        dst_strides[i] = dst_strides[i + 1] * shape[i + 1];
    }
    let outer: Vec<usize> = (0..c).filter(|&i| i != a).collect();
    let outer_count: usize = outer.iter().map(|&i| shape[i]).product();
    // SAFETY: the tiles below cover every output position.
    let mut out = unsafe { output_buffer(numel) };
    let op = SendPtr(out.as_mut_ptr());
    const TILE: usize = 16;
    (0..outer_count).into_par_iter().for_each(|mut flat| {
        let (mut from, mut to) = (offset, 0);
        for &i in outer.iter().rev() {
            let idx = flat % shape[i];
            flat /= shape[i];
            from += idx * strides[i];
            to += idx * dst_strides[i];
        }
        for i0 in (0..shape[a]).step_by(TILE) {
            for k0 in (0..shape[c]).step_by(TILE) {
                for i in i0..(i0 + TILE).min(shape[a]) {
                    let (s, d) = (from + i * strides[a], to + i * dst_strides[a]);
                    // SAFETY: output positions `to + i·dst_strides[a] + k` belong to this task's
                    // outer index alone and lie inside `out`.
                    let row = unsafe { std::slice::from_raw_parts_mut(op.get().add(d), shape[c]) };
                    for k in k0..(k0 + TILE).min(shape[c]) {
                        row[k] = src[s + k * strides[c]];
                    }
                }
            }
        }
    });
    Some(out)
}

/// A reshape of a flex float view that flex could only do by copying it element by element (see
/// [`strided_copy`]): copied in tiles first, then reshaped in place.
pub fn reshape_copy(t: &T, dims: &[usize]) -> Option<T> {
    if !enabled() {
        return None;
    }
    let DispatchTensorKind::Flex(BackendTensor::Float(f)) = &t.kind else { return None };
    if f.layout().reshape(burn_backend::Shape::from(dims.to_vec())).is_some() {
        return None;
    }
    let values = strided_copy(t)?;
    let flex = burn_flex::FlexTensor::from_data(values.into_data(dims.to_vec()));
    Some(T { kind: DispatchTensorKind::Flex(BackendTensor::Float(flex)), autodiff: t.autodiff })
}

simd_fn! {
/// One LSTM step's gate activations and state update for one batch row, whose gates `i, o, f, g`
/// lack the bias `b`: `c = σ(f)·c + σ(i)·tanh(g)`, `h = σ(o)·tanh(c)`.
fn lstm_cell(gates: &[f32], b: &[f32], c: &mut [f32], h: &mut [f32]) {
    let hidden = c.len();
    let (i, rest) = gates.split_at(hidden);
    let (o, rest) = rest.split_at(hidden);
    let (f, g) = rest.split_at(hidden);
    let (bi, rest) = b.split_at(hidden);
    let (bo, rest) = rest.split_at(hidden);
    let (bf, bg) = rest.split_at(hidden);
    // Sixteen lanes at a time through fixed-size arrays, which LLVM turns into whole zmm
    // registers (over plain slices it kept part of the cell scalar).
    let body = hidden / 16 * 16;
    for k in (0..body).step_by(16) {
        let lanes = |v: &[f32], b: &[f32]| -> [f32; 16] {
            let (v, b): (&[f32; 16], &[f32; 16]) = (v[k..k + 16].try_into().expect("16 lanes"), b[k..k + 16].try_into().expect("16 lanes"));
            std::array::from_fn(|l| v[l] + b[l])
        };
        let (iv, ov, fv, gv) = (lanes(i, bi), lanes(o, bo), lanes(f, bf), lanes(g, bg));
        let mut cv: [f32; 16] = c[k..k + 16].try_into().expect("16 lanes");
        let mut hv = [0f32; 16];
        for l in 0..16 {
            cv[l] = sigmoid(fv[l]) * cv[l] + sigmoid(iv[l]) * tanh(gv[l]);
            hv[l] = sigmoid(ov[l]) * tanh(cv[l]);
        }
        c[k..k + 16].copy_from_slice(&cv);
        h[k..k + 16].copy_from_slice(&hv);
    }
    for j in body..hidden {
        let cj = sigmoid(f[j] + bf[j]) * c[j] + sigmoid(i[j] + bi[j]) * tanh(g[j] + bg[j]);
        c[j] = cj;
        h[j] = sigmoid(o[j] + bo[j]) * tanh(cj);
    }
}
}

/// `eˣ` by Cephes' `expf` polynomial (relative error ~1e-7), written so it vectorises: libm's
/// `exp` is a call per element. The power of two is built from the float's bits (adding 1.5·2²³
/// leaves the integer `n + 127` in the low mantissa bits): `as i32` saturates and checks for NaN,
/// which LLVM does one lane at a time.
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r
        + 5.000_000_1e-1;
    let e = p * r * r + r + 1.0;
    // n + 127 is in 2..=254 here, so eight bits hold it; a NaN x stays NaN through `e`.
    let biased = (n + (127.0 + 12_582_912.0)).to_bits() & 0xff;
    e * f32::from_bits(biased << 23)
}

/// `erf` by Abramowitz and Stegun 7.1.26 (absolute error ≤ 1.5e-7), on the vectorised `exp`.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let p = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_7) * t - 0.284_496_74) * t + 0.254_829_6) * t;
    (1.0 - p * exp(-a * a)).copysign(x)
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[inline(always)]
fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// `tanh` as Cephes' `tanhf`: an odd polynomial below 0.625, where `1 − 2/(e²ˣ + 1)` loses the
/// relative precision of small values to cancellation, the exponential form above.
#[inline(always)]
fn tanh_accurate(x: f32) -> f32 {
    let z = x * x;
    let small = ((((-5.704_988_7e-3 * z + 2.063_909e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z - 3.333_328_2e-1) * z * x + x;
    if x.abs() < 0.625 { small } else { tanh(x) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// The convolution by its definition, one output at a time.
    fn reference(xs: &[f32], ws: &[f32], bias: &[f32], epilogue: Epilogue, g: &ConvGeometry) -> Vec<f32> {
        let [n, c, h, wd] = g.input;
        let [_, m, oh, ow] = g.output;
        let [kh, kw] = g.kernel;
        let (cg, mg) = (c / g.groups, m / g.groups);
        let mut out = vec![0f32; n * m * oh * ow];
        for (i, o) in out.iter_mut().enumerate() {
            let (img, j, oy, ox) = (i / (m * oh * ow), i / (oh * ow) % m, i / ow % oh, i % ow);
            let mut sum = bias[j];
            for ci in 0..cg {
                let channel = j / mg * cg + ci;
                for ki in 0..kh {
                    for kj in 0..kw {
                        let y = (oy * g.stride[0] + ki * g.dilation[0]) as isize - g.pad[0] as isize;
                        let x = (ox * g.stride[1] + kj * g.dilation[1]) as isize - g.pad[1] as isize;
                        if (0..h as isize).contains(&y) && (0..wd as isize).contains(&x) {
                            sum += ws[((j * cg + ci) * kh + ki) * kw + kj] * xs[((img * c + channel) * h + y as usize) * wd + x as usize];
                        }
                    }
                }
            }
            let mut v = [sum];
            epilogue.apply(&mut v);
            *o = v[0];
        }
        out
    }

    fn worst(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max)
    }

    /// Pointwise convolutions through the register-blocked route (where the CPU has it), with
    /// planes and channel counts that leave partial blocks, and a run of positions longer than
    /// one panel, against the definition.
    #[test]
    fn pointwise_matches_definition() {
        for (n, c, m, h, w, e) in [(2, 5, 11, 5, 7, Epilogue::HardSwish), (1, 24, 16, 9, 9, Epilogue::Relu), (3, 3, 8, 1, 32, Epilogue::Clip(-0.1, 0.2)), (1, 64, 9, 40, 40, Epilogue::Relu)] {
            let g = ConvGeometry { input: [n, c, h, w], output: [n, m, h, w], kernel: [1, 1], stride: [1, 1], dilation: [1, 1], pad: [0, 0], groups: 1 };
            let (xs, ws, bias) = (noise(n * c * h * w, 1), noise(m * c, 2), noise(m, 3));
            let want = reference(&xs, &ws, &bias, e, &g);
            let mut got = vec![f32::NAN; want.len()];
            if super::super::avx512::pointwise(&xs, &ws, Some(&bias), Some(e), &mut got, &g) {
                assert!(worst(&got, &want) < 1e-5, "off by {}", worst(&got, &want));
            }
            let mut got = vec![f32::NAN; want.len()];
            grouped(&xs, &ws, Some(&bias), Some(e), &mut got, &g);
            assert!(worst(&got, &want) < 1e-5, "gemm route off by {}", worst(&got, &want));
        }
    }

    /// Image stems (few input channels, strided, padded) through `small_dense`, over rows wide
    /// enough for the register-blocked route and narrow ones, in bands, against the definition.
    #[test]
    fn small_dense_matches_definition() {
        for (c, m, h, w, k, s) in [(3, 16, 70, 67, 3, 2), (3, 13, 20, 21, 3, 2), (1, 9, 40, 75, 5, 1)] {
            let (oh, ow) = ((h + 2 * (k / 2) - k) / s + 1, (w + 2 * (k / 2) - k) / s + 1);
            let g = ConvGeometry { input: [2, c, h, w], output: [2, m, oh, ow], kernel: [k, k], stride: [s, s], dilation: [1, 1], pad: [k / 2, k / 2], groups: 1 };
            let (xs, ws, bias) = (noise(2 * c * h * w, 4), noise(m * c * k * k, 5), noise(m, 6));
            let want = reference(&xs, &ws, &bias, Epilogue::HardSwish, &g);
            let mut got = vec![f32::NAN; want.len()];
            let plane = oh * ow;
            let mut scratch = Default::default();
            for img in 0..2 {
                for rows in [0..oh / 3, oh / 3..oh] {
                    let mut outs: Vec<&mut [f32]> = got[img * m * plane..(img + 1) * m * plane]
                        .chunks_mut(plane)
                        .map(|p| &mut p[rows.start * ow..rows.end * ow])
                        .collect();
                    small_dense(&xs, &ws, Some(&bias), Some(Epilogue::HardSwish), &g, img, rows.clone(), &mut outs, &mut scratch);
                }
            }
            assert!(worst(&got, &want) < 1e-5, "off by {}", worst(&got, &want));
        }
    }

    /// Squeeze-and-excitation's 1×1 convs over 1×1 planes, with and without a bias.
    #[test]
    fn pointwise_vectors_match_definition() {
        let g = ConvGeometry { input: [5, 37, 1, 1], output: [5, 11, 1, 1], kernel: [1, 1], stride: [1, 1], dilation: [1, 1], pad: [0, 0], groups: 1 };
        let (xs, ws, bias) = (noise(5 * 37, 1), noise(11 * 37, 2), noise(11, 3));
        for b in [Some(&bias[..]), None] {
            let want = reference(&xs, &ws, b.unwrap_or(&[0.0; 11]), Epilogue::Relu, &g);
            let mut got = vec![f32::NAN; want.len()];
            pointwise_vectors(&xs, &ws, b, Some(Epilogue::Relu), &mut got, &g, None);
            assert!(worst(&got, &want) < 1e-5, "off by {}", worst(&got, &want));
        }
    }

    #[test]
    fn the_faster_route_is_kept() {
        let pause = |ms: u64, applies: bool| move |out: &mut [f32]| {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            out.fill(1.0);
            applies
        };
        let mut out = [0f32; 4];
        assert!(first_is_faster(&mut out, pause(0, true), |o| { pause(20, true)(o); }));
        assert!(!first_is_faster(&mut out, pause(20, true), |o| { pause(0, true)(o); }));
        // A route that does not apply is never kept.
        assert!(!first_is_faster(&mut out, pause(0, false), |o| { pause(20, true)(o); }));
        assert_eq!(out, [1.0; 4]);
    }

    /// Depthwise convolutions with strides (CRNN's 2×1 among them), dilation, pads that reach
    /// past the input and planes from one row high to wider than `WIDE_ROW`, through the phase
    /// route and (where it applies) the masked one, against the definition.
    #[test]
    fn depthwise_matches_definition() {
        // (channels, h, w, kernel, [sh, sw], dilation, pad)
        let cases = [
            (20, 8, 8, 5, [1, 1], 1, 2),
            (17, 33, 29, 3, [2, 2], 1, 1),
            (16, 1, 40, 5, [1, 1], 1, 2),
            (3, 300, 90, 3, [1, 1], 2, 3),
            (33, 16, 16, 5, [2, 2], 1, 2),
            (7, 7, 9, 3, [1, 1], 2, 2),
            (4, 5, 3, 5, [1, 1], 1, 2),
            (5, 32, 32, 3, [1, 1], 1, 1),
            (3, 13, 11, 5, [1, 1], 1, 2),
            (6, 4, 32, 5, [2, 1], 1, 2),
            (5, 9, 7, 3, [2, 2], 1, 0),
            (4, 11, 13, 3, [3, 3], 2, 2),
            (4, 11, 13, 3, [3, 1], 2, 2),
            // For the strided route: odd and even sizes, pads 0 to 2, a partial last vector, rows
            // of more than four vectors and of eight outputs or fewer (two rows to a vector, an
            // odd last one), a 2×2 kernel (no odd tap in its last pair).
            (3, 70, 70, 3, [2, 2], 1, 1),
            (2, 33, 37, 5, [2, 2], 1, 2),
            (2, 9, 150, 3, [2, 2], 1, 0),
            (2, 8, 64, 2, [2, 2], 1, 0),
            (2, 7, 33, 3, [2, 2], 1, 1),
            (3, 16, 16, 5, [2, 2], 1, 2),
            (2, 13, 9, 3, [2, 2], 1, 1),
            (2, 6, 4, 3, [2, 2], 1, 0),
            (2, 18, 14, 2, [2, 2], 1, 0),
        ];
        for (c, h, w, k, [sh, sw], d, p) in cases {
            let (oh, ow) = ((h + 2 * p - d * (k - 1) - 1) / sh + 1, (w + 2 * p - d * (k - 1) - 1) / sw + 1);
            let g = ConvGeometry { input: [2, c, h, w], output: [2, c, oh, ow], kernel: [k, k], stride: [sh, sw], dilation: [d, d], pad: [p, p], groups: c };
            let (xs, ws, bias) = (noise(2 * c * h * w, 7), noise(c * k * k, 8), noise(c, 9));
            let want = reference(&xs, &ws, &bias, Epilogue::Relu, &g);
            let mut got = vec![f32::NAN; want.len()];
            depthwise(&xs, &ws, Some(&bias), Some(Epilogue::Relu), &mut got, &g);
            assert!(worst(&got, &want) < 1e-5, "off by {} for {g:?}", worst(&got, &want));
            let mut got = vec![f32::NAN; want.len()];
            let masked = super::super::avx512::depthwise_masked(&xs, &ws, Some(&bias), Some(Epilogue::Relu), &mut got, &g);
            if masked {
                assert!(worst(&got, &want) < 1e-5, "masked route off by {} for {g:?}", worst(&got, &want));
            }
            // Taken on CPUs with AVX-512 exactly where output rows are input rows' width.
            let fits = sw == 1 && ow == w;
            #[cfg(target_arch = "x86_64")]
            let fits = fits && std::arch::is_x86_feature_detected!("avx512f");
            assert_eq!(masked, fits, "masked route for {g:?}");
            let mut got = vec![f32::NAN; want.len()];
            let strided = super::super::avx512::depthwise_strided(&xs, &ws, Some(&bias), Some(Epilogue::Relu), &mut got, &g);
            if strided {
                assert!(worst(&got, &want) < 1e-5, "strided route off by {} for {g:?}", worst(&got, &want));
            }
            // Taken on CPUs with AVX-512 exactly where the conv is strided by two, undilated.
            let by_two = [sh, sw] == [2, 2] && d == 1;
            #[cfg(target_arch = "x86_64")]
            let by_two = by_two && std::arch::is_x86_feature_detected!("avx512f");
            assert_eq!(strided, by_two, "strided route for {g:?}");
        }
    }
}

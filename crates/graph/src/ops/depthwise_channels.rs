//! Depthwise convolutions with the vector lanes across sixteen channels (the layout ONNX
//! Runtime's NCHWc kernels keep) on CPUs with AVX-512. Along the plane, a stride-2 conv uses half
//! of every vector and an 8-wide plane leaves lanes idle or computes columns only to drop them;
//! across channels every lane is an output, whatever the stride and plane size, and each tap is
//! one full load and one multiply-add per output position.
//!
//! A task takes sixteen channels of one image over a band of output rows: it transposes the rows
//! the band reads into a zero-padded `[row][column][16]` buffer (16×16 blocks in registers), sums
//! eight output positions at a time over the taps with one weight vector per tap, and transposes
//! the sums back into the output planes.

use super::cpu_kernels::{ConvGeometry, Epilogue};

/// Runs the depthwise convolution (`groups` = input channels = output channels) when this CPU
/// has AVX-512; false (nothing written) otherwise.
pub fn conv(xs: &[f32], ws: &[f32], bias: Option<&[f32]>, epilogue: Option<Epilogue>, out: &mut [f32], g: &ConvGeometry) -> bool {
    let [n, c, h, w] = g.input;
    let [_, m, oh, ow] = g.output;
    let [kh, kw] = g.kernel;
    let shapes = g.groups == c
        && m == c
        && xs.len() == n * c * h * w
        && ws.len() == c * kh * kw
        && out.len() == n * c * oh * ow
        && bias.is_none_or(|b| b.len() == c)
        && oh * ow * kh * kw > 0
        && g.stride.iter().chain(&g.dilation).all(|&s| s > 0);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && shapes {
        // SAFETY: AVX-512 is present and the slices have the geometry's sizes (checked above).
        unsafe { avx512::run(xs, ws, bias, epilogue, out, g) };
        return true;
    }
    let _ = (xs, ws, bias, epilogue, out, shapes);
    false
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use rayon::prelude::*;

    use super::{ConvGeometry, Epilogue};
    use crate::ops::avx512::{activate, lane_mask};
    use crate::ops::cpu_kernels::SendPtr;

    /// Floats of one task's padded input rows at most (512 KB, within L2), unless a single output
    /// row needs more.
    const BAND_FLOATS: usize = 1 << 17;
    /// Output positions summed at once: eight accumulators hide the multiply-adds' latency and
    /// leave registers for the weight and the loads.
    const RUN: usize = 8;
    /// Floats ahead of the transpose that each of the sixteen input planes is prefetched: with
    /// sixteen streams 1 KB apart (16×16 planes) the hardware prefetchers fall behind.
    const AHEAD: usize = 512;

    thread_local! {
        /// Each thread's padded input rows and sums, kept across tasks and calls.
        static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    }

    /// See [`super::conv`].
    ///
    /// # Safety
    /// AVX-512 is present; the slices have the sizes `g` gives them.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn run(xs: &[f32], ws: &[f32], bias: Option<&[f32]>, epilogue: Option<Epilogue>, out: &mut [f32], g: &ConvGeometry) {
        let [n, c, _, _] = g.input;
        let [_, _, oh, ow] = g.output;
        let [kh, kw] = g.kernel;
        let ([sh, sw], dw) = (g.stride, g.dilation[1]);
        let tw = ((ow - 1) * sw + (kw - 1) * dw + 1).max(g.pad[1] + g.input[3]);
        let blocks = c.div_ceil(16);
        // Weights and bias by block of sixteen channels, tap-major, zeros past `c`.
        let taps = kh * kw;
        let mut wts = vec![0f32; blocks * taps * 16];
        let mut init = vec![0f32; blocks * 16];
        for ch in 0..c {
            for t in 0..taps {
                wts[(ch / 16 * taps + t) * 16 + ch % 16] = ws[ch * taps + t];
            }
            init[ch] = bias.map_or(0.0, |b| b[ch]);
        }
        // Bands of output rows: within `BAND_FLOATS` of input rows, and enough tasks for every
        // thread where the batch and channels are few.
        let fit = (BAND_FLOATS / (sh * tw * 16)).max(1);
        let spread = (n * blocks * oh).div_ceil(4 * rayon::current_num_threads()).max(1);
        let band = fit.min(spread).min(oh);
        let bands = oh.div_ceil(band);
        let op = SendPtr(out.as_mut_ptr());
        (0..n * blocks * bands).into_par_iter().for_each(|task| {
            let (img, cb, b) = (task / (blocks * bands), task / bands % blocks, task % bands);
            let rows = b * band..((b + 1) * band).min(oh);
            SCRATCH.with_borrow_mut(|(pad, sums)| {
                let task = Task { g, img, cb, rows, tw };
                // SAFETY: AVX-512 is present (the caller's); this task alone writes channels
                // `16·cb..` of image `img` over output rows `rows`.
                unsafe { task.run(xs, &wts[cb * taps * 16..(cb + 1) * taps * 16], &init[cb * 16..], epilogue, op.get(), pad, sums) };
            });
        });
    }

    /// Sixteen channels of one image over a band of output rows.
    struct Task<'a> {
        g: &'a ConvGeometry,
        img: usize,
        cb: usize,
        rows: std::ops::Range<usize>,
        /// Columns of the padded rows: those the taps reach, and at least the input's.
        tw: usize,
    }

    impl Task<'_> {
        /// # Safety
        /// AVX-512 is present; `out` holds the output and no other task writes this one's part.
        #[target_feature(enable = "avx512f")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn run(&self, xs: &[f32], wts: &[f32], init: &[f32], epilogue: Option<Epilogue>, out: *mut f32, pad: &mut Vec<f32>, sums: &mut Vec<f32>) {
            let g = self.g;
            let [_, c, h, w] = g.input;
            let [_, _, oh, ow] = g.output;
            let [kh, kw] = g.kernel;
            let ([sh, sw], [dh, dw], [ph, pw]) = (g.stride, g.dilation, g.pad);
            let tw = self.tw;
            let lanes = (c - 16 * self.cb).min(16);
            // Padded rows r0..r1 are the ones the band reads; input rows lo..hi land in them.
            let (r0, r1) = (self.rows.start * sh, (self.rows.end - 1) * sh + (kh - 1) * dh + 1);
            let (lo, hi) = (r0.saturating_sub(ph).min(h), r1.saturating_sub(ph).min(h));
            // 64-byte aligned, so every tap's load is one cache line. Kept from the last task:
            // only the padding is zeroed.
            let need = (r1 - r0) * tw * 16;
            if pad.len() < need + 16 {
                pad.resize(need + 16, 0.0);
            }
            let at = pad.as_ptr().align_offset(64);
            let buf = &mut pad[at..at + need];
            // Rows top..bottom hold input rows; the rest are padding.
            let top = (lo + ph).saturating_sub(r0).min(r1 - r0);
            let bottom = (hi + ph).saturating_sub(r0).clamp(top, r1 - r0);
            buf[..top * tw * 16].fill(0.0);
            buf[bottom * tw * 16..].fill(0.0);
            for row in buf[top * tw * 16..bottom * tw * 16].chunks_exact_mut(tw * 16) {
                row[..pw * 16].fill(0.0);
                row[(pw + w) * 16..].fill(0.0);
            }
            let planes: [*const f32; 16] = std::array::from_fn(|l| xs.as_ptr().wrapping_add((self.img * c + 16 * self.cb + l.min(lanes - 1)) * h * w));
            for y in lo..hi {
                let dst = buf.as_mut_ptr().wrapping_add(((y + ph - r0) * tw + pw) * 16);
                for x in (0..w).step_by(16) {
                    let valid = (w - x).min(16);
                    let mask = lane_mask(valid);
                    let mut rows = [_mm512_setzero_ps(); 16];
                    for &plane in &planes {
                        _mm_prefetch::<_MM_HINT_T0>(plane.wrapping_add(y * w + x + AHEAD) as *const i8);
                    }
                    for (l, r) in rows.iter_mut().enumerate() {
                        let m = if l < lanes { mask } else { 0 };
                        // SAFETY: the unmasked lanes read columns x..x+valid of row y of a plane
                        // of the block.
                        *r = unsafe { _mm512_maskz_loadu_ps(m, planes[l].add(y * w + x)) };
                    }
                    let cols = transpose(rows);
                    // SAFETY (both): row y + ph − r0 < r1 − r0, columns pw + x.. < pw + w ≤ tw.
                    if valid == 16 {
                        for (j, v) in cols.iter().enumerate() {
                            unsafe { _mm512_store_ps(dst.add((x + j) * 16), *v) };
                        }
                    } else {
                        for (j, v) in cols.iter().enumerate().take(valid) {
                            unsafe { _mm512_store_ps(dst.add((x + j) * 16), *v) };
                        }
                    }
                }
            }
            // Sums, `[position][16]`, for the band's positions.
            let len = self.rows.len() * ow;
            sums.clear();
            sums.resize(len.next_multiple_of(16) * 16, 0.0);
            // SAFETY: the block's sixteen biases.
            let bias = unsafe { _mm512_loadu_ps(init.as_ptr()) };
            let src = buf.as_ptr();
            for (i, oy) in self.rows.clone().enumerate() {
                let row = src.wrapping_add((oy * sh - r0) * tw * 16);
                let dst = sums.as_mut_ptr().wrapping_add(i * ow * 16);
                let mut ox = 0;
                // SAFETY (each): the taps of columns ox.. read inside the band's rows (see `sum`).
                while ox + RUN <= ow {
                    unsafe { sum::<RUN>(row, dst, ox, [kh, kw], [sw, dh, dw], tw, wts, bias, epilogue) };
                    ox += RUN;
                }
                if ox + 4 <= ow {
                    unsafe { sum::<4>(row, dst, ox, [kh, kw], [sw, dh, dw], tw, wts, bias, epilogue) };
                    ox += 4;
                }
                while ox < ow {
                    unsafe { sum::<1>(row, dst, ox, [kh, kw], [sw, dh, dw], tw, wts, bias, epilogue) };
                    ox += 1;
                }
            }
            // Back to the output planes, sixteen positions of sixteen channels at a time.
            let first = out.wrapping_add((self.img * c + 16 * self.cb) * oh * ow + self.rows.start * ow);
            for p in (0..len).step_by(16) {
                let valid = (len - p).min(16);
                // SAFETY: `sums` holds `len` rounded up to sixteen positions.
                let cols = transpose(std::array::from_fn(|k| unsafe { _mm512_loadu_ps(sums.as_ptr().add((p + k) * 16)) }));
                for (l, v) in cols.iter().take(lanes).enumerate() {
                    // SAFETY: channel 16·cb + l < c, positions within the band's rows.
                    unsafe { _mm512_mask_storeu_ps(first.add(l * oh * ow + p), lane_mask(valid), *v) };
                }
            }
        }
    }

    /// Outputs `ox..ox+K` of one row into `dst` (`[position][16]`), where `row` is the padded
    /// row of the output row's first tap.
    ///
    /// # Safety
    /// AVX-512 is present; the `kh` rows from `row` (`dh` apart) hold the columns the outputs'
    /// taps reach, `dst` room for the row's outputs.
    #[inline]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn sum<const K: usize>(row: *const f32, dst: *mut f32, ox: usize, [kh, kw]: [usize; 2], [sw, dh, dw]: [usize; 3], wp: usize, wts: &[f32], bias: __m512, epilogue: Option<Epilogue>) {
        let mut acc = [bias; K];
        for ki in 0..kh {
            let r = row.wrapping_add(ki * dh * wp * 16);
            for kj in 0..kw {
                // SAFETY: the caller's.
                let wv = unsafe { _mm512_loadu_ps(wts.as_ptr().add((ki * kw + kj) * 16)) };
                let x0 = r.wrapping_add((ox * sw + kj * dw) * 16);
                for (k, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(unsafe { _mm512_load_ps(x0.add(k * sw * 16)) }, wv, *a);
                }
            }
        }
        for (k, a) in acc.into_iter().enumerate() {
            // SAFETY: the caller's.
            unsafe { _mm512_storeu_ps(dst.add((ox + k) * 16), activate(epilogue, a)) };
        }
    }

    /// Rows `r[i][j]` to columns: `out[j][i] = r[i][j]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose(r: [__m512; 16]) -> [__m512; 16] {
        // Pairs of rows interleaved, then pairs of pairs: each 128-bit lane holds 4×4 blocks.
        let t: [__m512; 16] = std::array::from_fn(|i| {
            let (a, b) = (r[i & !1], r[i | 1]);
            if i % 2 == 0 { _mm512_unpacklo_ps(a, b) } else { _mm512_unpackhi_ps(a, b) }
        });
        let u: [__m512; 16] = std::array::from_fn(|i| {
            // Rows 4q..4q+4 from t[4q..4q+4]: (t0, t2) and (t1, t3).
            let base = i & !3;
            let (a, b) = (_mm512_castps_pd(t[base + (i % 4) / 2]), _mm512_castps_pd(t[base + 2 + (i % 4) / 2]));
            _mm512_castpd_ps(if i % 2 == 0 { _mm512_unpacklo_pd(a, b) } else { _mm512_unpackhi_pd(a, b) })
        });
        // 128-bit lanes: u[j] holds columns j, j+4, j+8, j+12 (mod 4) of rows 4⌊j/4⌋...+4.
        let v: [__m512; 16] = std::array::from_fn(|i| {
            let (j, half) = (i % 4 + (i / 8) * 8, i / 4 % 2);
            let (a, b) = (u[j], u[j + 4]);
            if half == 0 { _mm512_shuffle_f32x4::<0x88>(a, b) } else { _mm512_shuffle_f32x4::<0xdd>(a, b) }
        });
        std::array::from_fn(|j| {
            let (i, half) = (j % 8, j / 8);
            let (a, b) = (v[i], v[i + 8]);
            if half == 0 { _mm512_shuffle_f32x4::<0x88>(a, b) } else { _mm512_shuffle_f32x4::<0xdd>(a, b) }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::avx512::test_values as rand;

    /// `out[n, ch, oy, ox] = bias[ch] + Σ w[ch, ki, kj] · x[n, ch, oy·sh + ki·dh − ph, ox·sw + kj·dw − pw]`.
    fn reference(xs: &[f32], ws: &[f32], bias: &[f32], g: &ConvGeometry) -> Vec<f32> {
        let [n, c, h, w] = g.input;
        let [_, _, oh, ow] = g.output;
        let [kh, kw] = g.kernel;
        let mut out = vec![0f32; n * c * oh * ow];
        for (p, o) in out.chunks_mut(oh * ow).enumerate() {
            let ch = p % c;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = bias[ch];
                    for ki in 0..kh {
                        for kj in 0..kw {
                            let y = (oy * g.stride[0] + ki * g.dilation[0]) as isize - g.pad[0] as isize;
                            let x = (ox * g.stride[1] + kj * g.dilation[1]) as isize - g.pad[1] as isize;
                            if (0..h as isize).contains(&y) && (0..w as isize).contains(&x) {
                                s += ws[(ch * kh + ki) * kw + kj] * xs[(p * h + y as usize) * w + x as usize];
                            }
                        }
                    }
                    o[oy * ow + ox] = s;
                }
            }
        }
        out
    }

    /// Against the definition: strides 1 and 2, 3×3 and 5×5 taps, a dilation, pads that leave
    /// trailing rows unread, channel counts off sixteen, planes narrower than a run of outputs,
    /// batches whose tasks split into bands, and each activation.
    #[test]
    fn depthwise_channels_match_the_definition() {
        let mut seed = 5u32;
        // (n, c, h, w, k, stride, dilation, pad)
        for (n, c, h, w, k, s, d, p) in [
            (2, 16, 16, 16, 5, 2, 1, 2),
            (1, 24, 9, 7, 3, 1, 1, 1),
            (3, 40, 8, 8, 5, 1, 1, 2),
            (1, 8, 33, 20, 3, 2, 1, 1),
            (1, 18, 64, 64, 3, 2, 1, 1),
            (2, 17, 12, 30, 3, 1, 2, 2),
            (1, 16, 5, 6, 5, 2, 1, 0),
            (1, 32, 6, 40, 3, 2, 1, 0),
        ] {
            let (oh, ow) = ((h + 2 * p - d * (k - 1) - 1) / s + 1, (w + 2 * p - d * (k - 1) - 1) / s + 1);
            let g = ConvGeometry {
                input: [n, c, h, w],
                output: [n, c, oh, ow],
                kernel: [k, k],
                stride: [s, s],
                dilation: [d, d],
                pad: [p, p],
                groups: c,
            };
            let (xs, ws, bias) = (rand(&mut seed, n * c * h * w), rand(&mut seed, c * k * k), rand(&mut seed, c));
            let linear = reference(&xs, &ws, &bias, &g);
            for epilogue in [None, Some(Epilogue::Relu), Some(Epilogue::HardSwish), Some(Epilogue::Clip(-0.1, 0.2))] {
                let mut want = linear.clone();
                if let Some(e) = epilogue {
                    e.apply(&mut want);
                }
                let mut got = vec![f32::NAN; want.len()];
                if conv(&xs, &ws, Some(&bias), epilogue, &mut got, &g) {
                    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, |a, d| if d.is_nan() { f32::INFINITY } else { a.max(d) });
                    assert!(worst < 1e-5, "{n}×{c}×{h}×{w}, {k}×{k} stride {s} dilation {d} pad {p}, {epilogue:?}: off by {worst}");
                }
            }
        }
    }
}

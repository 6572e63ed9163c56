//! Stride-1 dense convolutions over many channels (DB's 3×3 FPN and head convs: 256 → 64
//! channels at 256×256, 19 GFLOP each) as a register-blocked direct convolution on AVX-512. Each
//! step of the inner loop loads two 16-float input vectors and broadcasts eight weights into
//! sixteen accumulators (8 output channels × 32 positions; 6 × 64 measured no faster), so the FMA
//! units rather than the loads set the pace, and the input is copied once (zero-padded) instead of
//! once per tap as the gemm-per-tap route packs it (DB's two big convs 56 → 47 ms each). Other
//! CPUs keep that route (`cpu_kernels::shifted_taps`).

use super::cpu_kernels::{ConvGeometry, Epilogue};

/// Output channels and output positions (`NV` AVX-512 vectors) per register block.
#[cfg(target_arch = "x86_64")]
const OC: usize = 8;
#[cfg(target_arch = "x86_64")]
const NV: usize = 2;
#[cfg(target_arch = "x86_64")]
const PX: usize = 16 * NV;

/// Runs the convolution when this CPU has AVX-512 and the conv is dense, stride 1 and undilated;
/// false leaves it to the caller.
pub fn conv(xs: &[f32], ws: &[f32], bias: Option<&[f32]>, epilogue: Option<Epilogue>, out: &mut [f32], g: &ConvGeometry) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && g.groups == 1 && g.stride == [1, 1] && g.dilation == [1, 1] {
        avx512::run(xs, ws, bias, epilogue, out, g);
        return true;
    }
    let _ = (xs, ws, bias, epilogue, out, g);
    false
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use rayon::prelude::*;

    use super::{ConvGeometry, Epilogue, NV, OC, PX};
    use crate::ops::cpu_kernels::SendPtr;

    pub fn run(xs: &[f32], ws: &[f32], bias: Option<&[f32]>, epilogue: Option<Epilogue>, out: &mut [f32], g: &ConvGeometry) {
        let [n, c, h, wd] = g.input;
        let [_, m, oh, ow] = g.output;
        let [kh, kw] = g.kernel;
        let [ph, pw] = g.pad;
        let taps = kh * kw;
        let blocks = ow.div_ceil(PX);
        // Padded rows: every tap of every output row; padded width: every position of every block.
        let (hp, wp) = (oh + kh - 1, blocks * PX + kw - 1);
        // Weights as [M/OC][kh][C][kw][OC], zeros past M, so a block's broadcasts read in order.
        let mblocks = m.div_ceil(OC);
        let mut wk = vec![0f32; mblocks * c * taps * OC];
        for j in 0..m {
            for ci in 0..c {
                for ki in 0..kh {
                    for kj in 0..kw {
                        wk[(((j / OC * kh + ki) * c + ci) * kw + kj) * OC + j % OC] = ws[((j * c + ci) * kh + ki) * kw + kj];
                    }
                }
            }
        }
        // The padded input as [Hp][C][Wp]: a block walks the channels of a row at a constant stride
        // the prefetchers follow (as [C][Hp][Wp] the channels are a plane apart and it stalls).
        let mut xpad = vec![0f32; hp * c * wp];
        // Each task writes its own output row of every channel.
        let out_ptr = SendPtr(out.as_mut_ptr());
        for img in 0..n {
            let x = &xs[img * c * h * wd..(img + 1) * c * h * wd];
            xpad.par_chunks_mut(c * wp).enumerate().for_each(|(r, rows)| {
                rows.fill(0.0);
                let Some(ir) = (r as isize - ph as isize).try_into().ok().filter(|&ir: &usize| ir < h) else { return };
                // The input columns the taps reach.
                let cols = wd.min(wp - pw);
                for (ci, row) in rows.chunks_mut(wp).enumerate() {
                    row[pw..pw + cols].copy_from_slice(&x[(ci * h + ir) * wd..(ci * h + ir) * wd + cols]);
                }
            });
            let xpad = &xpad;
            let wk = &wk;
            (0..oh).into_par_iter().for_each(|oy| {
                for mb in 0..mblocks {
                    let init: [f32; OC] = std::array::from_fn(|o| bias.and_then(|b| b.get(mb * OC + o)).copied().unwrap_or(0.0));
                    let channels = OC.min(m - mb * OC);
                    for xb in 0..blocks {
                        let x0 = xb * PX;
                        let valid = PX.min(ow - x0);
                        // SAFETY: loads stay inside `xpad` (rows `oy..oy + kh` < hp, columns
                        // `x0 + kj .. x0 + kj + PX` ≤ wp) and `wk`'s block `mb`; stores write
                        // `valid` floats of row `oy` of channels `mb·OC ..` of image `img`, which
                        // only this task writes.
                        unsafe {
                            let acc = block(xpad.as_ptr().add(oy * c * wp + x0), wp, c, kh, kw, wk.as_ptr().add(mb * c * taps * OC), init);
                            for (o, v) in acc.iter().enumerate().take(channels) {
                                let dst = out_ptr.get().add(((img * m + mb * OC + o) * oh + oy) * ow + x0);
                                store(dst, v, valid);
                                if let Some(e) = epilogue {
                                    e.apply(std::slice::from_raw_parts_mut(dst, valid));
                                }
                            }
                        }
                    }
                }
            });
        }
    }

    /// The OC × PX sums of one block: `x` points at row `oy`, channel 0, column `x0` of the padded
    /// input (channels `wp` floats apart, rows `C·wp`), `w` at the block's packed weights.
    #[target_feature(enable = "avx512f")]
    unsafe fn block(x: *const f32, wp: usize, c: usize, kh: usize, kw: usize, w: *const f32, init: [f32; OC]) -> [[__m512; NV]; OC] {
        let mut acc: [[__m512; NV]; OC] = init.map(|b| [_mm512_set1_ps(b); NV]);
        for ki in 0..kh {
            for ci in 0..c {
                // SAFETY: inside the caller's bounds (see `run`).
                let row = unsafe { x.add((ki * c + ci) * wp) };
                let wrow = unsafe { w.add((ki * c + ci) * kw * OC) };
                // The row four channels on, whose stride the hardware prefetchers follow late.
                let ahead = row.wrapping_add(4 * wp);
                for i in 0..=NV {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(16 * i) as *const i8);
                }
                for kj in 0..kw {
                    let v: [__m512; NV] = std::array::from_fn(|i| unsafe { _mm512_loadu_ps(row.add(kj + 16 * i)) });
                    let wt = unsafe { wrow.add(kj * OC) };
                    for (o, a) in acc.iter_mut().enumerate() {
                        let b = _mm512_set1_ps(unsafe { *wt.add(o) });
                        for i in 0..NV {
                            a[i] = _mm512_fmadd_ps(b, v[i], a[i]);
                        }
                    }
                }
            }
        }
        acc
    }

    /// Stores the first `valid` of the `PX` floats in `v` at `dst`.
    #[target_feature(enable = "avx512f")]
    unsafe fn store(dst: *mut f32, v: &[__m512; NV], valid: usize) {
        for (i, &x) in v.iter().enumerate().take(valid.div_ceil(16)) {
            let n = valid - 16 * i;
            let mask = if n >= 16 { 0xffff } else { ((1u32 << n) - 1) as u16 };
            // SAFETY: the caller owns `valid` floats at `dst`.
            unsafe { _mm512_mask_storeu_ps(dst.add(16 * i), mask, x) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct convolution against the gemm-per-tap route it replaces on AVX-512 CPUs, so that
    /// both stay tested on any machine.
    #[test]
    fn direct_conv_matches_gemm_per_tap() {
        let g = ConvGeometry {
            input: [2, 64, 9, 37],
            output: [2, 11, 9, 36],
            kernel: [3, 2],
            stride: [1, 1],
            dilation: [1, 1],
            pad: [1, 0],
            groups: 1,
        };
        let mut seed = 7u32;
        let mut rand = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                    (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                })
                .collect()
        };
        let (xs, ws, bias) = (rand(2 * 64 * 9 * 37), rand(11 * 64 * 3 * 2), rand(11));
        let len = 2 * 11 * 9 * 36;
        let mut want = vec![0f32; len];
        super::super::cpu_kernels::shifted_taps(&xs, &ws, Some(&bias), Some(Epilogue::Relu), &mut want, &g);
        let mut got = vec![0f32; len];
        if conv(&xs, &ws, Some(&bias), Some(Epilogue::Relu), &mut got, &g) {
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-4, "off by {worst}");
        }
    }
}

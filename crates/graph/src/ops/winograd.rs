//! 3×3 stride-1 convolutions as Winograd F(2×2, 3×3) on CPUs with AVX-512: each 2×2 block of
//! outputs comes from a 4×4 block of inputs through sixteen products instead of thirty-six, so
//! the multiply-adds, which bound the direct convolution in `avx512`, drop by 2.25×. Per output
//! channel and block: `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`, the sixteen element-wise products summed
//! over input channels as sixteen small matrix products, `M[k] = U[k] · V[k]`, run by the direct
//! convolution's register block. The weights' transform `U = G g Gᵀ` is made once per plan.
//!
//! A task takes a band of rows of 2×2 tiles (across images where the planes are small): it pads
//! the input rows they read, then for sixty-four tiles at a time transforms their 4×4 blocks
//! (`V`, sixteen tiles per vector, de-interleaved from the rows in registers), sums `M` for each
//! group of output channels and transforms the sums straight into the output rows with the bias,
//! shortcut and activation. F(2×2, 3×3)'s transforms hold only ±1 and ½, so its results stay
//! within ~1e-5 of the direct sum's at unit scale (measured on ResNet's and DB's shapes; larger
//! tiles, F(4×4, 3×3), trade that accuracy for fewer products).

use super::cpu_kernels::{ConvGeometry, Epilogue, PackedWeights};

/// Runs the convolution when this CPU has AVX-512 and the conv is a dense, undilated 3×3 with
/// stride 1; false (nothing written) otherwise. `residual` (the output's size) is added before
/// the epilogue; `packed` keeps the transformed weights across calls.
#[allow(clippy::too_many_arguments)]
pub fn conv(
    xs: &[f32],
    ws: &[f32],
    bias: Option<&[f32]>,
    epilogue: Option<Epilogue>,
    residual: Option<&[f32]>,
    out: &mut [f32],
    g: &ConvGeometry,
    packed: Option<&PackedWeights>,
) -> bool {
    let [n, c, h, w] = g.input;
    let [_, m, oh, ow] = g.output;
    let fits = g.groups == 1 && g.kernel == [3, 3] && g.stride == [1, 1] && g.dilation == [1, 1];
    let shapes = xs.len() == n * c * h * w
        && ws.len() == m * c * 9
        && out.len() == n * m * oh * ow
        && residual.is_none_or(|r| r.len() == out.len())
        && bias.is_none_or(|b| b.len() == m)
        && oh * ow * c > 0;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && fits && shapes {
        // SAFETY: AVX-512 is present and the slices have the geometry's sizes (checked above).
        unsafe { avx512::run(xs, ws, bias, epilogue, residual, out, g, packed) };
        return true;
    }
    let _ = (xs, ws, bias, epilogue, residual, out, packed, fits, shapes);
    false
}

/// Whether rows of output `ow` wide fill at least three quarters of the vectors of tiles (each
/// row of tiles is padded to whole vectors of sixteen: an 8-wide plane would fill a quarter).
pub fn fills_lanes(ow: usize) -> bool {
    let tw = ow.div_ceil(2);
    4 * tw >= 3 * tw.next_multiple_of(16)
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use rayon::prelude::*;

    use super::{ConvGeometry, Epilogue, PackedWeights};
    use crate::ops::avx512::{WIDE_NV, WIDE_OC, block, even_odd, store};
    use crate::ops::cpu_kernels::SendPtr;

    /// Tiles per register block (sixteen per vector).
    const PX: usize = 16 * WIDE_NV;
    /// Output channels per pass over a block of tiles: their sixteen sums for sixty-four tiles
    /// (256 KB) stay in L2 until the output transform reads them.
    const GROUP: usize = 16 * WIDE_OC;
    /// Floats between the sums of consecutive `k`: one cache line past a multiple of 4 KB, so that
    /// the output transform's sixteen reads fall in different L1 sets (16 KB apart they share
    /// one).
    const SK: usize = GROUP * PX + 16;
    /// Padded input rows per task, in floats (512 KB).
    const SLAB_FLOATS: usize = 1 << 17;

    thread_local! {
        /// Each thread's padded input rows, V and sums, kept across tasks and calls: rayon makes
        /// a `for_each_init` state per split, and fresh buffers this size cost page faults.
        static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
    }

    /// `U[k] = (G g Gᵀ)[k]` for every output channel `j` and input channel `ci`, laid out
    /// `[16][M/OC][C][OC]` (zeros past `M`) as the register block reads its weights.
    fn pack(ws: &[f32], m: usize, c: usize) -> Vec<f32> {
        let mblocks = m.div_ceil(WIDE_OC);
        let per_k = mblocks * c * WIDE_OC;
        let mut u = vec![0f32; 16 * per_k];
        for j in 0..m {
            for ci in 0..c {
                let g = &ws[(j * c + ci) * 9..(j * c + ci + 1) * 9];
                // G g (4×3), then (G g) Gᵀ (4×4).
                let gg: [[f32; 3]; 4] = [
                    [g[0], g[1], g[2]],
                    std::array::from_fn(|q| 0.5 * (g[q] + g[3 + q] + g[6 + q])),
                    std::array::from_fn(|q| 0.5 * (g[q] - g[3 + q] + g[6 + q])),
                    [g[6], g[7], g[8]],
                ];
                for (r, [a, b, e]) in gg.into_iter().enumerate() {
                    for (q, v) in [a, 0.5 * (a + b + e), 0.5 * (a - b + e), e].into_iter().enumerate() {
                        u[(r * 4 + q) * per_k + (j / WIDE_OC * c + ci) * WIDE_OC + j % WIDE_OC] = v;
                    }
                }
            }
        }
        u
    }

    /// See [`super::conv`].
    ///
    /// # Safety
    /// AVX-512 is present; the slices have the sizes `g` gives them.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run(
        xs: &[f32],
        ws: &[f32],
        bias: Option<&[f32]>,
        epilogue: Option<Epilogue>,
        residual: Option<&[f32]>,
        out: &mut [f32],
        g: &ConvGeometry,
        packed: Option<&PackedWeights>,
    ) {
        let [n, c, h, wd] = g.input;
        let [_, m, oh, ow] = g.output;
        let [ph, pw] = g.pad;
        // Tiles down and across; each row of tiles padded to whole vectors.
        let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
        let tw_pad = tw.next_multiple_of(16);
        // Rows of tiles per task, counted over the whole batch (a task's rows may span images,
        // so small planes still fill the register block): at least one register block of
        // tiles, and as many more as keep the padded rows within `SLAB_FLOATS` (each run of rows
        // in one image reads two input rows past its own), while every thread gets a few tasks.
        // A row is 2·tw_pad + 2 wide: a vector of tiles reads 34 columns from its first.
        let wp = 2 * tw_pad + 2;
        let fill = (SLAB_FLOATS / (c * wp)).saturating_sub(2) / 2;
        let spread = (n * th).div_ceil(4 * rayon::current_num_threads());
        let band = fill.min(spread).max(PX.div_ceil(tw_pad)).clamp(1, n * th);
        let bands = (n * th).div_ceil(band);
        let mblocks = m.div_ceil(WIDE_OC);
        let per_k = mblocks * c * WIDE_OC;
        // Floats between V's `k` (padded as `SK`).
        let vk = c * PX + 16;
        let fresh;
        let u = match packed {
            Some(p) => p.get_or_pack(|| pack(ws, m, c)),
            None => {
                fresh = pack(ws, m, c);
                &fresh
            }
        };
        let out_ptr = SendPtr(out.as_mut_ptr());
        (0..bands).into_par_iter().for_each(|task| {
            SCRATCH.with_borrow_mut(|(slab, v, sums)| {
                sums.resize(16 * SK, 0.0);
                let (r0, r1) = (task * band, ((task + 1) * band).min(n * th));
                let rows = r1 - r0;
                // Padded input rows `[row][C][wp]`, a run for each image the task's rows are in:
                // rows 2·ty − ph .. 2·ty + 4 − ph for its rows of tiles `ty`. Every float of the
                // rows read is written here, zeros around the input. `at[r]`: the image, row of
                // tiles and first slab row of the task's row `r`.
                let mut at = Vec::with_capacity(rows);
                let mut used = 0;
                let mut r = r0;
                while r < r1 {
                    let (img, ty0) = (r / th, r % th);
                    let run = (th - ty0).min(r1 - r);
                    let need = (2 * run + 2) * c * wp;
                    if slab.len() < used + need {
                        slab.resize(used + need, 0.0);
                    }
                    let cols = wd.min(wp - pw);
                    let x = &xs[img * c * h * wd..(img + 1) * c * h * wd];
                    for (sr, chans) in slab[used..used + need].chunks_exact_mut(c * wp).enumerate() {
                        let Some(ir) = (2 * ty0 + sr).checked_sub(ph).filter(|&ir| ir < h) else {
                            chans.fill(0.0);
                            continue;
                        };
                        for (ci, row) in chans.chunks_exact_mut(wp).enumerate() {
                            row[..pw].fill(0.0);
                            row[pw..pw + cols].copy_from_slice(&x[(ci * h + ir) * wd..(ci * h + ir) * wd + cols]);
                            row[pw + cols..].fill(0.0);
                        }
                    }
                    at.extend((0..run).map(|i| (img, ty0 + i, used + 2 * i * c * wp)));
                    used += need;
                    r += run;
                }
                let tiles = rows * tw_pad;
                for t0 in (0..tiles).step_by(PX) {
                    // V `[16][C][PX]` for this block of tiles, `r·tw_pad + tx` in the band; zeros
                    // in the lanes past the band's last tile (the register block sums them too).
                    let live = PX.min(tiles - t0);
                    v.resize(16 * vk, 0.0);
                    if live < PX {
                        (0..16 * c).for_each(|row| v[row / c * vk + row % c * PX..][live..PX].fill(0.0));
                    }
                    for ci in 0..c {
                        for q in 0..live / 16 {
                            let (r, tx) = ((t0 + 16 * q) / tw_pad, (t0 + 16 * q) % tw_pad);
                            // SAFETY: reads the four slab rows from row `r`'s first (inside its
                            // run) of channel `ci`, columns 2·tx .. 2·tx + 34 ≤ wp; writes lanes
                            // 16q..16q+16 of V's rows `ci`.
                            unsafe { input_tiles(slab.as_ptr().add(at[r].2 + ci * wp + 2 * tx), c * wp, v.as_mut_ptr().add(ci * PX + 16 * q), vk) };
                        }
                    }
                    for g0 in (0..mblocks).step_by(GROUP / WIDE_OC) {
                        let g1 = (g0 + GROUP / WIDE_OC).min(mblocks);
                        for k in 0..16 {
                            for mb in g0..g1 {
                                // SAFETY: the block reads V[k]'s C rows of PX lanes and U[k]'s
                                // block `mb`; the sums land in `sums`' slot.
                                unsafe {
                                    let acc = block::<WIDE_OC, WIDE_NV, 1>([v.as_ptr().add(k * vk)], PX, c, 0..1, &[0], u.as_ptr().add(k * per_k + mb * c * WIDE_OC), [0.0; WIDE_OC]);
                                    for (o, a) in acc.iter().enumerate() {
                                        let dst = sums.as_mut_ptr().add(k * SK + ((mb - g0) * WIDE_OC + o) * PX);
                                        for (i, &x) in a.iter().enumerate() {
                                            _mm512_storeu_ps(dst.add(16 * i), x);
                                        }
                                    }
                                }
                            }
                        }
                        for j in g0 * WIDE_OC..(g1 * WIDE_OC).min(m) {
                            let b = bias.map_or(0.0, |b| b[j]);
                            for q in 0..live / 16 {
                                let (r, tx) = ((t0 + 16 * q) / tw_pad, (t0 + 16 * q) % tw_pad);
                                if tx >= tw {
                                    continue;
                                }
                                let (img, ty, _) = at[r];
                                let (oy, x0) = (2 * ty, 2 * tx);
                                let valid = (ow - x0).min(32);
                                // SAFETY: `sums` holds channel `j`'s sixteen rows of PX tiles;
                                // the stores write `valid` floats of output rows oy and oy + 1
                                // (< oh) of channel `j`, which only this task writes.
                                unsafe {
                                    let [top, bottom] = output_tiles(sums.as_ptr().add((j - g0 * WIDE_OC) * PX + 16 * q), SK, b);
                                    for (dy, row) in [top, bottom].iter().enumerate().take(oh - oy) {
                                        let at = ((img * m + j) * oh + oy + dy) * ow + x0;
                                        store(out_ptr.get().add(at), row, valid, residual.map(|r| r[at..at + valid].as_ptr()), epilogue);
                                    }
                                }
                            }
                        }
                    }
                }
            })
        });
    }

    /// `Bᵀ d B` for sixteen consecutive tiles: `src` at their first input row and column (rows
    /// `row` floats apart), the sixteen results stored `k·stride` floats apart from `dst`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn input_tiles(src: *const f32, row: usize, dst: *mut f32, stride: usize) {
        // d[i][j]: column j of row i of each tile (input column 2t + j of tile t).
        let d: [[__m512; 4]; 4] = std::array::from_fn(|i| {
            // SAFETY: the caller's rows hold 34 floats from `src`.
            let (p, q) = unsafe { (even_odd(src.add(i * row)), even_odd(src.add(i * row + 2))) };
            [p[0], p[1], q[0], q[1]]
        });
        // Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]], along each row then down.
        let across = |[d0, d1, d2, d3]: [__m512; 4]| [_mm512_sub_ps(d0, d2), _mm512_add_ps(d1, d2), _mm512_sub_ps(d2, d1), _mm512_sub_ps(d1, d3)];
        let e = d.map(across);
        for j in 0..4 {
            let col = across([e[0][j], e[1][j], e[2][j], e[3][j]]);
            for (i, v) in col.into_iter().enumerate() {
                // SAFETY: the caller gives sixteen rows `stride` apart.
                unsafe { _mm512_storeu_ps(dst.add((i * 4 + j) * stride), v) };
            }
        }
    }

    /// `Aᵀ M A + bias` for sixteen consecutive tiles, `M[k]` read `stride` floats apart from
    /// `src`: the two output rows, each as two vectors (32 columns, interleaved back).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn output_tiles(src: *const f32, stride: usize, bias: f32) -> [[__m512; 2]; 2] {
        // SAFETY: the caller gives sixteen rows of sixteen floats, `stride` apart.
        let mk = |k: usize| unsafe { _mm512_loadu_ps(src.add(k * stride)) };
        // Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]], down the rows then along.
        let down = |[m0, m1, m2, m3]: [__m512; 4]| [_mm512_add_ps(_mm512_add_ps(m0, m1), m2), _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3)];
        let s: [[__m512; 2]; 4] = std::array::from_fn(|j| down([mk(j), mk(4 + j), mk(8 + j), mk(12 + j)]));
        let b = _mm512_set1_ps(bias);
        let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        std::array::from_fn(|i| {
            let [y0, y1] = down([s[0][i], s[1][i], s[2][i], s[3][i]]);
            let (y0, y1) = (_mm512_add_ps(y0, b), _mm512_add_ps(y1, b));
            [_mm512_permutex2var_ps(y0, lo, y1), _mm512_permutex2var_ps(y0, hi, y1)]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::avx512::test_values as rand;

    /// Against the gemm-per-tap route on odd and even sizes, pads 0–2 (outputs narrower, as wide
    /// and wider than the input), rows of tiles that fill several vectors or a fraction of one,
    /// batches, output channels not a multiple of a group, a shortcut and an activation.
    #[test]
    fn winograd_matches_gemm_per_tap() {
        let mut seed = 11u32;
        for (n, c, m, h, w, pad) in
            [(1, 8, 5, 9, 71, 1), (2, 3, 37, 5, 13, 0), (1, 16, 40, 34, 33, 1), (3, 5, 4, 2, 2, 2), (1, 4, 9, 1, 40, 1), (2, 7, 33, 12, 130, 1)]
        {
            let (oh, ow) = (h + 2 * pad - 2, w + 2 * pad - 2);
            let g = ConvGeometry {
                input: [n, c, h, w],
                output: [n, m, oh, ow],
                kernel: [3, 3],
                stride: [1, 1],
                dilation: [1, 1],
                pad: [pad, pad],
                groups: 1,
            };
            let (xs, ws, bias) = (rand(&mut seed, n * c * h * w), rand(&mut seed, m * c * 9), rand(&mut seed, m));
            let len = n * m * oh * ow;
            let shortcut = rand(&mut seed, len);
            let mut linear = vec![0f32; len];
            super::super::cpu_kernels::shifted_taps(&xs, &ws, Some(&bias), None, &mut linear, &g);
            let kept = PackedWeights::default();
            for (residual, epilogue) in [(None, None), (Some(&shortcut[..]), Some(Epilogue::Relu)), (None, Some(Epilogue::HardSwish))] {
                let want: Vec<f32> = linear
                    .iter()
                    .enumerate()
                    .map(|(i, &y)| {
                        let mut v = [y + residual.map_or(0.0, |r| r[i])];
                        if let Some(e) = epilogue {
                            e.apply(&mut v);
                        }
                        v[0]
                    })
                    .collect();
                let mut got = vec![f32::NAN; len];
                if conv(&xs, &ws, Some(&bias), epilogue, residual, &mut got, &g, Some(&kept)) {
                    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, |a, d| if d.is_nan() { f32::INFINITY } else { a.max(d) });
                    assert!(worst < 1e-4, "{n}×{c}×{h}×{w} → {m}, pad {pad}: off by {worst}");
                }
            }
        }
    }
}

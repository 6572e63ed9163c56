//! Register-blocked kernels for CPUs with AVX-512, where they beat the `gemm` crate's routes on
//! docTR's shapes. Each step of an inner loop loads two 16-float vectors and broadcasts eight
//! values into sixteen accumulators (8 rows × 32 columns of the result; 6 × 64 measured no
//! faster), so the FMA units rather than the loads set the pace, and each result is stored once.
//! - [`conv`]: stride-1 and stride-2 dense convolutions over many channels (DB's 3×3 FPN and head convs: 256 →
//!   64 channels at 256×256, 19 GFLOP each), each group of output rows zero-padding the input rows
//!   it reads once instead of once per tap as the gemm-per-tap route packs them (DB's two big
//!   convs 56 → 47 ms each).
//! - [`tap_rows`]: convolutions whose taps read contiguous runs: shallow 1×1 convs and image stems.
//! - [`depthwise_masked`]: depthwise convolutions over small planes, as masked loads straight
//!   from the input (or its row phases).
//! - [`depthwise_strided`]: depthwise convolutions strided by two, each tap's strided columns
//!   split out of two loads in registers.
//!
//! Other CPUs keep the `gemm` routes in `cpu_kernels`.

use super::cpu_kernels::{ConvGeometry, Epilogue, PackedWeights};

/// Register blocks: output channels × output positions (in AVX-512 vectors), 16 sums. Rows of
/// at least `WIDE` positions take 4 × 64, which needs one broadcast weight per four multiply-adds
/// instead of one per two as 8 × 32 does: on CPUs with two 512-bit FMA units the broadcasts
/// are what limits the latter (LinkNet's 3×3 convs at 256×256, 13.1 → 11.9 ms; its 7×7 stem
/// 18.8 → 13.8). On narrower rows 4 × 64 would leave half its lanes idle (ResNet's last stage
/// at 1024×1024, 32 wide: 14.4 → 23.5 ms), so [`conv`] spreads its four vectors over two or four
/// rows and [`tap_rows`] keeps 8 × 32.
const WIDE: usize = 64;
pub(super) const WIDE_OC: usize = 4;
pub(super) const WIDE_NV: usize = 4;
const NARROW_OC: usize = 8;
const NARROW_NV: usize = 2;
/// [`tap_rows`] copies the taps' runs for up to `MAX_CHUNK_BLOCKS` register blocks of positions,
/// at most `PANEL_FLOATS` floats, then sums each block of output channels over all of them, so
/// its stores run along a few output planes at a time rather than across all of them.
const PANEL_FLOATS: usize = 8192;
const MAX_CHUNK_BLOCKS: usize = 16;

/// Runs the convolution when this CPU has AVX-512 and the conv is dense, stride 1 or 2 and undilated;
/// false leaves it to the caller. `residual` (the output's size) is added before the epilogue;
/// `packed` keeps the packed weights across calls.
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
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && g.groups == 1 && (g.stride == [1, 1] || g.stride == [2, 2]) && g.dilation == [1, 1] {
        // Four channels × four vectors of positions, the vectors on one, two or four output rows;
        // narrow rows take the same row of two or four images where the batch has them.
        let n = g.input[0];
        match g.output[3] {
            w if w >= WIDE => avx512::run::<WIDE_OC, WIDE_NV, 1>(xs, ws, bias, epilogue, residual, out, g, false, packed),
            w if w > 16 => avx512::run::<WIDE_OC, WIDE_NV, 2>(xs, ws, bias, epilogue, residual, out, g, n >= 2, packed),
            _ => avx512::run::<WIDE_OC, WIDE_NV, 4>(xs, ws, bias, epilogue, residual, out, g, n >= 4, packed),
        }
        return true;
    }
    let _ = (xs, ws, bias, epilogue, residual, out, g, packed);
    false
}

/// Whether [`conv`]'s vectors are at least three quarters full on rows `ow` wide. Below that a
/// batch of small planes runs faster as one gemm over the batch (256 channels at 8×8, batch 64:
/// 20.4 ms this way, 13.2 as a gemm; at 8×25, 128 channels: 10.3 against 12.7).
pub fn fills_lanes(ow: usize) -> bool {
    let px = match ow {
        w if w >= WIDE => 64,
        w if w > 16 => 32,
        _ => 16,
    };
    4 * ow >= 3 * ow.next_multiple_of(px)
}

/// Runs a 1×1, stride-1, unpadded dense convolution (MobileNet's expansions and projections) as
/// [`tap_rows`] with one tap per input channel, a run of positions per task; false (nothing
/// written) where the CPU lacks AVX-512.
pub fn pointwise(xs: &[f32], ws: &[f32], bias: Option<&[f32]>, epilogue: Option<Epilogue>, out: &mut [f32], g: &ConvGeometry) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && g.groups == 1 && g.kernel == [1, 1] && g.stride == [1, 1] && g.pad == [0, 0] {
        use rayon::prelude::*;
        let [n, c, _, _] = g.input;
        let [_, m, oh, ow] = g.output;
        let plane = oh * ow;
        let packed = Packed::new(ws, bias, m, c, plane);
        let offs: Vec<usize> = (0..c).map(|ci| ci * plane).collect();
        // Runs of whole register blocks: a few tasks per thread even for one small image.
        let px = packed.px();
        let blocks = plane.div_ceil(px);
        let span = blocks.div_ceil((4 * rayon::current_num_threads()).div_ceil(n)).max(1) * px;
        let runs = plane.div_ceil(span);
        let out_ptr = crate::ops::cpu_kernels::SendPtr(out.as_mut_ptr());
        (0..n * runs).into_par_iter().for_each_init(Vec::new, |panel, t| {
            let (img, run) = (t / runs, t % runs);
            let (p0, p1) = (run * span, ((run + 1) * span).min(plane));
            // SAFETY: positions `p0..p1` of image `img`'s output planes belong to this task alone.
            let mut outs: Vec<&mut [f32]> = (0..m)
                .map(|j| unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add((img * m + j) * plane + p0), p1 - p0) })
                .collect();
            let src = &xs[img * c * plane + p0..(img + 1) * c * plane];
            tap_rows(src, &offs, 0, p1 - p0, 0..1, &packed, epilogue, &mut outs, panel);
        });
        return true;
    }
    let _ = (xs, ws, bias, epilogue, out, g);
    false
}

/// Depthwise convolutions over small output planes as wide as their input (MobileNet's stride-1
/// layers at 8×8, CRNN's flattened rows, strided down their height only): output `o` of a plane
/// reads `o + Δₜ` through tap `t`, so sixteen consecutive outputs take one load per tap, the
/// lanes whose tap falls in the padding (or past the plane) masked off. Stride-1 convs read the
/// input as it is; those strided down the height read its row phases (`phase[q][i] = row
/// i·sh + q`), copied once per plane without padding. No padded copy and no columns computed and
/// dropped, which on 8×8 planes are most of the work of the phase route in `cpu_kernels`. The
/// masks depend only on the geometry and are made once. False (nothing written) where the CPU
/// lacks AVX-512 or the conv is not of this kind. (Strided along the width, measured slower than
/// the phase route even with the columns de-interleaved in registers: 288 channels, 16×16 → 8×8,
/// 5×5 taps, 2.2 ms against 2.0.)
pub fn depthwise_masked(xs: &[f32], ws: &[f32], bias: Option<&[f32]>, epilogue: Option<Epilogue>, out: &mut [f32], g: &ConvGeometry) -> bool {
    let [n, c, h, w] = g.input;
    let [_, m, oh, ow] = g.output;
    let [kh, kw] = g.kernel;
    let sh = g.stride[0];
    // Lanes run along whole rows, so an output row must be an input row's width.
    let fits = g.stride[1] == 1 && ow == w && sh > 0;
    let shapes = g.groups == c && m == c && oh * ow > 0 && xs.len() == n * c * h * w && out.len() == n * c * oh * ow && ws.len() == c * kh * kw;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && fits && shapes {
        use rayon::prelude::*;
        let plane = oh * ow;
        let blocks = plane.div_ceil(16);
        // Rows per phase.
        let hq = h.div_ceil(sh);
        let copy = sh > 1;
        // Per live tap: its offset `Δₜ` (in the phases) and one mask per block of sixteen outputs.
        let (mut live, mut deltas, mut masks) = (vec![], vec![], vec![]);
        for ki in 0..kh {
            for kj in 0..kw {
                let dy = (ki * g.dilation[0]) as isize - g.pad[0] as isize;
                let dx = (kj * g.dilation[1]) as isize - g.pad[1] as isize;
                let reads = |o: usize| {
                    let (y, x) = ((o / w * sh) as isize + dy, (o % w) as isize + dx);
                    o < plane && (0..h as isize).contains(&y) && (0..w as isize).contains(&x)
                };
                let mk: Vec<u16> = (0..blocks).map(|b| (0..16).filter(|l| reads(b * 16 + l)).fold(0, |a, l| a | 1 << l)).collect();
                if mk.iter().any(|&b| b != 0) {
                    let sh = sh as isize;
                    live.push(ki * kw + kj);
                    deltas.push((dy.rem_euclid(sh) * hq as isize + dy.div_euclid(sh)) * w as isize + dx);
                    masks.extend(mk);
                }
            }
        }
        let wts: Vec<f32> = (0..c).flat_map(|ch| live.iter().map(move |&t| ws[ch * kh * kw + t])).collect();
        let taps = live.len();
        out.par_chunks_mut(plane).with_min_len(4096usize.div_ceil(plane)).enumerate().for_each_init(Vec::new, |phases, (p, o)| {
            let ch = p % c;
            let init = bias.map_or(0.0, |b| b[ch]);
            let x = &xs[p * h * w..(p + 1) * h * w];
            let src = if copy {
                // Every position a lane reads is written here; the rest are never read.
                phases.resize(sh * hq * w, 0.0);
                for (r, row) in x.chunks_exact(w).enumerate() {
                    let at = (r % sh * hq + r / sh) * w;
                    phases[at..at + w].copy_from_slice(row);
                }
                phases.as_slice()
            } else {
                x
            };
            // SAFETY: AVX-512 is present; every unmasked lane reads a position of `src` (the masks
            // admit only taps that land in the plane) and writes inside `o`.
            unsafe { avx512::depthwise_plane(src.as_ptr(), o, &deltas, &masks, &wts[ch * taps..(ch + 1) * taps], init, epilogue) };
        });
        return true;
    }
    let _ = (xs, ws, bias, epilogue, out, fits, shapes);
    false
}

/// Depthwise convolutions strided by two (MobileNet's downsampling layers), read straight from
/// the input: each tap pair's sixteen strided columns are the even and odd lanes of two loads,
/// split in registers, masked loads stand in for the padding, and rows of at most eight outputs
/// share a vector two at a time. The phase route copies every plane into its four phases first,
/// and the route across channels transposes it in and out; on large planes those passes over
/// memory cost more than the sums (crop classifier at batch 64: 16 channels 128×128 → 64×64 4.7
/// → 2.5 ms, 72 at 64×64 → 32×32 5.5 → 3.1). (At stride 1 the same scheme, one load per tap,
/// measured no faster than the phase route and slower than the masked one.) False (nothing
/// written) without AVX-512 or where the conv is not of this kind.
pub fn depthwise_strided(xs: &[f32], ws: &[f32], bias: Option<&[f32]>, epilogue: Option<Epilogue>, out: &mut [f32], g: &ConvGeometry) -> bool {
    let [n, c, h, w] = g.input;
    let [_, m, oh, ow] = g.output;
    let [kh, kw] = g.kernel;
    let kind = g.groups == c && m == c && g.stride == [2, 2] && g.dilation == [1, 1] && kh * kw > 0;
    let shapes = xs.len() == n * c * h * w && out.len() == n * c * oh * ow && ws.len() == c * kh * kw;
    // Every tap a stored output reads lies in the padded plane (`2·(o − 1) + k ≤ padded size`).
    let reach = oh > 0 && ow > 0 && (oh - 1) * 2 + kh <= h + 2 * g.pad[0] && (ow - 1) * 2 + kw <= w + 2 * g.pad[1];
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && kind && shapes && reach {
        use rayon::prelude::*;
        let plane = oh * ow;
        let masks = avx512::strided_masks(g);
        out.par_chunks_mut(plane).enumerate().for_each(|(p, o)| {
            let ch = p % c;
            let init = bias.map_or(0.0, |b| b[ch]);
            let (x, wts) = (&xs[p * h * w..(p + 1) * h * w], &ws[ch * kh * kw..(ch + 1) * kh * kw]);
            // SAFETY: AVX-512 is present; the plane holds `h·w` floats and `o` `oh·ow`, the
            // geometry checked above, and the masks are this geometry's.
            unsafe { avx512::depthwise_strided_plane(x, o, wts, &masks, init, epilogue, g) };
        });
        return true;
    }
    let _ = (xs, ws, bias, epilogue, out, kind, shapes, reach);
    false
}

/// `x [N, C, H, W]` at rows and columns `0, 2, 4, …` (`[oh, ow]` of them), the input of a 1×1
/// conv strided by two; sixteen columns per step where the CPU has AVX-512.
pub fn even_rows_and_columns(x: &[f32], [n, c, h, w]: [usize; 4], [oh, ow]: [usize; 2]) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = vec![0f32; n * c * oh * ow];
    if oh * ow == 0 {
        return out;
    }
    out.par_chunks_mut(oh * ow).zip(x.par_chunks(h * w)).for_each(|(o, p)| {
        for (y, row) in o.chunks_exact_mut(ow).enumerate() {
            let src = &p[2 * y * w..2 * y * w + w];
            let mut done = 0;
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512 is present.
                done = unsafe { avx512::even_columns(src, row) };
            }
            for (x, v) in row.iter_mut().enumerate().skip(done) {
                *v = src[2 * x];
            }
        }
    });
    out
}

/// Weights `[M, T]` (output channel, tap) packed `[M/OC][T][OC]` and the bias `[M/OC][OC]`, zeros
/// past `M`, in the order the register block reads them; `OC` is the block's for rows `width`
/// wide.
pub struct Packed {
    weights: Vec<f32>,
    bias: Vec<f32>,
    m: usize,
    taps: usize,
    oc: usize,
}

impl Packed {
    pub fn new(ws: &[f32], bias: Option<&[f32]>, m: usize, taps: usize, width: usize) -> Self {
        let oc = if width >= WIDE { WIDE_OC } else { NARROW_OC };
        let blocks = m.div_ceil(oc);
        let mut weights = vec![0f32; blocks * taps * oc];
        for j in 0..m {
            for t in 0..taps {
                weights[(j / oc * taps + t) * oc + j % oc] = ws[j * taps + t];
            }
        }
        let bias = (0..blocks * oc).map(|j| bias.and_then(|b| b.get(j)).copied().unwrap_or(0.0)).collect();
        Self { weights, bias, m, taps, oc }
    }

    /// Output positions per register block.
    fn px(&self) -> usize {
        16 * if self.oc == WIDE_OC { WIDE_NV } else { NARROW_NV }
    }
}

/// `outs[j][oy·ow + x] = epilogue(bias[j] + Σₜ w[j][t] · src[offs[t] + oy·wq + x])` for rows `rows`
/// and columns `0..ow`: a convolution whose taps read contiguous runs (1×1 convs in NCHW; stems over
/// their column phases). A register block of columns at a time (32 or 64, see `WIDE`), the taps'
/// runs are copied `[T][block]`, so a block reads one stream (a 1×1 conv's channels are a plane
/// apart, 4 KB at 32×32, and share L1 sets); each block of `OC` channels sums them in registers
/// and stores each output once, with its bias and activation, where a gemm `T` deep spends much of its time packing its operands and
/// passing over its output. False (nothing written) without AVX-512 or if a read or write would
/// fall outside `src` or `outs`.
#[allow(clippy::too_many_arguments)]
pub fn tap_rows(
    src: &[f32],
    offs: &[usize],
    wq: usize,
    ow: usize,
    rows: std::ops::Range<usize>,
    packed: &Packed,
    epilogue: Option<Epilogue>,
    outs: &mut [&mut [f32]],
    panel: &mut Vec<f32>,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && offs.len() == packed.taps && outs.len() == packed.m && !rows.is_empty() && ow > 0 {
        let reach = offs.iter().max().map_or(0, |&o| o + (rows.end - 1) * wq + ow);
        if reach <= src.len() && outs.iter().all(|o| o.len() >= rows.end * ow) {
            let px = packed.px();
            let chunk = (PANEL_FLOATS / (offs.len().max(1) * px)).clamp(1, MAX_CHUNK_BLOCKS) * px;
            let panel = aligned(panel, offs.len() * chunk);
            // SAFETY: AVX-512 is present; reads end at `reach` ≤ `src.len()`, writes at
            // `rows.end·ow` ≤ each output's length (checked above); the panel holds `T·chunk`.
            unsafe {
                if packed.oc == WIDE_OC {
                    avx512::tap_rows::<WIDE_OC, WIDE_NV>(src, offs, wq, ow, rows, packed, epilogue, outs, panel, chunk)
                } else {
                    avx512::tap_rows::<NARROW_OC, NARROW_NV>(src, offs, wq, ow, rows, packed, epilogue, outs, panel, chunk)
                }
            };
            return true;
        }
    }
    let _ = (src, offs, wq, ow, rows, packed, epilogue, outs, panel);
    false
}

/// `len` floats of `buf` starting on a 64-byte boundary, so that a vector stored or loaded at a
/// multiple of sixteen floats from there touches one cache line, not two (a zmm access across
/// two lines costs twice, and glibc aligns to 16 bytes).
pub(super) fn aligned(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.resize(len + 15, 0.0);
    let skip = buf.as_ptr().align_offset(64).min(15);
    &mut buf[skip..skip + len]
}

/// The first `valid` of sixteen lanes (all of them from sixteen on).
#[cfg(target_arch = "x86_64")]
pub(super) fn lane_mask(valid: usize) -> u16 {
    if valid >= 16 { 0xffff } else { ((1u32 << valid) - 1) as u16 }
}

/// The register block and its store, shared with `winograd`'s sums.
#[cfg(target_arch = "x86_64")]
pub(super) use avx512::{activate, block, even_odd, store};

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use rayon::prelude::*;

    use super::{ConvGeometry, Epilogue, Packed, PackedWeights};
    use crate::ops::cpu_kernels::SendPtr;

    /// Weights as [M/OC][kh][C][kw][OC], zeros past M, so a block's broadcasts read in order;
    /// parallel over blocks of channels.
    fn pack<const OC: usize>(ws: &[f32], g: &ConvGeometry) -> Vec<f32> {
        let ([_, c, _, _], [_, m, _, _], [kh, kw]) = (g.input, g.output, g.kernel);
        let block = c * kh * kw * OC;
        let mut wk = vec![0f32; m.div_ceil(OC) * block];
        wk.par_chunks_mut(block).enumerate().for_each(|(mb, dst)| {
            for j in mb * OC..(mb * OC + OC).min(m) {
                for ci in 0..c {
                    for ki in 0..kh {
                        for kj in 0..kw {
                            dst[((ki * c + ci) * kw + kj) * OC + j % OC] = ws[((j * c + ci) * kh + ki) * kw + kj];
                        }
                    }
                }
            }
        });
        wk
    }

    /// Sums `OC` output channels × `V` vectors of positions in registers, the vectors on `R`
    /// units (`16·V/R` positions each): `R` consecutive output rows of one image, or with
    /// `across_images` one output row of `R` images. On rows narrower than the block the units
    /// share each weight broadcast; units on one output row share its taps, so the kernel rows that
    /// fall wholly in the padding are skipped (a third of the work at 2 rows, 3×3).
    #[allow(clippy::too_many_arguments)]
    pub fn run<const OC: usize, const V: usize, const R: usize>(
        xs: &[f32],
        ws: &[f32],
        bias: Option<&[f32]>,
        epilogue: Option<Epilogue>,
        residual: Option<&[f32]>,
        out: &mut [f32],
        g: &ConvGeometry,
        across_images: bool,
        packed: Option<&PackedWeights>,
    ) {
        let px = 16 * V / R;
        let [n, c, h, wd] = g.input;
        let [_, m, oh, ow] = g.output;
        let [kh, kw] = g.kernel;
        let [ph, pw] = g.pad;
        let taps = kh * kw;
        let blocks = ow.div_ceil(px);
        let st = g.stride[0];
        // Padded width: every input column the taps of every block's positions read. Strided by
        // two, each padded row is stored de-interleaved, its even columns then its odd ones, so
        // that a tap still reads consecutive floats: tap `kj` of position `x` reads column
        // `2x + kj`, at `cols[kj] + x`.
        let wpi = st * (blocks * px - 1) + kw;
        let (wp, half) = if st == 1 { (wpi, 0) } else { (2 * wpi.div_ceil(2), wpi.div_ceil(2)) };
        let cols: Vec<usize> = (0..kw).map(|kj| if st == 1 { kj } else { kj % 2 * half + kj / 2 }).collect();
        let mblocks = m.div_ceil(OC);
        let fresh;
        let wk = match packed {
            Some(p) => p.get_or_pack(|| pack::<OC>(ws, g)),
            None => {
                fresh = pack::<OC>(ws, g);
                &fresh
            }
        };
        // A task: `R` rows of one image, or one row of `R` images (units past the last image or
        // row are computed from zeros and dropped).
        let (rows_per_task, images_per_task) = if across_images { (1, R) } else { (R, 1) };
        let (row_groups, image_groups) = (oh.div_ceil(rows_per_task), n.div_ceil(images_per_task));
        // Each task pads the input rows it reads into its own slab, [images][rows][C][Wp]: a block
        // walks the channels of a row at a constant stride the prefetchers follow (as
        // [C][rows][Wp] the channels are a plane apart and it stalls). One parallel loop over
        // every task: per-image loops spent a fork and join on each.
        let slab_rows = st * (rows_per_task - 1) + kh;
        // Each task writes its own rows of every channel of its images.
        let out_ptr = SendPtr(out.as_mut_ptr());
        (0..image_groups * row_groups).into_par_iter().for_each_init(Vec::new, |slab: &mut Vec<f32>, task| {
            let (img0, oy) = (task / row_groups * images_per_task, task % row_groups * rows_per_task);
            slab.clear();
            slab.resize(images_per_task * slab_rows * c * wp, 0.0);
            // The input columns the taps reach.
            let reach = wd.min(wpi - pw);
            for (i, rows) in slab.chunks_mut(slab_rows * c * wp).enumerate().take(n - img0) {
                let x = &xs[(img0 + i) * c * h * wd..(img0 + i + 1) * c * h * wd];
                for (sr, rows) in rows.chunks_mut(c * wp).enumerate() {
                    let Some(ir) = (st * oy + sr).checked_sub(ph).filter(|&ir| ir < h) else { continue };
                    for (ci, row) in rows.chunks_mut(wp).enumerate() {
                        let src = &x[(ci * h + ir) * wd..(ci * h + ir) * wd + reach];
                        if st == 1 {
                            row[pw..pw + reach].copy_from_slice(src);
                        } else {
                            // SAFETY: AVX-512 is present (the caller checked).
                            unsafe { deinterleave(src, row, pw, half) };
                        }
                    }
                }
            }
            // Kernel rows reading an input row for at least one of the task's output rows.
            let k0 = ph.saturating_sub(st * (oy + rows_per_task - 1)).min(kh);
            let k1 = (h + ph).saturating_sub(st * oy).clamp(k0, kh);
            // Unit `r`'s output row and image, and where its slab starts.
            let unit = |r: usize| if across_images { (oy, img0 + r, r * slab_rows * c * wp) } else { (oy + r, img0, st * r * c * wp) };
            for mb in 0..mblocks {
                let init: [f32; OC] = std::array::from_fn(|o| bias.and_then(|b| b.get(mb * OC + o)).copied().unwrap_or(0.0));
                let channels = OC.min(m - mb * OC);
                for xb in 0..blocks {
                    let x0 = xb * px;
                    let valid = px.min(ow - x0);
                    // SAFETY: loads stay inside the slab (each unit's rows `0..slab_rows`, columns
                    // `x0 + cols[kj] .. x0 + cols[kj] + px` ≤ wp) and `wk`'s block `mb`; stores write `valid`
                    // floats of the units' rows (those of real rows and images) of channels
                    // `mb·OC ..`, which only this task writes.
                    unsafe {
                        let units: [*const f32; R] = std::array::from_fn(|r| slab.as_ptr().add(unit(r).2 + x0));
                        let acc = block::<OC, V, R>(units, wp, c, k0..k1, &cols, wk.as_ptr().add(mb * c * taps * OC), init);
                        for (o, v) in acc.iter().enumerate().take(channels) {
                            for (r, row) in v.chunks_exact(V / R).enumerate() {
                                let (y, img, _) = unit(r);
                                if y >= oh || img >= n {
                                    continue;
                                }
                                let at = ((img * m + mb * OC + o) * oh + y) * ow + x0;
                                store(out_ptr.get().add(at), row, valid, residual.map(|r| r[at..at + valid].as_ptr()), epilogue);
                            }
                        }
                    }
                }
            }
        });
    }

    /// The 32 floats from `src` split into their even and odd positions, sixteen each.
    ///
    /// # Safety
    /// 32 floats are readable from `src`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn even_odd(src: *const f32) -> [__m512; 2] {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        // SAFETY: the caller gives 32 floats.
        let (a, b) = unsafe { (_mm512_loadu_ps(src), _mm512_loadu_ps(src.add(16))) };
        [_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b)]
    }

    /// Writes `src`, the input columns from padded column `pw` on, into `row` de-interleaved:
    /// padded column `p` at `(p % 2)·half + p / 2`. Thirty-two columns per step, split into
    /// their even and odd ones in registers.
    #[target_feature(enable = "avx512f")]
    fn deinterleave(src: &[f32], row: &mut [f32], pw: usize, half: usize) {
        // Where src[2i] and src[2i + 1] go, for i = 0.
        let (to_even, to_odd) = if pw % 2 == 0 { (pw / 2, half + pw / 2) } else { (half + pw / 2, (pw + 1) / 2) };
        let steps = src.len() / 32;
        assert!(to_even.max(to_odd) + 16 * steps <= row.len());
        for i in 0..steps {
            // SAFETY: reads src[32i .. 32i + 32] (< len); writes 16 floats from to_even + 16i and
            // from to_odd + 16i, inside `row` (asserted above).
            unsafe {
                let [even, odd] = even_odd(src.as_ptr().add(32 * i));
                _mm512_storeu_ps(row.as_mut_ptr().add(to_even + 16 * i), even);
                _mm512_storeu_ps(row.as_mut_ptr().add(to_odd + 16 * i), odd);
            }
        }
        for (j, &v) in src.iter().enumerate().skip(32 * steps) {
            row[(pw + j) % 2 * half + (pw + j) / 2] = v;
        }
    }

    /// Writes `src[0], src[2], …` into `row` sixteen at a time while both hold them; returns how
    /// many it wrote.
    #[target_feature(enable = "avx512f")]
    pub fn even_columns(src: &[f32], row: &mut [f32]) -> usize {
        let steps = (src.len() / 32).min(row.len() / 16);
        for i in 0..steps {
            // SAFETY: reads src[32i .. 32i + 32] and writes row[16i .. 16i + 16], both in bounds.
            unsafe {
                _mm512_storeu_ps(row.as_mut_ptr().add(16 * i), even_odd(src.as_ptr().add(32 * i))[0]);
            }
        }
        16 * steps
    }

    /// [`super::tap_rows`] once its bounds are checked.
    ///
    /// # Safety
    /// See the caller.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tap_rows<const OC: usize, const NV: usize>(
        src: &[f32],
        offs: &[usize],
        wq: usize,
        ow: usize,
        rows: std::ops::Range<usize>,
        packed: &Packed,
        epilogue: Option<Epilogue>,
        outs: &mut [&mut [f32]],
        panel: &mut [f32],
        chunk: usize,
    ) {
        let (m, taps, px) = (packed.m, packed.taps, 16 * NV);
        let masks = |x0: usize| -> [u16; NV] {
            let valid = px.min(ow - x0);
            std::array::from_fn(|i| super::lane_mask(valid.saturating_sub(16 * i)))
        };
        for oy in rows {
            for c0 in (0..ow).step_by(chunk) {
                let blocks = (c0..ow.min(c0 + chunk)).step_by(px);
                for (b, x0) in blocks.clone().enumerate() {
                    let (masks, at) = (masks(x0), oy * wq + x0);
                    for (t, &o) in offs.iter().enumerate() {
                        for i in 0..NV {
                            // SAFETY: the masked lanes end at `o + at + valid` ≤ `src.len()`; the
                            // panel holds `T·chunk` floats.
                            unsafe {
                                let v = _mm512_maskz_loadu_ps(masks[i], src.as_ptr().add(o + at + 16 * i));
                                _mm512_storeu_ps(panel.as_mut_ptr().add((b * taps + t) * px + 16 * i), v);
                            }
                        }
                    }
                }
                for mb in 0..m.div_ceil(OC) {
                    let w = &packed.weights[mb * taps * OC..(mb + 1) * taps * OC];
                    for (b, x0) in blocks.clone().enumerate() {
                        let block = &panel[b * taps * px..(b + 1) * taps * px];
                        let mut acc: [[__m512; NV]; OC] = std::array::from_fn(|o| [_mm512_set1_ps(packed.bias[mb * OC + o]); NV]);
                        for (wrow, v) in w.chunks_exact(OC).zip(block.chunks_exact(px)) {
                            // SAFETY: `v` holds `px` floats.
                            let v: [__m512; NV] = std::array::from_fn(|i| unsafe { _mm512_loadu_ps(v.as_ptr().add(16 * i)) });
                            for (a, &wt) in acc.iter_mut().zip(wrow) {
                                let b = _mm512_set1_ps(wt);
                                for i in 0..NV {
                                    a[i] = _mm512_fmadd_ps(b, v[i], a[i]);
                                }
                            }
                        }
                        let masks = masks(x0);
                        for (o, a) in acc.iter().enumerate().take(OC.min(m - mb * OC)) {
                            let dst = outs[mb * OC + o].as_mut_ptr();
                            for i in 0..NV {
                                // SAFETY: the masked lanes end at `oy·ow + x0 + valid` ≤ the output's length.
                                unsafe { _mm512_mask_storeu_ps(dst.add(oy * ow + x0 + 16 * i), masks[i], activate(epilogue, a[i])) };
                            }
                        }
                    }
                }
            }
        }
    }

    /// One plane of [`super::depthwise_masked`]: blocks of sixteen outputs, eight blocks' sums held
    /// in registers across the taps.
    ///
    /// # Safety
    /// AVX-512 is present, and for each tap `t` and block `b` every lane set in `masks[t·B + b]`
    /// (`B` blocks of `o`) reads inside the plane at `src`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn depthwise_plane(src: *const f32, o: &mut [f32], deltas: &[isize], masks: &[u16], wts: &[f32], init: f32, epilogue: Option<Epilogue>) {
        #[inline]
        #[target_feature(enable = "avx512f")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn group<const K: usize>(src: *const f32, o: &mut [f32], b: usize, deltas: &[isize], masks: &[u16], wts: &[f32], init: f32, epilogue: Option<Epilogue>) {
            let blocks = o.len().div_ceil(16);
            let mut acc = [_mm512_set1_ps(init); K];
            for (t, (&d, &wt)) in deltas.iter().zip(wts).enumerate() {
                let wv = _mm512_set1_ps(wt);
                let m = &masks[t * blocks + b..t * blocks + b + K];
                for k in 0..K {
                    // SAFETY: see `depthwise_plane`; masked-off lanes are not read.
                    let v = unsafe { _mm512_maskz_loadu_ps(m[k], src.wrapping_offset(((b + k) * 16) as isize + d)) };
                    acc[k] = _mm512_fmadd_ps(v, wv, acc[k]);
                }
            }
            for (k, a) in acc.iter().enumerate() {
                let at = (b + k) * 16;
                let valid = (o.len() - at).min(16);
                let mask = super::lane_mask(valid);
                // SAFETY: the masked lanes end at `at + valid` ≤ `o.len()`.
                unsafe { _mm512_mask_storeu_ps(o.as_mut_ptr().add(at), mask, activate(epilogue, *a)) };
            }
        }
        let blocks = o.len().div_ceil(16);
        let mut b = 0;
        // SAFETY (all three): the caller's.
        while b + 8 <= blocks {
            unsafe { group::<8>(src, o, b, deltas, masks, wts, init, epilogue) };
            b += 8;
        }
        if b + 4 <= blocks {
            unsafe { group::<4>(src, o, b, deltas, masks, wts, init, epilogue) };
            b += 4;
        }
        if b + 2 <= blocks {
            unsafe { group::<2>(src, o, b, deltas, masks, wts, init, epilogue) };
            b += 2;
        }
        if b < blocks {
            unsafe { group::<1>(src, o, b, deltas, masks, wts, init, epilogue) };
        }
    }

    /// One plane of [`super::depthwise_strided`]: output row `oy` sums input rows `2·oy + ki − ph`
    /// (those inside the plane), four vectors of sixteen outputs at a time. A tap pair `kj, kj + 1`
    /// reads the 32 floats from column `2·x0 + kj − pw` on and splits them into its even and odd
    /// lanes; `masks[(block·pairs + pair)·2 + half]` admits the lanes inside the row, the rest
    /// load as zeros, the padding. Rows of at most eight outputs go two to a vector, lanes 0.. and
    /// 8..: the halves load from input rows two apart, and the same split serves both.
    ///
    /// # Safety
    /// AVX-512 is present; `x` holds the `h·w` input plane, `o` the `oh·ow` output plane and `ws`
    /// the `kh·kw` weights of `g`; `masks` are [`strided_masks`]' for `g`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn depthwise_strided_plane(x: &[f32], o: &mut [f32], ws: &[f32], masks: &[u16], init: f32, epilogue: Option<Epilogue>, g: &ConvGeometry) {
        let [_, _, h, w] = g.input;
        let [_, _, oh, ow] = g.output;
        let [kh, kw] = g.kernel;
        let (ph, pw) = (g.pad[0] as isize, g.pad[1] as isize);
        let t = Taps { pairs: kw.div_ceil(2), kw, ws, init, h: h as isize, w: w as isize };
        let (xp, op) = (x.as_ptr(), o.as_mut_ptr());
        if ow <= 8 {
            // Both halves of a vector take the same columns: each pair's first mask twice.
            let m: Vec<u16> = masks[..2 * t.pairs].chunks_exact(2).flat_map(|m| [m[0], m[0]]).collect();
            let store_mask = super::lane_mask(ow);
            let vectors = oh.div_ceil(2);
            let src = |v: usize| Src { base: xp.wrapping_offset((4 * v as isize - ph) * t.w - pw), row: 4 * v as isize - ph, hi_off: 2 * t.w, hi_rows: 2, upper: 2 * v + 1 < oh, masks: &m };
            let mut v = 0;
            while v < vectors {
                // SAFETY (both): every lane read is inside the plane (`Src`).
                let (nb, acc): (usize, [__m512; 4]) = if v + 4 <= vectors {
                    (4, unsafe { strided_sums::<4, true>(0..kh, &t, std::array::from_fn(|k| src(v + k))) })
                } else {
                    (1, [unsafe { strided_sums::<1, true>(0..kh, &t, [src(v)]) }[0]; 4])
                };
                for (k, &a) in acc.iter().enumerate().take(nb) {
                    let r = 2 * (v + k);
                    let a = activate(epilogue, a);
                    // SAFETY: lanes 0..ow land on row `r`, lanes 8..8 + ow on row `r + 1` (stored
                    // only when it exists), both inside `o`.
                    unsafe {
                        _mm512_mask_storeu_ps(op.add(r * ow), store_mask, a);
                        if r + 1 < oh {
                            _mm512_mask_storeu_ps(op.add((r + 1) * ow).wrapping_sub(8), store_mask << 8, a);
                        }
                    }
                }
                v += nb;
            }
            return;
        }
        let blocks = ow.div_ceil(16);
        for oy in 0..oh {
            let y0 = 2 * oy as isize - ph;
            // Kernel rows whose input row `y0 + ki` lies in the plane.
            let live = (-y0).clamp(0, kh as isize) as usize..(t.h - y0).clamp(0, kh as isize) as usize;
            let src = |b: usize| Src {
                base: xp.wrapping_offset(y0 * t.w + (32 * b) as isize - pw),
                row: y0,
                hi_off: 16,
                hi_rows: 0,
                upper: true,
                masks: &masks[b * t.pairs * 2..(b + 1) * t.pairs * 2],
            };
            let mut b = 0;
            while b < blocks {
                // SAFETY (all three): every lane the masks admit is inside the plane (`Src`).
                let (nb, acc): (usize, [__m512; 4]) = match blocks - b {
                    4.. => (4, unsafe { strided_sums::<4, false>(live.clone(), &t, std::array::from_fn(|k| src(b + k))) }),
                    2 | 3 => {
                        let [a0, a1] = unsafe { strided_sums::<2, false>(live.clone(), &t, [src(b), src(b + 1)]) };
                        (2, [a0, a1, a0, a1])
                    }
                    _ => (1, [unsafe { strided_sums::<1, false>(live.clone(), &t, [src(b)]) }[0]; 4]),
                };
                for (k, &a) in acc.iter().enumerate().take(nb) {
                    let at = (b + k) * 16;
                    // SAFETY: the masked lanes end at `at + valid` ≤ `ow`, inside row `oy`.
                    unsafe { _mm512_mask_storeu_ps(op.add(oy * ow + at), super::lane_mask((ow - at).min(16)), activate(epilogue, a)) };
                }
                b += nb;
            }
        }
    }

    /// A plane's taps for [`strided_sums`].
    struct Taps<'a> {
        pairs: usize,
        kw: usize,
        ws: &'a [f32],
        init: f32,
        h: isize,
        w: isize,
    }

    /// Where one vector of [`strided_sums`] loads from: its low half from `base + ki·w + 2·pair`
    /// (input row `row + ki`), its high half `hi_off` floats on (input row `row + ki + hi_rows`,
    /// read only when `upper`), each through `masks[2·pair + half]`; a half whose row lies outside
    /// the plane loads zeros.
    struct Src<'a> {
        base: *const f32,
        row: isize,
        hi_off: isize,
        hi_rows: isize,
        upper: bool,
        masks: &'a [u16],
    }

    /// `NB` vectors of sums over kernel rows `rows` and every tap pair: a pair's two loads split
    /// into even lanes, which meet tap `2·pair`, and odd ones, tap `2·pair + 1`. `NB` fixed, the
    /// sums stay in registers, even and odd taps in separate ones so that one vector's chain of
    /// multiply-adds is half as long. With `ROWS` each half's row is tested first (rows outside
    /// the plane load zeros); without, every row in `rows` lies in the plane.
    ///
    /// # Safety
    /// AVX-512 is present; `t.ws` holds the weights of every row in `rows`, each `src`'s masks
    /// `2·pairs`; the lanes those admit, on rows inside the plane, are readable.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn strided_sums<const NB: usize, const ROWS: bool>(rows: std::ops::Range<usize>, t: &Taps, src: [Src; NB]) -> [__m512; NB] {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let (mut acc, mut acc_odd) = ([_mm512_set1_ps(t.init); NB], [_mm512_setzero_ps(); NB]);
        let inside = |y: isize| (0..t.h).contains(&y);
        for ki in rows {
            for pair in 0..t.pairs {
                let kj = 2 * pair;
                let mut halves = [(_mm512_setzero_ps(), _mm512_setzero_ps()); NB];
                for (h, s) in halves.iter_mut().zip(&src) {
                    let at = s.base.wrapping_offset(ki as isize * t.w + kj as isize);
                    // SAFETY: `2·pair + 1 < 2·pairs`, the masks' length.
                    let (mut lo, mut hi) = unsafe { (*s.masks.get_unchecked(2 * pair), *s.masks.get_unchecked(2 * pair + 1)) };
                    let y = s.row + ki as isize;
                    if ROWS && !inside(y) {
                        lo = 0;
                    }
                    if !s.upper || (ROWS && !inside(y + s.hi_rows)) {
                        hi = 0;
                    }
                    // SAFETY: the caller's; masked-off lanes are not read.
                    *h = unsafe { (_mm512_maskz_loadu_ps(lo, at), _mm512_maskz_loadu_ps(hi, at.wrapping_offset(s.hi_off))) };
                }
                // SAFETY: `ki` is one of the caller's rows and `kj + 1 < kw` where read.
                let w0 = _mm512_set1_ps(unsafe { *t.ws.get_unchecked(ki * t.kw + kj) });
                for (a, &(lo, hi)) in acc.iter_mut().zip(&halves) {
                    *a = _mm512_fmadd_ps(_mm512_permutex2var_ps(lo, even, hi), w0, *a);
                }
                if kj + 1 < t.kw {
                    let w1 = _mm512_set1_ps(unsafe { *t.ws.get_unchecked(ki * t.kw + kj + 1) });
                    for (a, &(lo, hi)) in acc_odd.iter_mut().zip(&halves) {
                        *a = _mm512_fmadd_ps(_mm512_permutex2var_ps(lo, odd, hi), w1, *a);
                    }
                }
            }
        }
        std::array::from_fn(|k| _mm512_add_ps(acc[k], acc_odd[k]))
    }

    /// The lanes of sixteen floats from column `at` that fall inside a row `w` wide.
    fn row_mask(at: isize, w: usize) -> u16 {
        let (lo, hi) = ((-at).clamp(0, 16) as u32, (w as isize - at).clamp(0, 16) as u32);
        if hi <= lo { 0 } else { (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as u16 }
    }

    /// The load masks of [`depthwise_strided_plane`]: per block of sixteen outputs, tap pair and
    /// half, the lanes of the sixteen floats from column `32·block + 2·pair − pw + 16·half` that
    /// fall inside a row `w` wide. The same for every row and plane.
    pub fn strided_masks(g: &ConvGeometry) -> Vec<u16> {
        let (ow, pairs, pw) = (g.output[3], g.kernel[1].div_ceil(2), g.pad[1] as isize);
        let mut masks = vec![];
        for b in 0..ow.div_ceil(16) {
            for pair in 0..pairs {
                for half in 0..2 {
                    masks.push(row_mask((32 * b + 2 * pair + 16 * half) as isize - pw, g.input[3]));
                }
            }
        }
        masks
    }

    /// `epilogue` on one vector, as [`Epilogue::apply`] does on a slice.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn activate(epilogue: Option<Epilogue>, v: __m512) -> __m512 {
        let (zero, one) = (_mm512_setzero_ps(), _mm512_set1_ps(1.0));
        match epilogue {
            None => v,
            Some(Epilogue::Relu) => _mm512_max_ps(v, zero),
            Some(Epilogue::HardSwish) => {
                let gate = _mm512_fmadd_ps(v, _mm512_set1_ps(1.0 / 6.0), _mm512_set1_ps(0.5));
                _mm512_mul_ps(v, _mm512_min_ps(_mm512_max_ps(gate, zero), one))
            }
            Some(Epilogue::Clip(lo, hi)) => _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(lo)), _mm512_set1_ps(hi)),
        }
    }

    /// The OC × V vectors of sums of one block (`V/R` vectors on each of `R` units) over kernel
    /// rows `ks`: `units[r]` points at unit `r`'s first padded row, channel 0, column `x0`
    /// (channels `wp` floats apart, rows `C·wp`), tap `kj` reading from `cols[kj]` on, `w` at the
    /// block's packed weights.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn block<const OC: usize, const V: usize, const R: usize>(units: [*const f32; R], wp: usize, c: usize, ks: std::ops::Range<usize>, cols: &[usize], w: *const f32, init: [f32; OC]) -> [[__m512; V]; OC] {
        let kw = cols.len();
        let nv = V / R;
        let mut acc: [[__m512; V]; OC] = init.map(|b| [_mm512_set1_ps(b); V]);
        for ki in ks {
            for ci in 0..c {
                // SAFETY: inside the caller's bounds (see `run`).
                let rows: [*const f32; R] = std::array::from_fn(|r| unsafe { units[r].add((ki * c + ci) * wp) });
                let wrow = unsafe { w.add((ki * c + ci) * kw * OC) };
                // The rows four channels on, whose stride the hardware prefetchers follow late.
                for row in rows {
                    let ahead = row.wrapping_add(4 * wp);
                    for i in 0..=nv {
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(16 * i) as *const i8);
                    }
                }
                for (kj, &col) in cols.iter().enumerate() {
                    let v: [__m512; V] = std::array::from_fn(|i| unsafe { _mm512_loadu_ps(rows[i / nv].add(col + 16 * (i % nv))) });
                    let wt = unsafe { wrow.add(kj * OC) };
                    for (o, a) in acc.iter_mut().enumerate() {
                        let b = _mm512_set1_ps(unsafe { *wt.add(o) });
                        for i in 0..V {
                            a[i] = _mm512_fmadd_ps(b, v[i], a[i]);
                        }
                    }
                }
            }
        }
        acc
    }

    /// Stores the first `valid` of the floats in `v` at `dst`, plus the `valid` floats at
    /// `residual`, through the epilogue.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn store(dst: *mut f32, v: &[__m512], valid: usize, residual: Option<*const f32>, epilogue: Option<Epilogue>) {
        for (i, &x) in v.iter().enumerate().take(valid.div_ceil(16)) {
            let n = valid - 16 * i;
            let mask = super::lane_mask(n);
            // SAFETY: the caller owns `valid` floats at `dst` and gives `valid` at `residual`.
            let x = match residual {
                Some(r) => _mm512_add_ps(x, unsafe { _mm512_maskz_loadu_ps(mask, r.add(16 * i)) }),
                None => x,
            };
            unsafe { _mm512_mask_storeu_ps(dst.add(16 * i), mask, activate(epilogue, x)) };
        }
    }
}

/// Values in [−0.5, 0.5) from a linear congruential sequence, for the kernels' tests.
#[cfg(test)]
pub(super) fn test_values(seed: &mut u32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (*seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct convolution against the gemm-per-tap route it replaces on AVX-512 CPUs, so that
    /// both stay tested on any machine.
    #[test]
    fn direct_conv_matches_gemm_per_tap() {
        // Rows 64 wide or more (one row per block), 17 to 63 (two rows, or one row of two images)
        // and narrower (four), with a partial last block and nine rows (a partial last group of
        // rows); batches that leave a partial last group of images; planes two and three rows
        // high, whose first and last rows skip the kernel rows in the padding.
        for (n, h, w) in [(2, 9, 71), (2, 9, 37), (2, 9, 13), (1, 9, 37), (3, 2, 37), (5, 3, 13), (1, 2, 13), (2, 2, 80)] {
            direct_conv_case(n, h, w);
        }
    }

    fn direct_conv_case(n: usize, h: usize, w: usize) {
        let g = ConvGeometry {
            input: [n, 64, h, w],
            output: [n, 11, h, w - 1],
            kernel: [3, 2],
            stride: [1, 1],
            dilation: [1, 1],
            pad: [1, 0],
            groups: 1,
        };
        let mut seed = 7u32;
        let mut rand = |n: usize| test_values(&mut seed, n);
        let (xs, ws, bias) = (rand(n * 64 * h * w), rand(11 * 64 * 3 * 2), rand(11));
        let len = n * 11 * h * (w - 1);
        let mut want = vec![0f32; len];
        super::super::cpu_kernels::shifted_taps(&xs, &ws, Some(&bias), Some(Epilogue::Relu), &mut want, &g);
        // Weights packed per call, then packed once and kept for a second call.
        let kept = PackedWeights::default();
        for packed in [None, Some(&kept), Some(&kept)] {
            let mut got = vec![0f32; len];
            if conv(&xs, &ws, Some(&bias), Some(Epilogue::Relu), None, &mut got, &g, packed) {
                let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(worst < 1e-4, "{n}×{h}×{w}: off by {worst}");
            }
        }
        // A shortcut added before the ReLU.
        let mut linear = vec![0f32; len];
        super::super::cpu_kernels::shifted_taps(&xs, &ws, Some(&bias), None, &mut linear, &g);
        let shortcut = rand(len);
        let want: Vec<f32> = linear.iter().zip(&shortcut).map(|(y, r)| (y + r).max(0.0)).collect();
        let mut got = vec![0f32; len];
        if conv(&xs, &ws, Some(&bias), Some(Epilogue::Relu), Some(&shortcut), &mut got, &g, Some(&kept)) {
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-4, "{n}×{h}×{w} with a shortcut: off by {worst}");
        }
    }

    /// Strided by two (taps read de-interleaved rows) against the im2col route: ResNet's 3×3
    /// downsampling convs on even and odd sizes, rows wide enough for one row per block, two and
    /// four; a 7×7 and a 2×2 kernel (even taps read the odd half's end); a shortcut.
    #[test]
    fn strided_direct_conv_matches_im2col() {
        let mut seed = 3u32;
        let mut rand = |n: usize| test_values(&mut seed, n);
        for (n, c, h, w, k, pad) in [(1, 16, 9, 140, 3, 1), (2, 16, 8, 70, 3, 1), (3, 20, 7, 9, 3, 1), (5, 16, 4, 30, 3, 1), (1, 16, 11, 37, 7, 3), (2, 17, 6, 35, 2, 0)] {
            let (oh, ow) = ((h + 2 * pad - k) / 2 + 1, (w + 2 * pad - k) / 2 + 1);
            let m = 9;
            let g = ConvGeometry { input: [n, c, h, w], output: [n, m, oh, ow], kernel: [k, k], stride: [2, 2], dilation: [1, 1], pad: [pad, pad], groups: 1 };
            let (xs, ws, bias) = (rand(n * c * h * w), rand(m * c * k * k), rand(m));
            let len = n * m * oh * ow;
            let shortcut = rand(len);
            let mut linear = vec![0f32; len];
            super::super::cpu_kernels::grouped(&xs, &ws, Some(&bias), None, &mut linear, &g);
            let want: Vec<f32> = linear.iter().zip(&shortcut).map(|(y, r)| (y + r).max(0.0)).collect();
            let mut got = vec![f32::NAN; len];
            if conv(&xs, &ws, Some(&bias), Some(Epilogue::Relu), Some(&shortcut), &mut got, &g, None) {
                let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, |a, d| if d.is_nan() { f32::INFINITY } else { a.max(d) });
                assert!(worst < 1e-4, "{n}×{c}×{h}×{w}, {k}×{k} stride 2: off by {worst}");
            }
        }
    }
}

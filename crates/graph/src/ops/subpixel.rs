//! ConvTranspose in sub-pixel form, for the CubeCL backends. Burn's transposed conv multiplies
//! into a column buffer and scatters it back (col2im), copying its weight and input into the
//! layouts that wants on every forward: four or five kernels per LinkNet decoder, none of which
//! fusion can join. The outputs at `s·q + a` (phase `a`) of a stride-`s` transposed conv are an
//! ordinary stride-1 convolution of the input with the taps `k ≡ a + pad (mod s)`, so one conv with
//! `s²·OC` output channels computes every phase, its bias and activation fuse like any conv's, and
//! one interleave puts the phases in place (a stride-1 transposed conv is a plain conv).

use burn_backend::TensorData;

/// One spatial axis of a transposed conv in sub-pixel form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Axis {
    pub stride: usize,
    /// Taps of the stride-1 conv.
    pub taps: usize,
    /// Its (begin, end) zero padding.
    pub pad: (usize, usize),
    /// Positions it computes per phase; `rows · stride` covers `out`.
    pub rows: usize,
    /// The transposed conv's output length.
    pub out: usize,
    kernel: usize,
    /// The transposed conv's begin pad.
    pad_begin: usize,
}

impl Axis {
    /// An axis of input length `len`; `None` where the form does not apply (pads past the kernel).
    pub fn new(len: usize, kernel: usize, stride: usize, pads: (usize, usize), out_pad: usize) -> Option<Self> {
        let out = (stride * (len.checked_sub(1)?) + out_pad + kernel).checked_sub(pads.0 + pads.1)?;
        let (s, k, p) = (stride as isize, kernel as isize, pads.0 as isize);
        // Output `s·q + a` takes input `q − d` through tap `k = s·d + a + pad`: the offsets d any
        // phase uses. A tap t of the conv reads input `q + t − d_max`.
        let d_min = -((s - 1 + p).div_euclid(s));
        let d_max = (k - 1 - p).div_euclid(s);
        if d_max < 0 || out == 0 {
            return None;
        }
        let taps = (d_max - d_min + 1) as usize;
        let rows_needed = out.div_ceil(stride);
        let pad_end = (rows_needed as isize - len as isize - d_min).max(0) as usize;
        let rows = (len + d_max as usize + pad_end + 1).checked_sub(taps)?;
        (rows >= rows_needed).then_some(Self { stride, taps, pad: (d_max as usize, pad_end), rows, out, kernel, pad_begin: pads.0 })
    }

    /// The transposed conv's tap for phase `a` and conv tap `t`, if any.
    fn tap(&self, a: usize, t: usize) -> Option<usize> {
        let k = self.stride as isize * (self.pad.0 as isize - t as isize) + a as isize + self.pad_begin as isize;
        (0..self.kernel as isize).contains(&k).then_some(k as usize)
    }
}

/// The conv's weights from a transposed conv's `[IC, OC, KH, KW]` (one group), laid out
/// `[phase_h, phase_w, OC] × [TH, TW, IC]` — channels-last, as Burn's direct conv reads them.
pub fn weights(w: &[f32], ic: usize, oc: usize, axes: [Axis; 2]) -> TensorData {
    let [h, v] = axes;
    let (kh, kw) = (h.kernel, v.kernel);
    let channels = h.stride * v.stride * oc;
    let mut out = vec![0f32; channels * h.taps * v.taps * ic];
    for ah in 0..h.stride {
        for aw in 0..v.stride {
            for o in 0..oc {
                let c4 = (ah * v.stride + aw) * oc + o;
                for th in 0..h.taps {
                    let Some(y) = h.tap(ah, th) else { continue };
                    for tw in 0..v.taps {
                        let Some(x) = v.tap(aw, tw) else { continue };
                        let dst = ((c4 * h.taps + th) * v.taps + tw) * ic;
                        for c in 0..ic {
                            out[dst + c] = w[((c * oc + o) * kh + y) * kw + x];
                        }
                    }
                }
            }
        }
    }
    TensorData::new(out, [channels, h.taps, v.taps, ic])
}

/// The bias of every phase's channels.
pub fn bias(b: &[f32], axes: [Axis; 2]) -> TensorData {
    let phases = axes[0].stride * axes[1].stride;
    TensorData::new(b.repeat(phases), [phases * b.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ConvTranspose by its definition: input `i` scatters through tap `k` to `s·i + k − pad`.
    fn conv_transpose(x: &[f32], w: &[f32], [ic, oc, h, wd]: [usize; 4], k: [usize; 2], s: [usize; 2], pad: [usize; 2], out: [usize; 2]) -> Vec<f32> {
        let mut y = vec![0f32; oc * out[0] * out[1]];
        for c in 0..ic {
            for i in 0..h {
                for j in 0..wd {
                    for o in 0..oc {
                        for a in 0..k[0] {
                            for b in 0..k[1] {
                                let (p, q) = ((s[0] * i + a) as isize - pad[0] as isize, (s[1] * j + b) as isize - pad[1] as isize);
                                if p >= 0 && q >= 0 && (p as usize) < out[0] && (q as usize) < out[1] {
                                    y[(o * out[0] + p as usize) * out[1] + q as usize] +=
                                        x[(c * h + i) * wd + j] * w[((c * oc + o) * k[0] + a) * k[1] + b];
                                }
                            }
                        }
                    }
                }
            }
        }
        y
    }

    /// The sub-pixel conv (channels-last weights) and the interleave, on the host.
    fn sub_pixel(x: &[f32], w: &TensorData, [ic, oc, h, wd]: [usize; 4], axes: [Axis; 2]) -> Vec<f32> {
        let w = w.as_slice::<f32>().unwrap();
        let [ay, ax] = axes;
        let mut y = vec![0f32; oc * ay.out * ax.out];
        for ph in 0..ay.stride {
            for pw in 0..ax.stride {
                for o in 0..oc {
                    let c4 = (ph * ax.stride + pw) * oc + o;
                    for r in 0..ay.rows {
                        for q in 0..ax.rows {
                            let (p, t) = (r * ay.stride + ph, q * ax.stride + pw);
                            if p >= ay.out || t >= ax.out {
                                continue;
                            }
                            let mut acc = 0f32;
                            for th in 0..ay.taps {
                                for tw in 0..ax.taps {
                                    let (i, j) = ((r + th) as isize - ay.pad.0 as isize, (q + tw) as isize - ax.pad.0 as isize);
                                    if i < 0 || j < 0 || i as usize >= h || j as usize >= wd {
                                        continue;
                                    }
                                    for c in 0..ic {
                                        acc += x[(c * h + i as usize) * wd + j as usize] * w[((c4 * ay.taps + th) * ax.taps + tw) * ic + c];
                                    }
                                }
                            }
                            y[(o * ay.out + p) * ax.out + t] = acc;
                        }
                    }
                }
            }
        }
        y
    }

    #[test]
    fn sub_pixel_form_matches_the_definition() {
        // (kernel, stride, pads, output padding): LinkNet's decoders, its stride-1 one, DB's
        // upsampling, and shapes with overlaps, crops and pads past a stride.
        let cases = [
            ([3, 3], [2, 2], [(1, 1), (1, 1)], [1, 1]),
            ([3, 3], [1, 1], [(1, 1), (1, 1)], [0, 0]),
            ([2, 2], [2, 2], [(0, 0), (0, 0)], [0, 0]),
            ([4, 3], [2, 3], [(1, 2), (0, 1)], [0, 2]),
            ([5, 5], [3, 2], [(2, 2), (3, 1)], [1, 0]),
            ([3, 1], [2, 1], [(0, 0), (0, 0)], [0, 0]),
        ];
        let (ic, oc, h, wd) = (3, 2, 5, 4);
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for (k, s, pads, op) in cases {
            let x: Vec<f32> = (0..ic * h * wd).map(|_| next()).collect();
            let w: Vec<f32> = (0..ic * oc * k[0] * k[1]).map(|_| next()).collect();
            let axes = [Axis::new(h, k[0], s[0], pads[0], op[0]).unwrap(), Axis::new(wd, k[1], s[1], pads[1], op[1]).unwrap()];
            let out = [axes[0].out, axes[1].out];
            // The definition crops the begin pads; the end pads only shorten the output.
            let want = conv_transpose(&x, &w, [ic, oc, h, wd], k, s, [pads[0].0, pads[1].0], out);
            let got = sub_pixel(&x, &weights(&w, ic, oc, axes), [ic, oc, h, wd], axes);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((a - b).abs() < 1e-5, "case k {k:?} s {s:?} pads {pads:?}: output {i} {a} vs {b}");
            }
        }
    }
}

//! OpenCV's `getAffineTransform`/`warpAffine` and `getPerspectiveTransform`/`warpPerspective`
//! (bilinear, black border, 8-bit), bit for bit. docTR cuts its rotated crops and turns its pages
//! with them; a crop one grey level off is enough to flip an unsure orientation classifier or
//! recogniser, so Kiln repeats OpenCV's arithmetic: the map solved by LU in doubles and inverted
//! in doubles, then OpenCV 5's float
//! kernel (what docTR 1.1.0 installs) as its x86-64 AVX2 build runs it: source coordinates and
//! bilinear weights in single precision with fused multiply-adds, rounded half to even. Checked
//! against `cv2.warpAffine` and `cv2.warpPerspective` 5.0 pixel for pixel by the goldens; OpenCV 4's fixed-point kernel
//! differs by one grey level on a few percent of pixels.

use image::{ImageBuffer, Pixel};
use rayon::prelude::*;

/// `cv2.getAffineTransform(src, dst)`: the 2×3 map (row-major) taking the three `src` points to
/// the three `dst` points, from OpenCV's 6×6 system and its LU solver. None if the points are
/// collinear.
pub fn affine_transform(src: [[f32; 2]; 3], dst: [[f32; 2]; 3]) -> Option<[f64; 6]> {
    let mut a = [0f64; 36];
    let mut b = [0f64; 6];
    for i in 0..3 {
        let (j, k) = (i * 12, i * 12 + 6);
        let (x, y) = (src[i][0] as f64, src[i][1] as f64);
        a[j] = x;
        a[k + 3] = x;
        a[j + 1] = y;
        a[k + 4] = y;
        a[j + 2] = 1.0;
        a[k + 5] = 1.0;
        b[i * 2] = dst[i][0] as f64;
        b[i * 2 + 1] = dst[i][1] as f64;
    }
    lu_solve(&mut a, &mut b, 6).then_some(b)
}

/// OpenCV's `LUImpl` for one right-hand side: Gaussian elimination with partial pivoting, the
/// same operations in the same order. Solves in place; false if singular.
fn lu_solve(a: &mut [f64], b: &mut [f64], m: usize) -> bool {
    let eps = f64::EPSILON * 100.0;
    for i in 0..m {
        let mut k = i;
        for j in i + 1..m {
            if a[j * m + i].abs() > a[k * m + i].abs() {
                k = j;
            }
        }
        if a[k * m + i].abs() < eps {
            return false;
        }
        if k != i {
            for j in i..m {
                a.swap(i * m + j, k * m + j);
            }
            b.swap(i, k);
        }
        let d = -1.0 / a[i * m + i];
        for j in i + 1..m {
            let alpha = a[j * m + i] * d;
            for k in i + 1..m {
                a[j * m + k] += alpha * a[i * m + k];
            }
            b[j] += alpha * b[i];
        }
    }
    for i in (0..m).rev() {
        let mut s = b[i];
        for k in i + 1..m {
            s -= a[i * m + k] * b[k];
        }
        b[i] = s / a[i * m + i];
    }
    true
}

/// `cv2.warpAffine(src, m, (w, h))` with OpenCV's defaults (bilinear, constant black border):
/// `m` maps source to destination, as docTR passes it.
pub fn warp_affine<P: Pixel<Subpixel = u8> + Sync>(src: &ImageBuffer<P, Vec<u8>>, m: [f64; 6], w: u32, h: u32) -> ImageBuffer<P, Vec<u8>> {
    // The inverse in doubles, written as cv::warpAffine computes it; the kernel then works in floats.
    let mut m = m;
    let det = m[0] * m[4] - m[1] * m[3];
    let d = if det != 0.0 { 1.0 / det } else { 0.0 };
    let (a11, a22) = (m[4] * d, m[0] * d);
    m[0] = a11;
    m[1] *= -d;
    m[3] *= -d;
    m[4] = a22;
    let (b1, b2) = (-m[0] * m[2] - m[1] * m[5], -m[3] * m[2] - m[4] * m[5]);
    m[2] = b1;
    m[5] = b2;
    let m = m.map(|v| v as f32);
    warp(src, w, h, |xf, yf, vector| {
        if vector {
            (m[0].mul_add(xf, yf * m[1] + m[2]), m[3].mul_add(xf, yf * m[4] + m[5]))
        } else {
            (xf.mul_add(m[0], yf * m[1]) + m[2], xf.mul_add(m[3], yf * m[4]) + m[5])
        }
    })
}

/// `cv2.getPerspectiveTransform(src, dst)` with its default LU solver: the 3×3 map (row-major)
/// taking the four `src` points to the four `dst` points. None if the system is singular.
pub fn perspective_transform(src: [[f32; 2]; 4], dst: [[f32; 2]; 4]) -> Option<[f64; 9]> {
    let mut a = [0f64; 64];
    let mut b = [0f64; 8];
    for i in 0..4 {
        let ([sx, sy], [dx, dy]) = (src[i], dst[i]);
        let (r, s) = (i * 8, (i + 4) * 8);
        a[r] = sx as f64;
        a[s + 3] = sx as f64;
        a[r + 1] = sy as f64;
        a[s + 4] = sy as f64;
        a[r + 2] = 1.0;
        a[s + 5] = 1.0;
        // Products of two floats, rounded as floats before they widen, as OpenCV writes them.
        a[r + 6] = (-sx * dx) as f64;
        a[r + 7] = (-sy * dx) as f64;
        a[s + 6] = (-sx * dy) as f64;
        a[s + 7] = (-sy * dy) as f64;
        b[i] = dx as f64;
        b[i + 4] = dy as f64;
    }
    lu_solve(&mut a, &mut b, 8).then_some([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], 1.0])
}

/// `cv2.warpPerspective(src, m, (w, h))` with OpenCV's defaults (bilinear, constant black
/// border): `m` maps source to destination. A singular `m` gives a black image, as in OpenCV.
pub fn warp_perspective<P: Pixel<Subpixel = u8> + Sync>(src: &ImageBuffer<P, Vec<u8>>, m: [f64; 9], w: u32, h: u32) -> ImageBuffer<P, Vec<u8>> {
    // cv::invert's closed form for 3×3 doubles (DECOMP_LU takes it for n ≤ 3); zeros if singular.
    let s = |r: usize, c: usize| m[r * 3 + c];
    let det = s(0, 0) * (s(1, 1) * s(2, 2) - s(1, 2) * s(2, 1)) - s(0, 1) * (s(1, 0) * s(2, 2) - s(1, 2) * s(2, 0))
        + s(0, 2) * (s(1, 0) * s(2, 1) - s(1, 1) * s(2, 0));
    let inv = if det != 0.0 {
        let d = 1.0 / det;
        [
            (s(1, 1) * s(2, 2) - s(1, 2) * s(2, 1)) * d,
            (s(0, 2) * s(2, 1) - s(0, 1) * s(2, 2)) * d,
            (s(0, 1) * s(1, 2) - s(0, 2) * s(1, 1)) * d,
            (s(1, 2) * s(2, 0) - s(1, 0) * s(2, 2)) * d,
            (s(0, 0) * s(2, 2) - s(0, 2) * s(2, 0)) * d,
            (s(0, 2) * s(1, 0) - s(0, 0) * s(1, 2)) * d,
            (s(1, 0) * s(2, 1) - s(1, 1) * s(2, 0)) * d,
            (s(0, 1) * s(2, 0) - s(0, 0) * s(2, 1)) * d,
            (s(0, 0) * s(1, 1) - s(0, 1) * s(1, 0)) * d,
        ]
    } else {
        [0.0; 9]
    };
    let m = inv.map(|v| v as f32);
    warp(src, w, h, |xf, yf, vector| {
        if vector {
            let ww = m[6].mul_add(xf, yf * m[7] + m[8]);
            (m[0].mul_add(xf, yf * m[1] + m[2]) / ww, m[3].mul_add(xf, yf * m[4] + m[5]) / ww)
        } else {
            let ww = xf.mul_add(m[6], yf * m[7]) + m[8];
            ((xf.mul_add(m[0], yf * m[1]) + m[2]) / ww, (xf.mul_add(m[3], yf * m[4]) + m[5]) / ww)
        }
    })
}

/// The w × h output, each pixel sampled where `source(x, y, vector)` maps it. OpenCV's AVX2
/// kernels do 16 columns at a time (`vector` = true) and the last w % 16 in a scalar tail,
/// which the compiler contracted differently, so the map is told which one it stands for.
fn warp<P, F>(src: &ImageBuffer<P, Vec<u8>>, w: u32, h: u32, source: F) -> ImageBuffer<P, Vec<u8>>
where
    P: Pixel<Subpixel = u8> + Sync,
    F: Fn(f32, f32, bool) -> (f32, f32) + Sync,
{
    let cn = P::CHANNEL_COUNT as usize;
    let mut out = ImageBuffer::<P, Vec<u8>>::new(w, h);
    if w == 0 || h == 0 {
        return out;
    }
    let vector_cols = (w as usize / 16) * 16;
    let buf: &mut [u8] = &mut out;
    buf.par_chunks_mut(w as usize * cn).enumerate().for_each(|(y, row)| {
        for (x, px) in row.chunks_exact_mut(cn).enumerate() {
            let (sx, sy) = source(x as f32, y as f32, x < vector_cols);
            bilinear(src, sx, sy, px);
        }
    });
    out
}

/// One output pixel sampled at (`sx`, `sy`): taps outside the source are black.
fn bilinear<P: Pixel<Subpixel = u8> + Sync>(src: &ImageBuffer<P, Vec<u8>>, sx: f32, sy: f32, px: &mut [u8]) {
    let (fx, fy) = (sx.floor(), sy.floor());
    let (w, h) = (src.width() as i64, src.height() as i64);
    // Also catches NaN and coordinates beyond i32, which OpenCV treats as outside.
    if !(fx >= -1.0 && fx < w as f32 && fy >= -1.0 && fy < h as f32) {
        px.fill(0);
        return;
    }
    let (ix, iy) = (fx as i64, fy as i64);
    let (a, b) = (sx - fx, sy - fy);
    let cn = px.len();
    let raw = src.as_raw();
    let tap = |x: i64, y: i64, c: usize| -> f32 {
        if (0..w).contains(&x) && (0..h).contains(&y) { raw[(y * w + x) as usize * cn + c] as f32 } else { 0.0 }
    };
    for (c, out) in px.iter_mut().enumerate() {
        let (p00, p01) = (tap(ix, iy, c), tap(ix + 1, iy, c));
        let (p10, p11) = (tap(ix, iy + 1, c), tap(ix + 1, iy + 1, c));
        let top = a.mul_add(p01 - p00, p00);
        let bottom = a.mul_add(p11 - p10, p10);
        *out = b.mul_add(bottom - top, top).round_ties_even().clamp(0.0, 255.0) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma};

    #[test]
    fn affine_transform_solves_three_points() {
        let m = affine_transform([[10.0, 20.0], [110.0, 20.0], [110.0, 50.0]], [[0.0, 0.0], [99.0, 0.0], [99.0, 29.0]]).unwrap();
        let apply = |x: f64, y: f64| (m[0] * x + m[1] * y + m[2], m[3] * x + m[4] * y + m[5]);
        let (x, y) = apply(110.0, 50.0);
        assert!((x - 99.0).abs() < 1e-9 && (y - 29.0).abs() < 1e-9, "{x} {y}");
        assert!(affine_transform([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]], [[0.0, 0.0]; 3]).is_none());
    }

    #[test]
    fn integer_shift_copies_pixels_and_fills_black() {
        let src = GrayImage::from_fn(8, 6, |x, y| Luma([(x * 30 + y) as u8]));
        let out = warp_affine(&src, [1.0, 0.0, -2.0, 0.0, 1.0, -1.0], 8, 6);
        assert_eq!(out.get_pixel(0, 0).0[0], src.get_pixel(2, 1).0[0]);
        assert_eq!(out.get_pixel(5, 4).0[0], src.get_pixel(7, 5).0[0]);
        assert_eq!(out.get_pixel(7, 5).0[0], 0);
    }

    #[test]
    fn half_pixel_shift_rounds_the_mean_up() {
        let src = GrayImage::from_fn(4, 1, |x, _| Luma([[10, 11, 20, 40][x as usize]]));
        let out = warp_affine(&src, [1.0, 0.0, -0.5, 0.0, 1.0, 0.0], 3, 1);
        // (10 + 11) / 2 = 10.5 and (11 + 20) / 2 = 15.5 round half to even.
        assert_eq!(out.as_raw(), &vec![10, 16, 30]);
    }
}

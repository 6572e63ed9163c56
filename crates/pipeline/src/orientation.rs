//! Page orientation as docTR 1.1.0 estimates it (`estimate_orientation`: the page classifier's
//! quarter turn, refined by the angle of the text lines in the detection map) and straightens
//! pages (`rotate_image` with expansion, then `remove_image_padding`).

use image::{GrayImage, Luma, Pixel, RgbImage};
use imageproc::contours::find_contours;

use crate::min_rect::min_area_rect;
use crate::warp::warp_affine;

/// Contours kept for the estimate: the most elongated ones.
const N_CONTOURS: usize = 70;
/// Long side / short side above which a contour is a line of text.
const LINE_RATIO: f64 = 3.0;
/// Below this the page classifier's answer is ignored.
const MIN_CONFIDENCE: f32 = 0.2;
/// Contours of smaller area are noise.
const LOWER_AREA: f64 = 100.0;

/// docTR's `estimate_orientation` on a binary detection map (non-zero = text): the page's angle
/// in degrees, counter-clockwise, in (−180, 180]. `general` is the page classifier's
/// (angle, confidence).
pub fn estimate_orientation(seg: &GrayImage, general: Option<(i32, f32)>) -> i32 {
    let (page_orientation, confidence) = general.unwrap_or((0, 0.0));
    let confident = confidence >= MIN_CONFIDENCE;
    let base = if confident { page_orientation } else { 0 };
    let thresh = if confident {
        rotate_gray(seg, -base as f64)
    } else {
        // Without a trusted quarter turn, words are merged into lines first.
        let (w, h) = seg.dimensions();
        dilate(seg, (w / 100).max(1) as usize, (h / 100).max(1) as usize)
    };

    // Every contour (outer borders and holes, as OpenCV's RETR_LIST) of area > LOWER_AREA.
    let mut framed = GrayImage::new(thresh.width() + 2, thresh.height() + 2);
    image::imageops::replace(&mut framed, &thresh, 1, 1);
    let mut candidates: Vec<(f64, f64, f64)> = find_contours::<i32>(&framed)
        .into_iter()
        .filter_map(|c| {
            let pts: Vec<(i64, i64)> = c.points.iter().map(|p| (p.x as i64 - 1, p.y as i64 - 1)).collect();
            let area = shoelace(&pts.iter().map(|&(x, y)| (x as f64, y as f64)).collect::<Vec<_>>());
            if area <= LOWER_AREA {
                return None;
            }
            // cv2.minAreaRect's single-precision (w, h, angle), widened as Python reads them.
            let (_, (w, h), angle) = min_area_rect(&pts);
            let (mut w, mut h, mut angle) = (w as f64, h as f64, angle as f64);
            let ratio = if w == 0.0 || h == 0.0 { 0.0 } else { (w / h).max(h / w) };
            // docTR's normalisation: w is the long side, the angle that of the long side.
            if w < h {
                (w, h) = (h, w);
                angle -= 90.0;
            }
            while angle <= -90.0 {
                angle += 180.0;
            }
            while angle > 90.0 {
                angle -= 180.0;
            }
            Some((ratio, angle, if h > 0.0 { w / h } else { 0.0 }))
        })
        .collect();
    // The most elongated first (a stable sort keeps ties in contour order, as heapq.nlargest).
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
    candidates.truncate(N_CONTOURS);
    let mut angles: Vec<f64> = candidates.iter().filter(|(_, _, long_by_short)| *long_by_short > LINE_RATIO).map(|c| c.1).collect();

    let skew = if angles.is_empty() {
        0
    } else {
        angles.sort_by(f64::total_cmp);
        // statistics.median_low, then Python's round (ties to even).
        let skew = angles[(angles.len() - 1) / 2].round_ties_even() as i32;
        if skew.abs() == 90 { 0 } else { skew }
    };
    let mut angle = base + skew;
    while angle > 180 {
        angle -= 360;
    }
    while angle <= -180 {
        angle += 360;
    }
    if confident && (skew % 90 == 0 || (skew.abs() == page_orientation.abs() && page_orientation != 0)) {
        return page_orientation;
    }
    angle
}

fn shoelace(pts: &[(f64, f64)]) -> f64 {
    let n = pts.len();
    (0..n).map(|i| pts[i].0 * pts[(i + 1) % n].1 - pts[(i + 1) % n].0 * pts[i].1).sum::<f64>().abs() / 2.0
}

/// OpenCV's `dilate` with a `kx`×`ky` rectangle anchored at its centre; outside the image
/// counts as empty.
fn dilate(img: &GrayImage, kx: usize, ky: usize) -> GrayImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (ax, ay) = (kx / 2, ky / 2);
    let src = img.as_raw();
    let mut rows = vec![0u8; w * h];
    for y in 0..h {
        for x in 0..w {
            let lo = x.saturating_sub(ax);
            let hi = (x + kx - ax).min(w);
            rows[y * w + x] = src[y * w + lo..y * w + hi].iter().copied().max().unwrap_or(0);
        }
    }
    GrayImage::from_fn(w as u32, h as u32, |x, y| {
        let (x, y) = (x as usize, y as usize);
        let lo = y.saturating_sub(ay);
        let hi = (y + ky - ay).min(h);
        Luma([(lo..hi).map(|yy| rows[yy * w + x]).max().unwrap_or(0)])
    })
}

/// OpenCV's `getRotationMatrix2D((w/2, h/2), angle, 1)`: source → destination, counter-clockwise
/// on screen for a positive angle.
fn rotation(w: f64, h: f64, angle: f64) -> [f64; 6] {
    let (sin, cos) = angle.to_radians().sin_cos();
    let (cx, cy) = (w / 2.0, h / 2.0);
    [cos, sin, (1.0 - cos) * cx - sin * cy, -sin, cos, sin * cx + (1.0 - cos) * cy]
}

fn rotate_gray(img: &GrayImage, angle: f64) -> GrayImage {
    warp_affine(img, rotation(img.width() as f64, img.height() as f64, angle), img.width(), img.height())
}

/// docTR's `rotate_image(page, angle, expand)`: with `expand`, the page is first padded (centred)
/// to hold its rotated self, rotated about its centre, then padded back to the page's aspect
/// ratio. Uncovered pixels are black.
pub fn rotate_page(page: &RgbImage, angle: f64, expand: bool) -> RgbImage {
    let (h, w) = (page.height() as f64, page.width() as f64);
    let padded = if expand {
        let (eh, ew) = expanded_shape(h, w, angle);
        let hp = (eh - h).ceil().max(0.0) as u32;
        let wp = (ew - w).ceil().max(0.0) as u32;
        pad(page, hp, wp)
    } else {
        page.clone()
    };
    let (pw, ph) = padded.dimensions();
    let mut out = warp_affine(&padded, rotation(pw as f64, ph as f64, angle), pw, ph);
    if expand && (h / w) != (ph as f64 / pw as f64) {
        let (rh, rw) = (ph as f64, pw as f64);
        let (hp, wp) = if rh / rw > h / w { (0, (rh * w / h - rw) as u32) } else { ((rw * h / w - rh) as u32, 0) };
        out = pad(&out, hp, wp);
    }
    out
}

/// docTR's `compute_expanded_shape`: (height, width) of the box holding the page turned by `angle`.
fn expanded_shape(h: f64, w: f64, angle: f64) -> (f64, f64) {
    let (sin, cos) = angle.to_radians().sin_cos();
    let corners = [(w / 2.0, h / 2.0), (-w / 2.0, h / 2.0)];
    let (mut mx, mut my) = (0f64, 0f64);
    for (x, y) in corners {
        mx = mx.max((x * cos - y * sin).abs());
        my = my.max((x * sin + y * cos).abs());
    }
    (2.0 * my, 2.0 * mx)
}

/// Black padding: `hp` rows split top (half, rounded down) and bottom, `wp` columns likewise.
fn pad(img: &RgbImage, hp: u32, wp: u32) -> RgbImage {
    if hp == 0 && wp == 0 {
        return img.clone();
    }
    let mut out = RgbImage::new(img.width() + wp, img.height() + hp);
    image::imageops::replace(&mut out, img, (wp / 2) as i64, (hp / 2) as i64);
    out
}

/// docTR's `remove_image_padding`: the page cut to the bounding box of its non-black pixels.
pub fn remove_image_padding(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for (x, y, p) in img.enumerate_pixels() {
        if p.channels().iter().any(|&c| c != 0) {
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
    }
    if x0 == u32::MAX || (x0, y0, x1, y1) == (0, 0, w - 1, h - 1) {
        return img.clone();
    }
    image::imageops::crop_imm(img, x0, y0, x1 - x0 + 1, y1 - y0 + 1).to_image()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary map with text-line-like bars turned by `angle` degrees (counter-clockwise).
    fn lines_map(angle: f64) -> GrayImage {
        let mut img = GrayImage::new(400, 400);
        for row in 0..8 {
            for y in 0..8 {
                for x in 60..340 {
                    img.put_pixel(x, 60 + row * 36 + y, Luma([255]));
                }
            }
        }
        rotate_gray(&img, angle)
    }

    // Expected values are docTR's `estimate_orientation` on the same maps: the angle to turn the
    // page by (counter-clockwise) to straighten it.
    #[test]
    fn skew_of_text_lines() {
        assert_eq!(estimate_orientation(&lines_map(0.0), None), 0);
        assert_eq!(estimate_orientation(&lines_map(7.0), None), -7);
        assert_eq!(estimate_orientation(&lines_map(-4.0), None), 4);
    }

    #[test]
    fn classifier_quarter_turn_is_combined_with_the_lines() {
        assert_eq!(estimate_orientation(&lines_map(93.0), Some((90, 0.9))), 87);
        assert_eq!(estimate_orientation(&lines_map(90.0), Some((90, 0.9))), 90);
        // An unconfident classifier is ignored.
        assert_eq!(estimate_orientation(&lines_map(5.0), Some((180, 0.1))), -5);
    }

    #[test]
    fn expanded_rotation_keeps_the_aspect_and_the_content() {
        let page = RgbImage::from_pixel(200, 100, image::Rgb([200, 200, 200]));
        let turned = rotate_page(&page, 90.0, true);
        assert_eq!(turned.width() * 100, turned.height() * 200, "aspect kept: {:?}", turned.dimensions());
        let content = remove_image_padding(&turned);
        // The page stood up: 100 wide, 200 tall (±1 px of interpolation at the edges).
        assert!(content.width().abs_diff(100) <= 2 && content.height().abs_diff(200) <= 2, "{:?}", content.dimensions());
    }
}

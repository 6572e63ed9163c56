//! Box geometry in docTR's conventions (coordinates relative to the page, in [0, 1]) and crops.

use geo::{Coord, MinimumRotatedRect, MultiPoint, Point};
use image::RgbImage;

use crate::warp::{affine_transform, perspective_transform, warp_affine, warp_perspective};

/// A word's place on the page.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Geometry {
    /// xmin, ymin, xmax, ymax.
    Straight([f32; 4]),
    /// Four corners: top-left, top-right, bottom-right, bottom-left.
    Rotated([[f32; 2]; 4]),
}

impl Geometry {
    /// The axis-aligned box enclosing the geometry.
    pub fn bounds(&self) -> [f32; 4] {
        match self {
            Geometry::Straight(b) => *b,
            Geometry::Rotated(p) => {
                let xs = p.map(|q| q[0]);
                let ys = p.map(|q| q[1]);
                let min = |v: [f32; 4]| v.into_iter().fold(f32::MAX, f32::min);
                let max = |v: [f32; 4]| v.into_iter().fold(f32::MIN, f32::max);
                [min(xs), min(ys), max(xs), max(ys)]
            }
        }
    }

    /// The four corners, TL, TR, BR, BL for a straight box.
    pub fn corners(&self) -> [[f32; 2]; 4] {
        match *self {
            Geometry::Straight([x0, y0, x1, y1]) => [[x0, y0], [x1, y0], [x1, y1], [x0, y1]],
            Geometry::Rotated(p) => p,
        }
    }

    /// Maps every coordinate through `f(x, y)`.
    pub fn map(&self, f: impl Fn(f32, f32) -> (f32, f32)) -> Geometry {
        match self {
            Geometry::Straight([x0, y0, x1, y1]) => {
                let (a, b) = f(*x0, *y0);
                let (c, d) = f(*x1, *y1);
                Geometry::Straight([a, b, c, d])
            }
            Geometry::Rotated(p) => Geometry::Rotated(p.map(|[x, y]| {
                let (a, b) = f(x, y);
                [a, b]
            })),
        }
    }
}

/// docTR's `order_points`: sort corners by angle around the centroid, start at the smallest
/// x + y, and make the order clockwise on screen (TL, TR, BR, BL).
pub fn order_points(pts: [(f64, f64); 4]) -> [(f64, f64); 4] {
    let cx = pts.iter().map(|p| p.0).sum::<f64>() / 4.0;
    let cy = pts.iter().map(|p| p.1).sum::<f64>() / 4.0;
    let mut p = pts.to_vec();
    p.sort_by(|a, b| (a.1 - cy).atan2(a.0 - cx).total_cmp(&(b.1 - cy).atan2(b.0 - cx)));
    let start = (0..4).min_by(|&i, &j| (p[i].0 + p[i].1).total_cmp(&(p[j].0 + p[j].1))).unwrap_or(0);
    p.rotate_left(start);
    let area: f64 = (0..4).map(|i| p[i].0 * p[(i + 1) % 4].1 - p[i].1 * p[(i + 1) % 4].0).sum();
    if area < 0.0 {
        p.reverse();
        p.rotate_right(1);
    }
    [p[0], p[1], p[2], p[3]]
}

/// Corners and the lengths of the first two sides.
pub type Rect = ([(f64, f64); 4], f64, f64);

/// A minimum-area rectangle around `pts`.
pub fn min_area_rect(pts: &[(f64, f64)]) -> Option<Rect> {
    let mp: MultiPoint<f64> = pts.iter().map(|&(x, y)| Point::new(x, y)).collect();
    let rect = mp.minimum_rotated_rect()?;
    let c: Vec<Coord<f64>> = rect.exterior().0.clone();
    if c.len() < 4 {
        return None;
    }
    let corners = [(c[0].x, c[0].y), (c[1].x, c[1].y), (c[2].x, c[2].y), (c[3].x, c[3].y)];
    let side = |a: (f64, f64), b: (f64, f64)| ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt();
    Some((corners, side(corners[0], corners[1]), side(corners[1], corners[2])))
}

/// docTR's `resolve_enclosing_rbbox`: the minimum-area rectangle around every corner of the
/// children, fitted at 1024× scale, corners ordered TL, TR, BR, BL.
pub fn enclosing_rotated(points: impl Iterator<Item = [f32; 2]>) -> Option<[[f32; 2]; 4]> {
    const SCALE: f64 = 1024.0;
    let pts: Vec<(f64, f64)> = points.map(|[x, y]| (x as f64 * SCALE, y as f64 * SCALE)).collect();
    let (corners, _, _) = min_area_rect(&pts)?;
    Some(order_points(corners).map(|(x, y)| [(x / SCALE) as f32, (y / SCALE) as f32]))
}

/// Maps a box found on a padded square model input back to the page (docTR's `_remove_padding`):
/// only the longer side filled the input, the shorter was padded.
pub fn remove_padding(g: &Geometry, page_h: u32, page_w: u32, symmetric: bool) -> Geometry {
    let (h, w) = (page_h as f32, page_w as f32);
    let clip = |v: f32| v.clamp(0.0, 1.0);
    g.map(|x, y| {
        if h > w {
            let x = if symmetric { (x - 0.5) * h / w + 0.5 } else { x * h / w };
            (clip(x), y)
        } else if w > h {
            let y = if symmetric { (y - 0.5) * w / h + 0.5 } else { y * w / h };
            (x, clip(y))
        } else {
            (x, y)
        }
    })
}

/// The pixels of a straight box (docTR's `extract_crops`): relative → absolute, rounded, max
/// side inclusive. None if the crop is empty.
pub fn straight_crop(page: &RgbImage, b: [f32; 4]) -> Option<RgbImage> {
    let (w, h) = (page.width() as f32, page.height() as f32);
    let x0 = (b[0] * w).round().clamp(0.0, w) as u32;
    let y0 = (b[1] * h).round().clamp(0.0, h) as u32;
    let x1 = ((b[2] * w).round() + 1.0).clamp(0.0, w) as u32;
    let y1 = ((b[3] * h).round() + 1.0).clamp(0.0, h) as u32;
    if x1 <= x0 || y1 <= y0 {
        return None;
    }
    Some(image::imageops::crop_imm(page, x0, y0, x1 - x0, y1 - y0).to_image())
}

/// The pixels of a rotated box (docTR's `extract_rcrops`): OpenCV's affine map taking TL, TR, BR
/// to the corners of an upright d1 × d2 image, warped exactly as `cv2.warpAffine`, black outside
/// the page. Points and lengths in single precision, as docTR casts them.
pub fn rotated_crop(page: &RgbImage, p: [[f32; 2]; 4]) -> Option<RgbImage> {
    let (w, h) = (page.width() as f64, page.height() as f64);
    let abs = p.map(|[x, y]| [(x as f64 * w) as f32, (y as f64 * h) as f32]);
    let dist = |a: [f32; 2], b: [f32; 2]| ((a[0] - b[0]) * (a[0] - b[0]) + (a[1] - b[1]) * (a[1] - b[1])).sqrt();
    let (d1, d2) = (dist(abs[0], abs[1]), dist(abs[1], abs[2]));
    let (cw, ch) = (d1 as u32, d2 as u32);
    if cw == 0 || ch == 0 {
        return None;
    }
    let m = affine_transform([abs[0], abs[1], abs[2]], [[0.0, 0.0], [d1 - 1.0, 0.0], [d1 - 1.0, d2 - 1.0]])?;
    Some(warp_affine(page, m, cw, ch))
}

/// docTR's `extract_rcrops(assume_horizontal=True)`, used when pages are known upright: the
/// corners left of the centroid give top-left and bottom-left (by y), the others top-right and
/// bottom-right, and OpenCV's perspective warp maps them onto an upright rectangle. Corners and
/// lengths in double precision, the warp's control points in single, as docTR has them.
pub fn horizontal_crop(page: &RgbImage, p: [[f32; 2]; 4]) -> Option<RgbImage> {
    let (w, h) = (page.width() as f64, page.height() as f64);
    let abs = p.map(|[x, y]| (x as f64 * w, y as f64 * h));
    let cx = (((abs[0].0 + abs[1].0) + abs[2].0) + abs[3].0) / 4.0;
    let by_y = |mut v: Vec<(f64, f64)>| {
        v.sort_by(|a, b| a.1.total_cmp(&b.1));
        v
    };
    let left = by_y(abs.iter().copied().filter(|q| q.0 < cx).collect());
    let right = by_y(abs.iter().copied().filter(|q| q.0 >= cx).collect());
    let (tl, bl) = (*left.first()?, *left.last()?);
    let (tr, br) = (*right.first()?, *right.last()?);
    let dist = |a: (f64, f64), b: (f64, f64)| ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt();
    let cw = (dist(tr, tl) as u32).max(dist(br, bl) as u32);
    let ch = (dist(bl, tl) as u32).max(dist(br, tr) as u32);
    if cw < 1 || ch < 1 {
        return None;
    }
    let (xw, yh) = ((cw - 1) as f32, (ch - 1) as f32);
    let src = [tl, bl, tr, br].map(|(x, y)| [x as f32, y as f32]);
    let m = perspective_transform(src, [[0.0, 0.0], [0.0, yh], [xw, 0.0], [xw, yh]])?;
    Some(warp_perspective(page, m, cw, ch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn order_points_is_tl_tr_br_bl() {
        let shuffled = [(10.0, 5.0), (0.0, 0.0), (0.0, 5.0), (10.0, 0.0)];
        assert_eq!(order_points(shuffled), [(0.0, 0.0), (10.0, 0.0), (10.0, 5.0), (0.0, 5.0)]);
    }

    #[test]
    fn padding_removed_on_the_short_side() {
        // A page twice as wide as tall fills the upper-middle half of a square input.
        let g = Geometry::Straight([0.1, 0.25, 0.9, 0.75]);
        let Geometry::Straight(b) = remove_padding(&g, 100, 200, true) else { panic!() };
        assert_eq!(b, [0.1, 0.0, 0.9, 1.0]);
    }

    #[test]
    fn rotated_crop_of_an_upright_box_equals_the_straight_crop() {
        let page = RgbImage::from_fn(40, 20, |x, y| Rgb([(x * 6) as u8, (y * 12) as u8, 7]));
        let p = [[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]];
        let r = rotated_crop(&page, p).unwrap();
        assert_eq!(r.dimensions(), (20, 10));
        assert_eq!(r.get_pixel(0, 0), page.get_pixel(10, 5));
        // docTR maps BR to (d1 − 1, d2 − 1): the last pixel samples BR itself.
        assert_eq!(r.get_pixel(19, 9), page.get_pixel(30, 15));
    }
}

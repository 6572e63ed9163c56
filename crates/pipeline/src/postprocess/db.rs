//! Probability map → word boxes, as docTR's `DBPostProcessor` (and, without the final size
//! filter, its LinkNet and FAST post-processors) does it: binarise, clean with a
//! morphological pass, take external contours, score each, expand ("unclip") by
//! `area · ratio / perimeter` with a round-joined polygon offset, and fit a straight or
//! minimum-area rotated box. The offset is Clipper 6.4.2 through geo-clipper, the library pyclipper
//! wraps, with pyclipper's arc tolerance: the grown polygon has the same integer vertices as
//! docTR's, so the boxes (and the crops cut from them) match to the pixel.

use geo::{BoundingRect, LineString, Point, Polygon};
use geo_clipper::{Clipper, EndType, JoinType};
use image::{GrayImage, Luma};
use imageproc::contours::{BorderType, find_contours};
use imageproc::distance_transform::Norm;

use crate::card::{Morphology, PostProcess};
use crate::geometry::{Geometry, order_points};
use crate::min_rect::{box_points, min_area_rect};

/// Contours whose bounding box is thinner than this (pixels) are noise.
const MIN_SIZE_BOX: f64 = 2.0;

/// A detected word: geometry relative to the map, objectness score.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub geometry: Geometry,
    pub score: f32,
}

/// Boxes of one `height`×`width` probability map (row-major).
pub fn boxes(prob: &[f32], height: usize, width: usize, params: &PostProcess, straight: bool) -> Vec<Detection> {
    assert_eq!(prob.len(), height * width, "probability map size");
    let bitmap = binarise(prob, height, width, params);
    // OpenCV treats everything outside the image as background; imageproc's border following
    // needs that background to exist, so the bitmap gets a one-pixel empty frame.
    let mut framed = GrayImage::new(width as u32 + 2, height as u32 + 2);
    image::imageops::replace(&mut framed, &bitmap, 1, 1);
    let mut out = vec![];
    for contour in find_contours::<i32>(&framed) {
        if contour.border_type != BorderType::Outer || contour.parent.is_some() {
            continue;
        }
        let pts: Vec<(f64, f64)> = contour.points.iter().map(|p| (p.x as f64 - 1.0, p.y as f64 - 1.0)).collect();
        let (x0, y0, x1, y1) = extent(&pts);
        if x1 - x0 < MIN_SIZE_BOX || y1 - y0 < MIN_SIZE_BOX {
            continue;
        }
        let detection = if straight && !(params.level_skewed_lines && skewed_line(&pts)) {
            straight_box(prob, height, width, (x0, y0, x1, y1), params)
        } else {
            rotated_box(prob, height, width, &pts, params)
        };
        out.extend(detection);
    }
    out
}

fn binarise(prob: &[f32], height: usize, width: usize, params: &PostProcess) -> GrayImage {
    let bin = GrayImage::from_fn(width as u32, height as u32, |x, y| {
        Luma([if prob[y as usize * width + x as usize] >= params.bin_thresh { 255 } else { 0 }])
    });
    match params.morphology {
        Morphology::Open3 => imageproc::morphology::open(&bin, Norm::LInf, 1),
        // OpenCV's 2×2 kernel is anchored at (1, 1): each pixel takes the max of itself and its
        // upper and left neighbours.
        Morphology::Dilate2 => GrayImage::from_fn(width as u32, height as u32, |x, y| {
            let mut v = 0;
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                if x >= dx && y >= dy {
                    v = v.max(bin.get_pixel(x - dx, y - dy).0[0]);
                }
            }
            Luma([v])
        }),
    }
}

/// A region at least three times as long as it is high whose long side is turned more than a
/// degree from the horizontal (a shorter blob's angle says little).
fn skewed_line(pts: &[(f64, f64)]) -> bool {
    let (_, (w, h), angle) = min_area_rect(&integers(pts.iter()));
    let (long, short) = (w.max(h) as f64, w.min(h) as f64);
    // The long side's angle from the horizontal, whichever side OpenCV's angle measures.
    let turn = if w >= h { angle as f64 } else { angle as f64 - 90.0 };
    let off = turn.rem_euclid(180.0);
    long >= 3.0 * short.max(1.0) && off.min(180.0 - off) > 1.0
}

fn extent(pts: &[(f64, f64)]) -> (f64, f64, f64, f64) {
    pts.iter().fold((f64::MAX, f64::MAX, f64::MIN, f64::MIN), |(a, b, c, d), &(x, y)| {
        (a.min(x), b.min(y), c.max(x), d.max(y))
    })
}

/// Mean probability over the pixel rectangle [x0, x1] × [y0, y1] (inclusive, clipped).
fn rect_mean(prob: &[f32], height: usize, width: usize, x0: f64, y0: f64, x1: f64, y1: f64) -> f32 {
    let clip = |v: f64, hi: usize| (v.max(0.0) as usize).min(hi - 1);
    let (xa, xb) = (clip(x0.floor(), width), clip(x1.ceil(), width));
    let (ya, yb) = (clip(y0.floor(), height), clip(y1.ceil(), height));
    let mut sum = 0f64;
    for y in ya..=yb {
        sum += prob[y * width + xa..=y * width + xb].iter().map(|&v| v as f64).sum::<f64>();
    }
    (sum / ((xb - xa + 1) * (yb - ya + 1)) as f64) as f32
}

/// Mean probability inside a polygon (pixel centres inside or on it), like `cv2.fillPoly` + mean.
fn polygon_mean(prob: &[f32], height: usize, width: usize, pts: &[(f64, f64)]) -> f32 {
    let (x0, y0, x1, y1) = extent(pts);
    let poly = Polygon::new(LineString::from(pts.to_vec()), vec![]);
    let (mut sum, mut n) = (0f64, 0usize);
    for y in (y0.max(0.0) as usize)..=(y1 as usize).min(height - 1) {
        for x in (x0.max(0.0) as usize)..=(x1 as usize).min(width - 1) {
            let p = Point::new(x as f64, y as f64);
            if geo::Intersects::intersects(&poly, &p) {
                sum += prob[y * width + x] as f64;
                n += 1;
            }
        }
    }
    if n == 0 { 0.0 } else { (sum / n as f64) as f32 }
}

/// pyclipper's default `PyclipperOffset(arc_tolerance=0.25)`.
const ARC_TOLERANCE: f64 = 0.25;

/// Offsets a closed polygon of integer points outwards by `distance` with round joins, as
/// pyclipper does; of several parts, the one with the most points (docTR's choice).
fn unclip(pts: &[(f64, f64)], distance: f64) -> Option<Polygon<f64>> {
    let poly = Polygon::new(LineString::from(pts.to_vec()), vec![]);
    let grown = poly.offset(distance, JoinType::Round(ARC_TOLERANCE), EndType::ClosedPolygon, 1.0);
    grown.0.into_iter().fold(None, |best: Option<Polygon<f64>>, p| match best {
        Some(b) if b.exterior().0.len() >= p.exterior().0.len() => Some(b),
        _ => Some(p),
    })
}

fn straight_box(
    prob: &[f32],
    height: usize,
    width: usize,
    (x0, y0, x1, y1): (f64, f64, f64, f64),
    params: &PostProcess,
) -> Option<Detection> {
    // cv2.boundingRect of integer points: width = max − min + 1.
    let (x, y, w, h) = (x0, y0, x1 - x0 + 1.0, y1 - y0 + 1.0);
    let score = rect_mean(prob, height, width, x, y, x + w, y + h);
    if score < params.box_thresh {
        return None;
    }
    let rect = [(x, y), (x, y + h), (x + w, y + h), (x + w, y)];
    let distance = w * h * params.unclip_ratio as f64 / (2.0 * (w + h));
    let grown = unclip(&rect, distance)?;
    // cv2.boundingRect of the grown integer points.
    let b = grown.bounding_rect()?;
    let (gx0, gy0) = (b.min().x, b.min().y);
    let (gw, gh) = (b.max().x - gx0 + 1.0, b.max().y - gy0 + 1.0);
    if params.drop_small && (gw < MIN_SIZE_BOX || gh < MIN_SIZE_BOX) {
        return None;
    }
    let (fw, fh) = (width as f64, height as f64);
    let rel = |v: f64, size: f64| (v / size).clamp(0.0, 1.0) as f32;
    Some(Detection {
        geometry: Geometry::Straight([rel(gx0, fw), rel(gy0, fh), rel(gx0 + gw, fw), rel(gy0 + gh, fh)]),
        score,
    })
}

/// Integer pixel coordinates, as OpenCV receives docTR's contours and pyclipper's output.
fn integers<'a>(pts: impl Iterator<Item = &'a (f64, f64)>) -> Vec<(i64, i64)> {
    pts.map(|&(x, y)| (x as i64, y as i64)).collect()
}

fn rotated_box(prob: &[f32], height: usize, width: usize, pts: &[(f64, f64)], params: &PostProcess) -> Option<Detection> {
    let score = polygon_mean(prob, height, width, pts);
    if score < params.box_thresh {
        return None;
    }
    let rect = min_area_rect(&integers(pts.iter()));
    let (w, h) = (rect.1.0 as f64, rect.1.1 as f64);
    // docTR adds one pixel to each side to correct OpenCV's approximation.
    let distance = (w + 1.0) * (h + 1.0) * params.unclip_ratio as f64 / (2.0 * (w + h) + 2.0);
    // pyclipper takes integer coordinates: it truncates boxPoints' floats.
    let corners: Vec<(f64, f64)> = box_points(rect).iter().map(|&[x, y]| ((x as f64).trunc(), (y as f64).trunc())).collect();
    let grown = unclip(&corners, distance)?;
    // pyclipper lists Clipper's output ring one vertex later than the PolyTree geo-clipper reads,
    // and without the closing vertex: the hull's first vertex depends on that order.
    let ring = &grown.exterior().0;
    let open = &ring[..ring.len() - usize::from(ring.len() > 1 && ring.first() == ring.last())];
    let grown_pts: Vec<(i64, i64)> = open.iter().cycle().skip(1).take(open.len()).map(|c| (c.x as i64, c.y as i64)).collect();
    let box4 = box_points(min_area_rect(&grown_pts)).map(|[x, y]| (x as f64, y as f64));
    let ordered = order_points(box4);
    let diag = ((ordered[2].0 - ordered[0].0).powi(2) + (ordered[2].1 - ordered[0].1).powi(2)).sqrt();
    if params.drop_small && diag < MIN_SIZE_BOX {
        return None;
    }
    let (fw, fh) = (width as f64, height as f64);
    let rel = ordered.map(|(x, y)| [(x / fw).clamp(0.0, 1.0) as f32, (y / fh).clamp(0.0, 1.0) as f32]);
    Some(Detection { geometry: Geometry::Rotated(rel), score })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::card::Morphology;

    fn params() -> PostProcess {
        PostProcess {
            bin_thresh: 0.3,
            box_thresh: 0.1,
            unclip_ratio: 1.5,
            morphology: Morphology::Open3,
            drop_small: true,
            level_skewed_lines: false,
        }
    }

    /// A 100×200 map with one bright 10×40 block at rows 20..30, cols 50..90.
    fn one_block() -> Vec<f32> {
        let mut m = vec![0f32; 100 * 200];
        for y in 20..30 {
            for x in 50..90 {
                m[y * 200 + x] = 0.9;
            }
        }
        m
    }

    #[test]
    fn straight_block_is_unclipped_like_doctr() {
        let d = boxes(&one_block(), 100, 200, &params(), true);
        assert_eq!(d.len(), 1, "{d:?}");
        // boundingRect (50, 20, 40, 10); distance = 400 · 1.5 / 100 = 6; grown rect
        // x ∈ [44, 96], y ∈ [14, 36], boundingRect → (44, 14, 53, 23).
        let Geometry::Straight(b) = d[0].geometry else { panic!() };
        let expect = [44.0 / 200.0, 14.0 / 100.0, 97.0 / 200.0, 37.0 / 100.0];
        for (a, e) in b.iter().zip(expect) {
            assert!((a - e).abs() < 1e-6, "{b:?} vs {expect:?}");
        }
        // Score: mean over the inclusive rect [50, 90] × [20, 30] — 40×10 bright of 41×11.
        assert!((d[0].score - 0.9 * 400.0 / 451.0).abs() < 1e-5, "{}", d[0].score);
    }

    #[test]
    fn rotated_block_gives_ordered_corners() {
        let d = boxes(&one_block(), 100, 200, &params(), false);
        assert_eq!(d.len(), 1);
        let Geometry::Rotated(p) = d[0].geometry else { panic!() };
        // TL, TR, BR, BL around the block, grown on every side.
        assert!(p[0][0] < 50.0 / 200.0 && p[0][1] < 20.0 / 100.0, "{p:?}");
        assert!(p[1][0] > 89.0 / 200.0 && p[1][1] < 20.0 / 100.0, "{p:?}");
        assert!(p[2][0] > 89.0 / 200.0 && p[2][1] > 29.0 / 100.0, "{p:?}");
        assert!(p[3][0] < 50.0 / 200.0 && p[3][1] > 29.0 / 100.0, "{p:?}");
    }

    /// A 160×600 map with a 12-pixel-high bar 400 long, turned `degrees` about its centre.
    fn bar(degrees: f64) -> Vec<f32> {
        let (sin, cos) = degrees.to_radians().sin_cos();
        let mut m = vec![0f32; 160 * 600];
        for y in 0..160 {
            for x in 0..600 {
                let (dx, dy) = (x as f64 - 300.0, y as f64 - 80.0);
                let (u, v) = (dx * cos + dy * sin, -dx * sin + dy * cos);
                if u.abs() < 200.0 && v.abs() < 6.0 {
                    m[y * 600 + x] = 0.9;
                }
            }
        }
        m
    }

    #[test]
    fn skewed_lines_get_level_cut_rotated_boxes_on_straight_pages() {
        let level_skewed = PostProcess { box_thresh: 0.5, level_skewed_lines: true, ..params() };
        // Turned 3°: docTR's straight box is scored over a bounding rectangle the bar fills to
        // about a third, under the 0.5 threshold; a rotated box is scored inside the bar.
        assert!(boxes(&bar(3.0), 160, 600, &PostProcess { box_thresh: 0.5, ..params() }, true).is_empty());
        let d = boxes(&bar(3.0), 160, 600, &level_skewed, true);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(matches!(d[0].geometry, Geometry::Rotated(_)), "{:?}", d[0].geometry);
        // Level, or turned less than a degree: docTR's straight box.
        for degrees in [0.0, 0.5, -0.5] {
            let d = boxes(&bar(degrees), 160, 600, &level_skewed, true);
            assert_eq!(d.len(), 1, "{degrees}°: {d:?}");
            assert!(matches!(d[0].geometry, Geometry::Straight(_)), "{degrees}°: {:?}", d[0].geometry);
        }
        // Turned the other way, or further.
        for degrees in [-3.0, 2.0, 10.0] {
            let d = boxes(&bar(degrees), 160, 600, &level_skewed, true);
            assert!(matches!(d[0].geometry, Geometry::Rotated(_)), "{degrees}°: {:?}", d[0].geometry);
        }
    }

    #[test]
    fn a_map_above_threshold_everywhere_is_one_page_box() {
        // Random-init docTR detectors give such maps: one box over the whole page.
        let d = boxes(&vec![0.43; 64 * 64], 64, 64, &params(), true);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].geometry, Geometry::Straight([0.0, 0.0, 1.0, 1.0]));
    }

    #[test]
    fn faint_and_tiny_regions_are_dropped() {
        let mut m = vec![0f32; 50 * 50];
        m[10 * 50 + 10] = 0.9; // one pixel: removed by the opening
        for y in 30..40 {
            for x in 30..40 {
                m[y * 50 + x] = 0.35; // above bin_thresh, below a 0.5 box_thresh
            }
        }
        let p = PostProcess { box_thresh: 0.5, ..params() };
        assert!(boxes(&m, 50, 50, &p, true).is_empty());
    }
}

//! OpenCV 5's `minAreaRect` and `boxPoints` for integer points, bit for bit. docTR fits its
//! rotated word boxes with them and hands the float corners to pyclipper, which truncates them:
//! OpenCV's float noise (211.99998 → 211) moves a side by a pixel, so Kiln repeats its arithmetic.
//! The steps: the points as `i32` (Python's bindings wrap int64 arrays), `convexHull` (Sklansky's
//! scan on points sorted by x, y and index, counter-clockwise on screen-flipped axes, then the
//! cyclic shift that fixes its first vertex), rotating calipers in `f32` (inverse edge lengths in
//! `f64`), the angle in `f64` turned into [-90, 0), and the corners in `f32`. No FMA: OpenCV's
//! build does not contract these, and Rust never does. Checked against opencv-python 5.0.0.93
//! on 140 000 point sets (contours, pyclipper outputs, degenerate and collinear sets): identical
//! bits.

/// `((center_x, center_y), (width, height), angle_degrees)`, as `cv2.minAreaRect` returns it.
pub type RotatedRect = ((f32, f32), (f32, f32), f32);

type Pt = (i32, i32);

#[inline]
fn sign(v: i64) -> i32 {
    (v > 0) as i32 - (v < 0) as i32
}

/// One Sklansky chain over `order` (positions into the sorted order), from
/// position `start` towards `end`. Returns the chain (positions), as OpenCV's
/// `Sklansky_<int, int64>`: coordinate differences are `int` (wrapping),
/// the cross product is `int64`.
fn sklansky(pts: &[Pt], order: &[usize], start: isize, end: isize, nsign: i32, sign2: i32) -> Vec<isize> {
    let at = |k: isize| pts[order[k as usize]];
    if start == end || at(start) == at(end) {
        return vec![start];
    }
    let incr: isize = if end > start { 1 } else { -1 };
    let (mut pprev, mut pcur) = (start, start + incr);
    let mut pnext = pcur + incr;
    // the stack may briefly hold "one past the end" positions, as in OpenCV
    let mut stack: Vec<isize> = vec![pprev, pcur, pnext];
    let mut size = 3usize;
    let stop = end + incr;
    fn put(stack: &mut Vec<isize>, i: usize, v: isize) {
        if i >= stack.len() {
            stack.resize(i + 1, 0);
        }
        stack[i] = v;
    }
    while pnext != stop {
        let cur = at(pcur);
        let nxt = at(pnext);
        let by = nxt.1.wrapping_sub(cur.1);
        if sign(by as i64) != nsign {
            let prv = at(pprev);
            let ax = cur.0.wrapping_sub(prv.0);
            let ay = cur.1.wrapping_sub(prv.1);
            let bx = nxt.0.wrapping_sub(cur.0);
            let convexity = (ay as i64 * bx as i64).wrapping_sub(ax as i64 * by as i64);
            if sign(convexity) == sign2 && (ax != 0 || ay != 0) {
                pprev = pcur;
                pcur = pnext;
                pnext += incr;
                put(&mut stack, size, pnext);
                size += 1;
            } else if pprev == start {
                pcur = pnext;
                put(&mut stack, 1, pcur);
                pnext += incr;
                put(&mut stack, 2, pnext);
            } else {
                put(&mut stack, size - 2, pnext);
                pcur = pprev;
                pprev = stack[size - 4];
                size -= 1;
            }
        } else {
            pnext += incr;
            put(&mut stack, size - 1, pnext);
        }
    }
    stack.truncate(size - 1);
    stack
}

/// `cv::convexHull(points, hull, clockwise=false, returnPoints=true)` for
/// `CV_32S` points: returns the indices (into `pts`) of the hull vertices in
/// exactly the order `cv2.convexHull(p, clockwise=False)` lists them
/// (counter-clockwise with the y axis pointing up, i.e. clockwise as seen on
/// an image). Collinear and duplicate points are dropped; the start vertex is
/// fixed by OpenCV's cyclic shift towards monotone input indices.
fn convex_hull(pts: &[(i32, i32)]) -> Vec<usize> {
    let total = pts.len();
    if total == 0 {
        return Vec::new();
    }
    // std::sort with CHullCmpPoints: by x, then y, then address (a total order)
    let mut order: Vec<usize> = (0..total).collect();
    order.sort_unstable_by(|&i, &j| pts[i].cmp(&pts[j]).then(i.cmp(&j)));
    let (mut miny, mut maxy) = (0usize, 0usize);
    for i in 1..total {
        let y = pts[order[i]].1;
        if pts[order[miny]].1 > y {
            miny = i;
        }
        if pts[order[maxy]].1 < y {
            maxy = i;
        }
    }
    let mut hull: Vec<isize> = Vec::new();
    if pts[order[0]] == pts[order[total - 1]] {
        hull.push(0);
    } else {
        let last = total as isize - 1;
        // upper half; clockwise == false swaps the two chains
        let tr = sklansky(pts, &order, 0, maxy as isize, -1, 1);
        let tl = sklansky(pts, &order, last, maxy as isize, -1, -1);
        for &k in &tl[..tl.len() - 1] {
            hull.push(k);
        }
        for i in (1..tr.len()).rev() {
            hull.push(tr[i]);
        }
        let stop_idx: isize = if tr.len() > 2 {
            tr[1]
        } else if tl.len() > 2 {
            tl[tl.len() - 2]
        } else {
            -1
        };
        // lower half (not swapped when clockwise == false)
        let bl = sklansky(pts, &order, 0, miny as isize, 1, -1);
        let br = sklansky(pts, &order, last, miny as isize, 1, 1);
        let (mut blc, mut brc) = (bl.len(), br.len());
        if stop_idx >= 0 {
            let check_idx: isize = if blc > 2 {
                bl[1]
            } else if blc + brc > 2 {
                br[2 - blc]
            } else {
                -1
            };
            if check_idx == stop_idx
                || (check_idx >= 0 && pts[order[check_idx as usize]] == pts[order[stop_idx as usize]])
            {
                // all points on one line: the lower chain mirrors the upper one
                blc = blc.min(2);
                brc = brc.min(2);
            }
        }
        for &k in &bl[..blc - 1] {
            hull.push(k);
        }
        for i in (1..brc).rev() {
            hull.push(br[i]);
        }
    }
    let mut idx: Vec<usize> = hull.iter().map(|&k| order[k as usize]).collect();
    cyclic_shift_monotone(&mut idx);
    idx
}

/// OpenCV's "try to make the convex hull indices form an ascending or
/// descending sequence by a cyclic shift" step; it fixes the hull's start.
fn cyclic_shift_monotone(h: &mut Vec<usize>) {
    let nout = h.len();
    if nout < 3 {
        return;
    }
    let (mut min_i, mut max_i, mut lt) = (0usize, 0usize, 0usize);
    for i in 1..nout {
        let idx = h[i];
        lt += (h[i - 1] < idx) as usize;
        if lt > 1 && lt + 2 <= i {
            break;
        }
        if idx < h[min_i] {
            min_i = i;
        }
        if idx > h[max_i] {
            max_i = i;
        }
    }
    let mmdist = max_i.abs_diff(min_i);
    if (mmdist == 1 || mmdist == nout - 1) && (lt <= 1 || lt + 2 >= nout) {
        let ascending = (max_i + 1) % nout == min_i;
        let i0 = if ascending { min_i } else { max_i };
        if i0 > 0 {
            let mut out = Vec::with_capacity(nout);
            let mut j = i0;
            for i in 0..nout {
                let cur = h[j];
                out.push(cur);
                let nj = if j + 1 < nout { j + 1 } else { 0 };
                if i < nout - 1 && (ascending != (cur < h[nj])) {
                    return; // not monotone after all: keep the original order
                }
                j = nj;
            }
            *h = out;
        }
    }
}

type V2 = (f32, f32);

/// Rotating calipers, `CALIPERS_MINAREARECT` mode, over an `f32` hull with
/// `n > 2` vertices. Returns `[corner, side1, side2]`.
fn rotating_calipers(pts: &[V2]) -> [V2; 3] {
    let n = pts.len();
    let mut vect: Vec<V2> = Vec::with_capacity(n);
    let mut inv_len: Vec<f32> = Vec::with_capacity(n);
    let (mut left, mut bottom, mut right, mut top) = (0usize, 0usize, 0usize, 0usize);
    let mut pt0 = pts[0];
    let (mut left_x, mut right_x, mut top_y, mut bottom_y) = (pt0.0, pt0.0, pt0.1, pt0.1);
    for i in 0..n {
        if pt0.0 < left_x {
            left_x = pt0.0;
            left = i;
        }
        if pt0.0 > right_x {
            right_x = pt0.0;
            right = i;
        }
        if pt0.1 > top_y {
            top_y = pt0.1;
            top = i;
        }
        if pt0.1 < bottom_y {
            bottom_y = pt0.1;
            bottom = i;
        }
        let pt = pts[if i + 1 < n { i + 1 } else { 0 }];
        // float differences, widened to double for the length
        let dx = (pt.0 - pt0.0) as f64;
        let dy = (pt.1 - pt0.1) as f64;
        vect.push((dx as f32, dy as f32));
        inv_len.push((1.0 / (dx * dx + dy * dy).sqrt()) as f32);
        pt0 = pt;
    }
    // (OpenCV 4.x computed the hull orientation here to seed the base vector
    // and asserted it was non-zero; the 5.0 build does not fail on a hull
    // that is flat in f32, and the seed is overwritten by the first rotation.)
    let mut seq = [bottom, right, top, left];
    let mut minarea = f32::MAX;
    // (left point, base_a, width, base_b, height, bottom point)
    let mut best = (0usize, 0f32, 0f32, 0f32, 0f32, 0usize);
    for _ in 0..n {
        // bring the four caliper edges into one frame and pick the one that
        // turns least: "first vector is to the right of the second"
        let v0 = vect[seq[0]];
        let v1 = vect[seq[1]];
        let v2 = vect[seq[2]];
        let v3 = vect[seq[3]];
        let rot = [v0, (v1.1, -v1.0), (-v2.0, -v2.1), (-v3.1, v3.0)];
        let mut main = 0usize;
        for i in 1..4 {
            let a = rot[i];
            let b = rot[main];
            // rotate90CW(a) = (a.y, -a.x), dotted with b, in float
            if a.1 * b.0 + (-a.0) * b.1 < 0.0 {
                main = i;
            }
        }
        let pi = seq[main];
        let lead_x = vect[pi].0 * inv_len[pi];
        let lead_y = vect[pi].1 * inv_len[pi];
        let (base_a, base_b) = match main {
            0 => (lead_x, lead_y),
            1 => (lead_y, -lead_x),
            2 => (-lead_x, -lead_y),
            _ => (-lead_y, lead_x),
        };
        seq[main] += 1;
        if seq[main] == n {
            seq[main] = 0;
        }
        let dx = pts[seq[1]].0 - pts[seq[3]].0;
        let dy = pts[seq[1]].1 - pts[seq[3]].1;
        let width = dx * base_a + dy * base_b;
        let dx = pts[seq[2]].0 - pts[seq[0]].0;
        let dy = pts[seq[2]].1 - pts[seq[0]].1;
        let height = -dx * base_b + dy * base_a;
        let area = width * height;
        if area <= minarea {
            minarea = area;
            best = (seq[3], base_a, width, base_b, height, seq[0]);
        }
    }
    let (li, a1, width, b1, height, bi) = best;
    let (a2, b2) = (-b1, a1);
    let c1 = a1 * pts[li].0 + pts[li].1 * b1;
    let c2 = a2 * pts[bi].0 + pts[bi].1 * b2;
    let idet = 1.0f32 / (a1 * b2 - a2 * b1);
    let px = (c1 * b2 - c2 * b1) * idet;
    let py = (a1 * c2 - a2 * c1) * idet;
    [(px, py), (a1 * width, b1 * width), (a2 * height, b2 * height)]
}

#[inline]
fn norm_f32(v: V2) -> f32 {
    ((v.0 as f64) * (v.0 as f64) + (v.1 as f64) * (v.1 as f64)).sqrt() as f32
}

#[inline]
fn to_degrees_f32(rad: f64) -> f32 {
    (rad * 180.0 / std::f64::consts::PI) as f32
}

/// `cv2.minAreaRect(points)` for integer points: `((cx, cy), (w, h), angle)`
/// with the exact `f32` values OpenCV 5.0 returns. Coordinates are cast to
/// `i32` first, as the Python bindings do with int64 arrays (wrapping).
///
/// An empty input gives `((0, 0), (0, 0), -90)`, like cv2.
pub fn min_area_rect(points: &[(i64, i64)]) -> RotatedRect {
    let pts: Vec<Pt> = points.iter().map(|&(x, y)| (x as i32, y as i32)).collect();
    let hull: Vec<V2> = convex_hull(&pts).iter().map(|&i| (pts[i].0 as f32, pts[i].1 as f32)).collect();
    let n = hull.len();
    let half_pi = std::f64::consts::FRAC_PI_2;
    if n > 2 {
        let [corner, s1, s2] = rotating_calipers(&hull);
        let cx = corner.0 + (s1.0 + s2.0) * 0.5f32;
        let cy = corner.1 + (s1.1 + s2.1) * 0.5f32;
        let (w1, w2) = (norm_f32(s1), norm_f32(s2));
        // The calipers' first side s1 points into [0, 90] degrees. OpenCV 5
        // reports the side rotated into [-90, 0): s1 turned by -90 degrees
        // (so width/height swap), except when s1 is vertical (90 degrees),
        // where -s1 is used and the sizes stay.
        let (x, y) = (s1.0 as f64, s1.1 as f64);
        if x == 0.0 && y > 0.0 {
            ((cx, cy), (w1, w2), to_degrees_f32((-y).atan2(-x)))
        } else {
            ((cx, cy), (w2, w1), to_degrees_f32((-x).atan2(y)))
        }
    } else if n == 2 {
        let (p, q) = (hull[0], hull[1]);
        let cx = (p.0 + q.0) * 0.5f32;
        let cy = (p.1 + q.1) * 0.5f32;
        let dx = (q.0 - p.0) as f64;
        let dy = (q.1 - p.1) as f64;
        let len = (dx * dx + dy * dy).sqrt() as f32;
        // the segment direction, turned by a multiple of 90 degrees into [-90, 0)
        let ((ux, uy), size) = if dy > 0.0 {
            ((-dx, -dy), (len, 0.0))
        } else if dx < 0.0 {
            ((-dy, dx), (0.0, len))
        } else if dy == 0.0 {
            ((dy, -dx), (0.0, len))
        } else {
            ((dx, dy), (len, 0.0))
        };
        ((cx, cy), size, to_degrees_f32(uy.atan2(ux)))
    } else {
        // n == 1: the point itself; n == 0: zeros. Angle 0 normalised to -90.
        let c = if n == 1 { hull[0] } else { (0.0, 0.0) };
        (c, (0.0, 0.0), to_degrees_f32(-half_pi))
    }
}

/// `cv2.boxPoints(rect)`: the four corners in OpenCV 5.0's order, as `f32`.
pub fn box_points(rect: RotatedRect) -> [[f32; 2]; 4] {
    let ((cx, cy), (w, h), angle) = rect;
    let rad = angle as f64 * std::f64::consts::PI / 180.0;
    let b = rad.cos() as f32 * 0.5f32;
    let a = rad.sin() as f32 * 0.5f32;
    [
        [cx - a * h - b * w, cy + b * h - a * w],
        [cx + a * h - b * w, cy - b * h - a * w],
        [cx + a * h + b * w, cy - b * h + a * w],
        [cx - a * h + b * w, cy + b * h + a * w],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(r: RotatedRect) -> [u32; 5] {
        let ((a, b), (c, d), e) = r;
        [a.to_bits(), b.to_bits(), c.to_bits(), d.to_bits(), e.to_bits()]
    }

    #[test]
    fn axis_aligned_box() {
        // cv2.minAreaRect([[0,0],[10,0],[10,5],[0,5]]) == ((5.0, 2.5), (5.0, 10.0), -90.0)
        let r = min_area_rect(&[(0, 0), (10, 0), (10, 5), (0, 5)]);
        assert_eq!(bits(r), bits(((5.0, 2.5), (5.0, 10.0), -90.0)));
    }

    #[test]
    fn degenerate() {
        assert_eq!(bits(min_area_rect(&[])), bits(((0.0, 0.0), (0.0, 0.0), -90.0)));
        assert_eq!(bits(min_area_rect(&[(3, 4)])), bits(((3.0, 4.0), (0.0, 0.0), -90.0)));
        // ((5.0, 6.5), (0.0, 6.4031243324279785), -38.65980911254883)
        let r = min_area_rect(&[(3, 4), (7, 9)]);
        assert_eq!(r.0, (5.0, 6.5));
        assert_eq!(r.1, (0.0, 6.403_124_3));
        assert_eq!(r.2, -38.659_81);
    }
}

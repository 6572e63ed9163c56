//! docTR's `DocumentBuilder`: words sorted top to bottom and left to right, grouped into rows by
//! their vertical centres, rows split into lines where the horizontal gap exceeds an adaptive
//! break distance, and optionally lines clustered into blocks. Rotated boxes are first turned
//! back by the page angle estimated from them.

use crate::document::{Block, Line, Word};
use crate::geometry::Geometry;

#[derive(Debug, Clone, Copy)]
pub struct BuilderOptions {
    pub resolve_lines: bool,
    /// Group lines into blocks by single-linkage clustering of their box features.
    pub resolve_blocks: bool,
    /// Relative gap that always separates two lines.
    pub paragraph_break: f32,
}

impl Default for BuilderOptions {
    fn default() -> Self {
        BuilderOptions { resolve_lines: true, resolve_blocks: false, paragraph_break: 0.035 }
    }
}

/// Assembles a page's blocks from its words; `shape` is the page's (height, width).
pub fn build_blocks(words: Vec<Word>, shape: (u32, u32), opts: &BuilderOptions) -> Vec<Block> {
    if words.is_empty() {
        return vec![];
    }
    let geoms: Vec<Geometry> = words.iter().map(|w| w.geometry).collect();
    let (order, boxes) = sort_boxes(&geoms, shape);
    let groups: Vec<Vec<Vec<usize>>> = if opts.resolve_lines {
        let lines = resolve_lines(&order, &boxes, shape, opts.paragraph_break);
        if opts.resolve_blocks && lines.len() > 1 { resolve_blocks(&geoms, lines) } else { vec![lines] }
    } else {
        vec![vec![order]]
    };
    let mut slots: Vec<Option<Word>> = words.into_iter().map(Some).collect();
    groups
        .into_iter()
        .map(|lines| {
            Block::new(
                lines
                    .into_iter()
                    .map(|idx| Line::new(idx.into_iter().filter_map(|i| slots[i].take()).collect()))
                    .collect(),
            )
        })
        .collect()
}

fn median(mut v: Vec<f32>) -> f32 {
    if v.is_empty() {
        return f32::NAN;
    }
    v.sort_by(f32::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Reading order (x_min + 2 · y_max / median height) and the straight boxes lines are resolved
/// on. Rotated boxes are turned back by docTR's page angle (`estimate_page_angle`, in pixels of
/// the page) around the page centre, except boxes that are themselves nearly level, which only
/// move with their centre; then each is replaced by its enclosing straight box.
fn sort_boxes(geoms: &[Geometry], shape: (u32, u32)) -> (Vec<usize>, Vec<[f32; 4]>) {
    let boxes: Vec<[f32; 4]> = if geoms.iter().any(|g| matches!(g, Geometry::Rotated(_))) {
        let (h, w) = (shape.0 as f32, shape.1 as f32);
        let polys: Vec<[[f32; 2]; 4]> = geoms.iter().map(|g| g.corners()).collect();
        let abs: Vec<[[f32; 2]; 4]> = polys.iter().map(|p| p.map(|[x, y]| [x * w, y * h])).collect();
        let angle = estimate_page_angle(&abs);
        polys
            .iter()
            .zip(&abs)
            .map(|(p, a)| {
                let mut r = rotate_box(p, -angle, (h, w), 1.0);
                if angle.abs() >= 1.0 {
                    let own = (-(a[1][1] - a[0][1])).atan2(a[1][0] - a[0][0]).to_degrees();
                    if own.abs() < angle.abs() / 2.0 {
                        let centre = |q: &[[f32; 2]; 4]| [q.iter().map(|v| v[0]).sum::<f32>() / 4.0, q.iter().map(|v| v[1]).sum::<f32>() / 4.0];
                        let (c, n) = (centre(p), centre(&r));
                        r = p.map(|[x, y]| [x - c[0] + n[0], y - c[1] + n[1]]);
                    }
                }
                Geometry::Rotated(r).bounds()
            })
            .collect()
    } else {
        geoms.iter().map(|g| g.bounds()).collect()
    };
    let mut med = median(boxes.iter().map(|b| b[3] - b[1]).collect());
    if !med.is_finite() || med <= 0.0 {
        med = 1.0;
    }
    let key = |b: &[f32; 4]| b[0] + 2.0 * b[3] / med;
    let mut idx: Vec<usize> = (0..boxes.len()).collect();
    idx.sort_by(|&a, &b| key(&boxes[a]).total_cmp(&key(&boxes[b])));
    (idx, boxes)
}

/// docTR's `estimate_page_angle`: the median over boxes of the angle (degrees, counter-clockwise)
/// of the line from the middle of the left side to the middle of the right side.
pub fn estimate_page_angle(polys: &[[[f32; 2]; 4]]) -> f32 {
    let angles: Vec<f32> = polys
        .iter()
        .map(|p| {
            let (xl, yl) = (p[0][0] + p[3][0], p[0][1] + p[3][1]);
            let (xr, yr) = (p[1][0] + p[2][0], p[1][1] + p[2][1]);
            ((yl - yr) / (xr - xl)).atan().to_degrees()
        })
        .filter(|a| a.is_finite())
        .collect();
    if angles.is_empty() { 0.0 } else { median(angles) }
}

/// docTR's `rotate_boxes` for one relative polygon: turned by `angle` degrees around the page
/// centre, unless the angle is within `min_angle` of 0 or ±90.
fn rotate_box(p: &[[f32; 2]; 4], angle: f32, (h, w): (f32, f32), min_angle: f32) -> [[f32; 2]; 4] {
    if angle.abs() < min_angle || angle.abs() > 90.0 - min_angle {
        return *p;
    }
    let (sin, cos) = angle.to_radians().sin_cos();
    let (cx, cy) = (w / 2.0, h / 2.0);
    p.map(|[x, y]| {
        let (dx, dy) = (x * w - cx, y * h - cy);
        // Row vector times [[cos, −sin], [sin, cos]].
        [(cx + dx * cos + dy * sin) / w, (cy - dx * sin + dy * cos) / h]
    })
}

fn resolve_lines(idxs: &[usize], boxes: &[[f32; 4]], shape: (u32, u32), paragraph_break: f32) -> Vec<Vec<usize>> {
    let y_med = median(boxes.iter().map(|b| b[3] - b[1]).collect());
    let centre = |i: usize| (boxes[i][1] + boxes[i][3]) / 2.0;

    let mut rows: Vec<Vec<usize>> = vec![];
    let mut row = vec![idxs[0]];
    let mut y_sum = centre(idxs[0]);
    for &i in &idxs[1..] {
        if (centre(i) - y_sum / row.len() as f32).abs() >= y_med / 2.0 {
            rows.push(std::mem::take(&mut row));
            y_sum = 0.0;
        }
        row.push(i);
        y_sum += centre(i);
    }
    rows.push(row);

    // The break distance adapts to the page: 3× the median positive gap, at least the median word
    // height (in width units), never more than `paragraph_break`.
    let mut gaps = vec![];
    let mut pairs = 0;
    for row in &rows {
        let mut r = row.clone();
        r.sort_by(|&a, &b| boxes[a][0].total_cmp(&boxes[b][0]));
        pairs += r.len().saturating_sub(1);
        gaps.extend(r.windows(2).map(|w| boxes[w[1]][0] - boxes[w[0]][2]));
    }
    let positive: Vec<f32> = gaps.into_iter().filter(|g| *g > 0.0).collect();
    let floor = y_med * shape.0 as f32 / shape.1 as f32;
    let break_dist = if positive.len() >= 5 && positive.len() as f32 >= 0.5 * pairs as f32 {
        paragraph_break.min((3.0 * median(positive)).max(floor))
    } else if pairs >= 5 {
        paragraph_break.min(floor)
    } else {
        paragraph_break
    };

    let mut lines = vec![];
    for mut row in rows {
        row.sort_by(|&a, &b| boxes[a][0].total_cmp(&boxes[b][0]));
        let mut line = vec![row[0]];
        for &i in &row[1..] {
            let prev = *line.last().unwrap_or(&row[0]);
            if boxes[i][0] - boxes[prev][2] >= break_dist {
                lines.push(std::mem::take(&mut line));
            }
            line.push(i);
        }
        lines.push(line);
    }
    lines
}

/// docTR's `_resolve_blocks`: six features per line's enclosing box, clustered by single
/// linkage with a distance threshold of 0.1 (scipy's `fclusterdata`), which is the connected
/// components of the graph linking lines at most 0.1 apart. Blocks come in the order of their
/// first line, lines in their own order.
fn resolve_blocks(geoms: &[Geometry], lines: Vec<Vec<usize>>) -> Vec<Vec<Vec<usize>>> {
    let features: Vec<[f32; 6]> = lines
        .iter()
        .map(|line| match crate::document::enclosing(line.iter().map(|&i| &geoms[i])) {
            Geometry::Straight([x1, y1, x2, y2]) => [(x1 + y2) / 2.0, (y1 + x2) / 2.0, (x1 + x2) / 2.0, (y1 + y2) / 2.0, x1, y1],
            Geometry::Rotated(b) => [
                (b[0][0] + b[0][1]) / 2.0,
                (b[0][0] + b[2][0]) / 2.0,
                (b[0][0] + b[2][1]) / 2.0,
                (b[0][1] + b[2][1]) / 2.0,
                (b[0][1] + b[2][0]) / 2.0,
                (b[2][0] + b[2][1]) / 2.0,
            ],
        })
        .collect();
    let n = lines.len();
    let mut parent: Vec<usize> = (0..n).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for i in 0..n {
        for j in i + 1..n {
            let d2: f32 = features[i].iter().zip(&features[j]).map(|(a, b)| (a - b) * (a - b)).sum();
            if d2.sqrt() <= 0.1 {
                let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    let mut blocks: Vec<(usize, Vec<Vec<usize>>)> = vec![];
    for (i, line) in lines.into_iter().enumerate() {
        let r = root(&mut parent, i);
        match blocks.iter_mut().find(|(k, _)| *k == r) {
            Some((_, b)) => b.push(line),
            None => blocks.push((r, vec![line])),
        }
    }
    blocks.into_iter().map(|(_, b)| b).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::Prediction;
    use crate::geometry::Geometry;

    fn word(text: &str, b: [f32; 4]) -> Word {
        Word {
            value: text.into(),
            confidence: 1.0,
            geometry: Geometry::Straight(b),
            objectness_score: 1.0,
            crop_orientation: Prediction::default(),
        }
    }

    #[test]
    fn rows_and_gaps() {
        let words = vec![
            word("world", [0.20, 0.10, 0.30, 0.14]),
            word("hello", [0.05, 0.105, 0.18, 0.145]),
            word("far", [0.80, 0.10, 0.90, 0.14]),
            word("next", [0.05, 0.30, 0.15, 0.34]),
        ];
        let blocks = build_blocks(words, (1000, 1000), &BuilderOptions::default());
        let text: Vec<String> = blocks[0].lines.iter().map(Line::render).collect();
        assert_eq!(text, ["hello world", "far", "next"]);
    }
}

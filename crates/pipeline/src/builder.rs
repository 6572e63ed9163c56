//! docTR's `DocumentBuilder`: words sorted top to bottom and left to right, grouped into rows by
//! their vertical centres, rows split into lines where the horizontal gap exceeds an adaptive
//! break distance. One block per page unless blocks are resolved (not implemented yet).

use crate::document::{Block, Line, Word};

#[derive(Debug, Clone, Copy)]
pub struct BuilderOptions {
    pub resolve_lines: bool,
    /// Relative gap that always separates two lines.
    pub paragraph_break: f32,
}

impl Default for BuilderOptions {
    fn default() -> Self {
        BuilderOptions { resolve_lines: true, paragraph_break: 0.035 }
    }
}

/// Assembles a page's blocks from its words; `shape` is the page's (height, width).
pub fn build_blocks(words: Vec<Word>, shape: (u32, u32), opts: &BuilderOptions) -> Vec<Block> {
    if words.is_empty() {
        return vec![];
    }
    // Rotated boxes are handled through their enclosing upright boxes (docTR first de-skews by
    // the page angle estimated from the boxes).
    let boxes: Vec<[f32; 4]> = words.iter().map(|w| w.geometry.bounds()).collect();
    let lines = if opts.resolve_lines { resolve_lines(&boxes, shape, opts.paragraph_break) } else { vec![sort_boxes(&boxes)] };
    let mut slots: Vec<Option<Word>> = words.into_iter().map(Some).collect();
    let lines = lines
        .into_iter()
        .map(|idx| Line::new(idx.into_iter().filter_map(|i| slots[i].take()).collect()))
        .collect();
    vec![Block::new(lines)]
}

fn median(mut v: Vec<f32>) -> f32 {
    if v.is_empty() {
        return f32::NAN;
    }
    v.sort_by(f32::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Reading order: x_min + 2 · y_max / median height.
fn sort_boxes(boxes: &[[f32; 4]]) -> Vec<usize> {
    let mut med = median(boxes.iter().map(|b| b[3] - b[1]).collect());
    if !med.is_finite() || med <= 0.0 {
        med = 1.0;
    }
    let key = |b: &[f32; 4]| b[0] + 2.0 * b[3] / med;
    let mut idx: Vec<usize> = (0..boxes.len()).collect();
    idx.sort_by(|&a, &b| key(&boxes[a]).total_cmp(&key(&boxes[b])));
    idx
}

fn resolve_lines(boxes: &[[f32; 4]], shape: (u32, u32), paragraph_break: f32) -> Vec<Vec<usize>> {
    let idxs = sort_boxes(boxes);
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

//! docTR's handling of crops too wide for a fixed-size recogniser (`recognition/predictor/_utils.py`,
//! `recognition/utils.py`): cut them into overlapping windows, read each, and merge the strings
//! where their overlapping characters align best (Hamming distance).

use image::RgbImage;

/// docTR: crops wider than 8× their height are split into windows 6× their height, half
/// overlapping, the last one aligned to the right edge.
pub const MAX_RATIO: f64 = 8.0;
pub const TARGET_RATIO: f64 = 6.0;
pub const OVERLAP_RATIO: f64 = 0.5;

/// How the windows map back to one crop: `[start, end)` in the window list and the last
/// window's own overlap ratio.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Whole(usize),
    Split { start: usize, end: usize, last_overlap: f64 },
}

/// Windows of every crop (crops within the ratio pass whole).
pub fn split_crops(crops: &[RgbImage]) -> (Vec<RgbImage>, Vec<Piece>) {
    let mut out = vec![];
    let mut map = vec![];
    for crop in crops {
        let (w, h) = (crop.width() as usize, crop.height() as usize);
        if h == 0 || (w as f64 / h as f64) <= MAX_RATIO {
            map.push(Piece::Whole(out.len()));
            out.push(crop.clone());
            continue;
        }
        let split = ((h as f64 * TARGET_RATIO).ceil() as usize).max(1);
        let overlap = (split as f64 * OVERLAP_RATIO).floor() as usize;
        let step = (split - overlap).max(1);
        let mut starts: Vec<usize> = (0..=w - split).step_by(step).collect();
        if starts.last().is_some_and(|&s| s + split < w) {
            starts.push(w - split);
        }
        let last_overlap = match starts.len() {
            n if n > 1 => (starts[n - 2] + split - starts[n - 1]) as f64 / split as f64,
            _ => 0.0,
        };
        let start = out.len();
        for s in &starts {
            out.push(image::imageops::crop_imm(crop, *s as u32, 0, split as u32, h as u32).to_image());
        }
        map.push(Piece::Split { start, end: out.len(), last_overlap });
    }
    (out, map)
}

/// Reassembles one (text, confidence) per original crop; a split crop's confidence is the mean
/// of its windows'.
pub fn remap(preds: &[(String, f32)], map: &[Piece]) -> Vec<(String, f32)> {
    map.iter()
        .map(|piece| match piece {
            Piece::Whole(i) => preds[*i].clone(),
            Piece::Split { start, end, last_overlap } => {
                let parts: Vec<&str> = preds[*start..*end].iter().map(|p| p.0.as_str()).collect();
                let conf = preds[*start..*end].iter().map(|p| p.1).sum::<f32>() / (end - start) as f32;
                (merge_multi_strings(&parts, OVERLAP_RATIO, *last_overlap), conf)
            }
        })
        .collect()
}

/// Merges two readings whose ends overlap (docTR's `merge_strings`).
pub fn merge_strings(a: &str, b: &str, overlap_ratio: f64) -> String {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let join = |x: &[char], y: &[char]| x.iter().chain(y).collect::<String>();
    if a.len().min(b.len()) <= 1 {
        return join(&a, &b);
    }
    // The last character of `a` and the first of `b` may be cut by the window edge.
    let (ac, bc) = (&a[..a.len() - 1], &b[1..]);
    let max_overlap = ac.len().min(bc.len());
    let scores: Vec<usize> = (1..=max_overlap)
        .map(|i| ac[ac.len() - i..].iter().zip(&bc[..i]).filter(|(x, y)| x != y).count())
        .collect();
    let zeros: Vec<usize> = (0..scores.len()).filter(|&i| scores[i] == 0).collect();
    // Python's round: ties to even.
    let expected = (b.len() as f64 * overlap_ratio).round_ties_even() as i64 - 3;
    let pick = |i: usize| join(ac, &bc[i + 1..]);
    match zeros.len() {
        1 => return pick(zeros[0]),
        n if n > 1 => {
            let best = zeros.iter().copied().min_by_key(|&i| (i as i64 - expected).abs()).unwrap_or(zeros[0]);
            return pick(best);
        }
        _ => {}
    }
    if expected < -1 {
        return join(&a, &b);
    }
    if expected < 0 {
        return join(ac, bc);
    }
    let best = (0..scores.len()).min_by_key(|&i| scores[i] as i64 + (i as i64 - expected).abs()).unwrap_or(0);
    pick(best)
}

/// Merges the readings of consecutive windows, left to right (docTR's `merge_multi_strings`).
pub fn merge_multi_strings(parts: &[&str], overlap_ratio: f64, last_overlap_ratio: f64) -> String {
    let Some(first) = parts.first() else { return String::new() };
    let mut out = first.to_string();
    for (i, b) in parts.iter().enumerate().skip(1) {
        let ratio = if i == parts.len() - 1 { last_overlap_ratio } else { overlap_ratio };
        out = merge_strings(&out, b, ratio);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The examples of docTR's docstrings, with what docTR 1.1.0's code really returns for them
    /// (two of its docstring answers are not what the function gives).
    #[test]
    fn merges_like_doctr() {
        assert_eq!(merge_strings("abcd", "cdefgh", 0.5), "abcefgh");
        assert_eq!(merge_strings("abcdi", "cdefgh", 0.5), "abcdefgh");
        assert_eq!(merge_multi_strings(&["abc", "bcdef", "difghi", "aijkl"], 0.5, 0.1), "abcdefghiaijkl");
    }

    #[test]
    fn wide_crops_split_into_overlapping_windows() {
        // 10 px high, 100 px wide: windows of 60 px at 0 and 30 (step 30), then one right-aligned
        // at 40, whose overlap with the previous is (30 + 60 − 40) / 60.
        let crop = RgbImage::new(100, 10);
        let narrow = RgbImage::new(50, 10);
        let (windows, map) = split_crops(&[narrow, crop]);
        assert_eq!(windows.len(), 4);
        assert_eq!(map[0], Piece::Whole(0));
        assert_eq!(map[1], Piece::Split { start: 1, end: 4, last_overlap: 50.0 / 60.0 });
        let preds: Vec<(String, f32)> =
            [("a", 0.5), ("abc", 0.9), ("bcdef", 0.7), ("defgh", 0.8)].iter().map(|(t, c)| (t.to_string(), *c)).collect();
        let merged = remap(&preds, &map);
        assert_eq!(merged[0].0, "a");
        assert_eq!(merged[1].0, "abcdefgh");
        assert!((merged[1].1 - 0.8).abs() < 1e-6);
    }
}

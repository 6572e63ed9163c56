//! Kiln's pipeline steps against docTR 1.1.0's own functions on the same inputs
//! (`tests/fixtures/make_goldens.py`): DB post-processing of graded probability maps (straight and
//! rotated pages, straight and rotated boxes), crop extraction, the CTC and attention decoders,
//! and the document builder (lines and blocks, straight and rotated boxes).

use std::path::PathBuf;

use kiln::card::{Blank, Confidence, Decoder, DecoderKind, Morphology, PostProcess};
use kiln::document::{Prediction, Word};
use kiln::geometry::{Geometry, horizontal_crop, rotated_crop, straight_crop};
use kiln::postprocess::{ctc, db};
use serde_json::Value;

fn dir() -> PathBuf {
    kiln_fixtures::fixtures_dir().join("goldens")
}

fn goldens() -> Value {
    let path = dir().join("goldens.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask fixtures`)", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn npy(name: &str) -> (Vec<f32>, Vec<usize>) {
    let t = kiln_graph::npy::read(&dir().join(name)).unwrap();
    (t.try_to_vec::<f32>().unwrap(), t.shape().to_vec())
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// docTR box rows → (corner points, score).
fn doctr_box(row: &Value, straight: bool) -> (Vec<[f32; 2]>, f32) {
    if straight {
        let b = f32s(row);
        (vec![[b[0], b[1]], [b[2], b[3]]], b[4])
    } else {
        let rows = row.as_array().unwrap();
        let pts = rows[..4].iter().map(|p| { let p = f32s(p); [p[0], p[1]] }).collect();
        (pts, f32s(&rows[4])[1])
    }
}

fn kiln_points(g: &Geometry) -> Vec<[f32; 2]> {
    match g {
        Geometry::Straight(b) => vec![[b[0], b[1]], [b[2], b[3]]],
        Geometry::Rotated(p) => p.to_vec(),
    }
}

#[test]
fn db_postprocessing_matches_doctr() {
    let g = goldens();
    let cases = g["detection"].as_array().unwrap();
    assert!(cases.len() >= 8);
    let mut worst_px = 0f32;
    let mut worst_iou = 1f64;
    let (mut rotated, mut rotated_exact) = (0, 0);
    for case in cases {
        let (map, shape) = npy(case["map"].as_str().unwrap());
        let (h, w) = (shape[0], shape[1]);
        let straight = case["straight"].as_bool().unwrap();
        let params = PostProcess {
            bin_thresh: case["bin_thresh"].as_f64().unwrap() as f32,
            box_thresh: case["box_thresh"].as_f64().unwrap() as f32,
            unclip_ratio: case["unclip_ratio"].as_f64().unwrap() as f32,
            morphology: Morphology::Open3,
            drop_small: case["arch"] == "db",
            level_skewed_lines: false,
        };
        let ours = db::boxes(&map, h, w, &params, straight);
        let theirs: Vec<_> = case["boxes"].as_array().unwrap().iter().map(|r| doctr_box(r, straight)).collect();
        let label = format!("{} {} straight={straight}", case["arch"], case["map"]);
        assert_eq!(ours.len(), theirs.len(), "{label}: box count");
        for (pts, score) in &theirs {
            // The Kiln box nearest to docTR's, in pixels.
            let dist = |d: &db::Detection| {
                kiln_points(&d.geometry)
                    .iter()
                    .zip(pts)
                    .map(|(a, b)| ((a[0] - b[0]) * w as f32).abs().max(((a[1] - b[1]) * h as f32).abs()))
                    .fold(0f32, f32::max)
            };
            let best = ours.iter().min_by(|a, b| dist(a).total_cmp(&dist(b))).unwrap();
            let px = dist(best);
            if straight {
                worst_px = worst_px.max(px);
                assert!(px <= 1e-3, "{label}: box {pts:?} is {px:.4} px from Kiln's {:?}", best.geometry);
            } else {
                // OpenCV's minimum-area fit (`kiln::min_rect`) and pyclipper's own Clipper: the
                // same corners, float noise included (211.99998, which pyclipper truncates to 211).
                rotated += 1;
                rotated_exact += usize::from(px <= 1e-4);
                let iou = quad_iou(&kiln_points(&best.geometry), pts, w, h);
                let (ca, ..) = rect_params(&kiln_points(&best.geometry), w, h);
                let (cb, ..) = rect_params(pts, w, h);
                let centre = (ca.0 - cb.0).abs().max((ca.1 - cb.1).abs());
                worst_iou = worst_iou.min(iou);
                assert!(
                    iou >= 0.9 && centre <= 1.01,
                    "{label}: box {pts:?} vs Kiln's {:?}: IoU {iou:.3}, centre {centre:.2} px",
                    best.geometry
                );
            }
            let tol = if straight { 1e-3 } else { 0.05 };
            assert!((best.score - score).abs() <= tol, "{label}: score {} vs docTR {score}", best.score);
        }
    }
    eprintln!(
        "straight boxes: worst corner {worst_px:.4} px; rotated boxes: {rotated_exact}/{rotated} within 1e-4 px, worst IoU {worst_iou:.4}"
    );
    assert_eq!(rotated_exact, rotated, "rotated boxes matching docTR's to 1e-4 px");
}

/// Intersection over union of two 4-corner boxes (relative coordinates, compared in pixels).
fn quad_iou(a: &[[f32; 2]], b: &[[f32; 2]], w: usize, h: usize) -> f64 {
    use geo::{Area, BooleanOps, LineString, Polygon};
    let poly = |p: &[[f32; 2]]| {
        Polygon::new(LineString::from(p.iter().map(|q| (q[0] as f64 * w as f64, q[1] as f64 * h as f64)).collect::<Vec<_>>()), vec![])
    };
    let (pa, pb) = (poly(a), poly(b));
    let inter = pa.intersection(&pb).unsigned_area();
    inter / (pa.unsigned_area() + pb.unsigned_area() - inter)
}

/// Centre (px), side lengths (px) and angle (degrees) of a 4-corner box in relative coordinates.
fn rect_params(p: &[[f32; 2]], w: usize, h: usize) -> ((f32, f32), f32, f32, f32) {
    let abs: Vec<(f32, f32)> = p.iter().map(|q| (q[0] * w as f32, q[1] * h as f32)).collect();
    let centre = (abs.iter().map(|a| a.0).sum::<f32>() / 4.0, abs.iter().map(|a| a.1).sum::<f32>() / 4.0);
    let len = |a: (f32, f32), b: (f32, f32)| ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt();
    let angle = (abs[1].1 - abs[0].1).atan2(abs[1].0 - abs[0].0).to_degrees();
    (centre, len(abs[0], abs[1]), len(abs[1], abs[2]), angle)
}

#[test]
fn crops_match_doctr() {
    let g = goldens();
    for (i, case) in g["crops"].as_array().unwrap().iter().enumerate() {
        let page_path = kiln_fixtures::fixtures_dir().join("pages").join(case["page"].as_str().unwrap());
        let page = kiln::image_io::load_image(&page_path).unwrap();
        let shapes = case["shapes"].as_array().unwrap();
        let means = f32s(&case["means"]);
        let pixels = case["pixels"].as_str().map(|f| npy(f).0);
        let mut offset = 0;
        for (j, b) in case["boxes"].as_array().unwrap().iter().enumerate() {
            let crop = if i == 0 {
                let b = f32s(b);
                straight_crop(&page, [b[0], b[1], b[2], b[3]])
            } else {
                let p: Vec<[f32; 2]> = b.as_array().unwrap().iter().map(|p| { let p = f32s(p); [p[0], p[1]] }).collect();
                let p = [p[0], p[1], p[2], p[3]];
                if case["horizontal"].as_bool() == Some(true) { horizontal_crop(&page, p) } else { rotated_crop(&page, p) }
            }
            .unwrap();
            let want = f32s(&shapes[j]);
            assert_eq!((crop.height() as f32, crop.width() as f32), (want[0], want[1]), "crop {i}/{j}");
            if let Some(pixels) = &pixels {
                // Rotated crops: OpenCV's warpAffine; horizontal ones its warpPerspective; pixel for pixel.
                let n = crop.as_raw().len();
                let expected = &pixels[offset..offset + n];
                offset += n;
                let off = crop.as_raw().iter().zip(expected).filter(|(a, b)| **a as f32 != **b).count();
                assert_eq!(off, 0, "crop {i}/{j}: {off} of {n} values differ from OpenCV's warp");
            }
            let mean = crop.pixels().flat_map(|p| p.0).map(f32::from).sum::<f32>() / (crop.len() as f32);
            assert!((mean - means[j]).abs() < 1.5, "crop {i}/{j}: mean {mean} vs docTR {}", means[j]);
        }
    }
}

#[test]
fn page_rotation_matches_doctr() {
    let (src, shape) = npy("rotate_src.npy");
    let corner = image::RgbImage::from_raw(shape[1] as u32, shape[0] as u32, src.iter().map(|&v| v as u8).collect()).unwrap();
    for case in goldens()["rotations"].as_array().unwrap() {
        let angle = case["angle"].as_f64().unwrap();
        let (want, shape) = npy(case["pixels"].as_str().unwrap());
        let turned = kiln::orientation::rotate_page(&corner, angle, true);
        assert_eq!((turned.height() as usize, turned.width() as usize), (shape[0], shape[1]), "{angle}°");
        let off = turned.as_raw().iter().zip(&want).filter(|(a, b)| **a as f32 != **b).count();
        assert_eq!(off, 0, "{angle}°: {off} of {} values differ from docTR's rotate_image", want.len());
    }
}

#[test]
fn decoders_match_doctr() {
    let g = goldens();
    let vocab: Vec<char> = kiln::vocabs::named("french").unwrap().chars().collect();
    for case in g["decoders"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let decoder = match name {
            "ctc" => Decoder { kind: DecoderKind::Ctc, blank: Blank::Last, confidence: Confidence::Min },
            "sar" => Decoder { kind: DecoderKind::Attention, blank: Blank::Last, confidence: Confidence::Min },
            "vitstr" => Decoder { kind: DecoderKind::Attention, blank: Blank::Last, confidence: Confidence::Mean },
            other => panic!("unknown decoder golden {other}"),
        };
        let (mut logits, shape) = npy(case["logits"].as_str().unwrap());
        let (n, steps, classes) = (shape[0], shape[1], shape[2]);
        ctc::softmax_rows(&mut logits, classes);
        let results = case["results"].as_array().unwrap();
        assert_eq!(results.len(), n);
        for (i, r) in results.iter().enumerate() {
            let (text, conf) = ctc::decode(&logits[i * steps * classes..(i + 1) * steps * classes], steps, classes, &vocab, &decoder);
            assert_eq!(text, r[0].as_str().unwrap(), "{name} #{i}");
            assert!((conf - r[1].as_f64().unwrap() as f32).abs() < 1e-5, "{name} #{i}: {conf} vs {}", r[1]);
        }
    }
}

#[test]
fn wide_crop_splitting_matches_doctr() {
    use kiln::postprocess::split::{Piece, merge_multi_strings, split_crops};
    let g = goldens();
    let split = &g["split"];
    let crops: Vec<image::RgbImage> = split["shapes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| image::RgbImage::new(s[1].as_u64().unwrap() as u32, s[0].as_u64().unwrap() as u32))
        .collect();
    let (windows, map) = split_crops(&crops);
    let ours: Vec<[u64; 2]> = windows.iter().map(|w| [w.height() as u64, w.width() as u64]).collect();
    let theirs: Vec<[u64; 2]> = serde_json::from_value(split["windows"].clone()).unwrap();
    assert_eq!(ours, theirs);
    for (piece, m) in map.iter().zip(split["map"].as_array().unwrap()) {
        match (piece, m) {
            (Piece::Whole(i), Value::Number(n)) => assert_eq!(*i as u64, n.as_u64().unwrap()),
            (Piece::Split { start, end, last_overlap }, Value::Array(a)) => {
                assert_eq!((*start as u64, *end as u64), (a[0].as_u64().unwrap(), a[1].as_u64().unwrap()));
                assert!((*last_overlap - a[2].as_f64().unwrap()).abs() < 1e-9);
            }
            other => panic!("split map differs: {other:?}"),
        }
    }
    let cases = g["merge"].as_array().unwrap();
    assert!(cases.len() >= 100);
    for c in cases {
        let parts: Vec<String> = serde_json::from_value(c["parts"].clone()).unwrap();
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let ours = merge_multi_strings(&parts, c["ratio"].as_f64().unwrap(), c["last"].as_f64().unwrap());
        assert_eq!(ours, c["merged"].as_str().unwrap(), "{parts:?} ratio {} last {}", c["ratio"], c["last"]);
    }
}

#[test]
fn document_builder_matches_doctr() {
    let g = goldens();
    let cases = g["builder"].as_array().unwrap();
    assert!(cases.len() >= 4, "straight and rotated cases, with and without blocks");
    for (n, case) in cases.iter().enumerate() {
        let shape = f32s(&case["shape"]);
        let scores = f32s(&case["scores"]);
        let words: Vec<Word> = case["boxes"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let geometry = match b[0].as_array() {
                    Some(_) => {
                        let p: Vec<Vec<f32>> = b.as_array().unwrap().iter().map(f32s).collect();
                        Geometry::Rotated([0, 1, 2, 3].map(|k| [p[k][0], p[k][1]]))
                    }
                    None => {
                        let b = f32s(b);
                        Geometry::Straight([b[0], b[1], b[2], b[3]])
                    }
                };
                Word {
                    value: format!("w{i}"),
                    confidence: 0.9,
                    geometry,
                    objectness_score: scores[i],
                    crop_orientation: Prediction::default(),
                }
            })
            .collect();
        let options = kiln::builder::BuilderOptions {
            resolve_blocks: case["resolve_blocks"].as_bool().unwrap(),
            ..Default::default()
        };
        let blocks = kiln::builder::build_blocks(words, (shape[0] as u32, shape[1] as u32), &options);
        let ours: Vec<Vec<Vec<String>>> = blocks
            .iter()
            .map(|b| b.lines.iter().map(|l| l.words.iter().map(|w| w.value.clone()).collect()).collect())
            .collect();
        let theirs: Vec<Vec<Vec<String>>> = serde_json::from_value(case["blocks"].clone()).unwrap();
        assert_eq!(ours, theirs, "case {n}");
        // Enclosing geometries: docTR fits rotated ones with OpenCV at 1024× scale.
        let close = |ours: &Geometry, theirs: &Value, what: &str| {
            let theirs: Vec<f32> = theirs.as_array().unwrap().iter().flat_map(f32s).collect();
            let ours: Vec<f32> = kiln_points(ours).into_iter().flatten().collect();
            assert_eq!(ours.len(), theirs.len(), "case {n} {what}");
            let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(worst < 2e-3, "case {n} {what}: {ours:?} vs {theirs:?}");
        };
        let lines: Vec<&kiln::document::Line> = blocks.iter().flat_map(|b| &b.lines).collect();
        for (l, g) in lines.iter().zip(case["line_geometries"].as_array().unwrap()) {
            close(&l.geometry, g, "line");
        }
        for (b, g) in blocks.iter().zip(case["block_geometries"].as_array().unwrap()) {
            close(&b.geometry, g, "block");
        }
    }
}

#[test]
fn page_angle_estimate_matches_doctr() {
    let g = goldens();
    let cases = g["orientation"].as_array().unwrap();
    assert!(cases.len() >= 6);
    for case in cases {
        let (map, shape) = npy(case["map"].as_str().unwrap());
        let seg = image::GrayImage::from_fn(shape[1] as u32, shape[0] as u32, |x, y| {
            image::Luma([if map[y as usize * shape[1] + x as usize] > 0.0 { 255 } else { 0 }])
        });
        let general = case["general"].as_array().map(|g| (g[0].as_i64().unwrap() as i32, g[1].as_f64().unwrap() as f32));
        let ours = kiln::orientation::estimate_orientation(&seg, general);
        let theirs = case["angle"].as_i64().unwrap() as i32;
        // Contour corners differ by a pixel between OpenCV and imageproc: a degree of rounding.
        assert!((ours - theirs).abs() <= 1, "{}: ours {ours}, docTR {theirs}", case["map"]);
    }
}

#[test]
fn straightened_pages_match_doctr() {
    let g = goldens();
    for case in g["straighten"].as_array().unwrap() {
        let page_path = kiln_fixtures::fixtures_dir().join("pages").join(case["page"].as_str().unwrap());
        let page = kiln::image_io::load_image(&page_path).unwrap();
        let angle = case["angle"].as_f64().unwrap();
        let ours = kiln::orientation::remove_image_padding(&kiln::orientation::rotate_page(&page, angle, page.width() != page.height()));
        let want = f32s(&case["shape"]);
        assert_eq!((ours.height() as f32, ours.width() as f32), (want[0], want[1]), "angle {angle}");
        let mean = ours.pixels().flat_map(|p| p.0).map(f64::from).sum::<f64>() / ours.len() as f64;
        let theirs = case["mean"].as_f64().unwrap();
        assert!((mean - theirs).abs() < 1.0, "angle {angle}: mean {mean} vs docTR {theirs}");
    }
}

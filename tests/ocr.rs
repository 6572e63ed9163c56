//! The OCR pipeline end to end on real trained weights (the PP-OCR models of the fixtures) and
//! pages of known words (`tests/fixtures/make_pages.py`), plus its bad-input errors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kiln::{Error, Model, ModelCard, Models, Options, Predictor};

fn pages_dir() -> PathBuf {
    kiln_fixtures::fixtures_dir().join("pages")
}

/// The PP-OCR models; with rotated boxes their family's crop classifier (ppocr-v2-cls) comes
/// with them unnamed.
fn predictor(options: Options) -> Predictor {
    Predictor::builder()
        .det("ppocr-v4-det")
        .reco("ppocr-v4-rec")
        .options(options)
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Word-multiset F1 between what was read and the truth (lower-cased, split on whitespace).
fn f1(read: &str, truth: &[String]) -> f64 {
    let count = |words: Vec<String>| {
        let mut m: HashMap<String, usize> = HashMap::new();
        for w in words {
            *m.entry(w).or_default() += 1;
        }
        m
    };
    let got = count(read.split_whitespace().map(str::to_lowercase).collect());
    let want = count(truth.iter().map(|w| w.to_lowercase()).collect());
    let hits: usize = got.iter().map(|(w, n)| (*n).min(*want.get(w).unwrap_or(&0))).sum();
    let (n_got, n_want) = (got.values().sum::<usize>(), want.values().sum::<usize>());
    if n_got == 0 || n_want == 0 {
        return 0.0;
    }
    let (p, r) = (hits as f64 / n_got as f64, hits as f64 / n_want as f64);
    if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) }
}

/// Pages of known words with their rotation (counter-clockwise degrees).
fn known_pages() -> Vec<(PathBuf, Vec<String>, i64)> {
    let dir = pages_dir();
    let index = std::fs::read_to_string(dir.join("pages.json"))
        .unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask fixtures`)", dir.display()));
    let index: serde_json::Value = serde_json::from_str(&index).unwrap();
    let pages = index["pages"].as_array().unwrap();
    assert!(pages.len() >= 3, "pages.json lists {} pages", pages.len());
    pages
        .iter()
        .map(|p| {
            let words = p["words"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_string()).collect();
            (dir.join(p["file"].as_str().unwrap()), words, p["rotation"].as_i64().unwrap())
        })
        .collect()
}

fn read_pages(options: Options, rotations: &[i64]) -> Vec<(PathBuf, f64)> {
    let p = predictor(options);
    let pages: Vec<_> = known_pages().into_iter().filter(|(_, _, r)| rotations.contains(r)).collect();
    assert!(pages.len() >= rotations.len(), "no pages for some of the rotations {rotations:?}");
    pages
        .into_iter()
        .map(|(file, truth, _)| {
            let page = kiln::image_io::load_image(&file).unwrap();
            let doc = p.predict(&[page]).unwrap();
            let text = doc.render();
            let score = f1(&text, &truth);
            eprintln!("{}: F1 {score:.3}\n{text}", file.display());
            (file, score)
        })
        .collect()
}

#[test]
fn real_text_straight_pages() {
    for (file, score) in read_pages(Options::default(), &[0]) {
        assert!(score >= 0.85, "{}: word F1 {score:.3} < 0.85", file.display());
    }
}

#[test]
fn real_text_with_rotated_boxes_and_crop_orientation() {
    // Upright pages and pages turned 90°, 180°, 270°: rotated boxes, tall crops turned a quarter
    // turn, and PaddleOCR's 0°/180° classifier deciding the rest.
    let options = Options { assume_straight_pages: false, ..Options::default() };
    for (file, score) in read_pages(options, &[0, 90, 180, 270]) {
        assert!(score >= 0.85, "{}: word F1 {score:.3} < 0.85", file.display());
    }
}

#[test]
fn ppocr_models_bring_their_crop_classifier() {
    let rotated = Options { assume_straight_pages: false, ..Options::default() };
    let card = |p: &Predictor| p.crop_orientation_card().map(|c| c.name.clone());
    assert_eq!(card(&predictor(rotated.clone())).as_deref(), Some("ppocr-v2-cls"));
    // A classifier named by the caller wins over the family's.
    let named = Predictor::builder()
        .det("ppocr-v4-det")
        .reco("ppocr-v4-rec")
        .crop_orientation(kiln::DEFAULT_CROP_ORIENTATION)
        .options(rotated.clone())
        .build()
        .unwrap();
    assert_eq!(card(&named).as_deref(), Some(kiln::DEFAULT_CROP_ORIENTATION));
    // Kiln's own models keep Kiln's classifier; straight pages load none.
    let default = Predictor::builder().options(rotated).build().unwrap();
    assert_eq!(card(&default).as_deref(), Some(kiln::DEFAULT_CROP_ORIENTATION));
    assert_eq!(card(&predictor(Options::default())), None);
}

#[test]
fn skewed_scan_like_pages_are_read_in_straight_mode() {
    // Prose skewed 2–3°, tinted, blurred, noisy and JPEG-compressed: PP-OCR's detector sees whole
    // lines, whose straight bounding rectangles a skew fills too thinly to pass its box threshold
    // unless skewed lines get rotated boxes cut level, as PaddleOCR cuts them (`level_skewed_lines`).
    let dir = pages_dir();
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("pages.json")).unwrap()).unwrap();
    let scans = index["scans"].as_array().expect("pages.json lists scans (run `cargo xtask fixtures`)");
    assert!(scans.len() >= 2);
    let p = predictor(Options::default());
    for scan in scans {
        let file = dir.join(scan["file"].as_str().unwrap());
        let truth: Vec<String> = serde_json::from_value(scan["words"].clone()).unwrap();
        let doc = p.predict(&[kiln::image_io::load_image(&file).unwrap()]).unwrap();
        assert!(doc.pages[0].words().all(|w| matches!(w.geometry, kiln::geometry::Geometry::Straight(_))));
        let text = doc.render();
        let score = f1(&text, &truth);
        eprintln!("{}: F1 {score:.3}\n{text}", file.display());
        assert!(score >= 0.8, "{}: word F1 {score:.3} < 0.8\n{text}", file.display());
    }
}

#[test]
fn export_geometry_lies_on_the_page() {
    let p = predictor(Options::default());
    let (file, _, _) = known_pages().remove(0);
    let doc = p.predict(&[kiln::image_io::load_image(&file).unwrap()]).unwrap();
    let page = &doc.pages[0];
    assert_eq!(page.dimensions, (800, 1000));
    let words: Vec<_> = page.words().collect();
    assert!(words.len() >= 8, "{} words", words.len());
    for w in words {
        let [x0, y0, x1, y1] = w.geometry.bounds();
        assert!(0.0 <= x0 && x0 < x1 && x1 <= 1.0 && 0.0 <= y0 && y0 < y1 && y1 <= 1.0, "{:?}", w.geometry);
        assert!((0.0..=1.0).contains(&w.confidence) && (0.0..=1.0).contains(&w.objectness_score));
    }
    let json = doc.export();
    assert!(json["pages"][0]["blocks"][0]["lines"][0]["words"][0]["value"].is_string(), "{json}");
}

#[test]
fn pdf_pages_are_read() {
    let dir = pages_dir();
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("pages.json")).unwrap()).unwrap();
    let pdf = &index["pdfs"][0];
    let pages = kiln::pdf::load_pages(&dir.join(pdf["file"].as_str().unwrap())).unwrap();
    assert_eq!(pages.len(), 2);
    // 144 dpi pages rendered at docTR's scale 2 come back at their pixel size.
    assert_eq!(pages[0].dimensions(), (1000, 800));
    let p = predictor(Options::default());
    for (page, truth) in pages.iter().zip(pdf["words"].as_array().unwrap()) {
        let truth: Vec<String> = serde_json::from_value(truth.clone()).unwrap();
        let text = p.predict(std::slice::from_ref(page)).unwrap().render();
        let score = f1(&text, &truth);
        assert!(score >= 0.85, "PDF page: word F1 {score:.3}\n{text}");
    }
}

#[test]
fn bad_pdfs_are_typed_errors() {
    let dir = scratch();
    let empty = dir.path().join("empty.pdf");
    std::fs::write(&empty, b"%PDF-1.4\n%%EOF\n").unwrap();
    let e = kiln::pdf::load_pages(&empty).unwrap_err();
    assert!(matches!(e, Error::Pdf { .. }) && e.to_string().contains("empty.pdf"), "{e}");
    let truncated = dir.path().join("truncated.pdf");
    let whole = std::fs::read(pages_dir().join("two_pages.pdf")).unwrap();
    std::fs::write(&truncated, &whole[..whole.len() / 3]).unwrap();
    // Either refused or read as what survives; never a panic.
    if let Err(e) = kiln::pdf::load_pages(&truncated) {
        assert!(e.to_string().contains("truncated.pdf"), "{e}");
    }
}

#[test]
fn a_zero_size_page_is_refused() {
    let p = predictor(Options::default());
    let e = p.predict(&[image::RgbImage::new(0, 0)]).unwrap_err();
    assert!(matches!(e, Error::PageSize { .. }), "{e}");
}

/// A directory removed when the test ends, pass or fail.
fn scratch() -> kiln_fixtures::ScratchDir {
    kiln_fixtures::ScratchDir::new("kiln-ocr").unwrap()
}

/// A PNG whose header claims `w`×`h` (CRC fixed up), with a 1×1 body: enough to test refusals
/// that must happen before decoding.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut bytes = vec![];
    image::RgbImage::new(1, 1).write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    // Signature (8) + length (4) + "IHDR" (4) + width/height (8) + 5 bytes + CRC (4).
    bytes[16..20].copy_from_slice(&w.to_be_bytes());
    bytes[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

#[test]
fn bad_images_are_typed_errors_naming_the_file() {
    let dir = scratch();
    let garbage = dir.path().join("garbage.png");
    std::fs::write(&garbage, b"definitely not an image").unwrap();
    let e = kiln::image_io::load_image(&garbage).unwrap_err();
    assert!(matches!(e, Error::Image { .. }) && e.to_string().contains("garbage.png"), "{e}");

    let huge = dir.path().join("huge.png");
    std::fs::write(&huge, png_claiming(20000, 20000)).unwrap();
    let e = kiln::image_io::load_image(&huge).unwrap_err();
    assert!(matches!(e, Error::PageSize { width: 20000, height: 20000, .. }), "{e}");

    let empty = dir.path().join("empty.png");
    std::fs::write(&empty, png_claiming(0, 0)).unwrap();
    let e = kiln::image_io::load_image(&empty).unwrap_err();
    // The PNG decoder itself refuses a zero dimension; either way the page is rejected, named.
    assert!(matches!(e, Error::Image { .. } | Error::PageSize { .. }) && e.to_string().contains("empty.png"), "{e}");

    let missing = Path::new("/nonexistent/page.png");
    assert!(matches!(kiln::image_io::load_image(missing).unwrap_err(), Error::Io { .. }));
}

#[test]
fn a_model_in_the_wrong_role_is_refused() {
    let rec = ModelCard::named("ppocr-v4-rec").unwrap().locate().unwrap();
    // The recogniser's ONNX described by the detector's card: wrong output rank.
    let e = Model::load(ModelCard::named("ppocr-v4-det").unwrap(), Some(&rec)).err().unwrap();
    assert!(matches!(e, Error::WrongModel { .. }), "{e}");
    // A recogniser passed as the detector.
    let load = |name: &str| Model::load(ModelCard::named(name).unwrap(), None).unwrap();
    let models = Models { det: load("ppocr-v4-rec"), reco: load("ppocr-v4-rec"), crop_orientation: None, page_orientation: None };
    let e = Predictor::new(models, Options::default()).err().unwrap();
    assert!(matches!(e, Error::WrongModel { .. }), "{e}");
    // Options that need a classifier refuse to start without one.
    let models = Models { det: load("ppocr-v4-det"), reco: load("ppocr-v4-rec"), crop_orientation: None, page_orientation: None };
    let options = Options { assume_straight_pages: false, ..Options::default() };
    let e = Predictor::new(models, options).err().unwrap();
    assert!(matches!(e, Error::Options { .. }), "{e}");
}

/// docTR architectures through the same pipeline (random-init fixture exports: a smoke check —
/// such detectors see the whole page as one word).
#[test]
fn doctr_cards_run_end_to_end() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample-page.png");
    let page = kiln::image_io::load_image(&sample).unwrap();
    for straight in [true, false] {
        let options = Options { assume_straight_pages: straight, ..Options::default() };
        // By name these cards download docTR's official weights; the tests run the fixtures.
        let fixture = |name: &str| kiln::ModelSource::File {
            path: ModelCard::named(name).unwrap().fixture_path().expect("run `cargo xtask fixtures`"),
            card: name.into(),
        };
        let p = Predictor::builder()
            .det(fixture("db_mobilenet_v3_large"))
            .reco(fixture("crnn_mobilenet_v3_small"))
            .crop_orientation(fixture("mobilenet_v3_small_crop_orientation"))
            .options(options)
            .build()
            .unwrap();
        let doc = p.predict(std::slice::from_ref(&page)).unwrap();
        let words: Vec<_> = doc.pages[0].words().collect();
        assert_eq!(words.len(), 1, "straight={straight}: {words:?}");
        let [x0, y0, x1, y1] = words[0].geometry.bounds();
        assert!(x0 < 0.01 && y0 < 0.01 && x1 > 0.99 && y1 > 0.99, "{:?}", words[0].geometry);
        assert_eq!(words[0].crop_orientation.confidence.is_some(), !straight, "docTR: class 0 without confidence on straight pages");
    }
}

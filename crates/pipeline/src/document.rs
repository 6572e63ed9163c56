//! docTR's document tree (`doctr/io/elements.py`): Document → Page → Block → Line → Word, with
//! relative geometry, and its exports: `export()`'s JSON schema and `render()`'s plain text.

use serde::Serialize;
use serde::ser::{SerializeSeq, Serializer};

use crate::geometry::{Geometry, enclosing_rotated};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Document {
    pub pages: Vec<Page>,
}

/// A value with the classifier's confidence (`None` where nothing was predicted).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Prediction<T> {
    pub value: Option<T>,
    pub confidence: Option<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page {
    pub page_idx: usize,
    /// (height, width) in pixels.
    pub dimensions: (u32, u32),
    pub orientation: Prediction<i32>,
    pub language: Prediction<String>,
    pub blocks: Vec<Block>,
    /// docTR 1.1.0 exports layout regions and tables; Kiln predicts neither yet.
    pub layout: Vec<()>,
    pub tables: Vec<()>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Block {
    #[serde(serialize_with = "geometry")]
    pub geometry: Geometry,
    pub objectness_score: f32,
    pub lines: Vec<Line>,
    pub artefacts: Vec<()>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    #[serde(serialize_with = "geometry")]
    pub geometry: Geometry,
    pub objectness_score: f32,
    pub words: Vec<Word>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Word {
    pub value: String,
    pub confidence: f32,
    #[serde(serialize_with = "geometry")]
    pub geometry: Geometry,
    pub objectness_score: f32,
    pub crop_orientation: Prediction<i32>,
}

/// docTR's geometry tuples: ((xmin, ymin), (xmax, ymax)) or four (x, y) corners.
fn geometry<S: Serializer>(g: &Geometry, s: S) -> Result<S::Ok, S::Error> {
    let points: Vec<[f32; 2]> = match g {
        Geometry::Straight([x0, y0, x1, y1]) => vec![[*x0, *y0], [*x1, *y1]],
        Geometry::Rotated(p) => p.to_vec(),
    };
    let mut seq = s.serialize_seq(Some(points.len()))?;
    for p in points {
        seq.serialize_element(&p)?;
    }
    seq.end()
}

impl Line {
    /// A line around its words: enclosing geometry, mean objectness.
    pub fn new(words: Vec<Word>) -> Self {
        let geometry = enclosing(words.iter().map(|w| &w.geometry));
        let objectness_score = mean(words.iter().map(|w| w.objectness_score));
        Line { geometry, objectness_score, words }
    }

    pub fn render(&self) -> String {
        self.words.iter().map(|w| w.value.as_str()).collect::<Vec<_>>().join(" ")
    }
}

impl Block {
    /// A block around its lines' words: enclosing geometry, mean objectness of the words.
    pub fn new(lines: Vec<Line>) -> Self {
        let words = || lines.iter().flat_map(|l| &l.words);
        let geometry = enclosing(words().map(|w| &w.geometry));
        let objectness_score = mean(words().map(|w| w.objectness_score));
        Block { geometry, objectness_score, lines, artefacts: vec![] }
    }

    pub fn render(&self) -> String {
        self.lines.iter().map(Line::render).collect::<Vec<_>>().join("\n")
    }
}

impl Page {
    pub fn render(&self) -> String {
        self.blocks.iter().map(Block::render).collect::<Vec<_>>().join("\n\n")
    }

    pub fn words(&self) -> impl Iterator<Item = &Word> {
        self.blocks.iter().flat_map(|b| &b.lines).flat_map(|l| &l.words)
    }
}

impl Page {
    /// hOCR 1.2 of the page, laid out like docTR's `XMLExporter.export_page` (ocr_page › ocr_carea ›
    /// ocr_par › ocr_line › ocrx_word, pixel boxes, `x_wconf` in percent). Rotated boxes are given
    /// by their enclosing straight box, where docTR refuses them.
    pub fn export_hocr(&self, title: &str) -> String {
        let (height, width) = self.dimensions;
        let bbox = |g: &Geometry| {
            let [x0, y0, x1, y1] = g.bounds();
            let px = |v: f32, size: u32| (v * size as f32).round() as i64;
            format!("bbox {} {} {} {}", px(x0, width), px(y0, height), px(x1, width), px(y1, height))
        };
        let lang = self.language.value.as_deref().filter(|l| !l.is_empty()).unwrap_or("en");
        let mut x = String::new();
        x.push_str(&format!(
            "<?xml version='1.0' encoding='utf-8'?>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"{}\"><head><title>{}</title>\
             <meta http-equiv=\"Content-Type\" content=\"text/html; charset=utf-8\" />\
             <meta name=\"ocr-system\" content=\"kiln {}\" />\
             <meta name=\"ocr-capabilities\" content=\"ocr_page ocr_carea ocr_par ocr_line ocrx_word\" /></head><body>",
            escape(lang),
            escape(title),
            env!("CARGO_PKG_VERSION")
        ));
        x.push_str(&format!(
            "<div class=\"ocr_page\" id=\"page_{}\" title=\"image; bbox 0 0 {width} {height}; ppageno 0\">",
            self.page_idx + 1
        ));
        let (mut line_no, mut word_no) = (1, 1);
        for (b, block) in self.blocks.iter().enumerate() {
            let bb = bbox(&block.geometry);
            x.push_str(&format!(
                "<div class=\"ocr_carea\" id=\"block_{n}\" title=\"{bb}\"><p class=\"ocr_par\" id=\"par_{n}\" title=\"{bb}\">",
                n = b + 1
            ));
            for line in &block.lines {
                x.push_str(&format!(
                    "<span class=\"ocr_line\" id=\"line_{line_no}\" title=\"{}; baseline 0 0; x_size 0; x_descenders 0; x_ascenders 0\">",
                    bbox(&line.geometry)
                ));
                line_no += 1;
                for w in &line.words {
                    x.push_str(&format!(
                        "<span class=\"ocrx_word\" id=\"word_{word_no}\" title=\"{}; x_wconf {}\">{}</span>",
                        bbox(&w.geometry),
                        (w.confidence * 100.0).round() as i64,
                        escape(&w.value)
                    ));
                    word_no += 1;
                }
                x.push_str("</span>");
            }
            x.push_str("</p></div>");
        }
        x.push_str("</div></body></html>\n");
        x
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

impl Document {
    /// The text, like docTR's `Document.render()`.
    pub fn render(&self) -> String {
        self.pages.iter().map(Page::render).collect::<Vec<_>>().join("\n\n\n\n")
    }

    /// The nested JSON of docTR's `Document.export()`.
    pub fn export(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

fn mean(it: impl Iterator<Item = f32>) -> f32 {
    let (s, n) = it.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { 0.0 } else { s / n as f32 }
}

/// docTR's enclosing geometry: the smallest straight box around straight children; around
/// rotated children, the minimum-area rectangle (`resolve_enclosing_rbbox`).
pub(crate) fn enclosing<'a>(children: impl Iterator<Item = &'a Geometry> + Clone) -> Geometry {
    let mut b = [f32::MAX, f32::MAX, f32::MIN, f32::MIN];
    for g in children.clone() {
        let [x0, y0, x1, y1] = g.bounds();
        b = [b[0].min(x0), b[1].min(y0), b[2].max(x1), b[3].max(y1)];
    }
    if children.clone().any(|g| matches!(g, Geometry::Rotated(_))) {
        let corners = children.flat_map(|g| g.corners());
        Geometry::Rotated(enclosing_rotated(corners).unwrap_or([[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]]]))
    } else {
        Geometry::Straight(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_has_doctr_schema() {
        let word = Word {
            value: "hello".into(),
            confidence: 0.5,
            geometry: Geometry::Straight([0.25, 0.25, 0.5, 0.75]),
            objectness_score: 0.75,
            crop_orientation: Prediction { value: Some(0), confidence: None },
        };
        let page = Page {
            page_idx: 0,
            dimensions: (100, 200),
            orientation: Prediction::default(),
            language: Prediction::default(),
            blocks: vec![Block::new(vec![Line::new(vec![word])])],
            layout: vec![],
            tables: vec![],
        };
        let doc = Document { pages: vec![page] };
        // The same document built with docTR 1.1.0's elements and `json.dumps(doc.export())`.
        let doctr = r#"{"pages": [{"page_idx": 0, "dimensions": [100, 200], "orientation": {"value": null, "confidence": null}, "language": {"value": null, "confidence": null}, "blocks": [{"geometry": [[0.25, 0.25], [0.5, 0.75]], "objectness_score": 0.75, "lines": [{"geometry": [[0.25, 0.25], [0.5, 0.75]], "objectness_score": 0.75, "words": [{"value": "hello", "confidence": 0.5, "geometry": [[0.25, 0.25], [0.5, 0.75]], "objectness_score": 0.75, "crop_orientation": {"value": 0, "confidence": null}}]}], "artefacts": []}], "layout": [], "tables": []}]}"#;
        let expected: serde_json::Value = serde_json::from_str(doctr).unwrap();
        assert_eq!(doc.export(), expected);
        assert_eq!(doc.render(), "hello");
        let hocr = doc.pages[0].export_hocr("t");
        assert!(hocr.contains(r#"<span class="ocrx_word" id="word_1" title="bbox 50 25 100 75; x_wconf 50">hello</span>"#), "{hocr}");
        assert!(hocr.contains(r#"title="image; bbox 0 0 200 100; ppageno 0""#), "{hocr}");
    }
}

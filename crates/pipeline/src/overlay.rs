//! A picture of the result: word boxes drawn over the page, each labelled with what was read.

use ab_glyph::FontVec;
use image::{Rgb, RgbImage};
use imageproc::drawing::{draw_line_segment_mut, draw_text_mut};

use crate::document::Page;
use crate::geometry::Geometry;

/// Fonts tried for the labels, in order (`KILN_FONT` first); without one, boxes only.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

fn label_font() -> Option<FontVec> {
    let env = std::env::var("KILN_FONT").ok();
    env.iter()
        .map(String::as_str)
        .chain(FONT_PATHS.iter().copied())
        .find_map(|p| std::fs::read(p).ok().and_then(|b| FontVec::try_from_vec(b).ok()))
}

/// The page with its words' boxes (red) and values (blue, above each box).
pub fn draw(page_image: &RgbImage, page: &Page) -> RgbImage {
    let mut out = page_image.clone();
    let (w, h) = (out.width() as f32, out.height() as f32);
    let font = label_font();
    for word in page.words() {
        let corners: Vec<(f32, f32)> = match word.geometry {
            Geometry::Straight([x0, y0, x1, y1]) => vec![(x0, y0), (x1, y0), (x1, y1), (x0, y1)],
            Geometry::Rotated(p) => p.iter().map(|q| (q[0], q[1])).collect(),
        }
        .into_iter()
        .map(|(x, y)| (x * w, y * h))
        .collect();
        for i in 0..corners.len() {
            let (a, b) = (corners[i], corners[(i + 1) % corners.len()]);
            for d in [0.0, 1.0] {
                draw_line_segment_mut(&mut out, (a.0 + d, a.1 + d), (b.0 + d, b.1 + d), Rgb([220, 30, 30]));
            }
        }
        if let Some(font) = &font {
            let [x0, y0, _, y1] = word.geometry.bounds();
            let size = ((y1 - y0) * h * 0.6).clamp(10.0, 48.0);
            let y = (y0 * h - size).max(0.0);
            draw_text_mut(&mut out, Rgb([20, 60, 200]), (x0 * w) as i32, y as i32, size, font, &word.value);
        }
    }
    out
}

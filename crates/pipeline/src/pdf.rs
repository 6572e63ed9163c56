//! PDF pages in, through hayro: a pure-Rust PDF rasteriser (no system library, builds offline),
//! at docTR's scale of 2 (144 dpi).

use std::path::Path;

use hayro::hayro_syntax::Pdf;
use hayro::{PixmapSettings, RenderCache, RenderSettings};
use image::RgbImage;

use crate::error::{Error, Result};
use crate::image_io::check_size;

/// docTR renders PDF pages at twice their size in points (pypdfium2 scale 2).
const SCALE: f32 = 2.0;

/// Every page of a PDF file as an RGB image.
pub fn load_pdf(path: &Path) -> Result<Vec<RgbImage>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.into(), source })?;
    let fail = |reason: String| Error::Pdf { path: path.into(), reason };
    let pdf = Pdf::new(bytes).map_err(|e| fail(format!("{e:?}")))?;
    let pages = pdf.pages();
    if pages.is_empty() {
        return Err(fail("the document has no pages".into()));
    }
    let cache = RenderCache::new();
    let settings = PixmapSettings { x_scale: SCALE, y_scale: SCALE, ..PixmapSettings::default() };
    let mut out = Vec::with_capacity(pages.len());
    for page in pages.iter() {
        let (w, h) = page.render_dimensions();
        let (w, h) = ((w * SCALE) as u32, (h * SCALE) as u32);
        check_size(w, h, path)?;
        // hayro's canvas is u16-sized.
        if w > u16::MAX as u32 || h > u16::MAX as u32 {
            return Err(Error::PageSize { path: path.into(), width: w, height: h, reason: "a PDF page over 65535 px" });
        }
        let pixmap = hayro::render(page, &cache, &Default::default(), &RenderSettings::default(), &settings);
        let (pw, ph) = (pixmap.width() as u32, pixmap.height() as u32);
        // Premultiplied RGBA over white.
        let rgb: Vec<u8> = pixmap
            .data_as_u8_slice()
            .chunks_exact(4)
            .flat_map(|p| {
                let a = 255 - p[3];
                [p[0].saturating_add(a), p[1].saturating_add(a), p[2].saturating_add(a)]
            })
            .collect();
        out.push(RgbImage::from_raw(pw, ph, rgb).ok_or_else(|| fail("rendered page has the wrong size".into()))?);
    }
    Ok(out)
}

/// Pages of a file: a PDF's pages, or one image.
pub fn load_pages(path: &Path) -> Result<Vec<RgbImage>> {
    let is_pdf = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("pdf"))
        || std::fs::File::open(path)
            .and_then(|mut f| {
                let mut head = [0u8; 5];
                std::io::Read::read_exact(&mut f, &mut head).map(|_| &head == b"%PDF-")
            })
            .unwrap_or(false);
    if is_pdf { load_pdf(path) } else { Ok(vec![crate::image_io::load_image(path)?]) }
}

//! Pages in: image files through the `image` crate, turned upright by their EXIF orientation.

use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use crate::error::{Error, Result};

/// Pages larger than this (in pixels) are refused rather than risking gigabytes of buffers; an
/// A4 page at 600 dpi is 35 Mpx.
pub const MAX_PAGE_PIXELS: u64 = 100_000_000;

/// Decodes an image file into an RGB page, EXIF orientation applied.
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.into(), source })?;
    decode_image(&bytes, path)
}

/// Decodes image bytes; `path` names them in errors.
pub fn decode_image(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    let fail = |reason: String| Error::Image { path: path.into(), reason };
    let reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| fail(e.to_string()))?;
    if reader.format().is_none() {
        return Err(fail("unknown image format".into()));
    }
    let (w, h) = reader.into_dimensions().map_err(|e| fail(e.to_string()))?;
    check_size(w, h, path)?;
    let mut decoder = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| fail(e.to_string()))?
        .into_decoder()
        .map_err(|e| fail(e.to_string()))?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| fail(e.to_string()))?;
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

/// Refuses empty and oversized pages.
pub fn check_size(w: u32, h: u32, path: &Path) -> Result<()> {
    let reason = if w == 0 || h == 0 {
        "a page needs at least one pixel"
    } else if u64::from(w) * u64::from(h) > MAX_PAGE_PIXELS {
        "larger than the 100 Mpx page limit (kiln::image_io::MAX_PAGE_PIXELS)"
    } else {
        return Ok(());
    };
    Err(Error::PageSize { path: path.into(), width: w, height: h, reason })
}

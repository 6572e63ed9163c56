//! Model inputs from pages and crops: docTR's resize-and-pad, PaddleOCR's size rules, then
//! /255 and per-channel mean/std, in the channel order the model was trained with.

use image::RgbImage;
use image::imageops::{self, FilterType};

use crate::card::{Channels, LimitType, ModelCard, Resize};

/// One image made ready for a model: CHW floats and where the content sits in them.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub data: Vec<f32>,
    pub height: usize,
    pub width: usize,
    /// Rows and columns the image occupies after resizing (the rest is padding).
    pub content: (usize, usize),
}

/// Target (height, width) of `image` for this card; `batch_width` is the padded width of a
/// height-resized batch.
pub fn target_size(card: &ModelCard, h: u32, w: u32) -> (usize, usize) {
    let [_, th, tw] = card.input;
    match &card.resize {
        Resize::Fixed { .. } => (th, tw),
        Resize::SideLimit { limit, limit_type, multiple, max_side } => {
            let (h, w) = (h as f64, w as f64);
            let limit = *limit as f64;
            let ratio = match limit_type {
                LimitType::Min if h.min(w) < limit => limit / h.min(w),
                LimitType::Max if h.max(w) > limit => limit / h.max(w),
                _ => 1.0,
            };
            let ratio = match max_side {
                Some(m) if h.max(w) * ratio > *m as f64 => *m as f64 / h.max(w),
                _ => ratio,
            };
            // PaddleOCR: int(), then Python's round (ties to even) to the multiple, at least one.
            let m = *multiple as f64;
            let round = |v: f64| (((v.trunc() / m).round_ties_even() * m) as usize).max(*multiple as usize);
            (round(h * ratio), round(w * ratio))
        }
        Resize::Height { multiple } => {
            let cw = height_resized_width(th, h, w).max(tw);
            (th, cw.div_ceil(*multiple as usize) * *multiple as usize)
        }
    }
}

/// PaddleOCR's width for a crop resized to height `th`: ceil(th · w / h).
fn height_resized_width(th: usize, h: u32, w: u32) -> usize {
    ((th as f64 * w as f64 / h as f64).ceil() as usize).max(1)
}

/// Resizes `img` into a `height`×`width` model input following the card's rule.
pub fn prepare(card: &ModelCard, img: &RgbImage, height: usize, width: usize) -> Prepared {
    let (h, w) = (img.height() as usize, img.width() as usize);
    // (content rows, content cols, top, left, padding value in normalised space?)
    let (ch, cw, top, left, pad_normalised_zero) = match &card.resize {
        Resize::Fixed { preserve_aspect_ratio: false, .. } => (height, width, 0, 0, false),
        Resize::Fixed { symmetric_pad, .. } => {
            // docTR: keep the aspect ratio, int() truncation, at least one pixel.
            let (target, actual) = (height as f64 / width as f64, h as f64 / w as f64);
            let (ch, cw) = if actual > target {
                (height, ((height as f64 / actual) as usize).max(1))
            } else {
                (((width as f64 * actual) as usize).max(1), width)
            };
            let (ch, cw) = (ch.min(height), cw.min(width));
            let (top, left) =
                if *symmetric_pad { ((height - ch).div_ceil(2), (width - cw).div_ceil(2)) } else { (0, 0) };
            (ch, cw, top, left, false)
        }
        Resize::SideLimit { .. } => (height, width, 0, 0, false),
        Resize::Height { .. } => (height, height_resized_width(height, h as u32, w as u32).min(width), 0, 0, true),
    };
    let resized = if (ch, cw) == (h, w) {
        img.clone()
    } else if matches!(card.resize, Resize::Fixed { .. }) {
        // docTR: torchvision's antialiased bilinear.
        imageops::resize(img, cw as u32, ch as u32, FilterType::Triangle)
    } else {
        // PaddleOCR: OpenCV's INTER_LINEAR, which does not antialias when shrinking; its
        // classifier and recogniser were trained on such aliased crops.
        resize_bilinear(img, cw, ch)
    };
    let order: [usize; 3] = match card.channels {
        Channels::Rgb => [0, 1, 2],
        Channels::Bgr => [2, 1, 0],
    };
    let plane = height * width;
    let mut data = vec![0f32; 3 * plane];
    for (c, &src) in order.iter().enumerate() {
        let (mean, std) = (card.mean[c], card.std[c]);
        let pad = if pad_normalised_zero { 0.0 } else { -mean / std };
        let out = &mut data[c * plane..(c + 1) * plane];
        out.fill(pad);
        for y in 0..ch {
            let row = &mut out[(top + y) * width + left..(top + y) * width + left + cw];
            for (x, v) in row.iter_mut().enumerate() {
                let p = resized.get_pixel(x as u32, y as u32).0[src];
                *v = (p as f32 / 255.0 - mean) / std;
            }
        }
    }
    Prepared { data, height, width, content: (ch, cw) }
}

/// OpenCV's `INTER_LINEAR`: each output pixel samples the source at its centre's pre-image
/// (half-pixel aligned), bilinearly, edges clamped.
fn resize_bilinear(img: &RgbImage, w: usize, h: usize) -> RgbImage {
    let (sw, sh) = (img.width() as usize, img.height() as usize);
    let (fx, fy) = (sw as f32 / w as f32, sh as f32 / h as f32);
    let taps = |dst: usize, scale: f32, n: usize| {
        let s = ((dst as f32 + 0.5) * scale - 0.5).max(0.0);
        let i = (s.floor() as usize).min(n - 1);
        (i, (i + 1).min(n - 1), s - i as f32)
    };
    let xs: Vec<_> = (0..w).map(|x| taps(x, fx, sw)).collect();
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let (y0, y1, wy) = taps(y as usize, fy, sh);
        let (x0, x1, wx) = xs[x as usize];
        let p = |xx: usize, yy: usize| img.get_pixel(xx as u32, yy as u32).0;
        let (a, b, c, d) = (p(x0, y0), p(x1, y0), p(x0, y1), p(x1, y1));
        image::Rgb(std::array::from_fn(|k| {
            let top = a[k] as f32 * (1.0 - wx) + b[k] as f32 * wx;
            let bottom = c[k] as f32 * (1.0 - wx) + d[k] as f32 * wx;
            (top * (1.0 - wy) + bottom * wy).round().clamp(0.0, 255.0) as u8
        }))
    })
}

/// Stacks prepared images of one size into a batch tensor.
pub fn batch(items: &[Prepared]) -> kiln_graph::TensorData {
    let (h, w) = (items[0].height, items[0].width);
    let mut data = Vec::with_capacity(items.len() * 3 * h * w);
    for p in items {
        debug_assert_eq!((p.height, p.width), (h, w));
        data.extend_from_slice(&p.data);
    }
    kiln_graph::TensorData::new(data, vec![items.len(), 3, h, w])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::card::ModelCard;

    #[test]
    fn doctr_keeps_aspect_and_pads_symmetrically() {
        let card = ModelCard::named("db_mobilenet_v3_large").unwrap();
        let img = RgbImage::from_pixel(100, 50, image::Rgb([255, 255, 255]));
        let p = prepare(&card, &img, 1024, 1024);
        // Wider than tall: full width, int(1024 · 0.5) rows, centred.
        assert_eq!(p.content, (512, 1024));
        let white = (1.0 - card.mean[0]) / card.std[0];
        let pad = -card.mean[0] / card.std[0];
        assert_eq!(p.data[0], pad);
        assert!((p.data[256 * 1024] - white).abs() < 1e-6);
        assert!((p.data[(256 + 511) * 1024] - white).abs() < 1e-6);
        assert_eq!(p.data[(256 + 512) * 1024], pad);
    }

    #[test]
    fn paddle_sizes() {
        let det = ModelCard::named("ppocr-v4-det").unwrap();
        // Shorter side 500 < 736: scaled by 736/500, then rounded to multiples of 32.
        assert_eq!(target_size(&det, 500, 1000), (736, 1472));
        // A 300 dpi A4 scan: the longer side capped at 2000.
        assert_eq!(target_size(&det, 3508, 2480), (1984, 1408));
        let rec = ModelCard::named("ppocr-v4-rec").unwrap();
        assert_eq!(target_size(&rec, 20, 60), (48, 320));
        assert_eq!(target_size(&rec, 20, 300), (48, 736));
    }
}

//! Recognition logits → (text, confidence): greedy CTC (collapse repeats, drop blanks) and the
//! attention decoders' argmax-until-`<eos>`, with the confidence rules of docTR and PaddleOCR.

use crate::card::{Blank, Confidence, Decoder, DecoderKind};

/// Decodes one sequence of per-step class probabilities (`steps` × `classes`, row-major).
pub fn decode(probs: &[f32], steps: usize, classes: usize, vocab: &[char], decoder: &Decoder) -> (String, f32) {
    let best: Vec<(usize, f32)> = (0..steps)
        .map(|t| {
            let row = &probs[t * classes..(t + 1) * classes];
            row.iter().enumerate().fold((0, f32::MIN), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) })
        })
        .collect();
    match decoder.kind {
        DecoderKind::Ctc => ctc(&best, vocab, decoder),
        DecoderKind::Attention => attention(&best, vocab, decoder.confidence),
    }
}

fn ctc(best: &[(usize, f32)], vocab: &[char], decoder: &Decoder) -> (String, f32) {
    let blank = match decoder.blank {
        Blank::First => 0,
        Blank::Last => vocab.len(),
    };
    let offset = usize::from(decoder.blank == Blank::First);
    let mut text = String::new();
    let mut kept = vec![];
    let mut prev = None;
    for &(class, p) in best {
        if Some(class) != prev
            && class != blank
            && let Some(&c) = class.checked_sub(offset).and_then(|i| vocab.get(i))
        {
            text.push(c);
            kept.push(p);
        }
        prev = Some(class);
    }
    let confidence = match decoder.confidence {
        // docTR's CTC: the least confident step of the whole sequence, blanks included.
        Confidence::Min => best.iter().map(|b| b.1).fold(1.0, f32::min),
        // PaddleOCR: mean over the kept characters (0 when nothing was read).
        Confidence::Mean => mean(&kept),
    };
    (text, confidence)
}

fn attention(best: &[(usize, f32)], vocab: &[char], rule: Confidence) -> (String, f32) {
    let eos = vocab.len();
    let word: Vec<(usize, f32)> = best.iter().copied().take_while(|&(c, _)| c != eos).collect();
    let text = word.iter().filter_map(|&(c, _)| vocab.get(c)).collect();
    let confidence = match rule {
        // SAR, MASTER: the least confident step of the whole sequence, past `<eos>` too.
        Confidence::Min => best.iter().map(|b| b.1).fold(1.0, f32::min),
        // ViTSTR, PARSeq: mean over the word's steps.
        Confidence::Mean => mean(&word.iter().map(|w| w.1).collect::<Vec<_>>()),
    };
    (text, confidence)
}

fn mean(v: &[f32]) -> f32 {
    if v.is_empty() { 0.0 } else { v.iter().sum::<f32>() / v.len() as f32 }
}

/// Softmax over the last axis, in place.
pub fn softmax_rows(data: &mut [f32], classes: usize) {
    for row in data.chunks_mut(classes) {
        let max = row.iter().copied().fold(f32::MIN, f32::max);
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        row.iter_mut().for_each(|v| *v /= sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_hot(seq: &[usize], classes: usize, p: f32) -> Vec<f32> {
        let mut v = vec![(1.0 - p) / (classes - 1) as f32; seq.len() * classes];
        for (t, &c) in seq.iter().enumerate() {
            v[t * classes + c] = p;
        }
        v
    }

    #[test]
    fn ctc_blank_last_collapses_repeats() {
        let vocab: Vec<char> = "ab".chars().collect();
        let d = Decoder { kind: DecoderKind::Ctc, blank: Blank::Last, confidence: Confidence::Min };
        // a a _ a b b _ → "aab"
        let probs = one_hot(&[0, 0, 2, 0, 1, 1, 2], 3, 0.8);
        let (text, conf) = decode(&probs, 7, 3, &vocab, &d);
        assert_eq!(text, "aab");
        assert!((conf - 0.8).abs() < 1e-6);
    }

    #[test]
    fn ctc_blank_first_shifts_indices() {
        let vocab: Vec<char> = "ab ".chars().collect();
        let d = Decoder { kind: DecoderKind::Ctc, blank: Blank::First, confidence: Confidence::Mean };
        let probs = one_hot(&[0, 2, 2, 0, 3, 1], 4, 0.9);
        assert_eq!(decode(&probs, 6, 4, &vocab, &d).0, "b a");
        let empty = one_hot(&[0, 0], 4, 0.9);
        assert_eq!(decode(&empty, 2, 4, &vocab, &d), (String::new(), 0.0));
    }

    #[test]
    fn attention_stops_at_eos() {
        let vocab: Vec<char> = "ab".chars().collect();
        let d = Decoder { kind: DecoderKind::Attention, blank: Blank::Last, confidence: Confidence::Mean };
        let probs = one_hot(&[1, 0, 2, 0], 3, 0.7);
        let (text, conf) = decode(&probs, 4, 3, &vocab, &d);
        assert_eq!(text, "ba");
        assert!((conf - 0.7).abs() < 1e-6);
    }
}

//! Folds an inference `BatchNormalization` into the `Conv` or `ConvTranspose` that feeds it: the
//! weights are scaled per output channel and the bias shifted, so the normalisation costs nothing
//! at run time (DB's head normalises after each transposed convolution).

use std::collections::HashMap;
use std::sync::Arc;

use burn_backend::TensorData;

use crate::model::{Node, Subgraph};
use crate::ops::batchnorm_affine;

/// Returns how many BatchNormalization nodes were folded.
pub fn fold_batchnorm(g: &mut Subgraph, protected: &[String]) -> usize {
    let readers = super::rewrite::Readers::new(g, protected);
    let producer = super::rewrite::producers(g);
    let init: HashMap<&str, &Arc<TensorData>> = g.initializers.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let floats = |name: &str| -> Option<Vec<f32>> { init.get(name)?.as_slice::<f32>().ok().map(<[f32]>::to_vec) };

    let mut plans: Vec<(usize, usize, Vec<f32>, Vec<f32>)> = vec![];
    for (bi, bn) in g.nodes.iter().enumerate() {
        if bn.op != "BatchNormalization" || bn.outputs.iter().skip(1).any(|o| !o.is_empty()) {
            continue;
        }
        let Some(&ci) = producer.get(bn.inputs[0].as_str()) else { continue };
        let conv = &g.nodes[ci];
        if !matches!(conv.op.as_str(), "Conv" | "ConvTranspose")
            || readers.sole(&bn.inputs[0]).is_none()
            || !init.contains_key(conv.inputs.get(1).map(String::as_str).unwrap_or(""))
        {
            continue;
        }
        let (Some(s), Some(b), Some(m), Some(v)) = (
            bn.input(1).and_then(floats),
            bn.input(2).and_then(floats),
            bn.input(3).and_then(floats),
            bn.input(4).and_then(floats),
        ) else {
            continue;
        };
        let Ok(eps) = bn.float("epsilon", 1e-5) else { continue };
        let (a, shift) = batchnorm_affine(&s, &b, &m, &v, eps);
        plans.push((ci, bi, a, shift));
    }

    // The indices go before the folded weights are made.
    drop((readers, producer));
    let mut new_inits: Vec<(String, Arc<TensorData>)> = vec![];
    let mut dropped = vec![false; g.nodes.len()];
    let mut folded = 0;
    for (ci, bi, a, shift) in plans {
        let conv = &g.nodes[ci];
        let w = init[conv.inputs[1].as_str()];
        let wshape = w.shape().to_vec();
        let Ok(wv) = w.as_slice::<f32>() else { continue };
        let Some(channel) = output_channel(conv, &wshape, a.len()) else { continue };
        let scaled: Vec<f32> = wv.iter().enumerate().map(|(i, x)| x * a[channel(i)]).collect();
        let bias: Vec<f32> = match conv.input(2).and_then(floats) {
            Some(b0) if b0.len() == a.len() => b0.iter().zip(&a).zip(&shift).map(|((b, a), s)| b * a + s).collect(),
            Some(_) => continue,
            None => shift,
        };
        let base = format!("{}::bn_folded", conv.name);
        let (wn, bn_name) = (format!("{base}.weight"), format!("{base}.bias"));
        new_inits.push((wn.clone(), Arc::new(TensorData::new(scaled, wshape))));
        new_inits.push((bn_name.clone(), Arc::new(TensorData::new(bias.clone(), vec![bias.len()]))));
        let out = g.nodes[bi].outputs[0].clone();
        let conv: &mut Node = &mut g.nodes[ci];
        conv.inputs.resize(3, String::new());
        conv.inputs[1] = wn;
        conv.inputs[2] = bn_name;
        conv.outputs[0] = out;
        dropped[bi] = true;
        folded += 1;
    }
    super::rewrite::apply(g, &dropped, new_inits);
    folded
}

/// Maps a weight element's flat index to its output channel: `Conv` weights are
/// `[M, C/g, kh, kw]`; `ConvTranspose` weights `[C, M/g, kh, kw]`, input channel `c` in group
/// `c / (C/g)`.
fn output_channel(conv: &Node, wshape: &[usize], channels: usize) -> Option<Box<dyn Fn(usize) -> usize>> {
    if wshape.len() < 2 || wshape.contains(&0) {
        return None;
    }
    if conv.op == "Conv" {
        let per = wshape[1..].iter().product::<usize>();
        return (wshape[0] == channels).then(|| Box::new(move |i: usize| i / per) as Box<dyn Fn(usize) -> usize>);
    }
    let taps: usize = wshape[2..].iter().product();
    let groups = conv.int("group", 1).ok()?.max(1) as usize;
    let (c, mg) = (wshape[0], wshape[1]);
    if mg * groups != channels || c % groups != 0 {
        return None;
    }
    let cg = c / groups;
    Some(Box::new(move |i: usize| {
        let (ci, j) = (i / (mg * taps), (i / taps) % mg);
        (ci / cg) * mg + j
    }))
}

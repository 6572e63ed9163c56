//! Stores a `Gemm`'s constant `B` as `[K, N]` where the node reads it transposed (`transB = 1`,
//! as PyTorch exports `Linear`): the CPU gemm packs a row-major right operand about twice as fast
//! as a transposed view (SAR's LSTM-cell gemms, 64×512 · 512×2048: 0.78 → 0.33 ms).
//!
//! Initializers are transposed in place as the decoder reads them (`crate::transposed_weights`):
//! a transposed copy beside the original was the orientation classifiers' load peak (their 2.3 MB
//! classifier weight in a 6 MB file). This pass copies the rest (weights that came as `Constant`
//! nodes).

use std::collections::HashMap;
use std::sync::Arc;

use burn_backend::TensorData;

use crate::model::{Attr, Subgraph};
use crate::transposed_weights::{reads_b_transposed, stored_name, transpose_in_place};

/// Returns how many `Gemm` nodes now read a transposed copy of their weights.
pub fn transpose_gemm_weights(g: &mut Subgraph) -> usize {
    let init: HashMap<&str, &Arc<TensorData>> = g.initializers.iter().map(|(n, t)| (n.as_str(), t)).collect();
    // Each weight transposed once, however many nodes share it (SAR's decoder steps do).
    let mut copies: HashMap<String, Option<String>> = HashMap::new();
    let mut new_inits: Vec<(String, Arc<TensorData>)> = vec![];
    let mut rewritten = 0;
    for node in &mut g.nodes {
        if !reads_b_transposed(node) {
            continue;
        }
        let Some(name) = node.inputs.get(1).cloned() else { continue };
        let copy = copies.entry(name.clone()).or_insert_with(|| {
            let t = init.get(name.as_str())?;
            let (&[n, k], Ok(v)) = (t.shape().as_slice(), t.as_slice::<f32>()) else { return None };
            let mut kn = v.to_vec();
            transpose_in_place(&mut kn, n, k);
            let copy = stored_name(&name);
            new_inits.push((copy.clone(), Arc::new(TensorData::new(kn, vec![k, n]))));
            Some(copy)
        });
        if let Some(copy) = copy {
            node.inputs[1] = copy.clone();
            node.attrs.insert("transB".into(), Attr::Int(0));
            rewritten += 1;
        }
    }
    g.initializers.extend(new_inits);
    rewritten
}

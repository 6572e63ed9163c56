//! `Gemm` weights the decoder stores transposed, `[K, N]` where the node reads `B` transposed
//! (`transB = 1`, as PyTorch exports `Linear`), transposed in place as they are read: the CPU gemm
//! packs a row-major right operand about twice as fast as a transposed view, and a transposed copy
//! beside the original was the orientation classifiers' load peak. The load pass
//! `transpose_gemm_weights` does the same for weights that came as `Constant` nodes.

use std::collections::{HashMap, HashSet};

use crate::ir::{Attr, Node};

pub(crate) fn reads_b_transposed(node: &Node) -> bool {
    node.op == "Gemm" && matches!(node.int("transB", 0), Ok(1))
}

/// The values that only `Gemm` nodes read, each as a transposed `B`: the initializers the
/// decoder may store transposed.
pub(crate) fn read_transposed(nodes: &[Node]) -> HashSet<String> {
    let mut only_b: HashMap<&str, bool> = HashMap::new();
    for node in nodes {
        for (i, input) in node.inputs.iter().enumerate().filter(|(_, s)| !s.is_empty()) {
            let as_b = i == 1 && reads_b_transposed(node);
            *only_b.entry(input.as_str()).or_insert(true) &= as_b;
        }
    }
    only_b.into_iter().filter(|&(_, b)| b).map(|(name, _)| name.to_owned()).collect()
}

/// The name a weight is kept under once it is stored `[K, N]`.
pub(crate) fn stored_name(weight: &str) -> String {
    format!("{weight}::kn")
}

/// After decoding: the `Gemm` nodes that read a weight the decoder stored transposed (under
/// [`stored_name`]) read it as it is, `transB = 0`. Whatever else reads such a weight by its
/// own name (a node that came after the initializers in the file, an `If` branch, a graph
/// output) reads it through a `Transpose` back. Returns how many `Gemm` nodes were rewritten.
pub(crate) fn read_as_stored(nodes: &mut Vec<Node>, transposed: &HashSet<String>, outputs: &[&str]) -> usize {
    let mut rewritten = 0;
    for node in nodes.iter_mut().filter(|n| reads_b_transposed(n)) {
        if node.inputs.get(1).is_some_and(|b| transposed.contains(b)) {
            node.inputs[1] = stored_name(&node.inputs[1]);
            node.attrs.insert("transB".into(), Attr::Int(0));
            rewritten += 1;
        }
    }
    let mut read: HashSet<&str> = outputs.iter().copied().collect();
    collect_reads(nodes, &mut read);
    let back: Vec<Node> = transposed
        .iter()
        .filter(|w| read.contains(w.as_str()))
        .map(|w| Node {
            name: format!("{w}::nk"),
            op: "Transpose".into(),
            inputs: vec![stored_name(w)],
            outputs: vec![w.clone()],
            attrs: [("perm".to_owned(), Attr::Ints(vec![1, 0]))].into_iter().collect(),
            fused: None,
        })
        .collect();
    nodes.splice(0..0, back);
    rewritten
}

/// Every value the nodes read, their `If` branches' nodes and outputs included.
fn collect_reads<'a>(nodes: &'a [Node], read: &mut HashSet<&'a str>) {
    for node in nodes {
        read.extend(node.inputs.iter().map(String::as_str));
        for attr in node.attrs.values() {
            if let Attr::Graph(g) = attr {
                collect_reads(&g.nodes, read);
                read.extend(g.outputs.iter().map(|o| o.name.as_str()));
            }
        }
    }
}

/// Transposes a row-major `[rows, cols]` matrix into `[cols, rows]` in its own storage, by
/// following the permutation's cycles (one bit per element marks those already moved).
pub(crate) fn transpose_in_place(v: &mut [f32], rows: usize, cols: usize) {
    let len = rows * cols;
    if rows <= 1 || cols <= 1 || v.len() != len {
        return;
    }
    // The element at `i` (row i / cols, column i % cols) goes to `i · rows mod (len − 1)`; the
    // first and last stay.
    let mut moved = vec![0u64; len.div_ceil(64)];
    for start in 1..len - 1 {
        if moved[start / 64] >> (start % 64) & 1 == 1 {
            continue;
        }
        let (mut at, mut carried) = (start, v[start]);
        loop {
            let to = at * rows % (len - 1);
            std::mem::swap(&mut v[to], &mut carried);
            moved[to / 64] |= 1 << (to % 64);
            at = to;
            if to == start {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposes_in_place_like_a_copy() {
        for (rows, cols) in [(1, 5), (5, 1), (2, 2), (3, 5), (64, 48), (7, 130)] {
            let v: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let mut got = v.clone();
            transpose_in_place(&mut got, rows, cols);
            let want: Vec<f32> = (0..rows * cols).map(|i| v[(i % rows) * cols + i / rows]).collect();
            assert_eq!(got, want, "{rows}×{cols}");
        }
    }

    #[test]
    fn other_readers_get_the_weight_transposed_back() {
        let node = |op: &str, inputs: &[&str], trans_b: i64| Node {
            name: format!("{op}{}", inputs.len()),
            op: op.into(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec![format!("{op}_out")],
            attrs: [("transB".to_owned(), Attr::Int(trans_b))].into_iter().collect(),
            fused: None,
        };
        let nodes = vec![node("Gemm", &["x", "w", "b"], 1), node("Gemm", &["x", "v"], 0)];
        assert_eq!(read_transposed(&nodes), HashSet::from(["w".to_owned()]));
        let w = HashSet::from(["w".to_owned()]);
        // Only the Gemm reads it: no way back is needed.
        let mut nodes = vec![node("Gemm", &["x", "w", "b"], 1)];
        assert_eq!(read_as_stored(&mut nodes, &w, &[]), 1);
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].inputs, ["x", "w::kn", "b"]);
        assert!(matches!(nodes[0].attrs.get("transB"), Some(Attr::Int(0))));
        // A node read after the weight was stored transposed: MatMul reads the original.
        let mut nodes = vec![node("Gemm", &["x", "w", "b"], 1), node("MatMul", &["x", "w"], 0)];
        assert_eq!(read_as_stored(&mut nodes, &w, &[]), 1);
        assert_eq!((nodes[0].op.as_str(), nodes[0].inputs.as_slice(), nodes[0].outputs.as_slice()), ("Transpose", &["w::kn".to_owned()][..], &["w".to_owned()][..]));
        assert_eq!(nodes[2].inputs, ["x", "w"]);
        // So does a graph output.
        let mut nodes = vec![node("Gemm", &["x", "w", "b"], 1)];
        read_as_stored(&mut nodes, &w, &["w"]);
        assert_eq!(nodes[0].op, "Transpose");
    }
}

//! Marks the MatMuls whose output a last-axis Softmax reads as attention scores, through a chain
//! of element-wise ops (the scale, a mask), so that on the CubeCL backends the whole softmax,
//! with those ops, runs as one fused kernel. Burn 0.22's reduce fusers only open a block on an
//! element-wise op, and its matmul fuser takes every element-wise op after a matmul: the scale
//! joined the matmul and the softmax's leading max-reduction then opened a block of its own,
//! which left the softmax as four kernels. The marked MatMul ends its block with a view
//! ([`Fused::attention_scores`](crate::ir::Fused)), so the scale opens the softmax's block instead. A scale applied to the
//! query before the product (ViPTR's `(q·s)·kᵀ`) moves after it, where it can do that.

use std::collections::HashMap;

use crate::model::{Attr, Node, Subgraph};

const CHAIN_OPS: [&str; 5] = ["Mul", "Div", "Add", "Sub", "Where"];

/// Returns how many MatMuls were marked.
pub fn mark_attention_scores(g: &mut Subgraph, protected: &[String]) -> usize {
    let readers = super::rewrite::Readers::new(g, protected);
    let producer = super::rewrite::producers(g);
    let sole = |v: &str| readers.sole(v).is_some();
    // (MatMul, the operand and node of a scale to move after it)
    let mut plans: Vec<(usize, Option<(usize, usize)>)> = vec![];
    for n in g.nodes.iter().filter(|n| n.op == "Softmax" && matches!(n.attrs.get("axis"), Some(Attr::Int(-1)))) {
        let Some((mi, hops)) = scores_source(g, &producer, &sole, &n.inputs[0], 3) else { continue };
        if plans.iter().any(|p| p.0 == mi) {
            continue;
        }
        // Nothing between the product and the softmax: bring the query's scale over.
        let scale = if hops == 0 { Some(scale_input(g, &producer, &sole, &g.nodes[mi])) } else { None };
        match scale {
            Some(None) => continue,
            Some(Some(s)) => plans.push((mi, Some(s))),
            None => plans.push((mi, None)),
        }
    }
    // The moved scales: (the product they now follow, their place before it).
    let mut moves: Vec<(usize, usize)> = vec![];
    for &(mi, scale) in &plans {
        g.nodes[mi].fused_mut().attention_scores = true;
        let Some((k, si)) = scale else { continue };
        let scores = g.nodes[mi].outputs[0].clone();
        let scaled = format!("{}::scaled", g.nodes[mi].name);
        let query = std::mem::take(&mut g.nodes[si].inputs[0]);
        g.nodes[mi].inputs[k] = query;
        for n in g.nodes.iter_mut().filter(|n| n.op == "Softmax") {
            for i in n.inputs.iter_mut().filter(|i| **i == scores) {
                i.clone_from(&scaled);
            }
        }
        let mul = &mut g.nodes[si];
        mul.inputs[0] = scores;
        mul.outputs = vec![scaled];
        moves.push((mi, si));
    }
    if !moves.is_empty() {
        // Each moved scale goes right after its product, the other nodes keep their order; the
        // nodes are permuted in place (a second node list was most of this pass's peak memory).
        let mut dest = vec![0usize; g.nodes.len()];
        let mut next = 0;
        for i in 0..g.nodes.len() {
            if moves.iter().any(|m| m.1 == i) {
                continue;
            }
            dest[i] = next;
            next += 1;
            if let Some(&(_, si)) = moves.iter().find(|m| m.0 == i) {
                dest[si] = next;
                next += 1;
            }
        }
        for i in 0..dest.len() {
            while dest[i] != i {
                let d = dest[i];
                g.nodes.swap(i, d);
                dest.swap(i, d);
            }
        }
    }
    plans.len()
}

/// The MatMul whose output reaches `value` through at most `depth` single-reader element-wise
/// ops, and how many there are.
fn scores_source(g: &Subgraph, producer: &HashMap<&str, usize>, sole: &impl Fn(&str) -> bool, value: &str, depth: usize) -> Option<(usize, usize)> {
    let p = *producer.get(value)?;
    let n = &g.nodes[p];
    if !sole(value) {
        return None;
    }
    if n.op == "MatMul" {
        return (!n.fused().attention_scores && n.inputs.len() == 2).then_some((p, 0));
    }
    if depth == 0 || !CHAIN_OPS.contains(&n.op.as_str()) {
        return None;
    }
    n.inputs.iter().find_map(|i| scores_source(g, producer, sole, i, depth - 1)).map(|(m, hops)| (m, hops + 1))
}

/// Which operand of the MatMul is `Mul(x, c)` or `Div(x, c)` with `c` a one-element constant
/// read by nothing else, and the index of that node.
fn scale_input(g: &Subgraph, producer: &HashMap<&str, usize>, sole: &impl Fn(&str) -> bool, matmul: &Node) -> Option<(usize, usize)> {
    let scalar = |v: &str| g.initializers.iter().any(|(n, t)| n == v && t.shape().iter().product::<usize>() == 1);
    matmul.inputs.iter().enumerate().find_map(|(k, v)| {
        let p = *producer.get(v.as_str())?;
        let n = &g.nodes[p];
        (matches!(n.op.as_str(), "Mul" | "Div") && n.inputs.len() == 2 && sole(v) && scalar(&n.inputs[1])).then_some((k, p))
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use burn_backend::TensorData;

    use super::*;
    use crate::passes::rewrite::test_node as node;

    fn graph(nodes: Vec<Node>) -> Subgraph {
        let c = Arc::new(TensorData::new(vec![0.125f32], [1]));
        Subgraph { nodes, initializers: vec![("c".into(), c)], ..Default::default() }
    }

    fn softmax(input: &str) -> Node {
        node("sm", "Softmax", &[input], &[("axis", Attr::Int(-1))])
    }

    #[test]
    fn a_scaled_product_before_a_softmax_is_marked() {
        let mut g = graph(vec![node("mm", "MatMul", &["q", "k"], &[]), node("d", "Div", &["mm_out", "c"], &[]), softmax("d_out")]);
        assert_eq!(mark_attention_scores(&mut g, &[]), 1);
        assert!(g.nodes[0].fused().attention_scores);
    }

    #[test]
    fn the_query_scale_moves_after_the_product() {
        let mut g = graph(vec![node("s", "Mul", &["q", "c"], &[]), node("mm", "MatMul", &["s_out", "k"], &[]), softmax("mm_out")]);
        assert_eq!(mark_attention_scores(&mut g, &[]), 1);
        let ops: Vec<&str> = g.nodes.iter().map(|n| n.op.as_str()).collect();
        assert_eq!(ops, ["MatMul", "Mul", "Softmax"]);
        assert_eq!(g.nodes[0].inputs, ["q", "k"]);
        assert_eq!(g.nodes[1].inputs, ["mm_out", "c"]);
        assert_eq!(g.nodes[2].inputs, [g.nodes[1].outputs[0].clone()]);
    }

    #[test]
    fn products_read_elsewhere_or_softmaxes_off_the_last_axis_are_left() {
        let mut g = graph(vec![node("mm", "MatMul", &["q", "k"], &[]), node("d", "Div", &["mm_out", "c"], &[]), softmax("d_out"), node("o", "Relu", &["mm_out"], &[])]);
        assert_eq!(mark_attention_scores(&mut g, &[]), 0);
        let mut g = graph(vec![node("mm", "MatMul", &["q", "k"], &[]), node("d", "Div", &["mm_out", "c"], &[]), node("sm", "Softmax", &["d_out"], &[("axis", Attr::Int(1))])]);
        assert_eq!(mark_attention_scores(&mut g, &[]), 0);
        let mut g = graph(vec![node("mm", "MatMul", &["q", "k"], &[]), softmax("mm_out")]);
        assert_eq!(mark_attention_scores(&mut g, &[]), 0, "no element-wise op to open the softmax's block");
    }
}

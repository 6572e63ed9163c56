//! Moves the bias and ReLU of a conv that feeds a channel Concat past the Concat, when every other
//! input of the Concat is already non-negative (FAST's neck: `cat(relu(conv(x)), up(relu(…)), …)`).
//! The ReLU is then the identity on those inputs, so `relu(cat(…) + bias)`, with the conv's bias
//! padded by zeros, is exact. Burn's element-wise fuser starts a block at a Concat and takes the
//! ops after it, never those before, so on the fusing GPU backends the conv's bias and ReLU stop
//! costing a kernel of their own. The CPU conv keeps them in its epilogue, where they are free:
//! the conv is marked ([`Fused::epilogue_in_concat`](crate::ir::Fused)) and the Concat takes the
//! biases as extra inputs (`Fused::bias_relu_of`: which data inputs they belong to), and each
//! backend picks its route.

use std::collections::HashMap;
use std::sync::Arc;

use burn_backend::TensorData;

use crate::ir::{Activation, Shortcut};
use crate::model::{Node, Subgraph};

/// Returns how many convs gave their bias and ReLU to a Concat.
pub fn defer_concat_relu(g: &mut Subgraph, protected: &[String]) -> usize {
    // Shape and Size read no values (FAST resizes to the size of the map it concatenates with).
    let readers = super::rewrite::Readers::excluding(g, protected, &["Shape", "Size"]);
    let producer = super::rewrite::producers(g);
    let weights: HashMap<&str, &TensorData> = g.initializers.iter().map(|(n, t)| (n.as_str(), t.as_ref())).collect();
    let relu_conv = |n: &Node| n.op == "Conv" && n.fused().activation == Some(Activation::Relu);
    // A 2-D conv whose ReLU can move: its output read by the Concat alone, nothing added after.
    let movable = |value: &str| -> Option<usize> {
        let ci = *producer.get(value)?;
        let conv = &g.nodes[ci];
        let sole = readers.sole(value).is_some();
        let plain = conv.fused().shortcut.is_none();
        let rank4 = weights.get(conv.inputs.get(1)?.as_str()).is_some_and(|w| w.shape().len() == 4);
        (relu_conv(conv) && plain && sole && rank4 && conv.outputs.len() == 1).then_some(ci)
    };
    let mut plans: Vec<(usize, Vec<(usize, usize)>)> = vec![];
    for (ki, cat) in g.nodes.iter().enumerate() {
        if cat.op != "Concat" || cat.int("axis", 0).ok() != Some(1) || cat.inputs.iter().any(String::is_empty) {
            continue;
        }
        let mut moved = vec![];
        let mut all_nonneg = true;
        for (i, value) in cat.inputs.iter().enumerate() {
            let repeated = cat.inputs.iter().filter(|v| *v == value).count() > 1;
            match movable(value) {
                Some(ci) if !repeated => moved.push((i, ci)),
                _ => all_nonneg &= non_negative(g, &producer, value, 4),
            }
        }
        if !moved.is_empty() && all_nonneg {
            plans.push((ki, moved));
        }
    }
    let mut new_inits = vec![];
    for (ki, moved) in &plans {
        let mut carries = vec![];
        for &(i, ci) in moved {
            let conv = &mut g.nodes[ci];
            let bias = match conv.inputs.get(2).filter(|b| !b.is_empty()) {
                Some(b) => b.clone(),
                None => {
                    let channels = weights[conv.inputs[1].as_str()].shape()[0];
                    let name = format!("{}::zero_bias", conv.name);
                    new_inits.push((name.clone(), Arc::new(TensorData::new(vec![0f32; channels], [channels]))));
                    name
                }
            };
            conv.fused_mut().epilogue_in_concat = true;
            carries.push(i);
            g.nodes[*ki].inputs.push(bias);
        }
        g.nodes[*ki].fused_mut().bias_relu_of = carries;
    }
    let dropped = vec![false; g.nodes.len()];
    super::rewrite::apply(g, &dropped, new_inits);
    plans.iter().map(|(_, m)| m.len()).sum()
}

/// Whether `value` is ≥ 0 by construction: a ReLU's output, or one resized (nearest or linear:
/// weights in [0, 1]) or max-pooled from such.
fn non_negative(g: &Subgraph, producer: &HashMap<&str, usize>, value: &str, depth: usize) -> bool {
    let Some(&p) = producer.get(value) else { return false };
    let n = &g.nodes[p];
    let source = || depth > 0 && n.inputs.first().is_some_and(|x| non_negative(g, producer, x, depth - 1));
    match n.op.as_str() {
        "Relu" => true,
        "Conv" => {
            n.fused().activation == Some(Activation::Relu) && n.fused().shortcut != Some(Shortcut::AfterActivation)
        }
        "Resize" => {
            let mode = n.string("mode", "nearest").unwrap_or_default();
            let crop = n.string("coordinate_transformation_mode", "").unwrap_or_default() == "tf_crop_and_resize";
            (mode == "nearest" || mode == "linear") && !crop && source()
        }
        "MaxPool" => source(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Attr;
    use crate::passes::rewrite::test_node as node;

    fn relu_conv(name: &str, bias: Option<&str>) -> Node {
        let mut inputs = vec!["x", "w"];
        inputs.extend(bias);
        let mut conv = node(name, "Conv", &inputs, &[]);
        conv.fused_mut().activation = Some(Activation::Relu);
        conv
    }

    fn graph(nodes: Vec<Node>) -> Subgraph {
        let w = Arc::new(TensorData::new(vec![0f32; 2 * 3 * 3 * 3], [2, 3, 3, 3]));
        let b = Arc::new(TensorData::new(vec![1f32, 2.0], [2]));
        Subgraph { nodes, initializers: vec![("w".into(), w), ("b".into(), b)], ..Default::default() }
    }

    #[test]
    fn a_relu_conv_beside_resized_relus_gives_its_bias_to_the_concat() {
        let mut g = graph(vec![
            relu_conv("c0", Some("b")),
            relu_conv("c1", None),
            node("up", "Resize", &["c1_out"], &[("mode", Attr::Str("linear".into()))]),
            node("cat", "Concat", &["c0_out", "up_out"], &[("axis", Attr::Int(1))]),
            node("size", "Shape", &["c0_out"], &[]),
        ]);
        assert_eq!(defer_concat_relu(&mut g, &["cat_out".into()]), 1, "a Shape reads no values");
        assert!(g.nodes[0].fused().epilogue_in_concat);
        assert!(!g.nodes[1].fused().epilogue_in_concat);
        let cat = &g.nodes[3];
        assert_eq!(cat.inputs, ["c0_out", "up_out", "b"]);
        assert_eq!(cat.fused().bias_relu_of, [0]);
    }

    #[test]
    fn a_conv_without_bias_gets_zeros() {
        let mut g = graph(vec![relu_conv("c0", None), node("r", "Relu", &["y"], &[]), node("cat", "Concat", &["r_out", "c0_out"], &[("axis", Attr::Int(1))])]);
        assert_eq!(defer_concat_relu(&mut g, &[]), 1);
        assert_eq!(g.nodes[2].inputs, ["r_out", "c0_out", "c0::zero_bias"]);
        let (_, zeros) = g.initializers.iter().find(|(n, _)| n == "c0::zero_bias").expect("the zero bias");
        assert_eq!(zeros.shape().to_vec(), [2]);
    }

    #[test]
    fn an_input_that_may_be_negative_keeps_the_graph() {
        for other in [node("o", "Conv", &["x", "w"], &[]), node("o", "Resize", &["c1_out"], &[("mode", Attr::Str("cubic".into()))])] {
            let mut g = graph(vec![relu_conv("c0", Some("b")), relu_conv("c1", None), other, node("cat", "Concat", &["c0_out", "o_out"], &[("axis", Attr::Int(1))])]);
            assert_eq!(defer_concat_relu(&mut g, &[]), 0, "{}", g.nodes[2].op);
            assert_eq!(g.nodes[3].inputs.len(), 2);
        }
    }

    #[test]
    fn a_conv_read_elsewhere_or_concatenated_off_channels_keeps_its_relu() {
        let mut g = graph(vec![relu_conv("c0", Some("b")), node("r", "Relu", &["y"], &[]), node("cat", "Concat", &["c0_out", "r_out"], &[("axis", Attr::Int(1))]), node("use", "Sigmoid", &["c0_out"], &[])]);
        assert_eq!(defer_concat_relu(&mut g, &[]), 0);
        let mut g = graph(vec![relu_conv("c0", Some("b")), node("r", "Relu", &["y"], &[]), node("cat", "Concat", &["c0_out", "r_out"], &[("axis", Attr::Int(2))])]);
        assert_eq!(defer_concat_relu(&mut g, &[]), 0);
    }
}

//! CI-set parity with ONNX Runtime on the flex CPU backend, every fixture case.

mod common;

#[test]
fn ci_models_match_onnx_runtime_on_flex() {
    common::ci_parity(kiln_graph::Backend::Flex, kiln_graph::Mode::Fused, false);
}

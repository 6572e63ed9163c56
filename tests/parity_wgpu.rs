//! CI-set parity with ONNX Runtime on wgpu with Burn's fusion (Kiln's compiled mode). Without a
//! GPU this runs on Mesa's lavapipe, so only the small fixture cases are used.

mod common;

#[test]
fn ci_models_match_onnx_runtime_on_fused_wgpu() {
    common::ci_parity(kiln_graph::Backend::Wgpu, kiln_graph::Mode::Fused, true);
}

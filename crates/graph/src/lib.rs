//! kiln-graph: loads docTR ONNX models at run time and runs them on Burn.
//!
//! ```no_run
//! use kiln_graph::{Backend, Graph, Mode};
//! let graph = Graph::load("crnn_mobilenet_v3_small.onnx")?;
//! let plan = graph.compile(Backend::Flex, Mode::Fused, &[vec![1, 3, 32, 128]])?;
//! let input = kiln_graph::TensorData::new(vec![0.5f32; 3 * 32 * 128], vec![1, 3, 32, 128]);
//! let outputs = plan.run(&[input])?;
//! # Ok::<(), kiln_graph::Error>(())
//! ```
//!
//! Loading decodes the protobuf and runs shape-free passes (BatchNorm folding, pruning). Compiling
//! specialises the graph to concrete input shapes, folds every constant and shape subgraph on the
//! CPU, and binds the remaining kernels to a device; plans are cached per backend, mode and shape.

mod device;
mod error;
mod ir;
mod model;
mod ops;
mod passes;
mod plan;
mod tensor;
mod transposed_weights;
mod wire;

pub mod npy;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use burn_backend::TensorData;
pub use device::{Backend, LaunchCounter, Mode, adapter_name, cache_dir, open as open_device, pin_cpu_workers, process_mode, set_mode, sync};
pub use error::{Error, ErrorKind, Result};
pub use model::{Dim, ElemType, OnnxModel, ValueInfo, tensor_from_proto};
pub use ops::{TypeInfo, is_supported, supported_ops};
pub use plan::{Plan, RunStats, StepTime};


use error::err;

/// What loading measured.
#[derive(Debug, Clone, Default)]
pub struct LoadStats {
    pub decode_ms: f64,
    pub passes_ms: f64,
    pub nodes: usize,
    pub batchnorms_folded: usize,
    /// Adds of a conv and another conv of its input (or a BatchNorm of it, or a constant) merged
    /// into the conv (FAST's RepConv branches).
    pub conv_branches_merged: usize,
    /// Gemms that read their constant weights transposed, given a `[K, N]` copy instead.
    pub gemm_weights_transposed: usize,
    /// Bias Adds after a MatMul by constant weights folded into the MatMul.
    pub matmul_biases_fused: usize,
    /// Residual Adds (and the Relu after them), or Adds after a Conv's activation, folded into the Conv.
    pub conv_residuals_fused: usize,
    /// Convs whose bias and ReLU the channel Concat after them applies on the CubeCL backends.
    pub concat_relus_deferred: usize,
    /// Softmaxes over attention scores whose MatMul ends its fused block before them.
    pub attention_softmaxes: usize,
    /// HardSwish chains rewritten to one op.
    pub hardswish_fused: usize,
    /// Constant scale/shift after a Conv folded into its weights.
    pub conv_affines_folded: usize,
    /// Activations (Relu, HardSwish, Clip) folded into the Conv before them.
    pub conv_activations_fused: usize,
    /// Nodes that repeated an earlier one (same op, attributes and inputs) and were dropped.
    pub nodes_deduplicated: usize,
}

type PlanKey = (Backend, Mode, Vec<Vec<usize>>);

/// A loaded ONNX graph, ready to be compiled for any input shape.
pub struct Graph {
    model: OnnxModel,
    stats: LoadStats,
    plans: Mutex<HashMap<PlanKey, Arc<Plan>>>,
}

impl Graph {
    /// Loads and validates an ONNX file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        device::pin_cpu_workers();
        let t = Instant::now();
        let model = OnnxModel::from_path(path.as_ref())?;
        Self::prepare(model, t)
    }

    /// Loads from memory; `name` is used in error messages.
    pub fn from_bytes(bytes: Vec<u8>, name: impl Into<PathBuf>) -> Result<Self> {
        device::pin_cpu_workers();
        let t = Instant::now();
        let model = OnnxModel::from_bytes(bytes, name.into())?;
        Self::prepare(model, t)
    }

    fn prepare(mut model: OnnxModel, start: Instant) -> Result<Self> {
        let decode_ms = start.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        validate_ops(&model.graph).map_err(|e| e.in_model(&model.source))?;
        let outputs: Vec<String> = model.graph.outputs.iter().map(|o| o.name.clone()).collect();
        passes::promote_identities(&mut model.graph);
        let batchnorms_folded = passes::fold_batchnorm(&mut model.graph, &outputs);
        // The unfolded weights go before the next pass copies weights again.
        passes::prune_initializers(&mut model.graph);
        let conv_branches_merged = passes::merge_conv_branches(&mut model.graph, &outputs);
        let fused = passes::fuse_patterns(&mut model.graph, &outputs);
        let gemm_weights_transposed = model.gemm_weights_transposed + passes::transpose_gemm_weights(&mut model.graph);
        let matmul_biases_fused = passes::fuse_matmul_bias(&mut model.graph, &outputs);
        let nodes_deduplicated = passes::dedupe_nodes(&mut model.graph, &outputs);
        // After deduplication: a conv repeated with the same inputs is computed once, and one
        // that has taken a different shortcut in each repetition no longer would be (SAR's
        // attention convolves its features the same way at every decoding step).
        let conv_residuals_fused = passes::fuse_conv_residual(&mut model.graph, &outputs);
        let concat_relus_deferred = passes::defer_concat_relu(&mut model.graph, &outputs);
        let attention_softmaxes = passes::mark_attention_scores(&mut model.graph, &outputs);
        passes::prune_initializers(&mut model.graph);
        let stats = LoadStats {
            decode_ms,
            passes_ms: t.elapsed().as_secs_f64() * 1e3,
            nodes: model.graph.nodes.len(),
            batchnorms_folded,
            conv_branches_merged,
            gemm_weights_transposed,
            matmul_biases_fused,
            conv_residuals_fused,
            concat_relus_deferred,
            attention_softmaxes,
            hardswish_fused: fused.hardswish,
            conv_affines_folded: fused.conv_affine,
            conv_activations_fused: fused.conv_activation,
            nodes_deduplicated,
        };
        tracing::info!(model = %model.source.display(), ?stats, "loaded");
        Ok(Self { model, stats, plans: Mutex::new(HashMap::new()) })
    }

    /// Specialises on an input's value: the input becomes a constant of the graph, so shape-like
    /// arguments fed as inputs (Reshape's shape, Slice's bounds, …) fold at compile time.
    pub fn bind_input(&mut self, name: &str, value: TensorData) -> Result<()> {
        let inputs = &mut self.model.graph.inputs;
        let Some(i) = inputs.iter().position(|v| v.name == name) else {
            return Err(err!(InputMismatch, "the model has no input '{name}'").in_model(&self.model.source));
        };
        inputs.remove(i);
        self.model.graph.initializers.push((name.to_string(), Arc::new(value)));
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).clear();
        Ok(())
    }

    pub fn source(&self) -> &Path {
        &self.model.source
    }

    pub fn inputs(&self) -> &[ValueInfo] {
        &self.model.graph.inputs
    }

    pub fn outputs(&self) -> &[ValueInfo] {
        &self.model.graph.outputs
    }

    /// The model's `metadata_props` value for `key`.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.model.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn opset(&self) -> i64 {
        self.model.opset
    }

    pub fn load_stats(&self) -> &LoadStats {
        &self.stats
    }

    /// Compiles (or fetches from the cache) a plan for these input shapes.
    pub fn compile(&self, backend: Backend, mode: Mode, input_shapes: &[Vec<usize>]) -> Result<Arc<Plan>> {
        let key = (backend, mode, input_shapes.to_vec());
        if let Some(p) = self.plans.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(p.clone());
        }
        let plan = Arc::new(self.build_plan(backend, mode, input_shapes).map_err(|e| e.in_model(&self.model.source))?);
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).insert(key, plan.clone());
        Ok(plan)
    }

    /// Checks that one forward at these shapes records as a single graph on Burn's capture device,
    /// which executes nothing: any read of a computed value — by Kiln or inside a Burn op — fails
    /// there. This is the fullgraph check independent of Kiln's own read counter.
    pub fn check_fullgraph(&self, input_shapes: &[Vec<usize>]) -> Result<FullgraphReport> {
        let inputs = self.input_types(input_shapes).map_err(|e| e.in_model(&self.model.source))?;
        let fold_ctx = tensor::Ctx::new(&burn_tensor::Device::flex());
        let program = passes::specialize(&self.model, &inputs, &fold_ctx).map_err(|e| e.in_model(&self.model.source))?;
        let data: Vec<TensorData> = inputs.iter().map(|(_, ty)| zeros(ty)).collect();
        let device = burn_tensor::Device::capture();
        let mut result: Result<()> = Ok(());
        let captured = device
            .capture_scope(|scope| {
                // The plan is built inside the scope: constants must be created on the capture
                // device while it records.
                result = Plan::build(program, Backend::Flex, Mode::Eager, device.clone())
                    .and_then(|plan| plan.forward(&data).map(drop));
                scope.complete([], [])
            })
            .map_err(|e| err!(Backend, "capture failed: {e:?}").in_model(&self.model.source))?;
        Ok(match result {
            Ok(()) => FullgraphReport { fullgraph: true, recorded_ops: captured.graph.operations.len(), graph_break: None },
            Err(e) => FullgraphReport { fullgraph: false, recorded_ops: captured.graph.operations.len(), graph_break: Some(e) },
        })
    }

    fn input_types(&self, shapes: &[Vec<usize>]) -> Result<Vec<(String, TypeInfo)>> {
        let declared = self.inputs();
        if shapes.len() != declared.len() {
            return Err(err!(InputMismatch, "the model takes {} inputs, got {} shapes", declared.len(), shapes.len()));
        }
        let mut inputs = vec![];
        for (info, shape) in declared.iter().zip(shapes) {
            if info.dims.len() != shape.len() {
                return Err(err!(
                    InputMismatch,
                    "input '{}' has rank {} ({:?}), got shape {shape:?}",
                    info.name,
                    info.dims.len(),
                    info.dims
                ));
            }
            if shape.contains(&0) {
                return Err(err!(InputMismatch, "input '{}' shape {shape:?} has a zero dimension", info.name));
            }
            // Fixed export-time sizes are not enforced: specialisation checks what the graph needs.
            inputs.push((info.name.clone(), TypeInfo::new(info.elem, shape.clone())));
        }
        Ok(inputs)
    }

    fn build_plan(&self, backend: Backend, mode: Mode, shapes: &[Vec<usize>]) -> Result<Plan> {
        let inputs = self.input_types(shapes)?;
        let device = device::open(backend, mode)?;
        let fold_ctx = tensor::Ctx::new(&burn_tensor::Device::flex());
        let program = passes::specialize(&self.model, &inputs, &fold_ctx)?;
        Plan::build(program, backend, mode, device)
    }

    /// Op type → node count, nested branches included.
    pub fn op_histogram(&self) -> BTreeMap<String, usize> {
        op_histogram(&self.model)
    }
}

/// Outcome of [`Graph::check_fullgraph`].
#[derive(Debug)]
pub struct FullgraphReport {
    pub fullgraph: bool,
    /// Operations the capture device recorded for one forward (uploads included).
    pub recorded_ops: usize,
    /// Where the forward could not be recorded (a host read), if it could not.
    pub graph_break: Option<Error>,
}

/// Zeros of a value's type, as a stand-in input.
fn zeros(ty: &TypeInfo) -> TensorData {
    let n = ty.numel();
    match ty.elem {
        e if e.is_float() => TensorData::new(vec![0f32; n], ty.shape.clone()),
        ElemType::Bool => TensorData::new(vec![false; n], ty.shape.clone()),
        _ => TensorData::new(vec![0i64; n], ty.shape.clone()),
    }
}

/// Op type → node count of a decoded model, nested branches included.
pub fn op_histogram(model: &OnnxModel) -> BTreeMap<String, usize> {
    let mut h = BTreeMap::new();
    fn walk(g: &model::Subgraph, h: &mut BTreeMap<String, usize>) {
        for n in &g.nodes {
            *h.entry(n.op.clone()).or_default() += 1;
            for a in n.attrs.values() {
                if let model::Attr::Graph(sub) = a {
                    walk(sub, h);
                }
            }
        }
    }
    walk(&model.graph, &mut h);
    if model.constants > 0 {
        *h.entry("Constant".into()).or_default() += model.constants;
    }
    h
}

/// Fails on the first node whose op Kiln does not implement.
fn validate_ops(g: &model::Subgraph) -> Result<()> {
    for n in &g.nodes {
        if !ops::is_supported(&n.op) {
            return Err(err!(UnsupportedOp, "op '{}' is not supported by Kiln", n.op).at_node(&n.name, &n.op));
        }
        for a in n.attrs.values() {
            if let model::Attr::Graph(sub) = a {
                validate_ops(sub)?;
            }
        }
    }
    Ok(())
}

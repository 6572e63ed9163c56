//! Kiln's op table. Lowering a node sees the concrete input shapes (and the values of constant
//! inputs), checks the attributes, computes the output shapes, and returns a kernel: a closure over
//! Burn ops that touches only device tensors. Shape arguments (Reshape's shape, Slice's starts, …)
//! are read at lowering time, so a planned forward never reads back to the host.
//!
//! Constant folding runs the same kernels on the flex CPU device: one implementation per op.

mod aligned;
mod avx512;
mod cpu_kernels;
mod depthwise_channels;
mod elementwise;
mod lstm;
mod nn;
mod reduce;
mod shape;
mod subpixel;
mod winograd;

pub(crate) use aligned::AlignedBuf;
pub(crate) use cpu_kernels::{output_buffer, reshape_copy};
pub(crate) use nn::batchnorm_affine;

use std::sync::Arc;

use burn_backend::TensorData;

use crate::error::{Result, bail, err};
use crate::model::{ElemType, Node};
use crate::tensor::{Ctx, T};

/// Element type and concrete shape of a value (an empty shape is an ONNX scalar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    pub elem: ElemType,
    pub shape: Vec<usize>,
}

impl TypeInfo {
    pub fn new(elem: ElemType, shape: Vec<usize>) -> Self {
        Self { elem, shape }
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// What lowering knows about one input.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub ty: &'a TypeInfo,
    /// The value, when it is a constant (initializer or folded).
    pub konst: Option<&'a TensorData>,
}

pub type Kernel = Arc<dyn Fn(&Ctx, Vec<T>) -> Vec<T> + Send + Sync>;

/// A node lowered to a kernel.
pub struct Lowered {
    pub outputs: Vec<TypeInfo>,
    /// Which of the node's inputs the kernel takes at run time, in order.
    pub uses: Vec<usize>,
    /// Constants the lowering made (index tensors, masks); uploaded once, passed after `uses`.
    pub extra: Vec<TensorData>,
    /// The extras serve only the CubeCL route: on flex each is passed as an empty tensor.
    pub cubecl_only: bool,
    /// Set when the kernel only changes the layout of input 0 (`passes::compose_relayouts`).
    pub relayout: Option<Relayout>,
    pub kernel: Kernel,
}

/// A kernel that only views its input differently; a chain of them composes into one.
#[derive(Debug, Clone, PartialEq)]
pub enum Relayout {
    Reshape(Vec<usize>),
    Permute(Vec<usize>),
    /// A Gather of one constant index: the slice `index..index + 1` of `axis`, then `out`.
    Select { axis: usize, index: usize, out: Vec<usize> },
}

/// The result of lowering a node.
pub enum Lowering {
    Kernel(Lowered),
    /// The outputs are known on the host without running anything (Shape, Constant, Range, …).
    Consts(Vec<TensorData>),
    /// Output 0 is input `n` unchanged (Identity, Dropout at inference).
    Alias(usize),
}

/// Lowers one node. `opset` selects between attribute and input forms of arguments.
pub fn lower(node: &Node, inputs: &[Option<Input>], opset: i64) -> Result<Lowering> {
    let op = node.op.as_str();
    let r = match op {
        "Identity" => Ok(Lowering::Alias(0)),
        "Dropout" => lower_dropout(node, inputs),
        _ if elementwise::handles(op) => elementwise::lower(node, inputs, opset),
        _ if shape::handles(op) => shape::lower(node, inputs, opset),
        _ if nn::handles(op) => nn::lower(node, inputs, opset),
        _ if reduce::handles(op) => reduce::lower(node, inputs, opset),
        "LSTM" => lstm::lower(node, inputs),
        _ => Err(err!(UnsupportedOp, "op '{op}' is not supported by Kiln")),
    };
    r.map_err(|e| e.at_node(&node.name, &node.op))
}

/// Dropout is the identity at inference; training mode and the mask output are not supported.
fn lower_dropout(node: &Node, inputs: &[Option<Input>]) -> Result<Lowering> {
    let training = match opt_input(inputs, 2) {
        Some(t) => const_ints(t, "Dropout training_mode")?.first().is_some_and(|&v| v != 0),
        None => false,
    };
    if training || node.outputs.get(1).is_some_and(|m| !m.is_empty()) {
        bail!(UnsupportedAttribute, "Dropout in training mode or with a mask output");
    }
    Ok(Lowering::Alias(0))
}

/// The ops Kiln implements (plus `If`, which the specialise pass resolves).
pub fn supported_ops() -> Vec<&'static str> {
    let mut ops = vec!["Identity", "Dropout", "If", "LSTM"];
    ops.extend_from_slice(elementwise::OPS);
    ops.extend_from_slice(shape::OPS);
    ops.extend_from_slice(nn::OPS);
    ops.extend_from_slice(reduce::OPS);
    ops.sort_unstable();
    ops
}

pub fn is_supported(op: &str) -> bool {
    supported_ops().contains(&op)
}

// ---- helpers shared by the op modules ----

pub(crate) fn input<'a>(inputs: &'a [Option<Input<'a>>], i: usize, node: &Node) -> Result<Input<'a>> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| err!(InvalidGraph, "missing required input {i} of {}", node.op))
}

pub(crate) fn opt_input<'a>(inputs: &'a [Option<Input<'a>>], i: usize) -> Option<Input<'a>> {
    inputs.get(i).copied().flatten()
}

/// The integer values of a constant input (Reshape's shape, Slice's starts, …).
pub(crate) fn const_ints(inp: Input, what: &str) -> Result<Vec<i64>> {
    let Some(k) = inp.konst else {
        bail!(DynamicArgument, "{what} depends on run-time values; Kiln needs it constant after shape specialisation");
    };
    k.try_to_vec_as::<i64>().map_err(|e| err!(InvalidGraph, "{what}: {e:?}"))
}

pub(crate) fn const_floats(inp: Input, what: &str) -> Result<Vec<f32>> {
    let Some(k) = inp.konst else {
        bail!(DynamicArgument, "{what} depends on run-time values; Kiln needs it constant");
    };
    k.try_to_vec_as::<f32>().map_err(|e| err!(InvalidGraph, "{what}: {e:?}"))
}

/// Normalises a possibly negative axis.
pub(crate) fn axis(a: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let v = if a < 0 { a + r } else { a };
    if v < 0 || v >= r.max(1) {
        bail!(InvalidGraph, "axis {a} is out of range for rank {rank}");
    }
    Ok(v as usize)
}

/// Numpy-style broadcast of two shapes.
pub(crate) fn broadcast(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let x = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let y = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = match (x, y) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => bail!(ShapeMismatch, "shapes {a:?} and {b:?} do not broadcast"),
        };
    }
    Ok(out)
}

/// The shape a device tensor has for an ONNX shape: scalars are stored as `[1]`.
pub(crate) fn device_dims(shape: &[usize]) -> Vec<usize> {
    if shape.is_empty() { vec![1] } else { shape.to_vec() }
}

pub(crate) fn kernel(
    outputs: Vec<TypeInfo>,
    uses: Vec<usize>,
    f: impl Fn(&Ctx, Vec<T>) -> Vec<T> + Send + Sync + 'static,
) -> Result<Lowering> {
    kernel_with(outputs, uses, vec![], f)
}

pub(crate) fn kernel_with(
    outputs: Vec<TypeInfo>,
    uses: Vec<usize>,
    extra: Vec<TensorData>,
    f: impl Fn(&Ctx, Vec<T>) -> Vec<T> + Send + Sync + 'static,
) -> Result<Lowering> {
    Ok(Lowering::Kernel(Lowered { outputs, uses, extra, cubecl_only: false, relayout: None, kernel: Arc::new(f) }))
}

/// [`kernel`] for a node that only changes the layout of its input.
pub(crate) fn relayout_kernel(
    output: TypeInfo,
    relayout: Relayout,
    f: impl Fn(&Ctx, Vec<T>) -> Vec<T> + Send + Sync + 'static,
) -> Result<Lowering> {
    let mut lowering = kernel(vec![output], vec![0], f)?;
    if let Lowering::Kernel(l) = &mut lowering {
        l.relayout = Some(relayout);
    }
    Ok(lowering)
}

/// [`kernel_with`] whose extras only the CubeCL route reads.
pub(crate) fn kernel_with_cubecl(
    outputs: Vec<TypeInfo>,
    uses: Vec<usize>,
    extra: Vec<TensorData>,
    f: impl Fn(&Ctx, Vec<T>) -> Vec<T> + Send + Sync + 'static,
) -> Result<Lowering> {
    let mut lowering = kernel_with(outputs, uses, extra, f)?;
    if let Lowering::Kernel(l) = &mut lowering {
        l.cubecl_only = true;
    }
    Ok(lowering)
}

/// An i64 host tensor.
pub(crate) fn ints_data(values: Vec<i64>, shape: Vec<usize>) -> TensorData {
    TensorData::new(values, shape)
}

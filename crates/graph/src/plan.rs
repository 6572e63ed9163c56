//! An executable plan: a specialised program bound to a device, with constants uploaded once and
//! every value in a numbered slot that is freed after its last use.

use std::collections::{HashMap, HashSet};

use burn_backend::{DType, TensorData};
use burn_tensor::Device;

use crate::device::{Backend, Mode};
use crate::error::{Result, bail, err};
use crate::model::ElemType;
use crate::ops::{Kernel, TypeInfo};
use crate::passes::Program;
use crate::tensor::{Ctx, T, download, host_reads, permute, run_guarded};

struct PlanStep {
    node: String,
    op: String,
    /// Input slots, with whether this step is the value's last use (then it is moved, not cloned).
    args: Vec<(usize, bool)>,
    outs: Vec<Option<usize>>,
    kernel: Kernel,
}

/// One step's wall time in [`Plan::profile`].
#[derive(Debug, Clone)]
pub struct StepTime {
    pub node: String,
    pub op: String,
    pub ms: f64,
    /// Kernels the step launched (CubeCL backends; 0 on flex).
    pub kernels: usize,
}

/// Statistics of one forward.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    /// Reads to the host between input upload and output download (0 = fullgraph).
    pub host_reads: usize,
    /// Kernel steps executed (before fusion).
    pub steps: usize,
}

/// A compiled plan for one backend, mode and set of input shapes.
pub struct Plan {
    pub backend: Backend,
    pub mode: Mode,
    device: Device,
    ctx: Ctx,
    inputs: Vec<(String, TypeInfo, usize)>,
    outputs: Vec<(String, TypeInfo, usize)>,
    consts: Vec<(usize, T)>,
    steps: Vec<PlanStep>,
    slots: usize,
    /// Nodes evaluated at compile time.
    pub folded: usize,
}

impl Plan {
    pub(crate) fn build(program: Program, backend: Backend, mode: Mode, device: Device) -> Result<Self> {
        let ctx = Ctx::new(&device);
        let mut slot_of: HashMap<String, usize> = HashMap::new();
        let mut next = 0;
        let mut slot = |name: &str, slot_of: &mut HashMap<String, usize>| {
            *slot_of.entry(name.to_string()).or_insert_with(|| {
                next += 1;
                next - 1
            })
        };
        let inputs: Vec<_> =
            program.inputs.iter().map(|(n, ty)| (n.clone(), ty.clone(), slot(n, &mut slot_of))).collect();
        let channels_last = if backend.fuses() { channels_last_weights(&program) } else { HashSet::new() };
        let mut consts = vec![];
        for (name, data) in &program.consts {
            let s = slot(name, &mut slot_of);
            let t = if channels_last.contains(name.as_str()) {
                let t = run_guarded(|| ctx.upload(&to_channels_last(data)))?;
                permute(t, &[0, 3, 1, 2])
            } else if !backend.fuses() && program.cubecl_only.contains(name) {
                run_guarded(|| ctx.upload(&TensorData::new(Vec::<f32>::new(), [0])))?
            } else {
                run_guarded(|| ctx.upload(data))?
            };
            consts.push((s, t));
        }
        let mut steps: Vec<PlanStep> = program
            .steps
            .into_iter()
            .map(|s| {
                let args = s.inputs.iter().map(|i| (slot(i, &mut slot_of), false)).collect();
                let outs = s.outputs.iter().map(|o| (!o.is_empty()).then(|| slot(o, &mut slot_of))).collect();
                PlanStep { node: s.node, op: s.op, args, outs, kernel: s.kernel }
            })
            .collect();
        let outputs: Vec<_> = program
            .outputs
            .iter()
            .map(|(n, source, ty)| {
                let s = *slot_of.get(source).ok_or_else(|| err!(InvalidGraph, "output '{n}' is never produced"))?;
                Ok((n.clone(), ty.clone(), s))
            })
            .collect::<Result<_>>()?;
        // Last uses: a value read for the last time is moved into the kernel, which lets the
        // backend reuse its buffer. Constants and outputs are never moved.
        let pinned: HashSet<usize> =
            consts.iter().map(|(s, _)| *s).chain(outputs.iter().map(|o| o.2)).collect();
        let mut seen = HashSet::new();
        for step in steps.iter_mut().rev() {
            for (s, last) in step.args.iter_mut().rev() {
                if !pinned.contains(s) && seen.insert(*s) {
                    *last = true;
                }
            }
        }
        Ok(Self { backend, mode, device, ctx, inputs, outputs, consts, steps, slots: next, folded: program.folded })
    }

    pub fn inputs(&self) -> impl Iterator<Item = (&str, &TypeInfo)> {
        self.inputs.iter().map(|(n, t, _)| (n.as_str(), t))
    }

    pub fn outputs(&self) -> impl Iterator<Item = (&str, &TypeInfo)> {
        self.outputs.iter().map(|(n, t, _)| (n.as_str(), t))
    }

    /// Number of kernel steps (ops left after folding; fusion merges them further).
    pub fn num_steps(&self) -> usize {
        self.steps.len()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs the forward pass: host inputs in, host outputs out.
    pub fn run(&self, inputs: &[TensorData]) -> Result<Vec<TensorData>> {
        self.run_with_stats(inputs).map(|(o, _)| o)
    }

    /// [`Plan::run`] taking the inputs: on the CPU an f32 input becomes the first tensor without
    /// a copy (a batch of 64 crops is 50 MB, 3.6 ms to copy).
    pub fn run_owned(&self, inputs: Vec<TensorData>) -> Result<Vec<TensorData>> {
        self.finish(self.forward_observed(Inputs::Owned(inputs), |_| Ok(()))?).map(|(o, _)| o)
    }

    /// Like [`Plan::run`], also reporting host reads made inside the forward.
    pub fn run_with_stats(&self, inputs: &[TensorData]) -> Result<(Vec<TensorData>, RunStats)> {
        self.finish(self.forward_observed(Inputs::Borrowed(inputs), |_| Ok(()))?)
    }

    /// Downloads a forward's outputs, with the host reads made since `before`.
    fn finish(&self, (outs, before): (Vec<T>, usize)) -> Result<(Vec<TensorData>, RunStats)> {
        let stats = RunStats { host_reads: host_reads() - before, steps: self.steps.len() };
        let host = outs
            .into_iter()
            .zip(&self.outputs)
            .map(|(t, (_, ty, _))| {
                let d = download(single_channel_view(t))?;
                // Scalars live as `[1]` on the device.
                Ok(if ty.shape.is_empty() { crate::tensor::reshape_data(d, vec![]) } else { d })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((host, stats))
    }

    /// Uploads the inputs and queues the forward; outputs stay on the device.
    pub fn forward(&self, inputs: &[TensorData]) -> Result<Vec<T>> {
        self.forward_observed(Inputs::Borrowed(inputs), |_| Ok(())).map(|(o, _)| o)
    }

    /// Runs the forward with the device synced after every step, timing each: where a forward's
    /// time goes, per node. Syncing breaks fusion, so on fusing backends this profiles eager work.
    /// The first step's time also holds the input check and upload.
    pub fn profile(&self, inputs: &[TensorData]) -> Result<Vec<StepTime>> {
        let mut times = vec![];
        crate::device::sync(&self.device)?;
        let counter = crate::device::LaunchCounter::start();
        let mut launched = 0;
        let mut last = std::time::Instant::now();
        self.forward_observed(Inputs::Borrowed(inputs), |step| {
            crate::device::sync(&self.device)?;
            let ms = last.elapsed().as_secs_f64() * 1e3;
            let kernels = counter.count() - launched;
            launched += kernels;
            times.push(StepTime { node: step.node.clone(), op: step.op.clone(), ms, kernels });
            last = std::time::Instant::now();
            Ok(())
        })?;
        Ok(times)
    }

    /// Runs the steps, calling `after` past each; returns the outputs on the device and the host
    /// read count from before the inputs were uploaded.
    fn forward_observed(&self, inputs: Inputs, mut after: impl FnMut(&PlanStep) -> Result<()>) -> Result<(Vec<T>, usize)> {
        let before = host_reads();
        let uploaded: Vec<Option<T>> = match inputs {
            Inputs::Borrowed(inputs) => {
                self.check_inputs(inputs)?;
                inputs.iter().map(|d| run_guarded(|| self.ctx.upload_finite(d))).collect::<Result<_>>()?
            }
            Inputs::Owned(inputs) => {
                self.check_inputs(&inputs)?;
                inputs.into_iter().map(|d| run_guarded(|| self.ctx.take_finite(d))).collect::<Result<_>>()?
            }
        };
        let mut vals: Vec<Option<T>> = vec![None; self.slots];
        for (s, t) in &self.consts {
            vals[*s] = Some(t.clone());
        }
        for ((name, _, s), t) in self.inputs.iter().zip(uploaded) {
            vals[*s] = Some(t.ok_or_else(|| err!(NonFiniteInput, "input '{name}' contains NaN or infinity"))?);
        }
        for step in &self.steps {
            let args = step
                .args
                .iter()
                .map(|&(s, last)| {
                    let v = if last { vals[s].take() } else { vals[s].clone() };
                    v.ok_or_else(|| err!(InvalidGraph, "value consumed before use"))
                })
                .collect::<Result<Vec<_>>>()
                .map_err(|e| e.at_node(&step.node, &step.op))?;
            let outs = run_guarded(|| (step.kernel)(&self.ctx, args)).map_err(|e| e.at_node(&step.node, &step.op))?;
            after(step)?;
            for (o, t) in step.outs.iter().zip(outs) {
                if let Some(o) = o {
                    vals[*o] = Some(t);
                }
            }
        }
        let outs = self
            .outputs
            .iter()
            .map(|(n, _, s)| vals[*s].clone().ok_or_else(|| err!(InvalidGraph, "output '{n}' was not computed")))
            .collect::<Result<_>>()?;
        Ok((outs, before))
    }

    fn check_inputs(&self, inputs: &[TensorData]) -> Result<()> {
        if inputs.len() != self.inputs.len() {
            bail!(InputMismatch, "expected {} inputs, got {}", self.inputs.len(), inputs.len());
        }
        for ((name, ty, _), data) in self.inputs.iter().zip(inputs) {
            if data.shape().as_slice() != ty.shape.as_slice() {
                bail!(InputMismatch, "input '{name}' has shape {:?}, the plan was compiled for {:?}", data.shape().as_slice(), ty.shape);
            }
            let elem = ElemType::of_dtype(data.dtype());
            if elem.is_float() != ty.elem.is_float() || (elem == ElemType::Bool) != (ty.elem == ElemType::Bool) {
                bail!(InputMismatch, "input '{name}' has element type {:?}, expected {:?}", data.dtype(), ty.elem);
            }
            // f32 inputs are checked as they are uploaded (`Ctx::upload_finite`, `Ctx::take_finite`).
            if elem.is_float() && data.as_slice::<f32>().is_err() && !data.iter::<f64>().all(|x| x.is_finite()) {
                bail!(NonFiniteInput, "input '{name}' contains NaN or infinity");
            }
        }
        Ok(())
    }
}

/// A forward's inputs as the caller hands them: borrowed ones are copied to the device, owned
/// ones moved there.
enum Inputs<'a> {
    Borrowed(&'a [TensorData]),
    Owned(Vec<TensorData>),
}

/// A one-channel map from a channels-last op (Burn's convs and resizes leave `[N, H, W, C]` memory
/// under the `[N, C, H, W]` view) is contiguous, but its strides do not say so to Burn's read,
/// which would copy it first (one kernel per output); a reshape through `[N, H, W]` resets them.
fn single_channel_view(t: T) -> T {
    use crate::tensor::{Kind, is_flex, kind, reshape, shape};
    let s = shape(&t);
    if s.len() != 4 || s[1] != 1 || is_flex(&t) || kind(&t) != Kind::Float {
        return t;
    }
    reshape(reshape(t, &[s[0], s[2], s[3]]), &s)
}

/// Constant 2-D conv weights with a spatial kernel, read by nothing but convs. On the CubeCL backends
/// they are stored channels-last (`[OC, KH, KW, IC]` in memory, `[OC, IC, KH, KW]` as seen): Burn's
/// direct conv wants the input-channel axis contiguous and otherwise copies the weight on every
/// forward (one extra kernel per conv, in eager and fused alike).
fn channels_last_weights(program: &Program) -> HashSet<&str> {
    let mut conv_weight = HashSet::new();
    let mut other = HashSet::new();
    for step in &program.steps {
        for (i, name) in step.inputs.iter().enumerate() {
            let is_weight = step.op == "Conv" && i == 1;
            let spatial = program.consts.get(name).is_some_and(|d| {
                let s = d.shape();
                s.len() == 4 && s[2] * s[3] > 1
            });
            if is_weight && spatial {
                conv_weight.insert(name.as_str());
            } else {
                other.insert(name.as_str());
            }
        }
    }
    for (_, source, _) in &program.outputs {
        other.insert(source.as_str());
    }
    conv_weight.retain(|n| !other.contains(n));
    conv_weight
}

/// `[OC, IC, KH, KW]` values laid out as `[OC, KH, KW, IC]`.
fn to_channels_last(data: &TensorData) -> TensorData {
    let s = data.shape();
    let (oc, ic, kh, kw) = (s[0], s[1], s[2], s[3]);
    let src = data.clone().convert_dtype(DType::F32);
    let v = src.as_slice::<f32>().expect("converted to f32");
    let mut out = vec![0f32; v.len()];
    for o in 0..oc {
        for c in 0..ic {
            for k in 0..kh * kw {
                out[(o * kh * kw + k) * ic + c] = v[(o * ic + c) * kh * kw + k];
            }
        }
    }
    TensorData::new(out, [oc, kh, kw, ic])
}

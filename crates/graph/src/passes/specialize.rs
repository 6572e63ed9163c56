//! Specialises a graph to concrete input shapes: every value gets a concrete shape, every node
//! whose inputs are all constant is evaluated now (on the flex CPU device), `Shape` of anything is a
//! constant, `If` with a constant condition is replaced by its branch, `Identity` becomes an alias,
//! and nodes nothing needs are dropped. What remains is a list of device kernels with no shape
//! logic left, which is what lets one forward run without reading back to the host.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use burn_backend::TensorData;

use super::adaptive_pool::{self, PoolChain, Producer};
use super::compose_relayouts;
use super::program::{Program, Step, Value};
use crate::error::{Error, Result, bail, err};
use crate::model::{Attr, Node, OnnxModel, Subgraph};
use crate::ops::{self, Input, Lowering, TypeInfo};
use crate::tensor::{Ctx, download, reshape_data, run_guarded};

struct Specializer<'a> {
    opset: i64,
    env: HashMap<String, Value>,
    steps: Vec<Step>,
    folded: usize,
    fold_ctx: &'a Ctx,
    /// What the adaptive-pool matcher needs: producers of its ops, and the chains found so far.
    producers: HashMap<String, Producer>,
    pools: HashMap<String, PoolChain>,
    /// Constants only the CubeCL backends read.
    cubecl_only: HashSet<String>,
}

pub fn specialize(model: &OnnxModel, inputs: &[(String, TypeInfo)], fold_ctx: &Ctx) -> Result<Program> {
    let mut s = Specializer {
        opset: model.opset,
        env: HashMap::new(),
        steps: vec![],
        folded: 0,
        fold_ctx,
        producers: HashMap::new(),
        pools: HashMap::new(),
        cubecl_only: HashSet::new(),
    };
    for (name, ty) in inputs {
        s.env.insert(name.clone(), Value { ty: ty.clone(), konst: None, source: name.clone() });
    }
    s.run_graph(&model.graph)?;
    let outputs = model
        .graph
        .outputs
        .iter()
        .map(|o| {
            let v = s.value(&o.name)?;
            Ok((o.name.clone(), v.source.clone(), v.ty.clone()))
        })
        .collect::<Result<Vec<_>>>()?;
    // Keep only the steps the outputs need, and the constants those steps read.
    let mut needed: HashSet<String> = model.graph.outputs.iter().map(|o| s.env[&o.name].source.clone()).collect();
    let mut kept = vec![];
    for step in s.steps.into_iter().rev() {
        if step.outputs.iter().any(|o| needed.contains(o)) {
            needed.extend(step.inputs.iter().cloned());
            kept.push(step);
        }
    }
    kept.reverse();
    let keep: HashSet<String> = outputs.iter().map(|(_, source, _)| source.clone()).collect();
    compose_relayouts::compose_relayouts(&mut kept, &keep);
    let mut consts = HashMap::new();
    for (name, v) in &s.env {
        if let Some(k) = &v.konst
            && needed.contains(&v.source)
            && name == &v.source
        {
            consts.insert(name.clone(), k.clone());
        }
    }
    let cubecl_only = s.cubecl_only.into_iter().filter(|n| consts.contains_key(n)).collect();
    Ok(Program { inputs: inputs.to_vec(), outputs, steps: kept, consts, cubecl_only, folded: s.folded })
}

impl Specializer<'_> {
    fn value(&self, name: &str) -> Result<&Value> {
        self.env.get(name).ok_or_else(|| err!(InvalidGraph, "value '{name}' is used before it is defined"))
    }

    fn run_graph(&mut self, g: &Subgraph) -> Result<()> {
        for (name, t) in &g.initializers {
            let ty = TypeInfo::new(crate::model::ElemType::of_dtype(t.dtype()), t.shape().to_vec());
            self.env.insert(name.clone(), Value { ty, konst: Some(t.clone()), source: name.clone() });
        }
        for node in &g.nodes {
            self.run_node(node).map_err(|e: Error| e.at_node(&node.name, &node.op))?;
        }
        Ok(())
    }

    fn run_node(&mut self, node: &Node) -> Result<()> {
        if node.op == "If" {
            return self.run_if(node);
        }
        let values: Vec<Option<Value>> = node
            .inputs
            .iter()
            .map(|i| if i.is_empty() { Ok(None) } else { self.value(i).cloned().map(Some) })
            .collect::<Result<_>>()?;
        if node.op == "ScatterND"
            && let Some(chain) = adaptive_pool::extend(node, &values, &self.pools, &self.producers)
        {
            if chain.complete() {
                let out = node.outputs[0].clone();
                self.env.insert(out.clone(), Value { ty: chain.output(), konst: None, source: out.clone() });
                self.steps.push(Step {
                    node: node.name.clone(),
                    op: "AdaptiveAvgPool".into(),
                    inputs: vec![chain.x.clone()],
                    outputs: vec![out],
                    relayout: None,
                    kernel: chain.kernel(),
                });
                return Ok(());
            }
            self.pools.insert(node.outputs[0].clone(), chain);
        }
        let inputs: Vec<Option<Input>> = values
            .iter()
            .map(|v| v.as_ref().map(|v| Input { ty: &v.ty, konst: v.konst.as_deref() }))
            .collect();
        match ops::lower(node, &inputs, self.opset)? {
            Lowering::Alias(i) => {
                let v = values.get(i).cloned().flatten().ok_or_else(|| err!(InvalidGraph, "alias of a missing input"))?;
                self.define(&node.outputs[0], v);
            }
            Lowering::Consts(datas) => {
                self.folded += 1;
                for (out, d) in node.outputs.iter().zip(datas) {
                    self.define_const(out, d);
                }
            }
            // An empty result holds no data, so it is a constant whatever the inputs.
            Lowering::Kernel(l) if l.outputs.iter().all(|t| t.numel() == 0) => {
                self.folded += 1;
                for (out, ty) in node.outputs.iter().zip(&l.outputs) {
                    self.define_const(out, empty(ty));
                }
            }
            Lowering::Kernel(l) => {
                let all_const = l.uses.iter().all(|&i| values[i].as_ref().is_some_and(|v| v.konst.is_some()));
                if all_const {
                    // Evaluate now, on the CPU, with the very kernel the plan would run.
                    let ctx = self.fold_ctx;
                    let mut args: Vec<_> =
                        l.uses.iter().map(|&i| ctx.upload(values[i].as_ref().unwrap().konst.as_ref().unwrap())).collect();
                    args.extend(l.extra.iter().map(|e| ctx.upload(e)));
                    let outs = run_guarded(|| (l.kernel)(ctx, args))?;
                    self.folded += 1;
                    for ((out, t), ty) in node.outputs.iter().zip(outs).zip(&l.outputs) {
                        if out.is_empty() {
                            continue;
                        }
                        let data = download(t)?;
                        let data = if ty.shape.is_empty() { reshape_data(data, vec![]) } else { data };
                        self.define_const(out, data);
                    }
                } else {
                    let mut names: Vec<String> = l.uses.iter().map(|&i| values[i].as_ref().unwrap().source.clone()).collect();
                    for (k, e) in l.extra.into_iter().enumerate() {
                        let kind = if l.cubecl_only { "::cubecl" } else { "::const" };
                        let name = format!("{}{kind}{k}", node.name);
                        if l.cubecl_only {
                            self.cubecl_only.insert(name.clone());
                        }
                        self.define_const(&name, e);
                        names.push(name);
                    }
                    for (out, ty) in node.outputs.iter().zip(&l.outputs) {
                        if !out.is_empty() {
                            self.env.insert(out.clone(), Value { ty: ty.clone(), konst: None, source: out.clone() });
                        }
                    }
                    if adaptive_pool::tracks(&node.op) {
                        let output = l.outputs[0].clone();
                        let p = Producer { node: node.clone(), inputs: values.clone(), output };
                        self.producers.insert(node.outputs[0].clone(), p);
                    }
                    let relayout = l.relayout.map(|r| (values[l.uses[0]].as_ref().expect("used inputs are present").ty.shape.clone(), r));
                    self.steps.push(Step {
                        node: node.name.clone(),
                        op: node.op.clone(),
                        inputs: names,
                        outputs: node.outputs.clone(),
                        relayout,
                        kernel: l.kernel,
                    });
                }
            }
        }
        Ok(())
    }

    fn run_if(&mut self, node: &Node) -> Result<()> {
        let cond = self.value(node.input(0).ok_or_else(|| err!(InvalidGraph, "If without condition"))?)?;
        let Some(c) = &cond.konst else {
            bail!(DynamicArgument, "If condition depends on run-time values; Kiln needs it constant after shape specialisation");
        };
        let taken = c
            .try_to_vec_as::<f32>()
            .map_err(|e| err!(InvalidGraph, "If condition: {e:?}"))?
            .first()
            .copied()
            .unwrap_or(0.0)
            != 0.0;
        let branch = if taken { "then_branch" } else { "else_branch" };
        let Some(Attr::Graph(g)) = node.attr(branch) else {
            bail!(InvalidGraph, "If has no {branch}");
        };
        self.run_graph(g)?;
        if g.outputs.len() != node.outputs.len() {
            bail!(InvalidGraph, "{branch} has {} outputs, If has {}", g.outputs.len(), node.outputs.len());
        }
        for (out, bo) in node.outputs.iter().zip(&g.outputs) {
            let v = self.value(&bo.name)?.clone();
            self.define(out, v);
        }
        self.folded += 1;
        Ok(())
    }

    fn define(&mut self, name: &str, v: Value) {
        if !name.is_empty() {
            self.env.insert(name.to_string(), v);
        }
    }

    fn define_const(&mut self, name: &str, data: TensorData) {
        if name.is_empty() {
            return;
        }
        let ty = TypeInfo::new(crate::model::ElemType::of_dtype(data.dtype()), data.shape().to_vec());
        self.env.insert(name.to_string(), Value { ty, konst: Some(Arc::new(data)), source: name.to_string() });
    }
}

fn empty(ty: &TypeInfo) -> TensorData {
    match ty.elem {
        e if e.is_float() => TensorData::new(Vec::<f32>::new(), ty.shape.clone()),
        crate::model::ElemType::Bool => TensorData::new(Vec::<bool>::new(), ty.shape.clone()),
        _ => TensorData::new(Vec::<i64>::new(), ty.shape.clone()),
    }
}


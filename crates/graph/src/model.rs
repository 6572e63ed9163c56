//! ONNX decoding: onnx-ir's protobuf messages, read one node and one weight at a time (see
//! [`crate::wire`]), turned into Kiln's own small IR. onnx-ir's typed node pipeline is not used
//! here: on docTR's large graphs it takes tens of seconds and gigabytes (master) or fails (parseq,
//! viptr_tiny), while the protobuf decode alone is cheap.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn_backend::{DType, TensorData};
use onnx_ir::{AttributeProto, GraphProto, Message, ModelProto, NodeProto, TensorProto, ValueInfoProto};

use crate::error::{Error, Result, bail, err};
pub use crate::ir::{Attr, Attrs, Dim, ElemType, Node, OnnxModel, Subgraph, ValueInfo};
use crate::transposed_weights;
use crate::wire::{Wire, decode_error};

impl OnnxModel {
    pub fn from_path(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| err!(Io, "cannot read model: {e}").in_model(path))?;
        let len = file.metadata().map_err(|e| err!(Io, "cannot read model: {e}").in_model(path))?.len();
        Self::decode(std::io::BufReader::with_capacity(1 << 16, file), len, path).map_err(|e| e.in_model(path))
    }

    pub fn from_bytes(bytes: Vec<u8>, source: PathBuf) -> Result<Self> {
        let len = bytes.len() as u64;
        Self::decode(std::io::Cursor::new(bytes), len, &source).map_err(|e| e.in_model(&source))
    }

    /// Decodes a model from a stream of `len` bytes. The main graph is converted node by node as
    /// it is read (see [`crate::wire`]); the model's other fields are decoded as one message.
    fn decode(r: impl std::io::Read, len: u64, source: &Path) -> Result<Self> {
        if len == 0 {
            bail!(Decode, "file is empty");
        }
        let mut w = Wire::new(r);
        let mut rest = Vec::new();
        let mut graph = None;
        let (mut constants, mut gemm_weights_transposed) = (0, 0);
        while let Some((field, wire)) = w.field(len)? {
            if field == MODEL_GRAPH && wire == 2 && graph.is_none() {
                let end = w.len(len)? + w.pos();
                let read;
                (read, constants, gemm_weights_transposed) = read_graph(&mut w, end)?;
                graph = Some(read);
            } else {
                w.copy_field(field, wire, &mut rest, len)?;
            }
        }
        let proto = ModelProto::parse_from_bytes(&rest).map_err(|e| decode_error("model", e))?;
        let Some(graph) = graph else {
            bail!(Decode, "no graph in the model (is this an ONNX file?)");
        };
        if graph.nodes.is_empty() && graph.outputs.is_empty() {
            bail!(Decode, "the graph has no nodes and no outputs (is this an ONNX file?)");
        }
        let opset = proto
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
            .unwrap_or(0);
        if opset == 0 {
            bail!(InvalidGraph, "no default-domain opset import");
        }
        tracing::debug!(source = %source.display(), nodes = graph.nodes.len(), opset, "decoded ONNX");
        let metadata = proto.metadata_props.into_iter().map(|p| (p.key, p.value)).collect();
        Ok(Self { source: source.to_path_buf(), opset, graph, constants, gemm_weights_transposed, producer: proto.producer_name, metadata })
    }
}

/// `ModelProto.graph`, and `GraphProto`'s `node` and `initializer` field numbers.
const MODEL_GRAPH: u32 = 7;
const GRAPH_NODE: u32 = 1;
const GRAPH_INITIALIZER: u32 = 5;
/// `TensorProto.raw_data`.
const TENSOR_RAW_DATA: u32 = 9;

/// Reads the main graph up to byte `end`, converting each node and initializer as it arrives
/// (tensor `Constant` nodes become initializers), and the graph's remaining fields (inputs,
/// outputs, value infos) together at the end. Weights that only `Gemm` nodes read transposed are
/// stored transposed, in place (see `transposed_weights`). Returns the graph, the
/// count of `Constant` nodes read as initializers and of `Gemm` nodes rewritten.
fn read_graph(w: &mut Wire<impl std::io::Read>, end: u64) -> Result<(Subgraph, usize, usize)> {
    let (mut nodes, mut initializers, mut rest) = (Vec::new(), Vec::new(), Vec::new());
    // Known once the first initializer arrives: ONNX writers put the nodes first (field 1).
    let mut read_transposed = None;
    let mut transposed = std::collections::HashSet::new();
    // Nodes read so far: an unnamed node is named for its place in the file.
    let (mut read, mut constants) = (0, 0);
    while let Some((field, wire)) = w.field(end)? {
        match (field, wire) {
            (GRAPH_NODE, 2) => {
                let node = NodeProto::parse_from_tokio_bytes(&w.message(end, None)?)
                    .map_err(|e| decode_error("node", e))?;
                let node = convert_node(read, node)?;
                read += 1;
                // A tensor Constant is a weight by another name, and kept as one it costs a
                // fraction of a node (viptr_tiny: 11 000 of its 31 000 nodes).
                match (node.op.as_str(), node.attrs.get("value"), node.outputs.as_slice()) {
                    ("Constant", Some(Attr::Tensor(t)), [out]) => {
                        initializers.push((out.clone(), t.clone()));
                        constants += 1;
                    }
                    _ => nodes.push(node),
                }
            }
            (GRAPH_INITIALIZER, 2) => {
                let mut t = TensorProto::parse_from_tokio_bytes(&w.message(end, Some(TENSOR_RAW_DATA))?)
                    .map_err(|e| decode_error("initializer", e))?;
                let stored = (read_transposed.get_or_insert_with(|| transposed_weights::read_transposed(&nodes)).contains(&t.name)
                    && transpose_raw(&mut t))
                .then(|| {
                    transposed.insert(t.name.clone());
                    transposed_weights::stored_name(&t.name)
                });
                let value = tensor_from_proto(&t)?;
                initializers.push((stored.unwrap_or(t.name), Arc::new(value)));
            }
            _ => w.copy_field(field, wire, &mut rest, end)?,
        }
    }
    let g = GraphProto::parse_from_bytes(&rest).map_err(|e| decode_error("graph", e))?;
    let outputs: Vec<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
    let gemms = transposed_weights::read_as_stored(&mut nodes, &transposed, &outputs);
    // The vectors grew by doubling; up to half of each is spare.
    nodes.shrink_to_fit();
    initializers.shrink_to_fit();
    Ok((finish_graph(nodes, initializers, &g.input, &g.output)?, constants, gemms))
}

/// Stores a float matrix initializer `[N, K]` as `[K, N]`, in its own buffer when no other
/// reference holds it; false (unchanged) otherwise.
fn transpose_raw(t: &mut TensorProto) -> bool {
    let (&[n, k], Some(ElemType::F32)) = (t.dims.as_slice(), ElemType::from_onnx(t.data_type)) else { return false };
    let (Ok(n), Ok(k)) = (usize::try_from(n), usize::try_from(k)) else { return false };
    if !cfg!(target_endian = "little") || t.raw_data.len() != 4 * n * k {
        return false;
    }
    let mut raw = match std::mem::take(&mut t.raw_data).try_into_mut() {
        Ok(raw) => raw,
        Err(shared) => {
            t.raw_data = shared;
            return false;
        }
    };
    // SAFETY: any bit pattern is an f32; `align_to_mut` leaves what is not 4-aligned outside.
    let (head, values, tail) = unsafe { raw.align_to_mut::<f32>() };
    let aligned = head.is_empty() && tail.is_empty();
    if aligned {
        transposed_weights::transpose_in_place(values, n, k);
        t.dims = vec![k as i64, n as i64];
    }
    t.raw_data = raw.freeze();
    aligned
}

/// Converts a subgraph (an `If` branch), consuming it.
fn convert_graph(g: GraphProto) -> Result<Subgraph> {
    let GraphProto { node, initializer, input, output, .. } = g;
    let mut initializers = Vec::with_capacity(initializer.len());
    for t in initializer {
        let value = tensor_from_proto(&t)?;
        initializers.push((t.name, Arc::new(value)));
    }
    let nodes = node.into_iter().enumerate().map(|(i, n)| convert_node(i, n)).collect::<Result<Vec<_>>>()?;
    finish_graph(nodes, initializers, &input, &output)
}

/// A graph's signature: inputs that are initializers too (old exporters list them) are not inputs.
fn finish_graph(
    nodes: Vec<Node>,
    initializers: Vec<(String, Arc<TensorData>)>,
    input: &[ValueInfoProto],
    output: &[ValueInfoProto],
) -> Result<Subgraph> {
    let init_names: std::collections::HashSet<&str> = initializers.iter().map(|(n, _)| n.as_str()).collect();
    let inputs = input
        .iter()
        .filter(|v| !init_names.contains(v.name.as_str()))
        .map(value_info)
        .collect::<Result<Vec<_>>>()?;
    let outputs = output.iter().map(value_info).collect::<Result<Vec<_>>>()?;
    Ok(Subgraph { nodes, initializers, inputs, outputs })
}

fn value_info(v: &ValueInfoProto) -> Result<ValueInfo> {
    let ty = v.type_.as_ref().ok_or_else(|| err!(InvalidGraph, "value '{}' has no type", v.name))?;
    if !ty.has_tensor_type() {
        bail!(UnsupportedAttribute, "value '{}' is not a tensor (sequences and maps are not supported)", v.name);
    }
    let tt = ty.tensor_type();
    let elem = ElemType::from_onnx(tt.elem_type)
        .ok_or_else(|| err!(UnsupportedAttribute, "value '{}' has unsupported element type {}", v.name, tt.elem_type))?;
    let dims = tt
        .shape
        .dim
        .iter()
        .map(|d| {
            if d.has_dim_value() && d.dim_value() >= 0 {
                Dim::Fixed(d.dim_value() as usize)
            } else if d.has_dim_param() {
                Dim::Dynamic(Some(d.dim_param().to_string()))
            } else {
                Dim::Dynamic(None)
            }
        })
        .collect();
    Ok(ValueInfo { name: v.name.clone(), elem, dims })
}

fn convert_node(index: usize, n: NodeProto) -> Result<Node> {
    let NodeProto { input, output, name, op_type, domain, attribute, .. } = n;
    let name = if name.is_empty() { format!("#{index}") } else { name };
    let wrap = |e: Error| e.at_node(&name, &op_type);
    if !(domain.is_empty() || domain == "ai.onnx") {
        return Err(wrap(err!(UnsupportedOp, "custom domain '{domain}' is not supported")));
    }
    let mut attrs = Attrs::with_capacity(attribute.len());
    for mut a in attribute {
        let value = convert_attr(&mut a).map_err(wrap)?;
        attrs.insert(a.name, value);
    }
    Ok(Node { name, op: op_type, inputs: input, outputs: output, attrs, fused: None })
}

fn convert_attr(a: &mut AttributeProto) -> Result<Attr> {
    use onnx_ir::AttributeType as T;
    let ty = a
        .type_
        .enum_value()
        .map_err(|v| err!(InvalidGraph, "attribute '{}' has unknown type {v}", a.name))?;
    let string = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok(match ty {
        T::FLOAT => Attr::Float(a.f),
        T::INT => Attr::Int(a.i),
        T::STRING => Attr::Str(string(&a.s)),
        T::TENSOR => Attr::Tensor(Arc::new(tensor_from_proto(&a.t)?)),
        T::GRAPH => Attr::Graph(Arc::new(convert_graph(a.g.take().unwrap_or_default())?)),
        T::FLOATS => Attr::Floats(std::mem::take(&mut a.floats)),
        T::INTS => Attr::Ints(std::mem::take(&mut a.ints)),
        T::STRINGS => Attr::Strings(a.strings.iter().map(|s| string(s)).collect()),
        other => bail!(UnsupportedAttribute, "attribute '{}' has unsupported type {other:?}", a.name),
    })
}

/// Converts a `TensorProto` to host data: floats become f32, integers i64, booleans bool.
pub fn tensor_from_proto(t: &TensorProto) -> Result<TensorData> {
    let elem = ElemType::from_onnx(t.data_type)
        .ok_or_else(|| err!(UnsupportedAttribute, "tensor '{}' has unsupported element type {}", t.name, t.data_type))?;
    if t.data_location.value() == 1 {
        bail!(UnsupportedAttribute, "tensor '{}' uses external data, which Kiln does not load", t.name);
    }
    let mut shape = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        if d < 0 {
            bail!(InvalidGraph, "tensor '{}' has negative dimension {d}", t.name);
        }
        shape.push(d as usize);
    }
    let n: usize = shape.iter().product();
    let raw = &t.raw_data;
    let check = |have: usize| -> Result<()> {
        if have != n {
            bail!(InvalidGraph, "tensor '{}' has {have} values for shape {shape:?}", t.name);
        }
        Ok(())
    };
    let le = |chunk: &[u8], k: usize| -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..k].copy_from_slice(chunk);
        b
    };
    let data = match elem {
        // Zero-copy: float weights stay views into the model file's bytes when they are aligned, so
        // loading does not hold the weights twice.
        ElemType::F32 if raw.len() == 4 * n && n > 0 && (raw.as_ptr() as usize).is_multiple_of(4) => {
            let bytes = burn_backend::Bytes::from_shared(raw.clone(), burn_backend::AllocationProperty::File);
            TensorData::from_bytes(bytes, shape, DType::F32)
        }
        ElemType::F32 | ElemType::F64 | ElemType::F16 => {
            let v: Vec<f32> = if !raw.is_empty() {
                let w = match elem {
                    ElemType::F32 => 4,
                    ElemType::F64 => 8,
                    _ => 2,
                };
                check(raw.len() / w)?;
                if raw.len() % w != 0 {
                    bail!(InvalidGraph, "tensor '{}' raw data length {} is not a multiple of {w}", t.name, raw.len());
                }
                raw.chunks_exact(w)
                    .map(|c| match elem {
                        ElemType::F32 => f32::from_le_bytes(c.try_into().unwrap()),
                        ElemType::F64 => f64::from_le_bytes(c.try_into().unwrap()) as f32,
                        _ => half::f16::from_le_bytes(c.try_into().unwrap()).to_f32(),
                    })
                    .collect()
            } else {
                match elem {
                    ElemType::F32 => t.float_data.clone(),
                    ElemType::F64 => t.double_data.iter().map(|&x| x as f32).collect(),
                    _ => t.int32_data.iter().map(|&x| half::f16::from_bits(x as u16).to_f32()).collect(),
                }
            };
            check(v.len())?;
            TensorData::new(v, shape)
        }
        ElemType::Bool => {
            let v: Vec<bool> = if !raw.is_empty() {
                raw.iter().map(|&b| b != 0).collect()
            } else {
                t.int32_data.iter().map(|&b| b != 0).collect()
            };
            check(v.len())?;
            TensorData::new(v, shape)
        }
        _ => {
            // Width and signedness come from the ONNX type code: several codes share ElemType::I64.
            let (w, signed) = match t.data_type {
                2 => (1, false),
                3 => (1, true),
                4 => (2, false),
                5 => (2, true),
                6 => (4, true),
                12 => (4, false),
                13 => (8, false),
                _ => (8, true),
            };
            let v: Vec<i64> = if !raw.is_empty() {
                if raw.len() % w != 0 {
                    bail!(InvalidGraph, "tensor '{}' raw data length {} is not a multiple of {w}", t.name, raw.len());
                }
                raw.chunks_exact(w)
                    .map(|c| {
                        let u = u64::from_le_bytes(le(c, w));
                        if signed && w < 8 {
                            let shift = 64 - 8 * w as u32;
                            ((u << shift) as i64) >> shift
                        } else {
                            u as i64
                        }
                    })
                    .collect()
            } else {
                match t.data_type {
                    7 => t.int64_data.clone(),
                    12 | 13 => t.uint64_data.iter().map(|&x| x as i64).collect(),
                    _ => t.int32_data.iter().map(|&x| x as i64).collect(),
                }
            };
            check(v.len())?;
            TensorData::new(v, shape)
        }
    };
    Ok(data)
}

//! ONNX decoding: onnx-ir's `ModelProto` (protobuf only, zero-copy over the file bytes) turned into
//! Kiln's own small IR. onnx-ir's typed node pipeline is not used here: on docTR's large graphs it
//! takes tens of seconds and gigabytes (master) or fails (parseq, viptr_tiny), while the decode alone
//! is cheap.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn_backend::{DType, TensorData};
use onnx_ir::{AttributeProto, GraphProto, Message, ModelProto, NodeProto, TensorProto, ValueInfoProto};

use crate::error::{Error, ErrorKind, Result, bail, err};

/// ONNX element types Kiln accepts in graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElemType {
    F32,
    F64,
    F16,
    I64,
    I32,
    I8,
    U8,
    Bool,
}

impl ElemType {
    pub fn from_onnx(code: i32) -> Option<Self> {
        Some(match code {
            1 => Self::F32,
            2 => Self::U8,
            3 => Self::I8,
            // Wider unsigned types are held as i64 like the signed ones.
            4 | 12 | 13 => Self::I64,
            5 => Self::I32,
            6 => Self::I32,
            7 => Self::I64,
            9 => Self::Bool,
            10 => Self::F16,
            11 => Self::F64,
            _ => return None,
        })
    }

    pub fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F64 | Self::F16)
    }

    pub fn is_int(self) -> bool {
        matches!(self, Self::I64 | Self::I32 | Self::I8 | Self::U8)
    }

    /// The host dtype Kiln keeps constants of this type in (floats as f32, ints as i64).
    pub fn host_dtype(self) -> DType {
        match self {
            Self::F32 | Self::F64 | Self::F16 => DType::F32,
            Self::I64 | Self::I32 | Self::I8 | Self::U8 => DType::I64,
            Self::Bool => DType::Bool(burn_backend::BoolStore::Native),
        }
    }

    pub fn of_dtype(dtype: DType) -> Self {
        if dtype.is_float() {
            Self::F32
        } else if dtype.is_bool() {
            Self::Bool
        } else {
            Self::I64
        }
    }
}

/// A dimension of a declared graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// Symbolic (`batch`) or unknown: any size is accepted and specialised at compile time.
    Dynamic(Option<String>),
}

/// A declared graph input or output.
#[derive(Debug, Clone)]
pub struct ValueInfo {
    pub name: String,
    pub elem: ElemType,
    pub dims: Vec<Dim>,
}

#[derive(Debug, Clone)]
pub enum Attr {
    Float(f32),
    Int(i64),
    Str(String),
    Tensor(Arc<TensorData>),
    Graph(Arc<Subgraph>),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Strings(Vec<String>),
}

/// One ONNX node. Absent optional inputs are empty strings, as in ONNX.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub op: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attrs: HashMap<String, Attr>,
}

/// A graph body: the main graph or an `If` branch.
#[derive(Debug, Clone, Default)]
pub struct Subgraph {
    pub nodes: Vec<Node>,
    pub initializers: Vec<(String, Arc<TensorData>)>,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
}

/// A decoded ONNX model.
#[derive(Debug, Clone)]
pub struct OnnxModel {
    /// Where it came from, for error messages (`<bytes>` for in-memory models).
    pub source: PathBuf,
    pub opset: i64,
    pub graph: Subgraph,
    pub producer: String,
    /// `metadata_props` (PP-OCR keeps its recognition dictionary here, under `character`).
    pub metadata: Vec<(String, String)>,
}

impl OnnxModel {
    pub fn from_path(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| err!(Io, "cannot read model: {e}").in_model(path))?;
        Self::from_bytes(bytes, path.to_path_buf())
    }

    pub fn from_bytes(bytes: Vec<u8>, source: PathBuf) -> Result<Self> {
        Self::decode(bytes.into(), &source).map_err(|e| e.in_model(&source))
    }

    fn decode(bytes: bytes::Bytes, source: &Path) -> Result<Self> {
        if bytes.is_empty() {
            bail!(Decode, "file is empty");
        }
        let proto = ModelProto::parse_from_tokio_bytes(&bytes)
            .map_err(|e| err!(Decode, "not a valid ONNX protobuf: {e}"))?;
        let Some(graph) = proto.graph.as_ref() else {
            bail!(Decode, "no graph in the model (is this an ONNX file?)");
        };
        if graph.node.is_empty() && graph.output.is_empty() {
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
        let graph = convert_graph(graph)?;
        tracing::debug!(source = %source.display(), nodes = graph.nodes.len(), opset, "decoded ONNX");
        let metadata = proto.metadata_props.iter().map(|p| (p.key.clone(), p.value.clone())).collect();
        Ok(Self { source: source.to_path_buf(), opset, graph, producer: proto.producer_name.clone(), metadata })
    }
}

fn convert_graph(g: &GraphProto) -> Result<Subgraph> {
    let initializers = g
        .initializer
        .iter()
        .map(|t| Ok((t.name.clone(), Arc::new(tensor_from_proto(t)?))))
        .collect::<Result<Vec<_>>>()?;
    let init_names: std::collections::HashSet<&str> =
        initializers.iter().map(|(n, _)| n.as_str()).collect();
    let inputs = g
        .input
        .iter()
        .filter(|v| !init_names.contains(v.name.as_str()))
        .map(value_info)
        .collect::<Result<Vec<_>>>()?;
    let outputs = g.output.iter().map(value_info).collect::<Result<Vec<_>>>()?;
    let nodes = g
        .node
        .iter()
        .enumerate()
        .map(|(i, n)| convert_node(i, n))
        .collect::<Result<Vec<_>>>()?;
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

fn convert_node(index: usize, n: &NodeProto) -> Result<Node> {
    let name = if n.name.is_empty() { format!("#{index}") } else { n.name.clone() };
    let wrap = |e: Error| e.at_node(&name, &n.op_type);
    if !(n.domain.is_empty() || n.domain == "ai.onnx") {
        return Err(wrap(err!(UnsupportedOp, "custom domain '{}' is not supported", n.domain)));
    }
    let mut attrs = HashMap::with_capacity(n.attribute.len());
    for a in &n.attribute {
        attrs.insert(a.name.clone(), convert_attr(a).map_err(wrap)?);
    }
    Ok(Node { name, op: n.op_type.clone(), inputs: n.input.clone(), outputs: n.output.clone(), attrs })
}

fn convert_attr(a: &AttributeProto) -> Result<Attr> {
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
        T::GRAPH => Attr::Graph(Arc::new(convert_graph(&a.g)?)),
        T::FLOATS => Attr::Floats(a.floats.clone()),
        T::INTS => Attr::Ints(a.ints.clone()),
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

impl Node {
    pub fn attr(&self, name: &str) -> Option<&Attr> {
        self.attrs.get(name)
    }

    pub fn int(&self, name: &str, default: i64) -> Result<i64> {
        match self.attrs.get(name) {
            None => Ok(default),
            Some(Attr::Int(v)) => Ok(*v),
            Some(other) => bail!(InvalidGraph, "attribute '{name}' should be an int, found {other:?}"),
        }
    }

    pub fn float(&self, name: &str, default: f32) -> Result<f32> {
        match self.attrs.get(name) {
            None => Ok(default),
            Some(Attr::Float(v)) => Ok(*v),
            Some(Attr::Int(v)) => Ok(*v as f32),
            Some(other) => bail!(InvalidGraph, "attribute '{name}' should be a float, found {other:?}"),
        }
    }

    pub fn ints(&self, name: &str) -> Result<Option<Vec<i64>>> {
        match self.attrs.get(name) {
            None => Ok(None),
            Some(Attr::Ints(v)) => Ok(Some(v.clone())),
            Some(Attr::Int(v)) => Ok(Some(vec![*v])),
            Some(other) => bail!(InvalidGraph, "attribute '{name}' should be ints, found {other:?}"),
        }
    }

    pub fn floats(&self, name: &str) -> Result<Option<Vec<f32>>> {
        match self.attrs.get(name) {
            None => Ok(None),
            Some(Attr::Floats(v)) => Ok(Some(v.clone())),
            Some(other) => bail!(InvalidGraph, "attribute '{name}' should be floats, found {other:?}"),
        }
    }

    pub fn string(&self, name: &str, default: &str) -> Result<String> {
        match self.attrs.get(name) {
            None => Ok(default.to_string()),
            Some(Attr::Str(v)) => Ok(v.clone()),
            Some(other) => bail!(InvalidGraph, "attribute '{name}' should be a string, found {other:?}"),
        }
    }

    /// The name of input `i`, or `None` when it is absent (missing or empty).
    pub fn input(&self, i: usize) -> Option<&str> {
        self.inputs.get(i).map(String::as_str).filter(|s| !s.is_empty())
    }

    pub fn error(&self, kind: ErrorKind, message: impl Into<String>) -> Error {
        Error::new(kind, message).at_node(&self.name, &self.op)
    }
}

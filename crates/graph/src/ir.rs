//! Kiln's graph IR: the nodes, attributes, value types and weights of a decoded ONNX model, which
//! the decoder (`model`) fills and the passes and lowering read.

use std::path::PathBuf;
use std::sync::Arc;

use burn_backend::{DType, TensorData};

use crate::error::{Error, ErrorKind, Result, bail};

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
    pub attrs: Attrs,
    /// What load passes folded into this node, for its lowering; never read from a file. Boxed:
    /// few nodes carry one, and viptr_tiny has 31 000 nodes.
    pub fused: Option<Box<Fused>>,
}

/// Work a load pass moved into a node from the nodes around it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fused {
    /// Conv, ConvTranspose: the activation that read its output.
    pub activation: Option<Activation>,
    /// Conv: an `Add` of its output and input 3, before the activation or after it.
    pub shortcut: Option<Shortcut>,
    /// Conv: its bias and ReLU are left to the channel `Concat` that reads it.
    pub epilogue_in_concat: bool,
    /// Concat: the data inputs whose convs left it their bias and ReLU; the biases follow the
    /// data inputs, in this order.
    pub bias_relu_of: Vec<usize>,
    /// MatMul: attention scores (`Q · Kᵀ`), which feed a softmax.
    pub attention_scores: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Relu,
    HardSwish,
    Clip(f32, f32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortcut {
    BeforeActivation,
    AfterActivation,
}

static NOT_FUSED: Fused =
    Fused { activation: None, shortcut: None, epilogue_in_concat: false, bias_relu_of: Vec::new(), attention_scores: false };

/// A node's attributes, in a vector: nodes carry one to three, and a hash map's table per node
/// cost viptr_tiny's 31 000 nodes megabytes at load for lookups that scan three entries anyway.
#[derive(Debug, Clone, Default)]
pub struct Attrs(Vec<(String, Attr)>);

impl Attrs {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    pub fn get(&self, name: &str) -> Option<&Attr> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Sets `name`, replacing an earlier value.
    pub fn insert(&mut self, name: String, value: Attr) {
        match self.0.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Attr)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &Attr> {
        self.0.iter().map(|(_, v)| v)
    }
}

impl FromIterator<(String, Attr)> for Attrs {
    fn from_iter<I: IntoIterator<Item = (String, Attr)>>(iter: I) -> Self {
        let mut attrs = Self::new();
        for (k, v) in iter {
            attrs.insert(k, v);
        }
        attrs
    }
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
    /// Tensor `Constant` nodes of the main graph, read as initializers (still counted as nodes
    /// in op histograms).
    pub constants: usize,
    /// `Gemm` nodes whose weights were stored transposed as they were read.
    pub gemm_weights_transposed: usize,
    pub producer: String,
    /// `metadata_props` (PP-OCR keeps its recognition dictionary here, under `character`).
    pub metadata: Vec<(String, String)>,
}

impl Node {
    /// What load passes folded into this node (nothing for most).
    pub fn fused(&self) -> &Fused {
        self.fused.as_deref().unwrap_or(&NOT_FUSED)
    }

    pub fn fused_mut(&mut self) -> &mut Fused {
        self.fused.get_or_insert_with(Default::default)
    }

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

//! Typed errors: every failure names the model file and, where one is involved, the node and op,
//! with a machine-readable [`ErrorKind`] so callers (and tests) can match on what went wrong.

use std::fmt;
use std::path::PathBuf;

/// What went wrong, independent of the message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The model file could not be read.
    Io,
    /// The bytes are not a valid ONNX protobuf (truncated, random, wrong format).
    Decode,
    /// The protobuf decoded but the graph is malformed (dangling value, missing attribute, …).
    InvalidGraph,
    /// An op type Kiln has no implementation for.
    UnsupportedOp,
    /// A supported op with an attribute value or input combination Kiln does not implement.
    UnsupportedAttribute,
    /// A shape-like argument (Reshape's shape, Slice's bounds, an `If` condition, …) depends on
    /// run-time values; bind the input to a constant (`Graph::bind_input`) to specialise on it.
    DynamicArgument,
    /// Shapes or element types of a node's inputs do not fit together.
    ShapeMismatch,
    /// A caller-supplied input has the wrong count, rank, shape or element type.
    InputMismatch,
    /// A caller-supplied input holds NaN or infinity.
    NonFiniteInput,
    /// The backend failed to run or to read back a tensor.
    Backend,
    /// A backend or mode that this build or this process cannot provide.
    Device,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorKind::Io => "io",
            ErrorKind::Decode => "decode",
            ErrorKind::InvalidGraph => "invalid graph",
            ErrorKind::UnsupportedOp => "unsupported op",
            ErrorKind::UnsupportedAttribute => "unsupported attribute",
            ErrorKind::DynamicArgument => "dynamic argument",
            ErrorKind::ShapeMismatch => "shape mismatch",
            ErrorKind::InputMismatch => "input mismatch",
            ErrorKind::NonFiniteInput => "non-finite input",
            ErrorKind::Backend => "backend",
            ErrorKind::Device => "device",
        };
        f.write_str(s)
    }
}

/// A Kiln error: kind, message, and where it happened.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    /// The ONNX file (or `<bytes>` when loaded from memory).
    pub model: Option<PathBuf>,
    /// The node's name (or `#index` for unnamed nodes).
    pub node: Option<String>,
    /// The node's op type.
    pub op: Option<String>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(model) = &self.model {
            write!(f, "{}: ", model.display())?;
        }
        match (&self.node, &self.op) {
            (Some(node), Some(op)) => write!(f, "node '{node}' ({op}): ")?,
            (Some(node), None) => write!(f, "node '{node}': ")?,
            (None, Some(op)) => write!(f, "op {op}: ")?,
            (None, None) => {}
        }
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), model: None, node: None, op: None }
    }

    /// Attaches the model path unless one is already set.
    pub fn in_model(mut self, model: impl Into<PathBuf>) -> Self {
        self.model.get_or_insert_with(|| model.into());
        self
    }

    /// Attaches node name and op type unless already set.
    pub fn at_node(mut self, node: &str, op: &str) -> Self {
        self.node.get_or_insert_with(|| node.to_string());
        self.op.get_or_insert_with(|| op.to_string());
        self
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand constructors used across the crate.
macro_rules! bail {
    ($kind:ident, $($arg:tt)*) => {
        return Err($crate::error::Error::new($crate::error::ErrorKind::$kind, format!($($arg)*)))
    };
}
macro_rules! err {
    ($kind:ident, $($arg:tt)*) => {
        $crate::error::Error::new($crate::error::ErrorKind::$kind, format!($($arg)*))
    };
}
pub(crate) use {bail, err};

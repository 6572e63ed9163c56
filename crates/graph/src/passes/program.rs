//! What specialisation makes of a graph: a program of kernel steps for one set of input shapes,
//! shared by the specialiser and the rewrites it calls.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use burn_backend::TensorData;

use crate::ops::{Kernel, Relayout, TypeInfo};

/// A kernel step of a specialised program.
pub struct Step {
    pub node: String,
    pub op: String,
    /// Value names the kernel takes, in order (graph inputs, constants or earlier outputs).
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// The input's shape and the layout change, when that is all the step does.
    pub relayout: Option<(Vec<usize>, Relayout)>,
    pub kernel: Kernel,
}

/// A graph specialised to one set of input shapes.
pub struct Program {
    pub inputs: Vec<(String, TypeInfo)>,
    /// Graph output name, the value it is produced under (outputs may alias), and its type.
    pub outputs: Vec<(String, String, TypeInfo)>,
    pub steps: Vec<Step>,
    /// Constants the steps or outputs use.
    pub consts: HashMap<String, Arc<TensorData>>,
    /// The constants only the CubeCL backends read ([`crate::ops::Lowered::cubecl_only`]); the
    /// others upload an empty stand-in.
    pub cubecl_only: HashSet<String>,
    /// How many nodes were evaluated at compile time.
    pub folded: usize,
}

#[derive(Clone)]
pub(super) struct Value {
    pub ty: TypeInfo,
    pub konst: Option<Arc<TensorData>>,
    /// The name the value is produced under (differs from the key for aliases).
    pub source: String,
}

//! Thin, typed helpers over the raw `wasi:nn` bindings.

use crate::bindings::wasi::nn::errors::Error as RawError;
use crate::bindings::wasi::nn::graph::{self, Graph};
use crate::bindings::wasi::nn::inference::GraphExecutionContext;
use crate::bindings::wasi::nn::tensor::{Tensor, TensorType};
use std::fmt;

/// An error reported by the host's `wasi:nn` implementation.
#[derive(Debug, Clone)]
pub struct NnError {
    /// What the workload was doing.
    pub operation: &'static str,
    /// The host's error code and message.
    pub message: String,
}

impl fmt::Display for NnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "wasi-nn {} failed: {}", self.operation, self.message)
    }
}

impl std::error::Error for NnError {}

fn nn_error(operation: &'static str, error: RawError) -> NnError {
    NnError {
        operation,
        message: format!("{:?}: {}", error.code(), error.data()),
    }
}

/// A host-owned model, loaded by name, with one execution context reused across calls.
pub struct Model {
    // Field order matters: the context must be dropped before the graph.
    context: GraphExecutionContext,
    _graph: Graph,
}

impl Model {
    /// Load the model the host registered under `name` (one of the workload's declared models).
    pub fn load(name: &str) -> Result<Self, NnError> {
        let graph = graph::load_by_name(name).map_err(|e| nn_error("load-by-name", e))?;
        let context = graph
            .init_execution_context()
            .map_err(|e| nn_error("init-execution-context", e))?;
        Ok(Model {
            context,
            _graph: graph,
        })
    }

    /// Run inference on named `i64` input tensors of shape `dims`, returning every output.
    pub fn compute_i64(
        &self,
        inputs: &[(&str, &[u32], &[i64])],
    ) -> Result<Vec<TensorOutput>, NnError> {
        // wasm32 is little-endian, like tensor data: the bytes are the values.
        let tensors = inputs
            .iter()
            .map(|(name, dims, data)| {
                let bytes: &[u8] = bytemuck::cast_slice(data);
                (name.to_string(), Tensor::new(dims, TensorType::I64, bytes))
            })
            .collect();
        self.compute(tensors)
    }

    /// Run inference on named `i32` input tensors of shape `dims`, returning every output.
    pub fn compute_i32(
        &self,
        inputs: &[(&str, &[u32], &[i32])],
    ) -> Result<Vec<TensorOutput>, NnError> {
        let tensors = inputs
            .iter()
            .map(|(name, dims, data)| {
                let bytes: &[u8] = bytemuck::cast_slice(data);
                (name.to_string(), Tensor::new(dims, TensorType::I32, bytes))
            })
            .collect();
        self.compute(tensors)
    }

    /// Run inference on already-built tensors.
    pub fn compute(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<TensorOutput>, NnError> {
        let outputs = self
            .context
            .compute(inputs)
            .map_err(|e| nn_error("compute", e))?;
        Ok(outputs
            .into_iter()
            .map(|(name, tensor)| TensorOutput {
                name,
                dimensions: tensor.dimensions(),
                ty: tensor.ty(),
                data: tensor.data(),
            })
            .collect())
    }
}

/// An output tensor copied into guest memory.
#[derive(Debug, Clone)]
pub struct TensorOutput {
    /// The graph's name for this output.
    pub name: String,
    /// Shape, outermost dimension first.
    pub dimensions: Vec<u32>,
    /// Element type.
    pub ty: TensorType,
    /// Raw little-endian element bytes, row-major.
    pub data: Vec<u8>,
}

impl TensorOutput {
    /// The elements as `f32` without copying when the buffer is aligned (it practically always
    /// is), or an error if the tensor is not FP32 or its size is inconsistent.
    pub fn as_f32(&self) -> Result<std::borrow::Cow<'_, [f32]>, NnError> {
        self.check_f32()?;
        Ok(match bytemuck::try_cast_slice::<u8, f32>(&self.data) {
            Ok(values) => std::borrow::Cow::Borrowed(values),
            Err(_) => std::borrow::Cow::Owned(bytemuck::pod_collect_to_vec(&self.data)),
        })
    }

    /// The elements as a new `Vec<f32>`, or an error if the tensor is not FP32 or its size is
    /// inconsistent.
    pub fn to_f32(&self) -> Result<Vec<f32>, NnError> {
        self.as_f32().map(std::borrow::Cow::into_owned)
    }

    fn check_f32(&self) -> Result<(), NnError> {
        if self.ty != TensorType::Fp32 {
            return Err(NnError {
                operation: "read output",
                message: format!("output {} is {:?}, expected FP32", self.name, self.ty),
            });
        }
        let expected: u64 = self
            .dimensions
            .iter()
            .map(|&d| u64::from(d))
            .product::<u64>()
            * 4;
        if expected != self.data.len() as u64 {
            return Err(NnError {
                operation: "read output",
                message: format!(
                    "output {} has {} bytes for dimensions {:?}",
                    self.name,
                    self.data.len(),
                    self.dimensions
                ),
            });
        }
        Ok(())
    }
}

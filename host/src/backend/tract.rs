//! tract backend: a pure-Rust ONNX engine compiled into the host, so a device without any
//! native inference library can still run jobs.
//!
//! tract cannot be interrupted mid-call; a call that overruns its bound is reported as a
//! timeout when it returns, and the tensor size caps bound how long one call can take.

use super::budget::{CancelToken, InferenceError, RunModel};
use super::{BackendConfig, BackendError, BackendKind, InferenceBackend, LoadedModel};
use crate::wasi_nn::{Tensor as NnTensor, TensorType};
use std::sync::Arc;
use std::time::Instant;
use tract_onnx::prelude::*;
use wasmtime_wasi_nn::backend::NamedTensor;

/// tract as a Mesh inference backend.
pub struct TractBackend;

impl TractBackend {
    /// tract needs no setup.
    pub fn new(_config: &BackendConfig) -> Self {
        TractBackend
    }
}

type Plan = Arc<TypedRunnableModel>;

impl InferenceBackend for TractBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Tract
    }

    fn version(&self) -> String {
        "tract-onnx 0.23 (built in)".into()
    }

    fn load_model(&self, onnx: &[u8]) -> Result<Arc<dyn LoadedModel>, BackendError> {
        let load_error = |e: TractError| BackendError::Load {
            backend: BackendKind::Tract,
            reason: format!("{e:#}"),
        };
        // Exporters annotate intermediate values with shapes tract takes as facts; some are
        // wrong (MiniLM's attention-mask broadcast), so let tract infer them itself.
        let model = tract_onnx::onnx()
            .with_ignore_value_info(true)
            .model_for_read(&mut std::io::Cursor::new(onnx))
            .map_err(load_error)?;
        let inputs = model
            .input_outlets()
            .map_err(load_error)?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let outputs = model
            .output_outlets()
            .map_err(load_error)?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let plan = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(load_error)?;
        Ok(Arc::new(TractModel {
            plan,
            inputs,
            outputs,
        }))
    }
}

/// An optimised tract plan; runs are independent, so jobs share it freely.
pub struct TractModel {
    plan: Plan,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

fn engine_error(e: TractError) -> InferenceError {
    InferenceError::Engine(format!("{e:#}"))
}

fn to_tract(tensor: &NnTensor) -> Result<Tensor, InferenceError> {
    let shape: Vec<usize> = tensor.dimensions.iter().map(|&d| d as usize).collect();
    let data = &tensor.data;
    let result = match tensor.ty {
        TensorType::I64 => Tensor::from_shape(&shape, &super::le_i64(data)),
        TensorType::I32 => Tensor::from_shape(&shape, &super::le_i32(data)),
        TensorType::Fp32 => Tensor::from_shape(&shape, &super::le_f32(data)),
        TensorType::Fp64 => Tensor::from_shape(&shape, &super::le_f64(data)),
        TensorType::U8 => Tensor::from_shape(&shape, data),
        other => {
            return Err(InferenceError::InvalidTensor(format!(
                "{other:?} tensors are not supported"
            )));
        }
    };
    result.map_err(engine_error)
}

fn from_tract(tensor: &Tensor, max_bytes: usize) -> Result<NnTensor, InferenceError> {
    let dims: Vec<u32> = tensor
        .shape()
        .iter()
        .map(|&d| {
            u32::try_from(d).map_err(|_| InferenceError::Engine(format!("output dimension {d}")))
        })
        .collect::<Result<_, _>>()?;
    let ty = match tensor.datum_type() {
        DatumType::F32 => TensorType::Fp32,
        DatumType::F64 => TensorType::Fp64,
        DatumType::I64 => TensorType::I64,
        DatumType::I32 => TensorType::I32,
        DatumType::U8 => TensorType::U8,
        other => {
            return Err(InferenceError::Engine(format!(
                "unsupported output type {other:?}"
            )));
        }
    };
    super::check_shape("output", &dims, ty, max_bytes)?;
    // tract keeps plain tensors in native byte order, which is little-endian on every
    // platform Mesh supports (asserted in `backend/mod.rs`).
    let data = tensor.try_as_plain_ram().map_err(engine_error)?;
    let data = data
        .as_slice::<u8>()
        .map(<[u8]>::to_vec)
        .unwrap_or_else(|_| tensor.as_bytes().to_vec());
    Ok(NnTensor {
        dimensions: dims,
        ty,
        data,
    })
}

impl RunModel for TractModel {
    fn input_names(&self) -> &[String] {
        &self.inputs
    }

    fn output_names(&self) -> &[String] {
        &self.outputs
    }

    fn run(
        &self,
        inputs: &[NamedTensor],
        _deadline: Instant,
        _cancel: &CancelToken,
        max_output_bytes: usize,
    ) -> Result<Vec<NamedTensor>, InferenceError> {
        // tract takes inputs positionally.
        let mut ordered = Vec::with_capacity(self.inputs.len());
        for name in &self.inputs {
            let input = inputs
                .iter()
                .find(|t| &t.name == name)
                .ok_or_else(|| InferenceError::InvalidTensor(format!("missing input {name:?}")))?;
            ordered.push(to_tract(&input.tensor)?.into_tvalue());
        }
        let outputs = self.plan.run(ordered.into()).map_err(engine_error)?;
        self.outputs
            .iter()
            .zip(outputs.iter())
            .map(|(name, value)| {
                Ok(NamedTensor {
                    name: name.clone(),
                    tensor: from_tract(value, max_output_bytes)?,
                })
            })
            .collect()
    }
}

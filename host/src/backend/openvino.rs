//! OpenVINO backend, loaded at run time from `libopenvino_c.so` (the PyPI wheel's copy, linked
//! under its unversioned name by `scripts/setup.sh`). Reads ONNX models directly.
//!
//! Precision: the CPU plugin may execute in bf16 on CPUs that support it, which moves
//! MiniLM embeddings by more than we allow between backends. The backend pins
//! `INFERENCE_PRECISION_HINT=f32`, which keeps results within cosine 0.9999 of ONNX Runtime.

use super::budget::{CancelToken, InferenceError, RunModel};
use super::{BackendConfig, BackendError, BackendKind, InferenceBackend, LoadedModel};
use crate::wasi_nn::{Tensor as NnTensor, TensorType};
use ::openvino::{
    CompiledModel, Core, DeviceType, ElementType, InferRequest, RwPropertyKey, Shape, Tensor,
};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;
use wasmtime_wasi_nn::backend::NamedTensor;

/// Result of loading the OpenVINO library, at most once per process.
static LIBRARY: OnceLock<Result<(), String>> = OnceLock::new();

/// OpenVINO as a Mesh inference backend.
pub struct OpenVinoBackend {
    core: Mutex<Core>,
    version: String,
}

/// The library path the backend loads.
pub fn library_path(config: &BackendConfig) -> PathBuf {
    config
        .openvino_library
        .clone()
        .unwrap_or_else(|| super::default_library_dir().join("libopenvino_c.so"))
}

impl OpenVinoBackend {
    /// Load OpenVINO and create a core pinned to f32 on the CPU, or explain why not.
    pub fn new(config: &BackendConfig) -> Result<Self, BackendError> {
        let unavailable = |reason: String| BackendError::Unavailable {
            backend: BackendKind::OpenVino,
            reason,
        };
        let path = library_path(config);
        LIBRARY
            .get_or_init(|| {
                if !path.exists() {
                    return Err(format!(
                        "{} not found (run scripts/setup.sh, or set openvino_library)",
                        path.display()
                    ));
                }
                openvino_sys::library::load_from(path.clone())
            })
            .clone()
            .map_err(unavailable)?;
        let mut core = Core::new().map_err(|e| unavailable(e.to_string()))?;
        let threads = config.effective_threads().to_string();
        let cpu = DeviceType::CPU;
        core.set_property(&cpu, &RwPropertyKey::HintInferencePrecision, "f32")
            .and_then(|()| core.set_property(&cpu, &RwPropertyKey::InferenceNumThreads, &threads))
            // On-the-fly activation quantisation of int8-weight graphs costs accuracy (min cosine
            // 0.994 instead of 0.9956 on MiniLM); keep activations in f32.
            .and_then(|()| {
                core.set_property(
                    &cpu,
                    &RwPropertyKey::Other("DYNAMIC_QUANTIZATION_GROUP_SIZE".into()),
                    "0",
                )
            })
            .map_err(|e| unavailable(format!("configuring the CPU device: {e}")))?;
        let version = core
            .versions("CPU")
            .ok()
            .and_then(|v| v.first().map(|(_, v)| v.build_number.clone()))
            .unwrap_or_else(|| "unknown".into());
        Ok(OpenVinoBackend {
            core: Mutex::new(core),
            version,
        })
    }
}

impl InferenceBackend for OpenVinoBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::OpenVino
    }

    fn version(&self) -> String {
        format!("OpenVINO {}", self.version)
    }

    fn load_model(&self, onnx: &[u8]) -> Result<Arc<dyn LoadedModel>, BackendError> {
        let load_error = |e: ::openvino::InferenceError| BackendError::Load {
            backend: BackendKind::OpenVino,
            reason: e.to_string(),
        };
        let mut core = self.core.lock().expect("openvino core lock");
        let model = core
            .read_model_from_buffer(onnx, None)
            .map_err(load_error)?;
        let compiled = core
            .compile_model(&model, DeviceType::CPU)
            .map_err(load_error)?;
        let names = |count: usize,
                     get: &dyn Fn(
            usize,
        )
            -> Result<::openvino::Node, ::openvino::InferenceError>| {
            (0..count)
                .map(|i| get(i).and_then(|n| n.get_name()))
                .collect::<Result<Vec<_>, _>>()
        };
        let inputs = names(compiled.get_input_size().map_err(load_error)?, &|i| {
            compiled.get_input_by_index(i)
        })
        .map_err(load_error)?;
        let outputs = names(compiled.get_output_size().map_err(load_error)?, &|i| {
            compiled.get_output_by_index(i)
        })
        .map_err(load_error)?;
        Ok(Arc::new(OpenVinoModel {
            compiled: Mutex::new(compiled),
            idle: Mutex::new(Vec::new()),
            inputs,
            outputs,
        }))
    }
}

/// A compiled OpenVINO model. Concurrent jobs each use their own infer request.
pub struct OpenVinoModel {
    compiled: Mutex<CompiledModel>,
    /// Infer requests not in use, so a request is not created per call.
    idle: Mutex<Vec<InferRequest>>,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

fn engine_error(e: ::openvino::InferenceError) -> InferenceError {
    InferenceError::Engine(e.to_string())
}

fn element_type(ty: TensorType) -> Result<ElementType, InferenceError> {
    Ok(match ty {
        TensorType::Fp32 => ElementType::F32,
        TensorType::Fp64 => ElementType::F64,
        TensorType::I64 => ElementType::I64,
        TensorType::I32 => ElementType::I32,
        TensorType::U8 => ElementType::U8,
        TensorType::Fp16 => ElementType::F16,
        TensorType::Bf16 => ElementType::Bf16,
    })
}

fn tensor_type(ty: ElementType) -> Result<TensorType, InferenceError> {
    Ok(match ty {
        ElementType::F32 => TensorType::Fp32,
        ElementType::F64 => TensorType::Fp64,
        ElementType::I64 => TensorType::I64,
        ElementType::I32 => TensorType::I32,
        ElementType::U8 => TensorType::U8,
        ElementType::F16 => TensorType::Fp16,
        ElementType::Bf16 => TensorType::Bf16,
        other => {
            return Err(InferenceError::Engine(format!(
                "unsupported output type {other:?}"
            )));
        }
    })
}

impl RunModel for OpenVinoModel {
    fn input_names(&self) -> &[String] {
        &self.inputs
    }

    fn output_names(&self) -> &[String] {
        &self.outputs
    }

    fn run(
        &self,
        inputs: &[NamedTensor],
        deadline: Instant,
        // OpenVINO's C API gives no readiness signal to poll a cancel against, so a cancelled
        // job stops at its next call (each call is bounded by the deadline).
        _cancel: &CancelToken,
        max_output_bytes: usize,
    ) -> Result<Vec<NamedTensor>, InferenceError> {
        let pooled = self.idle.lock().expect("openvino request pool").pop();
        let mut request = match pooled {
            Some(request) => request,
            None => self
                .compiled
                .lock()
                .expect("openvino compiled model")
                .create_infer_request()
                .map_err(engine_error)?,
        };
        for input in inputs {
            let dims: Vec<i64> = input
                .tensor
                .dimensions
                .iter()
                .map(|&d| i64::from(d))
                .collect();
            let shape = Shape::new(&dims).map_err(engine_error)?;
            let mut tensor =
                Tensor::new(element_type(input.tensor.ty)?, &shape).map_err(engine_error)?;
            tensor
                .get_raw_data_mut()
                .map_err(engine_error)?
                .copy_from_slice(&input.tensor.data);
            request
                .set_tensor(&input.name, &tensor)
                .map_err(engine_error)?;
        }
        request.infer_async().map_err(engine_error)?;
        let timeout_ms = deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .max(1) as i64;
        if let Err(e) = request.wait(timeout_ms) {
            // Either the deadline passed or inference failed: stop it, and drop the request.
            let _ = request.cancel();
            let _ = request.wait(-1);
            return Err(if Instant::now() >= deadline {
                InferenceError::Timeout("OpenVINO inference was cancelled at the deadline".into())
            } else {
                engine_error(e)
            });
        }
        let mut outputs = Vec::with_capacity(self.outputs.len());
        for name in &self.outputs {
            let tensor = request.get_tensor(name).map_err(engine_error)?;
            let dims: Vec<u32> = tensor
                .get_shape()
                .map_err(engine_error)?
                .get_dimensions()
                .iter()
                .map(|&d| {
                    u32::try_from(d)
                        .map_err(|_| InferenceError::Engine(format!("output dimension {d}")))
                })
                .collect::<Result<_, _>>()?;
            let ty = tensor_type(tensor.get_element_type().map_err(engine_error)?)?;
            super::check_shape(name, &dims, ty, max_output_bytes)?;
            outputs.push(NamedTensor {
                name: name.clone(),
                tensor: NnTensor {
                    dimensions: dims,
                    ty,
                    data: tensor.get_raw_data().map_err(engine_error)?.to_vec(),
                },
            });
        }
        self.idle
            .lock()
            .expect("openvino request pool")
            .push(request);
        Ok(outputs)
    }
}

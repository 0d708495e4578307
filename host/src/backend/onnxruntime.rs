//! ONNX Runtime backend, loaded at run time from `libonnxruntime.so` (the PyPI wheel's copy).
//!
//! Unlike the stock wasmtime-wasi-nn ONNX backend, it supports every tensor type the models
//! use (int64 token ids included) and runs concurrent requests on one session: ONNX Runtime's
//! `Run` is thread-safe, so jobs share a session instead of queueing behind a mutex.

use super::budget::{CancelToken, InferenceError, RunModel, with_watchdog};
use super::{BackendConfig, BackendError, BackendKind, InferenceBackend, LoadedModel};
use crate::wasi_nn::{Tensor, TensorType};
use ort::AsPointer;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::run_options::RunOptions;
use ort::tensor::TensorElementType;
use ort::value::{DynValue, Value, ValueType};
use std::ffi::{CStr, CString, c_char};
use std::path::{Path, PathBuf};
use std::ptr::{self, NonNull};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use wasmtime_wasi_nn::backend::NamedTensor;

/// The oldest ONNX Runtime whose C API `ort` 2.0.0-rc.10 can use.
const MIN_ORT_MINOR: u32 = ort::MINOR_VERSION;

/// The ONNX Runtime library this process loaded, with its version; loaded at most once.
static RUNTIME: OnceLock<Result<String, String>> = OnceLock::new();

/// ONNX Runtime as a Mesh inference backend.
pub struct OnnxRuntimeBackend {
    version: String,
    threads: usize,
}

impl OnnxRuntimeBackend {
    /// Load ONNX Runtime from the configured library, or explain why it cannot be loaded.
    /// Never panics on a missing or wrong library.
    pub fn new(config: &BackendConfig) -> Result<Self, BackendError> {
        let path = config
            .onnxruntime_library
            .clone()
            .unwrap_or_else(|| super::default_library_dir().join("libonnxruntime.so"));
        let version = RUNTIME
            .get_or_init(|| init_runtime(&path))
            .clone()
            .map_err(|reason| BackendError::Unavailable {
                backend: BackendKind::OnnxRuntime,
                reason,
            })?;
        Ok(OnnxRuntimeBackend {
            version,
            threads: config.effective_threads(),
        })
    }
}

/// Check the library by hand first (exists, exports `OrtGetApiBase`, new enough), because
/// `ort` panics on each of those failures; only then hand it to `ort`.
fn init_runtime(path: &Path) -> Result<String, String> {
    if !path.exists() {
        return Err(format!(
            "{} not found (run scripts/setup.sh, or set onnxruntime_library / MESH_ORT_LIBRARY)",
            path.display()
        ));
    }
    let version = unsafe {
        let library = libloading::Library::new(path)
            .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
        let get_api_base: libloading::Symbol<GetApiBase> = library
            .get(b"OrtGetApiBase\0")
            .map_err(|e| format!("{} is not ONNX Runtime: {e}", path.display()))?;
        let base = get_api_base();
        if base.is_null() {
            return Err("OrtGetApiBase returned null".into());
        }
        let version = CStr::from_ptr(((*base).GetVersionString)())
            .to_string_lossy()
            .into_owned();
        // Keep the library mapped; `ort` opens it again by path and shares the mapping.
        std::mem::forget(library);
        version
    };
    let minor: u32 = version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if minor < MIN_ORT_MINOR {
        return Err(format!(
            "ONNX Runtime {version} is too old; need 1.{MIN_ORT_MINOR} or newer"
        ));
    }
    ort::init_from(path.display().to_string())
        .with_name("mesh-host")
        .commit()
        .map_err(|e| format!("ONNX Runtime environment: {e}"))?;
    Ok(version)
}

impl InferenceBackend for OnnxRuntimeBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::OnnxRuntime
    }

    fn version(&self) -> String {
        format!("ONNX Runtime {}", self.version)
    }

    fn load_model(&self, onnx: &[u8]) -> Result<Arc<dyn LoadedModel>, BackendError> {
        Ok(Arc::new(OrtModel::load(
            ModelSource::Memory(onnx),
            self.threads,
        )?))
    }

    fn load_model_file(&self, path: &Path) -> Result<Arc<dyn LoadedModel>, BackendError> {
        Ok(Arc::new(OrtModel::load(
            ModelSource::File(path),
            self.threads,
        )?))
    }
}

/// One ONNX Runtime session, shared by all jobs.
pub struct OrtModel {
    session: Session,
    inputs: Vec<String>,
    outputs: Vec<String>,
    output_names_c: Vec<CString>,
}

// SAFETY: `OrtModel` only calls ONNX Runtime's `Run` through `&self`, which ONNX Runtime
// documents as safe to call concurrently on one session.
unsafe impl Sync for OrtModel {}

/// Where a session's model comes from.
enum ModelSource<'a> {
    Memory(&'a [u8]),
    File(&'a Path),
}

impl OrtModel {
    fn load(source: ModelSource<'_>, threads: usize) -> Result<Self, BackendError> {
        let load_error = |e: ort::Error| BackendError::Load {
            backend: BackendKind::OnnxRuntime,
            reason: e.to_string(),
        };
        let session = Session::builder()
            .and_then(|b| b.with_optimization_level(GraphOptimizationLevel::Level3))
            .and_then(|b| b.with_intra_threads(threads))
            .and_then(|b| b.with_inter_threads(1))
            // Every batch has its own shape (length-sorted batches pad to their longest
            // item), and ONNX Runtime plans and keeps one memory pattern per input shape it
            // sees: with it on, a session's memory grows with the number of distinct batch
            // widths (about 100 MB more over the 2,000-sentence benchmark corpus, at no
            // measurable speed gain). The allocation arena stays on.
            .and_then(|b| b.with_memory_pattern(false))
            .and_then(|b| match source {
                ModelSource::Memory(onnx) => b.commit_from_memory(onnx),
                ModelSource::File(path) => b.commit_from_file(path),
            })
            .map_err(load_error)?;
        let inputs = session.inputs.iter().map(|i| i.name.clone()).collect();
        let outputs: Vec<String> = session.outputs.iter().map(|o| o.name.clone()).collect();
        let output_names_c = outputs
            .iter()
            .map(|n| CString::new(n.as_str()).expect("ONNX names have no NUL"))
            .collect();
        Ok(OrtModel {
            session,
            inputs,
            outputs,
            output_names_c,
        })
    }
}

fn engine_error(e: ort::Error) -> InferenceError {
    InferenceError::Engine(e.to_string())
}

fn to_ort_value(tensor: &Tensor) -> Result<DynValue, InferenceError> {
    let shape: Vec<i64> = tensor.dimensions.iter().map(|&d| i64::from(d)).collect();
    let data = &tensor.data;
    let value = match tensor.ty {
        TensorType::I64 => Value::from_array((shape, super::le_i64(data))).map(Value::into_dyn),
        TensorType::I32 => Value::from_array((shape, super::le_i32(data))).map(Value::into_dyn),
        TensorType::Fp32 => Value::from_array((shape, super::le_f32(data))).map(Value::into_dyn),
        TensorType::Fp64 => Value::from_array((shape, super::le_f64(data))).map(Value::into_dyn),
        TensorType::U8 => Value::from_array((shape, data.clone())).map(Value::into_dyn),
        other => {
            return Err(InferenceError::InvalidTensor(format!(
                "{other:?} tensors are not supported"
            )));
        }
    };
    value.map_err(engine_error)
}

fn from_ort_value(value: &DynValue, max_bytes: usize) -> Result<Tensor, InferenceError> {
    let ValueType::Tensor { ty, shape, .. } = value.dtype() else {
        return Err(InferenceError::Engine(
            "model output is not a tensor".into(),
        ));
    };
    let dims: Vec<u32> = shape
        .iter()
        .map(|&d| {
            u32::try_from(d).map_err(|_| InferenceError::Engine(format!("output dimension {d}")))
        })
        .collect::<Result<_, _>>()?;
    let (wasi_ty, size) = match ty {
        TensorElementType::Float32 => (TensorType::Fp32, 4),
        TensorElementType::Float64 => (TensorType::Fp64, 8),
        TensorElementType::Int64 => (TensorType::I64, 8),
        TensorElementType::Int32 => (TensorType::I32, 4),
        TensorElementType::Uint8 => (TensorType::U8, 1),
        other => {
            return Err(InferenceError::Engine(format!(
                "unsupported output type {other:?}"
            )));
        }
    };
    super::check_shape("output", &dims, wasi_ty, max_bytes)?;
    let _ = size;
    let data = match wasi_ty {
        TensorType::Fp32 => {
            super::to_le_bytes(value.try_extract_tensor::<f32>().map_err(engine_error)?.1)
        }
        TensorType::Fp64 => {
            super::to_le_bytes(value.try_extract_tensor::<f64>().map_err(engine_error)?.1)
        }
        TensorType::I64 => {
            super::to_le_bytes(value.try_extract_tensor::<i64>().map_err(engine_error)?.1)
        }
        TensorType::I32 => {
            super::to_le_bytes(value.try_extract_tensor::<i32>().map_err(engine_error)?.1)
        }
        _ => value
            .try_extract_tensor::<u8>()
            .map_err(engine_error)?
            .1
            .to_vec(),
    };
    Ok(Tensor {
        dimensions: dims,
        ty: wasi_ty,
        data,
    })
}

impl RunModel for OrtModel {
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
        cancel: &CancelToken,
        max_output_bytes: usize,
    ) -> Result<Vec<NamedTensor>, InferenceError> {
        let values = inputs
            .iter()
            .map(|t| to_ort_value(&t.tensor))
            .collect::<Result<Vec<_>, _>>()?;
        let input_names: Vec<CString> = inputs
            .iter()
            .map(|t| {
                CString::new(t.name.as_str())
                    .map_err(|_| InferenceError::InvalidTensor("NUL in a tensor name".into()))
            })
            .collect::<Result<_, _>>()?;
        let input_name_ptrs: Vec<*const c_char> = input_names.iter().map(|n| n.as_ptr()).collect();
        let input_ptrs: Vec<*const ort::sys::OrtValue> = values.iter().map(|v| v.ptr()).collect();
        let output_name_ptrs: Vec<*const c_char> =
            self.output_names_c.iter().map(|n| n.as_ptr()).collect();
        let mut output_ptrs: Vec<*mut ort::sys::OrtValue> =
            vec![ptr::null_mut(); self.outputs.len()];
        let run_options = RunOptions::new().map_err(engine_error)?;

        let status = with_watchdog(
            deadline,
            cancel,
            || {
                let _ = run_options.terminate();
            },
            || unsafe {
                (ort::api().Run)(
                    self.session.ptr().cast_mut(),
                    run_options.ptr(),
                    input_name_ptrs.as_ptr(),
                    input_ptrs.as_ptr(),
                    input_ptrs.len(),
                    output_name_ptrs.as_ptr(),
                    output_name_ptrs.len(),
                    output_ptrs.as_mut_ptr(),
                )
            },
        );
        // Take ownership of whatever ONNX Runtime returned before looking at the status.
        let outputs: Vec<Option<DynValue>> = output_ptrs
            .iter()
            .map(|&p| NonNull::new(p).map(|p| unsafe { Value::from_ptr(p, None) }))
            .collect();
        status_to_result(status)?;
        let mut result = Vec::with_capacity(outputs.len());
        for (name, value) in self.outputs.iter().zip(outputs) {
            let value = value
                .ok_or_else(|| InferenceError::Engine(format!("no value for output {name}")))?;
            result.push(NamedTensor {
                name: name.clone(),
                tensor: from_ort_value(&value, max_output_bytes)?,
            });
        }
        Ok(result)
    }
}

fn status_to_result(status: ort::sys::OrtStatusPtr) -> Result<(), InferenceError> {
    if status.0.is_null() {
        return Ok(());
    }
    let message = unsafe {
        let message = CStr::from_ptr((ort::api().GetErrorMessage)(status.0))
            .to_string_lossy()
            .into_owned();
        (ort::api().ReleaseStatus)(status.0);
        message
    };
    if message.contains("terminate") {
        Err(InferenceError::Timeout(format!(
            "ONNX Runtime stopped: {message}"
        )))
    } else {
        Err(InferenceError::Engine(message))
    }
}

/// The library path the backend would load, for diagnostics.
pub fn library_path(config: &BackendConfig) -> PathBuf {
    config
        .onnxruntime_library
        .clone()
        .unwrap_or_else(|| super::default_library_dir().join("libonnxruntime.so"))
}

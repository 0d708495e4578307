//! Inference backends ("plugin executors"): ONNX Runtime, OpenVINO and tract behind one
//! [`InferenceBackend`] trait of our own.
//!
//! wasmtime-wasi-nn's `BackendInner` is not used: its `load` takes model bytes from the guest,
//! and a component never supplies a model. The executor registers no backend with
//! `WasiNnCtx` (so `load` has nothing behind it) and serves `load-by-name` from a per-job
//! registry of [`Graph`]s built from the host's verified model store.
//!
//! Each backend loads a model once into a shared, thread-safe [`LoadedModel`]; every job then
//! gets its own cheap [`Graph`] handle bound to the job's [`InferenceBudget`], so concurrent
//! jobs run inference in parallel on one model and each job's time in native inference code
//! (which epoch interruption cannot stop) is bounded.

mod budget;
pub mod llm;
pub mod onnxruntime;
pub mod openvino;
#[cfg(feature = "tract")]
pub mod tract;

pub use budget::{CANCEL_POLL, CancelToken, InferenceBudget, InferenceError, RunModel};

use crate::wasi_nn::{Tensor, TensorType};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use wasmtime_wasi_nn::Graph;

/// The inference engines Mesh can run models on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// ONNX Runtime, loaded at run time from `libonnxruntime.so`.
    OnnxRuntime,
    /// Intel OpenVINO, loaded at run time from `libopenvino_c.so`.
    OpenVino,
    /// tract, a pure-Rust engine compiled into the host: always available.
    Tract,
}

impl BackendKind {
    /// All kinds, in order of preference when several are available.
    pub const ALL: [BackendKind; 3] = [
        BackendKind::OnnxRuntime,
        BackendKind::OpenVino,
        BackendKind::Tract,
    ];

    /// The name used in configuration, receipts and capability lists.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::OnnxRuntime => "onnxruntime",
            BackendKind::OpenVino => "openvino",
            BackendKind::Tract => "tract",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BackendKind::ALL
            .into_iter()
            .find(|k| k.name() == s || (s == "ort" && *k == BackendKind::OnnxRuntime))
            .ok_or_else(|| BackendError::UnknownBackend(s.to_string()))
    }
}

/// Where the native inference libraries are, and how many threads inference may use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackendConfig {
    /// Path of `libonnxruntime.so`; `None` looks in the Mesh cache's `lib/` directory.
    pub onnxruntime_library: Option<PathBuf>,
    /// Path of `libopenvino_c.so`; `None` looks in the Mesh cache's `lib/` directory.
    pub openvino_library: Option<PathBuf>,
    /// Threads one inference call may use; `0` means one per available core.
    pub threads: usize,
}

impl BackendConfig {
    /// Inference threads to use: the configured number, or one per core.
    pub fn effective_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// Why a backend could not be set up or could not load a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// No backend has this name.
    #[error("unknown inference backend {0:?} (known: onnxruntime, openvino, tract)")]
    UnknownBackend(String),
    /// The backend's native library is not installed or could not be loaded.
    #[error("{backend} is not available: {reason}")]
    Unavailable {
        /// The backend.
        backend: BackendKind,
        /// What is missing.
        reason: String,
    },
    /// No backend could be set up (each one's reason, joined).
    #[error("no inference backend is available: {0}")]
    NoneAvailable(String),
    /// A language model could not be loaded by the host's own engine (`mesh-llm`).
    #[error("mesh-llm could not load the model: {0}")]
    LanguageModel(String),
    /// The model could not be loaded by this backend.
    #[error("{backend} could not load the model: {reason}")]
    Load {
        /// The backend.
        backend: BackendKind,
        /// The engine's message.
        reason: String,
    },
}

/// A model loaded into an engine, shared by every job that uses it.
pub trait LoadedModel: Send + Sync {
    /// A `wasi:nn` graph handle for one job; its inference is bounded by `budget`.
    fn graph(self: Arc<Self>, budget: Arc<InferenceBudget>) -> Graph;
}

impl<M: RunModel> LoadedModel for M {
    fn graph(self: Arc<Self>, budget: Arc<InferenceBudget>) -> Graph {
        budget::BudgetedGraph::graph(self, budget)
    }
}

/// An initialised inference engine.
pub trait InferenceBackend: Send + Sync {
    /// Which engine this is.
    fn kind(&self) -> BackendKind;
    /// The engine's version, for `mesh-host backends`.
    fn version(&self) -> String;
    /// Load an ONNX model from its bytes (already verified against its content hash).
    fn load_model(&self, onnx: &[u8]) -> Result<Arc<dyn LoadedModel>, BackendError>;
    /// Load an ONNX model from a file (already verified against its content hash). Engines
    /// that read files themselves avoid holding a second copy of the model while loading.
    fn load_model_file(&self, path: &Path) -> Result<Arc<dyn LoadedModel>, BackendError> {
        let onnx = std::fs::read(path).map_err(|e| BackendError::Load {
            backend: self.kind(),
            reason: format!("{}: {e}", path.display()),
        })?;
        self.load_model(&onnx)
    }
}

/// Initialise the backend of the given kind, or explain why it is not available.
pub fn create(
    kind: BackendKind,
    config: &BackendConfig,
) -> Result<Arc<dyn InferenceBackend>, BackendError> {
    Ok(match kind {
        BackendKind::OnnxRuntime => Arc::new(onnxruntime::OnnxRuntimeBackend::new(config)?),
        BackendKind::OpenVino => Arc::new(openvino::OpenVinoBackend::new(config)?),
        #[cfg(feature = "tract")]
        BackendKind::Tract => Arc::new(tract::TractBackend::new(config)),
        #[cfg(not(feature = "tract"))]
        BackendKind::Tract => {
            let _ = config;
            return Err(BackendError::Unavailable {
                backend: kind,
                reason: "this mesh-host was built without the `tract` feature".into(),
            });
        }
    })
}

/// Whether one backend can run on this device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendStatus {
    /// The backend.
    pub backend: BackendKind,
    /// Whether it initialised.
    pub available: bool,
    /// Its version when available, otherwise why not.
    pub detail: String,
}

/// Try to initialise every backend and report which are available and why others are not.
pub fn probe(config: &BackendConfig) -> Vec<BackendStatus> {
    BackendKind::ALL
        .into_iter()
        .map(|backend| match create(backend, config) {
            Ok(b) => BackendStatus {
                backend,
                available: true,
                detail: b.version(),
            },
            Err(e) => BackendStatus {
                backend,
                available: false,
                detail: e.to_string(),
            },
        })
        .collect()
}

/// Default directory holding the native inference libraries: `$MESH_CACHE_DIR/lib`.
pub fn default_library_dir() -> PathBuf {
    crate::cache_dir().join("lib")
}

/// Size in bytes of one element of `ty`.
pub(crate) fn element_size(ty: TensorType) -> usize {
    match ty {
        TensorType::Fp16 | TensorType::Bf16 => 2,
        TensorType::Fp32 | TensorType::I32 => 4,
        TensorType::Fp64 | TensorType::I64 => 8,
        TensorType::U8 => 1,
    }
}

/// Check a tensor against the caps before anything is allocated for it: rank, the byte size
/// its dimensions imply (with overflow checks), and that its data is exactly that size.
pub(crate) fn check_tensor(
    name: &str,
    tensor: &Tensor,
    max_bytes: usize,
) -> Result<(), InferenceError> {
    check_shape(name, &tensor.dimensions, tensor.ty, max_bytes)?;
    let expected = shape_bytes(&tensor.dimensions, tensor.ty).unwrap_or(usize::MAX);
    if tensor.data.len() != expected {
        return Err(InferenceError::InvalidTensor(format!(
            "tensor {name:?} has {} bytes of data but dimensions {:?} of {:?} need {expected}",
            tensor.data.len(),
            tensor.dimensions,
            tensor.ty
        )));
    }
    Ok(())
}

/// Check dimensions against the caps: rank and total bytes.
pub(crate) fn check_shape(
    name: &str,
    dims: &[u32],
    ty: TensorType,
    max_bytes: usize,
) -> Result<(), InferenceError> {
    if dims.len() > crate::limits::MAX_TENSOR_RANK {
        return Err(InferenceError::TooLarge(format!(
            "tensor {name:?} has rank {} (limit {})",
            dims.len(),
            crate::limits::MAX_TENSOR_RANK
        )));
    }
    match shape_bytes(dims, ty) {
        Some(bytes) if bytes <= max_bytes => Ok(()),
        _ => Err(InferenceError::TooLarge(format!(
            "tensor {name:?} with dimensions {dims:?} of {ty:?} exceeds the limit of {max_bytes} bytes"
        ))),
    }
}

fn shape_bytes(dims: &[u32], ty: TensorType) -> Option<usize> {
    dims.iter()
        .try_fold(element_size(ty), |acc, &d| acc.checked_mul(d as usize))
}

// Tensor bytes are little-endian, and so is every platform Mesh runs on, so converting between
// tensor bytes and typed slices is a plain copy (`bytemuck` checks sizes and alignment).
const _: () = assert!(
    cfg!(target_endian = "little"),
    "tensor bytes are little-endian"
);

/// Decode little-endian tensor bytes into `i64`s.
pub(crate) fn le_i64(data: &[u8]) -> Vec<i64> {
    bytemuck::pod_collect_to_vec(data)
}

/// Decode little-endian tensor bytes into `i32`s.
pub(crate) fn le_i32(data: &[u8]) -> Vec<i32> {
    bytemuck::pod_collect_to_vec(data)
}

/// Decode little-endian tensor bytes into `f32`s.
pub(crate) fn le_f32(data: &[u8]) -> Vec<f32> {
    bytemuck::pod_collect_to_vec(data)
}

/// Decode little-endian tensor bytes into `f64`s.
pub(crate) fn le_f64(data: &[u8]) -> Vec<f64> {
    bytemuck::pod_collect_to_vec(data)
}

/// Encode values as little-endian tensor bytes.
pub(crate) fn to_le_bytes<T: bytemuck::Pod>(values: &[T]) -> Vec<u8> {
    bytemuck::cast_slice(values).to_vec()
}

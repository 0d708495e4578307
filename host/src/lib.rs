//! The Mesh device agent's workload runtime.
//!
//! [`Executor`] runs Mesh workload components (wasm32-wasip2, world `mesh:workload/workload`)
//! in wasmtime with no ambient authority: no preopened directories, no environment, no
//! network. Every resource a job can consume is bounded ([`limits`]). Inference goes through
//! `wasi:nn` to a pluggable [`backend`] (ONNX Runtime, OpenVINO or tract); models come from
//! the host's content-addressed [`models::ModelStore`], never from the component.
//!
//! [`agent`] is the device agent around it: joining a network, serving jobs from peers
//! ([`agent::serve::Agent::spawn`]) and submitting jobs as a requester. The `mesh-host` binary is flag
//! parsing and configuration around this library.

pub mod agent;
pub mod backend;
pub mod components;
pub mod executor;
pub mod limits;
pub mod models;

pub use backend::CancelToken;
pub use executor::{ColdStart, ExecError, Executor, ExecutorConfig, PieceSink, RunOutput};
pub use limits::Limits;

use std::path::PathBuf;

/// Environment variable naming the Mesh cache directory (models, runtimes, components).
pub const CACHE_DIR_ENV: &str = "MESH_CACHE_DIR";

/// The Mesh cache directory: `$MESH_CACHE_DIR`, else `$XDG_CACHE_HOME/mesh`, else
/// `~/.cache/mesh`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(CACHE_DIR_ENV) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("mesh");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("mesh")
}

/// The `wasi:nn` host types the backends exchange with wasmtime-wasi-nn.
pub(crate) mod wasi_nn {
    pub use wasmtime_wasi_nn::Tensor;
    pub use wasmtime_wasi_nn::wit::TensorType;
}

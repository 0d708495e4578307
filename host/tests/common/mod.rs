//! Shared helpers for the host's integration tests.
#![allow(dead_code)]

use mesh_host::backend::{self, BackendConfig, BackendKind};
use mesh_host::{Executor, ExecutorConfig, Limits};
use std::path::PathBuf;

/// Whether we run under CI, where every backend the setup installs must be present.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The backends available here. Under CI, ONNX Runtime and OpenVINO must be among them: a
/// missing runtime there is a broken setup, not a reason to skip.
pub fn available_backends() -> Vec<BackendKind> {
    let statuses = backend::probe(&BackendConfig::default());
    let mut available = Vec::new();
    for status in statuses {
        if status.available {
            available.push(status.backend);
        } else if in_ci() {
            panic!(
                "{} must be available in CI: {}",
                status.backend, status.detail
            );
        } else {
            eprintln!("skipping {}: {}", status.backend, status.detail);
        }
    }
    available
}

/// The fastest available backend.
pub fn fastest_backend() -> BackendKind {
    available_backends()[0]
}

/// An executor on `backend` with its own fresh data directory.
pub fn executor(backend: BackendKind, limits: Limits) -> (Executor, tempfile::TempDir) {
    executor_with(backend, limits, "fp32")
}

/// An executor on `backend` binding models of `variant`.
pub fn executor_with(
    backend: BackendKind,
    limits: Limits,
    variant: &str,
) -> (Executor, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let executor = Executor::new(ExecutorConfig {
        limits,
        backend: Some(backend),
        model_variant: variant.into(),
        data_dir: data.path().to_path_buf(),
        ..ExecutorConfig::default()
    })
    .unwrap_or_else(|e| {
        panic!("executor on {backend}: {e} (run scripts/setup.sh to prepare models)")
    });
    (executor, data)
}

/// An executor on `backend` whose inference calls use `threads` threads.
pub fn executor_with_threads(
    backend: BackendKind,
    limits: Limits,
    threads: usize,
) -> (Executor, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let executor = Executor::new(ExecutorConfig {
        limits,
        backend: Some(backend),
        data_dir: data.path().to_path_buf(),
        backend_config: mesh_host::backend::BackendConfig {
            threads,
            ..Default::default()
        },
        ..ExecutorConfig::default()
    })
    .unwrap_or_else(|e| {
        panic!("executor on {backend}: {e} (run scripts/setup.sh to prepare models)")
    });
    (executor, data)
}

/// One line of the reference corpus.
pub struct Reference {
    pub id: u64,
    pub text: String,
    pub embedding: Vec<f32>,
}

/// The sentence-transformers reference embeddings shipped in `shared/data`.
pub fn reference() -> Vec<Reference> {
    let path = reference_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            Reference {
                id: v["id"].as_u64().unwrap(),
                text: v["text"].as_str().unwrap().to_string(),
                embedding: v["embedding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect(),
            }
        })
        .collect()
}

/// Where the reference corpus is: `$MESH_REFERENCE_DATA`, else `../shared/data` beside the repo.
pub fn reference_path() -> PathBuf {
    if let Some(path) = std::env::var_os("MESH_REFERENCE_DATA") {
        return PathBuf::from(path);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/embeddings-reference.jsonl")
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Parse the embeddings workload's output (CBOR).
pub fn embeddings(output: &[u8]) -> Vec<Vec<f32>> {
    let v = mesh_proto::document::parse(output).unwrap();
    v["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

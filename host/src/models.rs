//! The host's content-addressed model store.
//!
//! `scripts/setup.sh` prepares models into `<cache>/models/`: one file per model named by its
//! BLAKE3, plus `manifest.json` naming them. Components load models by name; the store maps a
//! name to a file for the device's backend, and checks the file's BLAKE3 every time it reads it,
//! so no model runs unverified.

use crate::backend::BackendKind;
use mesh_proto::Blake3Hash;
use serde::Deserialize;
use std::fs;
use std::path::{Path, PathBuf};

/// Manifest format version this host reads.
const MANIFEST_VERSION: u32 = 1;

/// Why a model could not be found or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The store has no manifest (models were never prepared).
    #[error("no model manifest at {path} (run scripts/setup.sh to prepare models): {source}")]
    NoManifest {
        /// Expected manifest path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The manifest is not valid.
    #[error("invalid model manifest {path}: {reason}")]
    BadManifest {
        /// Manifest path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No prepared model has this name and variant for this backend.
    #[error("no model {name:?} (variant {variant:?}) for backend {backend} in the model store")]
    NotFound {
        /// Model name.
        name: String,
        /// Requested variant.
        variant: String,
        /// Backend.
        backend: BackendKind,
    },
    /// The model file could not be read.
    #[error("cannot read model file {path}: {source}")]
    Io {
        /// File path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file's content does not match its recorded hash.
    #[error("model file {path} is corrupt: expected {expected}, found {actual}")]
    HashMismatch {
        /// File path.
        path: PathBuf,
        /// Hash recorded in the manifest.
        expected: Blake3Hash,
        /// Hash of the bytes on disk.
        actual: Blake3Hash,
    },
}

/// One prepared model file.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelEntry {
    /// Name components load it by, e.g. `all-minilm-l6-v2`.
    pub name: String,
    /// Variant, e.g. `fp32`, `int8`, or a backend-optimised derivative such as `fp32-ort`.
    pub variant: String,
    /// File name inside the store.
    pub file: String,
    /// BLAKE3 of the file, as 64 hex digits.
    #[serde(rename = "blake3", deserialize_with = "hex_hash")]
    pub hash: Blake3Hash,
    /// Backends that can load this file.
    pub backends: Vec<BackendKind>,
    /// The variant this one was derived from (a graph optimisation of it), if any.
    #[serde(default, deserialize_with = "opt_hex_hash")]
    pub derived_from: Option<Blake3Hash>,
}

fn hex_hash<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Blake3Hash, D::Error> {
    let hex = String::deserialize(d)?;
    Blake3Hash::from_hex(hex.trim_start_matches(Blake3Hash::PREFIX))
        .map_err(serde::de::Error::custom)
}

fn opt_hex_hash<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Blake3Hash>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|hex| {
            Blake3Hash::from_hex(hex.trim_start_matches(Blake3Hash::PREFIX))
                .map_err(serde::de::Error::custom)
        })
        .transpose()
}

#[derive(Deserialize)]
struct Manifest {
    version: u32,
    models: Vec<ModelEntry>,
}

/// The prepared models of this device.
#[derive(Debug, Clone)]
pub struct ModelStore {
    dir: PathBuf,
    entries: Vec<ModelEntry>,
}

impl ModelStore {
    /// The default store: `<cache>/models`.
    pub fn default_dir() -> PathBuf {
        crate::cache_dir().join("models")
    }

    /// Open the store in `dir` by reading its manifest.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("manifest.json");
        let text = fs::read_to_string(&path).map_err(|source| ModelError::NoManifest {
            path: path.clone(),
            source,
        })?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| ModelError::BadManifest {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if manifest.version != MANIFEST_VERSION {
            return Err(ModelError::BadManifest {
                path,
                reason: format!(
                    "version {} (this host reads {MANIFEST_VERSION})",
                    manifest.version
                ),
            });
        }
        Ok(ModelStore {
            dir: dir.to_path_buf(),
            entries: manifest.models,
        })
    }

    /// All prepared models.
    pub fn entries(&self) -> &[ModelEntry] {
        &self.entries
    }

    /// The file to run model `name` in `variant` on `backend`: a backend-optimised derivative
    /// (`<variant>-…`) when one exists for this backend, else the variant itself.
    pub fn select(
        &self,
        name: &str,
        variant: &str,
        backend: BackendKind,
    ) -> Result<&ModelEntry, ModelError> {
        let derived_prefix = format!("{variant}-");
        let candidates = self
            .entries
            .iter()
            .filter(|e| e.name == name && e.backends.contains(&backend));
        let mut exact = None;
        for entry in candidates {
            if entry.variant.starts_with(&derived_prefix) {
                return Ok(entry);
            }
            if entry.variant == variant {
                exact = Some(entry);
            }
        }
        exact.ok_or_else(|| ModelError::NotFound {
            name: name.to_string(),
            variant: variant.to_string(),
            backend,
        })
    }

    /// Read a model file and check it against its recorded hash.
    pub fn read_verified(&self, entry: &ModelEntry) -> Result<Vec<u8>, ModelError> {
        let path = self.dir.join(&entry.file);
        let bytes = fs::read(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let actual = Blake3Hash::of(&bytes);
        if actual != entry.hash {
            return Err(ModelError::HashMismatch {
                path,
                expected: entry.hash,
                actual,
            });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(dir: &Path, bytes: &[u8], recorded: Blake3Hash) -> ModelStore {
        fs::write(dir.join("m.onnx"), bytes).unwrap();
        let manifest = serde_json::json!({
            "version": 1,
            "models": [
                {"name": "m", "variant": "fp32", "file": "m.onnx", "blake3": recorded.to_hex(),
                 "backends": ["tract", "onnxruntime"], "extra": "ignored"},
                {"name": "m", "variant": "fp32-ort", "file": "m.onnx", "blake3": recorded.to_hex(),
                 "backends": ["onnxruntime"], "derived_from": recorded.to_hex()}
            ]
        });
        fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
        ModelStore::open(dir).unwrap()
    }

    #[test]
    fn selects_the_derivative_for_its_backend_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), b"model", Blake3Hash::of(b"model"));
        assert_eq!(
            store
                .select("m", "fp32", BackendKind::OnnxRuntime)
                .unwrap()
                .variant,
            "fp32-ort"
        );
        assert_eq!(
            store
                .select("m", "fp32", BackendKind::Tract)
                .unwrap()
                .variant,
            "fp32"
        );
        assert!(matches!(
            store.select("m", "fp32", BackendKind::OpenVino),
            Err(ModelError::NotFound { .. })
        ));
        assert!(store.select("other", "fp32", BackendKind::Tract).is_err());
    }

    #[test]
    fn refuses_a_file_that_does_not_match_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), b"tampered", Blake3Hash::of(b"model"));
        let entry = store.select("m", "fp32", BackendKind::Tract).unwrap();
        assert!(matches!(
            store.read_verified(entry),
            Err(ModelError::HashMismatch { .. })
        ));
    }

    #[test]
    fn missing_manifest_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = ModelStore::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("scripts/setup.sh"), "{err}");
    }
}

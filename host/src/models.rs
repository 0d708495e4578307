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

/// How a model file is stored, which decides the engine that runs it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// An ONNX graph, run by the host's inference backend.
    #[default]
    Onnx,
    /// A GGUF language model, run by the host's own engine (`mesh-llm`) whatever the
    /// backend.
    Gguf,
}

/// One prepared model file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// File size in bytes (0: not recorded).
    #[serde(default)]
    pub size: u64,
    /// How it is stored.
    #[serde(default)]
    pub format: ModelFormat,
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
        // A language model runs on the host's own engine whatever the backend, and the host's
        // variant (a precision of the embedding models) does not apply to it: its own
        // variant if it has that one, else its first.
        let mut gguf = self
            .entries
            .iter()
            .filter(|e| e.name == name && e.format == ModelFormat::Gguf);
        if let Some(first) = gguf.next() {
            return Ok(std::iter::once(first)
                .chain(gguf)
                .find(|e| e.variant == variant)
                .unwrap_or(first));
        }
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

    /// Check a model file against its recorded hash without holding it in memory (it is
    /// hashed as it streams by), and return its path for an engine to load. The store is
    /// this host's own directory: a file swapped between this check and the load would need
    /// the access that owns the host anyway.
    pub fn verified_path(&self, entry: &ModelEntry) -> Result<PathBuf, ModelError> {
        let path = self.dir.join(&entry.file);
        let io = |source| ModelError::Io {
            path: path.clone(),
            source,
        };
        let file = fs::File::open(&path).map_err(io)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(file).map_err(io)?;
        let actual = Blake3Hash::from_bytes(*hasher.finalize().as_bytes());
        if actual != entry.hash {
            return Err(ModelError::HashMismatch {
                path,
                expected: entry.hash,
                actual,
            });
        }
        Ok(path)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry of the file with this hash.
    pub fn by_hash(&self, hash: &Blake3Hash) -> Option<&ModelEntry> {
        self.entries.iter().find(|e| e.hash == *hash)
    }

    /// Whether the entry's file is here (the manifest pins models whose bytes this host may
    /// still have to fetch from a peer).
    pub fn has_file(&self, entry: &ModelEntry) -> bool {
        fs::metadata(self.dir.join(&entry.file))
            .is_ok_and(|m| m.is_file() && (entry.size == 0 || m.len() == entry.size))
    }

    /// Up to `length` bytes of the entry's file from `offset`, and the file's size, for a
    /// peer that fetches it (which verifies the whole file against its hash).
    pub fn read_range(
        &self,
        entry: &ModelEntry,
        offset: u64,
        length: usize,
    ) -> Result<(u64, Vec<u8>), ModelError> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.dir.join(&entry.file);
        let io = |source| ModelError::Io {
            path: path.clone(),
            source,
        };
        let mut file = fs::File::open(&path).map_err(io)?;
        let total = file.metadata().map_err(io)?.len();
        let length = length.min(total.saturating_sub(offset) as usize);
        let mut data = vec![0u8; length];
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        file.read_exact(&mut data).map_err(io)?;
        Ok((total, data))
    }

    /// Store fetched bytes as the entry's file, if they hash to its recorded hash (written
    /// to a temporary name and renamed, so a half-written model is never seen).
    pub fn install(&self, entry: &ModelEntry, bytes: &[u8]) -> Result<(), ModelError> {
        let path = self.dir.join(&entry.file);
        let actual = Blake3Hash::of(bytes);
        if actual != entry.hash {
            return Err(ModelError::HashMismatch {
                path,
                expected: entry.hash,
                actual,
            });
        }
        let temporary = self
            .dir
            .join(format!(".{}.{}.tmp", entry.file, std::process::id()));
        let io = |source| ModelError::Io {
            path: path.clone(),
            source,
        };
        fs::write(&temporary, bytes).map_err(io)?;
        fs::rename(&temporary, &path).map_err(io)
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
    fn verifies_streamed_and_installs_only_matching_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), b"tampered", Blake3Hash::of(b"model"));
        let entry = store
            .select("m", "fp32", BackendKind::Tract)
            .unwrap()
            .clone();
        assert!(matches!(
            store.verified_path(&entry),
            Err(ModelError::HashMismatch { .. })
        ));
        assert!(matches!(
            store.install(&entry, b"still wrong"),
            Err(ModelError::HashMismatch { .. })
        ));
        assert_eq!(fs::read(dir.path().join("m.onnx")).unwrap(), b"tampered");
        store.install(&entry, b"model").unwrap();
        assert!(store.has_file(&entry));
        assert_eq!(
            store.verified_path(&entry).unwrap(),
            dir.path().join("m.onnx")
        );
        assert_eq!(
            store.read_range(&entry, 1, 3).unwrap(),
            (5, b"ode".to_vec())
        );
        assert_eq!(
            store.read_range(&entry, 4, 100).unwrap(),
            (5, b"l".to_vec())
        );
        assert_eq!(store.by_hash(&entry.hash).unwrap().file, "m.onnx");
        fs::remove_file(dir.path().join("m.onnx")).unwrap();
        assert!(!store.has_file(&entry));
    }

    #[test]
    fn missing_manifest_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = ModelStore::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("scripts/setup.sh"), "{err}");
    }
}

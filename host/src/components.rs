//! On-disk stores for components and their compiled artifacts.
//!
//! Components are stored by BLAKE3 and verified on every read. Compiled artifacts (wasmtime's
//! native code) are keyed by component hash and engine fingerprint, and carry a MAC made with a
//! key that never leaves this host: deserialising native code is only safe for artifacts this
//! host produced itself, so an artifact that does not verify is recompiled, never loaded.

use mesh_proto::Blake3Hash;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a component or artifact could not be stored or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store has no component with this hash.
    #[error("component {0} is not in the store")]
    NotFound(Blake3Hash),
    /// The stored bytes do not hash to their name.
    #[error("stored component {expected} is corrupt (its bytes hash to {actual})")]
    HashMismatch {
        /// The hash it is stored under.
        expected: Blake3Hash,
        /// The hash of the bytes on disk.
        actual: Blake3Hash,
    },
    /// A file-system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

/// Write `bytes` to `path` atomically (temporary file, then rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().expect("store paths have a parent");
    let mut tmp = tempfile_in(dir)?;
    tmp.1.write_all(bytes).map_err(io("write", &tmp.0))?;
    tmp.1.sync_all().map_err(io("sync", &tmp.0))?;
    fs::rename(&tmp.0, path).map_err(io("rename into", path))
}

fn tempfile_in(dir: &Path) -> Result<(PathBuf, fs::File), StoreError> {
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).expect("the OS random number generator works");
    let path = dir.join(format!(".tmp-{}", u64::from_le_bytes(nonce)));
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io("create", &path))?;
    Ok((path, file))
}

/// Components by BLAKE3, in `<dir>/<hex>.wasm`.
#[derive(Debug, Clone)]
pub struct ComponentStore {
    dir: PathBuf,
}

impl ComponentStore {
    /// Open (creating if needed, 0700) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        mesh_fs::create_private_dir_all(dir).map_err(io("create", dir))?;
        Ok(ComponentStore {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, hash: &Blake3Hash) -> PathBuf {
        self.dir.join(format!("{}.wasm", hash.to_hex()))
    }

    /// Store component bytes; returns their hash. Storing the same bytes again is a no-op.
    pub fn put(&self, bytes: &[u8]) -> Result<Blake3Hash, StoreError> {
        let hash = Blake3Hash::of(bytes);
        let path = self.path(&hash);
        if !path.exists() {
            write_atomic(&path, bytes)?;
        }
        Ok(hash)
    }

    /// Whether the store has a component with this hash (not verified).
    pub fn contains(&self, hash: &Blake3Hash) -> bool {
        self.path(hash).exists()
    }

    /// Read a component, verifying its bytes against `hash`.
    pub fn get(&self, hash: &Blake3Hash) -> Result<Vec<u8>, StoreError> {
        let path = self.path(hash);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(*hash));
            }
            Err(e) => return Err(io("read", &path)(e)),
        };
        let actual = Blake3Hash::of(&bytes);
        if actual != *hash {
            return Err(StoreError::HashMismatch {
                expected: *hash,
                actual,
            });
        }
        Ok(bytes)
    }
}

/// Length of the MAC that prefixes every compiled artifact.
const MAC_BYTES: usize = 32;

/// A compiled artifact whose MAC verified: this host produced it.
#[derive(Debug, Clone)]
pub struct AuthenticatedArtifact(Vec<u8>);

impl AuthenticatedArtifact {
    /// The native-code artifact (without its MAC).
    pub fn bytes(&self) -> &[u8] {
        &self.0[MAC_BYTES..]
    }
}

/// Compiled artifacts, authenticated with a host-local key: `<dir>/<hex>-<engine>.cwasm`.
#[derive(Debug, Clone)]
pub struct CompiledCache {
    dir: PathBuf,
    key: [u8; 32],
    engine_fingerprint: String,
}

impl CompiledCache {
    /// Open (creating if needed) the cache in `dir` for an engine with `engine_fingerprint`.
    /// The MAC key lives in `<dir>/host.key` (mode 0600), created on first use.
    pub fn open(dir: &Path, engine_fingerprint: String) -> Result<Self, StoreError> {
        mesh_fs::create_private_dir_all(dir).map_err(io("create", dir))?;
        let key_path = dir.join("host.key");
        let key = match fs::read(&key_path) {
            Ok(bytes) if bytes.len() == 32 => bytes.try_into().expect("32 bytes"),
            _ => {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key).expect("the OS random number generator works");
                mesh_fs::write_private(&key_path, &key).map_err(io("write", &key_path))?;
                key
            }
        };
        Ok(CompiledCache {
            dir: dir.to_path_buf(),
            key,
            engine_fingerprint,
        })
    }

    fn path(&self, component: &Blake3Hash) -> PathBuf {
        self.dir.join(format!(
            "{}-{}.cwasm",
            component.to_hex(),
            self.engine_fingerprint
        ))
    }

    /// The artifact for `component`, if present and produced by this host for this engine.
    /// A tampered or foreign artifact is deleted and reported as absent.
    pub fn get(&self, component: &Blake3Hash) -> Option<AuthenticatedArtifact> {
        let path = self.path(component);
        let bytes = fs::read(&path).ok()?;
        let authentic = bytes.len() >= MAC_BYTES && {
            let (mac, artifact) = bytes.split_at(MAC_BYTES);
            let mac: [u8; MAC_BYTES] = mac.try_into().expect("MAC_BYTES");
            // blake3::Hash compares in constant time.
            blake3::keyed_hash(&self.key, artifact) == blake3::Hash::from_bytes(mac)
        };
        if !authentic {
            tracing::warn!(path = %path.display(), "compiled artifact failed authentication; recompiling");
            let _ = fs::remove_file(&path);
            return None;
        }
        Some(AuthenticatedArtifact(bytes))
    }

    /// Store the artifact for `component`.
    pub fn put(&self, component: &Blake3Hash, artifact: &[u8]) -> Result<(), StoreError> {
        let mac = blake3::keyed_hash(&self.key, artifact);
        let mut bytes = Vec::with_capacity(MAC_BYTES + artifact.len());
        bytes.extend_from_slice(mac.as_bytes());
        bytes.extend_from_slice(artifact);
        write_atomic(&self.path(component), &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_verified_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = ComponentStore::open(dir.path()).unwrap();
        let hash = store.put(b"component bytes").unwrap();
        assert_eq!(store.put(b"component bytes").unwrap(), hash, "idempotent");
        assert_eq!(store.get(&hash).unwrap(), b"component bytes");
        fs::write(
            dir.path().join(format!("{}.wasm", hash.to_hex())),
            b"evil bytes",
        )
        .unwrap();
        assert!(matches!(
            store.get(&hash),
            Err(StoreError::HashMismatch { .. })
        ));
        let missing = Blake3Hash::of(b"nothing");
        assert!(matches!(store.get(&missing), Err(StoreError::NotFound(_))));
    }

    #[test]
    fn artifacts_from_elsewhere_are_never_returned() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompiledCache::open(dir.path(), "engine".into()).unwrap();
        let component = Blake3Hash::of(b"c");
        cache.put(&component, b"native code").unwrap();
        assert_eq!(cache.get(&component).unwrap().bytes(), b"native code");

        // Another host (another key) wrote this file: not ours, not loaded.
        let other = tempfile::tempdir().unwrap();
        let foreign = CompiledCache::open(other.path(), "engine".into()).unwrap();
        foreign.put(&component, b"foreign code").unwrap();
        let file = format!("{}-engine.cwasm", component.to_hex());
        fs::copy(other.path().join(&file), dir.path().join(&file)).unwrap();
        assert!(cache.get(&component).is_none());
        assert!(!dir.path().join(&file).exists(), "foreign artifact removed");
    }
}

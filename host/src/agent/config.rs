//! The device's configuration file: who it is (key, device id, token) and how it runs.

use crate::backend::{BackendConfig, BackendKind};
use crate::executor::ExecutorConfig;
use crate::models::ModelStore;
use anyhow::{Context, Result};
use mesh_proto::{DeviceId, NetworkId, PublicKey, SigningKey};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Environment variable naming the config file.
pub const CONFIG_ENV: &str = "MESH_HOST_CONFIG";

/// `mesh-host`'s config file (TOML, mode 0600: it holds the device key and token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostConfig {
    /// The control plane's URL.
    pub control_plane: String,
    /// The network this device belongs to.
    pub network: NetworkId,
    /// This device.
    pub device: DeviceId,
    /// The device's bearer token for the control plane.
    pub token: String,
    /// The device's Ed25519 key (multibase seed), also its libp2p identity.
    pub key: String,
    /// The control plane's public key, learnt at registration (and checked against the
    /// invite code's pin).
    pub control_plane_key: PublicKey,
    /// The fingerprint of the control plane's self-signed TLS certificate, from the invite
    /// code: every connection to the control plane must present exactly it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_certificate: Option<mesh_proto::pin::Fingerprint>,
    /// Relays to reserve a slot on (refreshed from the control plane at start).
    #[serde(default)]
    pub relays: Vec<String>,
    /// Addresses to listen on.
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Jobs that may wait for a slot before the device answers busy.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    /// Jobs run at once (0: half the cores, at least one).
    #[serde(default)]
    pub slots: usize,
    /// Inference backend (`onnxruntime`, `openvino`, `tract`; default the first available).
    #[serde(default)]
    pub backend: Option<String>,
    /// Model variant to bind (`fp32` or `int8`).
    #[serde(default = "default_variant")]
    pub model_variant: String,
    /// Inference threads per job (0: one per core).
    #[serde(default)]
    pub threads: usize,
    /// Directory for components and compiled artifacts (default `<cache>/host`).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Directory of the model store (default `<cache>/models`).
    #[serde(default)]
    pub model_dir: Option<PathBuf>,
    /// The owner's terms: which workloads this device runs, for whom, when and how much. The
    /// agent refuses any job they do not allow, whatever its ticket says.
    #[serde(default)]
    pub terms: mesh_proto::terms::DeviceTerms,
}

/// QUIC and TCP on every interface, ports chosen by the system.
pub fn default_listen() -> Vec<String> {
    vec![
        "/ip4/0.0.0.0/udp/0/quic-v1".into(),
        "/ip4/0.0.0.0/tcp/0".into(),
    ]
}

fn default_queue() -> usize {
    64
}

fn default_variant() -> String {
    "fp32".into()
}

impl HostConfig {
    /// A client of the control plane as this device (its token, the pinned certificate).
    pub fn client(&self) -> Result<mesh_client::Client> {
        Ok(mesh_client::Client::pinned(
            &self.control_plane,
            Some(self.token.clone()),
            self.control_plane_certificate,
        )?)
    }

    /// The default path: `$MESH_HOST_CONFIG`, else `$XDG_CONFIG_HOME/mesh/host.toml`, else
    /// `~/.config/mesh/host.toml`.
    pub fn default_path() -> PathBuf {
        if let Some(path) = std::env::var_os(CONFIG_ENV) {
            return PathBuf::from(path);
        }
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::var_os("HOME")
                    .map_or_else(|| PathBuf::from("."), PathBuf::from)
                    .join(".config")
            });
        base.join("mesh").join("host.toml")
    }

    /// Read the config at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "reading {} (run `mesh-host join <invite>` first)",
                path.display()
            )
        })?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Write the config to `path` with mode 0600.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self)?;
        mesh_fs::write_private(path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// The device key.
    pub fn signing_key(&self) -> Result<SigningKey> {
        SigningKey::from_multibase(&self.key).map_err(|e| anyhow::anyhow!("device key: {e}"))
    }

    /// Jobs run at once.
    pub fn effective_slots(&self) -> usize {
        if self.slots > 0 {
            return self.slots;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / 2).max(1)
    }

    /// The component and artifact directory.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| crate::cache_dir().join("host"))
    }

    /// The executor this config asks for. `backend` (a command-line choice) wins over the
    /// config's; `backend_config.threads` of 0 falls back to the config's threads.
    pub fn executor_config(
        &self,
        backend: Option<BackendKind>,
        mut backend_config: BackendConfig,
    ) -> Result<ExecutorConfig> {
        let backend = match (backend, &self.backend) {
            (Some(kind), _) => Some(kind),
            (None, Some(name)) => Some(name.parse().map_err(|e| anyhow::anyhow!("{e}"))?),
            (None, None) => None,
        };
        if backend_config.threads == 0 {
            backend_config.threads = self.threads;
        }
        self.terms
            .check()
            .map_err(|e| anyhow::anyhow!("terms: {e}"))?;
        // The terms' share of the cores caps inference threads; their memory ceiling caps a
        // job's memory.
        if let Some(share) = self.terms.cpu_share {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let allowed = ((cores as f64 * share).ceil() as usize).max(1);
            backend_config.threads = match backend_config.threads {
                0 => allowed,
                threads => threads.min(allowed),
            };
        }
        let mut limits = crate::Limits::default();
        if let Some(mb) = self.terms.memory_mb {
            limits.memory_bytes = limits
                .memory_bytes
                .min(usize::try_from(mb << 20).unwrap_or(usize::MAX));
        }
        Ok(ExecutorConfig {
            backend,
            backend_config,
            limits,
            model_variant: self.model_variant.clone(),
            model_dir: self
                .model_dir
                .clone()
                .unwrap_or_else(ModelStore::default_dir),
            data_dir: self.data_dir(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::terms::DeviceTerms;

    fn config(terms: DeviceTerms) -> HostConfig {
        let key = mesh_proto::SigningKey::from_seed([3; 32]);
        HostConfig {
            control_plane: "http://127.0.0.1:1".into(),
            network: NetworkId::from_bytes([1; 16]),
            device: DeviceId::from_bytes([2; 16]),
            token: "t".into(),
            key: key.to_multibase(),
            control_plane_key: key.public_key(),
            control_plane_certificate: None,
            relays: Vec::new(),
            listen: default_listen(),
            queue_capacity: 64,
            slots: 1,
            backend: None,
            model_variant: "fp32".into(),
            threads: 0,
            data_dir: None,
            model_dir: None,
            terms,
        }
    }

    #[test]
    fn terms_cap_threads_and_memory_and_bad_terms_are_refused() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let half = config(DeviceTerms {
            cpu_share: Some(0.5),
            memory_mb: Some(64),
            ..DeviceTerms::default()
        })
        .executor_config(None, BackendConfig::default())
        .unwrap();
        assert_eq!(half.backend_config.threads, cores.div_ceil(2).max(1));
        assert_eq!(half.limits.memory_bytes, 64 << 20);
        let open = config(DeviceTerms::default())
            .executor_config(None, BackendConfig::default())
            .unwrap();
        assert_eq!(open.backend_config.threads, 0, "one per core");
        assert_eq!(
            open.limits.memory_bytes,
            crate::Limits::default().memory_bytes
        );
        let bad = config(DeviceTerms {
            cpu_share: Some(0.0),
            ..DeviceTerms::default()
        })
        .executor_config(None, BackendConfig::default());
        assert!(bad.unwrap_err().to_string().contains("cpu_share"));
    }

    /// The `[terms]` the README shows read as it says.
    #[test]
    fn the_readmes_terms_parse() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("[terms]\n").expect("the README shows [terms]");
        let block = &readme[start..];
        let block = &block[..block.find("```").unwrap()];
        let block: String = block.lines().map(|l| format!("{}\n", l.trim())).collect();
        let mut table: toml::Table =
            toml::from_str(&toml::to_string(&config(DeviceTerms::default())).unwrap()).unwrap();
        table.remove("terms");
        let text = format!("{}\n{block}", toml::to_string(&table).unwrap());
        let parsed: HostConfig = toml::from_str(&text).unwrap();
        let t = parsed.terms;
        assert_eq!(
            t.workloads,
            vec![mesh_proto::terms::WorkloadRule::Name("embeddings".into())]
        );
        assert_eq!(
            t.requesters,
            vec![mesh_proto::terms::RequesterRule::Role(
                mesh_proto::api::Role::Member
            )]
        );
        assert_eq!(
            t.when,
            mesh_proto::terms::When::Idle {
                max_busy_percent: 30
            }
        );
        assert_eq!((t.max_jobs, t.cpu_share), (Some(1), Some(0.5)));
    }
}

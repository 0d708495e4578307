//! `mesh-host join`: detect what this device can run, register it with an invite, and
//! write the config file.

use super::config::HostConfig;
use crate::backend::{self, BackendConfig};
use crate::models::ModelStore;
use anyhow::{Context, Result, bail};
use mesh_proto::api::{DeviceStatus, RegisterDeviceRequest};
use mesh_proto::device::{Capabilities, RegistrationProof};
use mesh_proto::{SignDomain, SigningKey};
use std::path::{Path, PathBuf};

/// What `join` needs.
pub struct JoinOptions {
    /// The device invite code.
    pub invite: String,
    /// The control plane's URL.
    pub control_plane: String,
    /// Display name.
    pub name: String,
    /// Where to write the config.
    pub config_path: PathBuf,
    /// Replace an existing config.
    pub force: bool,
    /// Settings copied into the config.
    pub template: Template,
}

/// Run settings chosen at join time.
#[derive(Default)]
pub struct Template {
    /// Listen addresses (default: QUIC and TCP on every interface).
    pub listen: Vec<String>,
    /// Backend.
    pub backend: Option<String>,
    /// Model variant.
    pub model_variant: Option<String>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Model directory.
    pub model_dir: Option<PathBuf>,
    /// Slots.
    pub slots: usize,
    /// Queue capacity.
    pub queue_capacity: Option<usize>,
    /// Inference threads.
    pub threads: usize,
}

/// Memory in MiB from `/proc/meminfo`.
fn memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

/// A GPU, if the kernel shows one (NVIDIA's driver, or a DRM render node).
fn gpu() -> Option<String> {
    if let Ok(entries) = std::fs::read_dir("/proc/driver/nvidia/gpus") {
        for entry in entries.flatten() {
            if let Ok(info) = std::fs::read_to_string(entry.path().join("information"))
                && let Some(model) = info.lines().find_map(|l| l.strip_prefix("Model:"))
            {
                return Some(model.trim().to_string());
            }
        }
        return Some("nvidia".into());
    }
    Path::new("/dev/dri/renderD128")
        .exists()
        .then(|| "drm render node".to_string())
}

/// What this device can run: cores, memory, GPU, inference backends, prepared models, tier.
pub fn detect_capabilities(backend_config: &BackendConfig, model_dir: &Path) -> Capabilities {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let memory_mb = memory_mb();
    let backends = backend::probe(backend_config)
        .into_iter()
        .filter(|s| s.available)
        .map(|s| s.backend.name().to_string())
        .collect();
    let mut models: Vec<String> = ModelStore::open(model_dir)
        .map(|store| store.entries().iter().map(|e| e.name.clone()).collect())
        .unwrap_or_default();
    models.sort();
    models.dedup();
    let gpu = gpu();
    let tier = match (cores, memory_mb, &gpu) {
        (_, _, Some(_)) => "server",
        (c, m, None) if c >= 16 && m >= 32_768 => "server",
        (c, _, None) if c >= 4 => "desktop",
        _ => "laptop",
    };
    Capabilities {
        cores,
        memory_mb,
        gpu,
        backends,
        models,
        tier: tier.into(),
    }
}

/// Register this device and write its config.
pub async fn join(options: JoinOptions, backend_config: &BackendConfig) -> Result<HostConfig> {
    if options.config_path.exists() && !options.force {
        bail!(
            "this device already joined (config at {}); pass --force to join again",
            options.config_path.display()
        );
    }
    let model_dir = options
        .template
        .model_dir
        .clone()
        .unwrap_or_else(ModelStore::default_dir);
    let capabilities = detect_capabilities(backend_config, &model_dir);
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).context("generating the device key")?;
    let key = SigningKey::from_seed(seed);
    // The code pins the control plane that made it: its certificate (when self-signed) and
    // its key. Both are checked before the invite itself is sent anywhere.
    let (_, pins) = mesh_proto::pin::split_invite_code(&options.invite)?;
    let client = mesh_client::Client::pinned(&options.control_plane, None, pins.certificate)?;
    let control_plane = client
        .pinned_control_plane_key(pins.key)
        .await
        .context("checking the control plane against the invite code")?;
    if pins.key.is_none() {
        tracing::warn!(
            "the invite code pins no control-plane key (made by an older control plane)"
        );
    }
    let challenge = client
        .challenge(&options.invite)
        .await
        .context("asking for a registration challenge (is the invite valid?)")?;
    let proof = RegistrationProof {
        challenge: challenge.challenge.clone(),
        public_key: key.public_key(),
    };
    let payload = mesh_proto::cbor::to_vec(&proof)?;
    let registered = client
        .register_device(&RegisterDeviceRequest {
            invite: options.invite,
            challenge: challenge.challenge,
            name: options.name,
            public_key: key.public_key(),
            proof: key.sign(SignDomain::Registration, &challenge.network, &payload),
            capabilities: capabilities.clone(),
        })
        .await
        .context("registering the device")?;
    if registered.control_plane_key != control_plane.public_key {
        bail!("the control plane registered this device under another key than it showed");
    }
    let relays = control_plane.relays;
    let t = options.template;
    let config = HostConfig {
        control_plane: options.control_plane,
        network: registered.network,
        device: registered.device,
        token: registered.token,
        key: key.to_multibase(),
        control_plane_key: registered.control_plane_key,
        control_plane_certificate: pins.certificate,
        relays,
        listen: if t.listen.is_empty() {
            super::config::default_listen()
        } else {
            t.listen
        },
        queue_capacity: t.queue_capacity.unwrap_or(64),
        slots: t.slots,
        backend: t.backend,
        model_variant: t.model_variant.unwrap_or_else(|| "fp32".into()),
        threads: t.threads,
        data_dir: t.data_dir,
        model_dir: t.model_dir,
        terms: Default::default(),
    };
    config.save(&options.config_path)?;
    eprintln!(
        "joined network {} as device {} ({}); capabilities: {} cores, {} MiB, backends [{}], models [{}], tier {}",
        config.network,
        config.device,
        match registered.status {
            DeviceStatus::Approved => "approved",
            DeviceStatus::Pending => "waiting for an admin to approve it",
            DeviceStatus::Revoked => "revoked",
        },
        capabilities.cores,
        capabilities.memory_mb,
        capabilities.backends.join(", "),
        capabilities.models.join(", "),
        capabilities.tier,
    );
    eprintln!("config written to {}", options.config_path.display());
    Ok(config)
}

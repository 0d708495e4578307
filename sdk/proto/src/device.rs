//! Devices: capabilities, registration proofs, certificates and heartbeats.

use crate::identity::PublicKey;
use crate::{DeviceId, NetworkId, PersonId};
use serde::{Deserialize, Serialize};

/// What a device can run, reported at registration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Capabilities {
    /// CPU cores.
    pub cores: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// GPU model, if any.
    #[serde(default)]
    pub gpu: Option<String>,
    /// Inference backends available (`onnxruntime`, `openvino`, `tract`).
    #[serde(default)]
    pub backends: Vec<String>,
    /// Models prepared on the device, by name.
    #[serde(default)]
    pub models: Vec<String>,
    /// Device class: `server`, `desktop`, `laptop` or `mobile`.
    #[serde(default)]
    pub tier: String,
}

/// What a device signs to prove it holds its key when registering: the server's one-time
/// challenge and the key itself, in the network it joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationProof {
    /// The challenge the control plane issued (hex).
    pub challenge: String,
    /// The device's public key.
    pub public_key: PublicKey,
}

/// A control-plane-signed certificate that a device belongs to a network. Relays and peers
/// check it offline with the control plane's public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCert {
    /// Certificate format version (1).
    pub version: u8,
    /// The device.
    pub device: DeviceId,
    /// The network it belongs to.
    pub network: NetworkId,
    /// The person who owns it.
    pub owner: PersonId,
    /// The device's Ed25519 key (also its libp2p identity).
    pub public_key: PublicKey,
    /// Its libp2p peer id (derived from `public_key`).
    pub peer_id: String,
    /// Issue time, milliseconds since the Unix epoch.
    pub issued_at_ms: u64,
    /// Expiry time, milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

/// Current load of a device, carried by heartbeats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceLoad {
    /// Jobs running.
    pub running: u32,
    /// Jobs queued.
    pub queued: u32,
    /// Jobs it can run at once.
    pub slots: u32,
    /// Share of its CPU its other processes (its own user's) used lately, in percent; none
    /// when it cannot tell. Terms that take jobs only while idle are judged by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub others_busy_percent: Option<u8>,
}

/// A signed, timestamped heartbeat. Timestamps must increase, so a heartbeat cannot be
/// replayed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The device.
    pub device: DeviceId,
    /// Its network.
    pub network: NetworkId,
    /// When it was sent, milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// Current load.
    pub load: DeviceLoad,
    /// The terms written in the device's own config, which it enforces itself (reported so
    /// the scheduler sends it only jobs they admit).
    #[serde(default, skip_serializing_if = "crate::terms::DeviceTerms::is_open")]
    pub terms: crate::terms::DeviceTerms,
}

//! Configuration and the state every handler shares.

use crate::metrics::Metrics;
use crate::store::Db;
use crate::validate::ComponentValidator;
use mesh_proto::SigningKey;
use mesh_proto::verification::{CheckPolicy, RingerPolicy};
use mesh_proto::vrf::VrfSecretKey;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Largest request body outside component uploads: JSON requests are small.
pub const MAX_JSON_BODY_BYTES: usize = 1 << 20;
/// Largest component upload.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;

/// Control-plane configuration; every field has a documented default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Address to listen on (default `127.0.0.1:7420`; port 0 picks a free one).
    pub listen: SocketAddr,
    /// Data directory for the embedded SQLite database (default `./mesh-data`).
    pub data_dir: PathBuf,
    /// `postgres://…` to use PostgreSQL instead of SQLite.
    pub database_url: Option<String>,
    /// How often devices should heartbeat (default 10 s).
    #[serde(with = "secs")]
    pub heartbeat_interval: Duration,
    /// Devices are marked offline after this long without a heartbeat (default 30 s).
    #[serde(with = "secs")]
    pub offline_after: Duration,
    /// How often the presence monitor and lease reaper run (default 1 s).
    #[serde(with = "secs")]
    pub sweep_interval: Duration,
    /// Lifetime of device certificates (default 24 h).
    #[serde(with = "secs")]
    pub certificate_lifetime: Duration,
    /// Lease an executor holds on an assigned job (default 60 s).
    #[serde(with = "secs")]
    pub job_lease: Duration,
    /// Assignments before a job fails for good (default 3).
    pub max_job_attempts: u32,
    /// Lifetime of a registration challenge (default 5 min).
    #[serde(with = "secs")]
    pub challenge_lifetime: Duration,
    /// Heartbeat timestamps may be at most this far from the server's clock (default 5 min).
    #[serde(with = "secs")]
    pub max_clock_skew: Duration,
    /// Relay multiaddrs handed to devices (each ending in `/p2p/<relay peer id>`).
    pub relays: Vec<String>,
    /// Shared secret relays present (as a bearer token) to fetch the allow-list; unset
    /// disables `/v1/relay/allow-list`. At least 32 characters. Env `MESH_RELAY_SECRET`.
    pub relay_secret: Option<String>,
    /// Bearer token a metrics scraper presents for `/metrics` (it shows every network's
    /// counts); unset disables `/metrics`. At least 32 characters. Env `MESH_METRICS_TOKEN`.
    pub metrics_token: Option<String>,
    /// Address the gateway's libp2p swarm listens on (default `/ip4/127.0.0.1/udp/0/quic-v1`).
    pub p2p_listen: Vec<String>,
    /// How long the gateway waits for an executor's answer (default 130 s).
    #[serde(with = "secs")]
    pub gateway_timeout: Duration,
    /// How often results are re-executed, per device (adaptive; see
    /// `mesh_proto::verification::CheckPolicy`).
    pub check_policy: CheckPolicy,
    /// How many ringers the gateway mixes into batched jobs.
    pub ringers: RingerPolicy,
    /// Bytes of job payloads (inputs and outputs kept for re-execution) a network may store at
    /// once (default 1 GiB).
    pub payload_quota: u64,
    /// How long payloads are kept after their check concluded, so the requester can fetch a
    /// verified result (default 7 days).
    #[serde(with = "secs")]
    pub payload_retention: Duration,
    /// Serve HTTPS with this certificate chain (PEM) and `tls_key`. Without them, the
    /// self-signed pair `init --self-signed-tls` made in `<data_dir>/tls/` is used if there
    /// is one; otherwise plain HTTP (loopback and tests only).
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Pin the TLS certificate in invite codes (default: only for the self-signed pair of
    /// `<data_dir>/tls/`; a certificate an authority signed is checked against the system's
    /// roots instead).
    pub tls_pin_certificate: Option<bool>,
    /// Connections served at once; more wait in the kernel's backlog (default 1024).
    pub max_connections: usize,
    /// Time a client has to send a request's headers, and the longest a kept-alive
    /// connection may sit idle between requests (default 10 s).
    #[serde(with = "secs")]
    pub header_timeout: Duration,
    /// Time a client has to send each next part of a request's body: a body that stops
    /// arriving for this long gets 408 (default 60 s).
    #[serde(with = "secs")]
    pub body_timeout: Duration,
    /// Time a request may take in all, waiting for a job included (default 300 s; more
    /// than `gateway_timeout`). A batch's upload is bounded by `max_batch_bytes` and
    /// `body_timeout` instead.
    #[serde(with = "secs")]
    pub request_timeout: Duration,
    /// Items one batch may hold (default 1,000,000).
    pub max_batch_items: u64,
    /// Bytes of input one batch may upload (default 1 GiB).
    pub max_batch_bytes: u64,
}

impl Config {
    /// Check what no default can vouch for: the shared secrets' strength.
    pub fn check(&self) -> Result<(), String> {
        if let Some(secret) = &self.relay_secret {
            mesh_proto::api::check_shared_secret("relay secret", secret)?;
        }
        if let Some(token) = &self.metrics_token {
            mesh_proto::api::check_shared_secret("metrics token", token)?;
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7420)),
            data_dir: PathBuf::from("mesh-data"),
            database_url: None,
            heartbeat_interval: Duration::from_secs(10),
            offline_after: Duration::from_secs(30),
            sweep_interval: Duration::from_secs(1),
            certificate_lifetime: Duration::from_secs(24 * 3600),
            job_lease: Duration::from_secs(60),
            max_job_attempts: 3,
            challenge_lifetime: Duration::from_secs(300),
            max_clock_skew: Duration::from_secs(300),
            relays: Vec::new(),
            relay_secret: None,
            metrics_token: None,
            p2p_listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".into()],
            gateway_timeout: Duration::from_secs(130),
            check_policy: CheckPolicy::default(),
            ringers: RingerPolicy::default(),
            payload_quota: 1 << 30,
            payload_retention: Duration::from_secs(7 * 24 * 3600),
            tls_cert: None,
            tls_key: None,
            tls_pin_certificate: None,
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(300),
            max_batch_items: 1_000_000,
            max_batch_bytes: 1 << 30,
        }
    }
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub db: Db,
    /// Configuration.
    pub config: Arc<Config>,
    /// The control plane's signing key (certificates, tickets).
    pub key: Arc<SigningKey>,
    /// The control plane's VRF key (check selection).
    pub vrf: Arc<VrfSecretKey>,
    /// Request and domain counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Checks uploaded components against the Mesh world.
    pub validator: Arc<ComponentValidator>,
    /// Writes heartbeats in batches.
    pub presence: crate::store::presence::PresenceWriter,
    /// The gateway's libp2p node, when relays are configured.
    pub gateway: Option<mesh_net::Node>,
    /// The TLS certificate invite codes pin, when it is pinned.
    pub certificate_pin: Option<mesh_proto::pin::Fingerprint>,
    /// The batch runners of this process (one per running batch).
    pub batch_runners: BatchRunners,
}

/// The batch runners of this process, one per running batch (`workers::batches` starts
/// them).
#[derive(Debug, Clone, Default)]
pub struct BatchRunners(
    pub(crate)  Arc<
        std::sync::Mutex<std::collections::HashMap<mesh_proto::BatchId, tokio::task::AbortHandle>>,
    >,
);

impl BatchRunners {
    /// Stop every runner (the control plane stops; the batches resume at its next start).
    pub fn stop_all(&self) {
        for (_, runner) in self.0.lock().expect("runners").drain() {
            runner.abort();
        }
    }
}

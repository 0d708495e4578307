//! The Mesh relay: a libp2p Circuit Relay v2 server that serves only devices the control plane
//! vouches for.
//!
//! Every few seconds (`allow_list_interval_secs`, default 5 s) the relay fetches a fresh
//! certificate of every approved device from the control plane, checks each signature itself
//! against the control plane's key, and feeds the peer ids into libp2p's allow-list
//! behaviour: any other peer is refused when its connection is established, and a revoked
//! device's connections are closed at the next poll. While the control plane is unreachable
//! the relay keeps the last list, dropping each certificate when it expires.
//!
//! [`Relay::spawn`] starts one in the current tokio runtime (port 0 in tests) and stops it on
//! drop; the `mesh-relay` binary is flag parsing around it.

use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, allow_block_list, connection_limits, identify, memory_connection_limits,
    noise, ping, relay, yamux,
};
use mesh_proto::{PublicKey, SigningKey};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

/// Why a relay could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The relay's identity key could not be read or created.
    #[error("relay key: {0}")]
    Key(String),
    /// The control plane refused or garbled a request the relay needs to start.
    #[error("{what}: {source}")]
    ControlPlane {
        /// What the relay was fetching.
        what: &'static str,
        /// The client's error.
        #[source]
        source: mesh_client::ClientError,
    },
    /// The libp2p transport or a listen address failed.
    #[error("network: {0}")]
    Network(String),
}

/// Relay configuration; every field has a default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Addresses to listen on (multiaddrs; port 0 picks a free one).
    pub listen: Vec<String>,
    /// Addresses others reach this relay at; without any, the bound specific addresses.
    pub external_addresses: Vec<String>,
    /// The control plane's URL.
    pub control_plane: String,
    /// Fingerprint of the control plane's self-signed TLS certificate (`init
    /// --self-signed-tls` prints it); without one, an authority the system trusts must vouch
    /// for it.
    pub control_plane_certificate: Option<mesh_proto::pin::Fingerprint>,
    /// The secret the control plane expects from relays (required to serve).
    pub relay_secret: Option<String>,
    /// Directory of the relay's identity key (`relay.key`, 0600).
    pub data_dir: PathBuf,
    /// Seconds between allow-list polls: the bound on how long a revoked device keeps its
    /// relay service while the control plane is reachable.
    pub allow_list_interval_secs: u64,
    /// Circuit and connection limits.
    pub limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![
                "/ip4/0.0.0.0/udp/4001/quic-v1".into(),
                "/ip4/0.0.0.0/tcp/4001".into(),
            ],
            external_addresses: Vec::new(),
            control_plane: "http://127.0.0.1:7420".into(),
            control_plane_certificate: None,
            relay_secret: None,
            data_dir: PathBuf::from("mesh-relay-data"),
            allow_list_interval_secs: 5,
            limits: Limits::default(),
        }
    }
}

/// Circuit and connection limits, sized for job traffic rather than libp2p's defaults
/// (128 KiB and 2 minutes per circuit, 60 reservations per IP per hour).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Reservations the relay holds at once.
    pub max_reservations: usize,
    /// Reservations one peer may hold at once.
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts before it must be renewed.
    pub reservation_duration_secs: u64,
    /// Reservations (renewals included) a peer may make per minute.
    pub reservations_per_peer_per_minute: u32,
    /// Reservations per source IP per minute (a NAT may hide many devices).
    pub reservations_per_ip_per_minute: u32,
    /// Circuits the relay carries at once.
    pub max_circuits: usize,
    /// Circuits one peer may hold at once: no device can take the whole relay.
    pub max_circuits_per_peer: usize,
    /// Circuits one peer may open per minute.
    pub circuits_per_peer_per_minute: u32,
    /// How long one circuit may stay open.
    pub max_circuit_duration_secs: u64,
    /// Bytes one circuit may carry.
    pub max_circuit_bytes: u64,
    /// Connections the relay accepts in all.
    pub max_connections: u32,
    /// Connections one peer may hold.
    pub max_connections_per_peer: u32,
    /// Refuse new connections above this share of system memory.
    pub max_memory_fraction: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_reservations: 8192,
            max_reservations_per_peer: 4,
            reservation_duration_secs: 3600,
            reservations_per_peer_per_minute: 30,
            reservations_per_ip_per_minute: 600,
            max_circuits: 4096,
            max_circuits_per_peer: 32,
            circuits_per_peer_per_minute: 600,
            max_circuit_duration_secs: 30 * 60,
            max_circuit_bytes: 1 << 30,
            max_connections: 16384,
            max_connections_per_peer: 8,
            max_memory_fraction: 0.9,
        }
    }
}

impl Limits {
    fn relay_config(&self) -> Result<relay::Config, RelayError> {
        let per_minute = |n: u32| {
            NonZeroU32::new(n)
                .ok_or_else(|| RelayError::Config("rate limits must be positive".into()))
        };
        Ok(relay::Config {
            max_reservations: self.max_reservations,
            max_reservations_per_peer: self.max_reservations_per_peer,
            reservation_duration: Duration::from_secs(self.reservation_duration_secs),
            reservation_rate_limiters: Vec::new(),
            max_circuits: self.max_circuits,
            max_circuits_per_peer: self.max_circuits_per_peer,
            max_circuit_duration: Duration::from_secs(self.max_circuit_duration_secs),
            max_circuit_bytes: self.max_circuit_bytes,
            circuit_src_rate_limiters: Vec::new(),
        }
        .reservation_rate_per_peer(
            per_minute(self.reservations_per_peer_per_minute)?,
            Duration::from_secs(60),
        )
        .reservation_rate_per_ip(
            per_minute(self.reservations_per_ip_per_minute)?,
            Duration::from_secs(60),
        )
        .circuit_src_per_peer(
            per_minute(self.circuits_per_peer_per_minute)?,
            Duration::from_secs(60),
        ))
    }
}

#[derive(NetworkBehaviour)]
struct RelayBehaviour {
    allowed: allow_block_list::Behaviour<allow_block_list::AllowedPeers>,
    limits: connection_limits::Behaviour,
    memory: memory_connection_limits::Behaviour,
    relay: relay::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// The peers the control plane currently vouches for, with when each certificate expires.
struct AllowList {
    control_plane: PublicKey,
    gateway: PeerId,
    expires: HashMap<PeerId, u64>,
}

impl AllowList {
    /// Replace the list with the certificates in `fresh` that verify; returns how many were
    /// rejected.
    fn update(&mut self, fresh: &mesh_proto::api::RelayAllowList) -> usize {
        let now = mesh_net::verify::now_ms();
        let mut expires = HashMap::new();
        let mut rejected = 0;
        for cert in &fresh.certificates {
            match mesh_net::verify::device_cert(cert, &self.control_plane, None, None, now) {
                Ok(cert) => match cert.peer_id.parse::<PeerId>() {
                    Ok(peer) => {
                        expires.insert(peer, cert.expires_at_ms);
                    }
                    Err(_) => rejected += 1,
                },
                Err(e) => {
                    tracing::warn!("rejecting a certificate from the allow-list: {e}");
                    rejected += 1;
                }
            }
        }
        self.expires = expires;
        rejected
    }

    /// Peers allowed now (expired certificates drop out even without a fresh list).
    fn allowed(&self) -> HashSet<PeerId> {
        let now = mesh_net::verify::now_ms();
        let mut peers: HashSet<PeerId> = self
            .expires
            .iter()
            .filter(|(_, e)| **e > now)
            .map(|(p, _)| *p)
            .collect();
        peers.insert(self.gateway);
        peers
    }
}

/// The relay's identity key from `<dir>/relay.key`, created (0600) on first use.
pub fn load_or_create_key(dir: &Path) -> Result<SigningKey, RelayError> {
    let path = dir.join("relay.key");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return SigningKey::from_multibase(text.trim())
            .map_err(|e| RelayError::Key(format!("{}: {e}", path.display())));
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| RelayError::Key(format!("no randomness: {e}")))?;
    let key = SigningKey::from_seed(seed);
    mesh_fs::write_private(&path, format!("{}\n", key.to_multibase()).as_bytes())
        .map_err(|e| RelayError::Key(format!("writing {}: {e}", path.display())))?;
    Ok(key)
}

/// A running relay; stops when dropped (or at [`Relay::shutdown`]).
pub struct Relay {
    peer_id: PeerId,
    listen_addrs: watch::Receiver<Vec<Multiaddr>>,
    external_addrs: watch::Receiver<Vec<Multiaddr>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Start a relay: load (or create) its key, fetch the control plane's key (waiting while
    /// the control plane is unreachable) and the first allow-list, bind every listen address,
    /// and serve in a background task. Returns once every listen address is bound.
    pub async fn spawn(config: Config) -> Result<Relay, RelayError> {
        let Some(secret) = config.relay_secret.clone() else {
            return Err(RelayError::Config(
                "the relay secret is required (relay_secret, --relay-secret or MESH_RELAY_SECRET)"
                    .into(),
            ));
        };
        mesh_proto::api::check_shared_secret("relay secret", &secret)
            .map_err(RelayError::Config)?;
        let key = load_or_create_key(&config.data_dir)?;
        let client = mesh_client::Client::pinned(
            &config.control_plane,
            Some(secret),
            config.control_plane_certificate,
        )
        .map_err(|e| RelayError::Config(format!("control plane URL: {e}")))?;
        // The control plane may start after the relay (or be restarting): wait for it.
        let mut delay = Duration::from_millis(250);
        let control_plane = loop {
            match client.control_plane_key().await {
                Ok(key) => break key.public_key,
                Err(e) if e.status().is_none() => {
                    tracing::warn!(
                        "control plane at {} unreachable ({e}); retrying",
                        config.control_plane
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(source) => {
                    return Err(RelayError::ControlPlane {
                        what: "fetching the control plane's key",
                        source,
                    });
                }
            }
        };
        let gateway: PeerId = control_plane
            .peer_id()
            .parse()
            .map_err(|e| RelayError::Config(format!("the control plane's peer id: {e}")))?;
        let mut allow = AllowList {
            control_plane,
            gateway,
            expires: HashMap::new(),
        };
        let first = client
            .relay_allow_list()
            .await
            .map_err(|source| RelayError::ControlPlane {
                what: "fetching the allow-list (is the relay secret right?)",
                source,
            })?;
        let rejected = allow.update(&first);
        tracing::info!(devices = allow.expires.len(), rejected, "allow-list loaded");

        let mut swarm = build_swarm(&key, &config.limits)?;
        for peer in allow.allowed() {
            swarm.behaviour_mut().allowed.allow_peer(peer);
        }
        let mut listeners = HashSet::new();
        for address in &config.listen {
            let address: Multiaddr = address
                .parse()
                .map_err(|e| RelayError::Config(format!("listen address {address}: {e}")))?;
            let id = swarm
                .listen_on(address.clone())
                .map_err(|e| RelayError::Network(format!("listening on {address}: {e}")))?;
            listeners.insert(id);
        }
        let explicit_external = !config.external_addresses.is_empty();
        for address in &config.external_addresses {
            let address: Multiaddr = address
                .parse()
                .map_err(|e| RelayError::Config(format!("external address {address}: {e}")))?;
            swarm.add_external_address(address);
        }
        let peer_id = *swarm.local_peer_id();

        // Wait until every listener has its first address, so callers can dial at once.
        let mut listen_addrs = Vec::new();
        while !listeners.is_empty() {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr {
                    listener_id,
                    address,
                } => {
                    listeners.remove(&listener_id);
                    on_new_listen_addr(&mut swarm, explicit_external, &address);
                    listen_addrs.push(address);
                }
                SwarmEvent::ListenerClosed {
                    listener_id,
                    reason: Err(e),
                    ..
                }
                | SwarmEvent::ListenerError {
                    listener_id,
                    error: e,
                } if listeners.contains(&listener_id) => {
                    return Err(RelayError::Network(format!("a listener failed: {e}")));
                }
                _ => {}
            }
        }
        let external: Vec<Multiaddr> = swarm.external_addresses().cloned().collect();
        let (listen_tx, listen_rx) = watch::channel(listen_addrs);
        let (external_tx, external_rx) = watch::channel(external);
        let (stop_tx, stop_rx) = oneshot::channel();
        let interval = Duration::from_secs(config.allow_list_interval_secs.max(1));
        let driver = Driver {
            swarm,
            allow,
            explicit_external,
            listen_tx,
            external_tx,
        };
        let task = tokio::spawn(driver.run(client, interval, stop_rx).in_current_span());
        Ok(Relay {
            peer_id,
            listen_addrs: listen_rx,
            external_addrs: external_rx,
            stop: Some(stop_tx),
            task,
        })
    }

    /// The relay's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The addresses the relay listens on now.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.listen_addrs.borrow().clone()
    }

    /// The addresses the relay tells peers to reach it at.
    pub fn external_addrs(&self) -> Vec<Multiaddr> {
        self.external_addrs.borrow().clone()
    }

    /// Resolves whenever the listen addresses change (a new interface, say).
    pub async fn listen_addrs_changed(&mut self) -> bool {
        self.listen_addrs.changed().await.is_ok()
    }

    /// Stop serving and wait for the relay's task to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn build_swarm(
    key: &SigningKey,
    limits: &Limits,
) -> Result<libp2p::Swarm<RelayBehaviour>, RelayError> {
    let relay_config = limits.relay_config()?;
    let connection_limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(limits.max_connections))
        .with_max_established_per_peer(Some(limits.max_connections_per_peer));
    let network = |e: &dyn std::fmt::Display| RelayError::Network(e.to_string());
    Ok(
        libp2p::SwarmBuilder::with_existing_identity(mesh_net::keypair(key))
            .with_tokio()
            .with_tcp(
                libp2p::tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| network(&e))?
            .with_quic_config(mesh_net::quic_config)
            .with_behaviour(|keypair| RelayBehaviour {
                allowed: allow_block_list::Behaviour::default(),
                limits: connection_limits::Behaviour::new(connection_limits),
                memory: memory_connection_limits::Behaviour::with_max_percentage(
                    limits.max_memory_fraction,
                ),
                relay: relay::Behaviour::new(keypair.public().to_peer_id(), relay_config),
                identify: identify::Behaviour::new(identify::Config::new(
                    mesh_net::IDENTIFY_PROTOCOL.into(),
                    keypair.public(),
                )),
                ping: ping::Behaviour::default(),
            })
            .map_err(|e| network(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build(),
    )
}

/// A specific (not 0.0.0.0) listen address is also where peers reach the relay, unless the
/// configuration names external addresses.
fn on_new_listen_addr(
    swarm: &mut libp2p::Swarm<RelayBehaviour>,
    explicit_external: bool,
    address: &Multiaddr,
) {
    tracing::info!(%address, "listening");
    let unspecified = address
        .iter()
        .any(|p| matches!(p, libp2p::multiaddr::Protocol::Ip4(ip) if ip.is_unspecified()));
    if !explicit_external && !unspecified {
        swarm.add_external_address(address.clone());
    }
}

/// The relay's event loop: owns the swarm and the allow-list.
struct Driver {
    swarm: libp2p::Swarm<RelayBehaviour>,
    allow: AllowList,
    explicit_external: bool,
    listen_tx: watch::Sender<Vec<Multiaddr>>,
    external_tx: watch::Sender<Vec<Multiaddr>>,
}

impl Driver {
    async fn run(
        mut self,
        client: mesh_client::Client,
        interval: Duration,
        mut stop: oneshot::Receiver<()>,
    ) {
        let (list_tx, mut list_rx) = tokio::sync::mpsc::channel(4);
        let poller = tokio::spawn(
            async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.tick().await;
                loop {
                    ticker.tick().await;
                    let update = match client.relay_allow_list().await {
                        Ok(list) => Some(list),
                        Err(e) => {
                            tracing::warn!("allow-list refresh failed (keeping the last one): {e}");
                            None
                        }
                    };
                    if list_tx.send(update).await.is_err() {
                        break;
                    }
                }
            }
            .in_current_span(),
        );
        loop {
            tokio::select! {
                _ = &mut stop => break,
                update = list_rx.recv() => {
                    let Some(update) = update else { break };
                    self.refresh(update.as_ref());
                }
                event = self.swarm.select_next_some() => self.on_event(event),
            }
        }
        poller.abort();
    }

    /// Apply a fresh list (or, when the poll failed, just drop expired certificates).
    fn refresh(&mut self, list: Option<&mesh_proto::api::RelayAllowList>) {
        if let Some(list) = list {
            self.allow.update(list);
        }
        let now = self.allow.allowed();
        let before: HashSet<PeerId> = self
            .swarm
            .behaviour()
            .allowed
            .allowed_peers()
            .iter()
            .copied()
            .collect();
        for peer in now.difference(&before) {
            self.swarm.behaviour_mut().allowed.allow_peer(*peer);
        }
        for peer in before.difference(&now) {
            tracing::info!(%peer, "no longer vouched for; disconnecting");
            self.swarm.behaviour_mut().allowed.disallow_peer(*peer);
        }
    }

    fn on_event(&mut self, event: SwarmEvent<RelayBehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                on_new_listen_addr(&mut self.swarm, self.explicit_external, &address);
                self.listen_tx.send_modify(|addrs| addrs.push(address));
                let external: Vec<Multiaddr> = self.swarm.external_addresses().cloned().collect();
                self.external_tx.send_replace(external);
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                tracing::info!(%send_back_addr, "refused connection: {error}");
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                tracing::debug!(peer = %peer_id, "connection established");
            }
            SwarmEvent::Behaviour(RelayBehaviourEvent::Relay(event)) => match event {
                relay::Event::ReservationReqAccepted {
                    src_peer_id,
                    renewed,
                } => {
                    if !renewed {
                        tracing::info!(peer = %src_peer_id, "reservation accepted");
                    }
                }
                relay::Event::CircuitReqAccepted {
                    src_peer_id,
                    dst_peer_id,
                } => {
                    tracing::info!(src = %src_peer_id, dst = %dst_peer_id, "circuit opened");
                }
                relay::Event::CircuitReqDenied {
                    src_peer_id,
                    dst_peer_id,
                    status,
                } => {
                    tracing::info!(src = %src_peer_id, dst = %dst_peer_id, ?status, "circuit denied");
                }
                relay::Event::ReservationReqDenied {
                    src_peer_id,
                    status,
                } => {
                    tracing::info!(peer = %src_peer_id, ?status, "reservation denied");
                }
                other => tracing::debug!(?other, "relay event"),
            },
            _ => {}
        }
    }
}

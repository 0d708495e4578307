//! `mesh-relay`: a libp2p Circuit Relay v2 server that serves only devices the control plane
//! vouches for.
//!
//! Every few seconds (`allow_list_interval`, default 5 s) the relay fetches a fresh
//! certificate of every approved device from the control plane, checks each signature itself
//! against the control plane's key, and feeds the peer ids into libp2p's allow-list
//! behaviour: any other peer is refused when its connection is established, and a revoked
//! device's connections are closed at the next poll. While the control plane is unreachable
//! the relay keeps the last list, dropping each certificate when it expires.

use anyhow::{Context, Result, bail};
use clap::Parser;
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
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "mesh-relay",
    version,
    about = "The Mesh relay (Circuit Relay v2)"
)]
struct Cli {
    /// Configuration file (TOML); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (repeatable).
    #[arg(long)]
    listen: Vec<String>,
    /// Address others reach this relay at (repeatable). Without one the relay protocol is not
    /// offered, so the listen addresses are used when none is given.
    #[arg(long)]
    external_address: Vec<String>,
    /// The control plane's URL.
    #[arg(long, env = "MESH_CONTROL_PLANE")]
    control_plane: Option<String>,
    /// The secret the control plane expects from relays.
    #[arg(long, env = "MESH_RELAY_SECRET", hide_env_values = true)]
    relay_secret: Option<String>,
    /// Directory for the relay's identity key.
    #[arg(long, env = "MESH_RELAY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Write peer id and addresses as JSON here once listening (for scripts and tests).
    #[arg(long)]
    info_file: Option<PathBuf>,
    /// Seconds between allow-list polls (the bound on how long a revoked device keeps
    /// relay service).
    #[arg(long)]
    allow_list_interval: Option<u64>,
    /// Print the relay's peer id (creating its key if needed) and exit.
    #[arg(long)]
    print_peer_id: bool,
}

/// Relay configuration; every field has a default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
struct Config {
    listen: Vec<String>,
    external_addresses: Vec<String>,
    control_plane: String,
    relay_secret: Option<String>,
    data_dir: PathBuf,
    /// Seconds between allow-list polls: the bound on how long a revoked device keeps its
    /// relay service while the control plane is reachable.
    allow_list_interval_secs: u64,
    limits: Limits,
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
struct Limits {
    max_reservations: usize,
    max_reservations_per_peer: usize,
    reservation_duration_secs: u64,
    /// Reservations (renewals included) a peer may make per minute.
    reservations_per_peer_per_minute: u32,
    /// Reservations per source IP per minute (a NAT may hide many devices).
    reservations_per_ip_per_minute: u32,
    max_circuits: usize,
    /// Circuits one peer may hold at once: no device can take the whole relay.
    max_circuits_per_peer: usize,
    /// Circuits one peer may open per minute.
    circuits_per_peer_per_minute: u32,
    max_circuit_duration_secs: u64,
    max_circuit_bytes: u64,
    max_connections: u32,
    max_connections_per_peer: u32,
    /// Refuse new connections above this share of system memory.
    max_memory_fraction: f64,
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
    fn relay_config(&self) -> Result<relay::Config> {
        let per_minute = |n: u32| NonZeroU32::new(n).context("rate limits must be positive");
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

fn load_or_create_key(dir: &std::path::Path) -> Result<SigningKey> {
    let path = dir.join("relay.key");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return SigningKey::from_multibase(text.trim())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut seed = [0u8; 32];
    getrandom_seed(&mut seed)?;
    let key = SigningKey::from_seed(seed);
    write_private(&path, &key.to_multibase())?;
    Ok(key)
}

fn getrandom_seed(seed: &mut [u8; 32]) -> Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(seed))
        .context("reading /dev/urandom")
}

fn write_private(path: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{text}")?;
    Ok(())
}

fn load_config(cli: &Cli) -> Result<Config> {
    let mut config: Config = match &cli.config {
        Some(path) => toml::from_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))?,
        None => Config::default(),
    };
    if !cli.listen.is_empty() {
        config.listen = cli.listen.clone();
    }
    if !cli.external_address.is_empty() {
        config.external_addresses = cli.external_address.clone();
    }
    if let Some(url) = &cli.control_plane {
        config.control_plane = url.clone();
    }
    if cli.relay_secret.is_some() {
        config.relay_secret = cli.relay_secret.clone();
    }
    if let Some(dir) = &cli.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(secs) = cli.allow_list_interval {
        config.allow_list_interval_secs = secs;
    }
    Ok(config)
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let config = load_config(&cli)?;
    if cli.print_peer_id {
        let key = load_or_create_key(&config.data_dir)?;
        println!("{}", key.public_key().peer_id());
        return Ok(());
    }
    let Some(secret) = config.relay_secret.clone() else {
        bail!("the relay secret is required (--relay-secret or MESH_RELAY_SECRET)");
    };
    let key = load_or_create_key(&config.data_dir)?;
    let client = mesh_client::Client::new(&config.control_plane, Some(secret))
        .context("control plane URL")?;
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
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "fetching the control plane's key from {}",
                        config.control_plane
                    )
                });
            }
        }
    };
    let gateway: PeerId = control_plane
        .peer_id()
        .parse()
        .context("the control plane's peer id")?;
    let mut allow = AllowList {
        control_plane,
        gateway,
        expires: HashMap::new(),
    };
    let first = client
        .relay_allow_list()
        .await
        .context("fetching the allow-list (is the relay secret right?)")?;
    let rejected = allow.update(&first);
    tracing::info!(devices = allow.expires.len(), rejected, "allow-list loaded");

    let limits = &config.limits;
    let relay_config = limits.relay_config()?;
    let connection_limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(limits.max_connections))
        .with_max_established_per_peer(Some(limits.max_connections_per_peer));
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(mesh_net::keypair(&key))
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
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
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    for peer in allow.allowed() {
        swarm.behaviour_mut().allowed.allow_peer(peer);
    }
    for address in &config.listen {
        let address: Multiaddr = address
            .parse()
            .with_context(|| format!("listen address {address}"))?;
        swarm
            .listen_on(address.clone())
            .with_context(|| format!("listening on {address}"))?;
    }
    let explicit_external = !config.external_addresses.is_empty();
    for address in &config.external_addresses {
        let address: Multiaddr = address
            .parse()
            .with_context(|| format!("external address {address}"))?;
        swarm.add_external_address(address);
    }
    let peer_id = *swarm.local_peer_id();
    eprintln!("mesh-relay {peer_id}");

    let (list_tx, mut list_rx) = tokio::sync::mpsc::channel(4);
    let interval = Duration::from_secs(config.allow_list_interval_secs.max(1));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            match client.relay_allow_list().await {
                Ok(list) => {
                    if list_tx.send(Some(list)).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!("allow-list refresh failed (keeping the last one): {e}");
                    if list_tx.send(None).await.is_err() {
                        break;
                    }
                }
            }
        }
    });

    let mut listen_addrs: Vec<Multiaddr> = Vec::new();
    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                eprintln!("shutting down");
                return Ok(());
            }
            update = list_rx.recv() => {
                let Some(update) = update else { continue };
                if let Some(list) = update {
                    allow.update(&list);
                }
                let now = allow.allowed();
                let before: HashSet<PeerId> =
                    swarm.behaviour().allowed.allowed_peers().iter().copied().collect();
                for peer in now.difference(&before) {
                    swarm.behaviour_mut().allowed.allow_peer(*peer);
                }
                for peer in before.difference(&now) {
                    tracing::info!(%peer, "no longer vouched for; disconnecting");
                    swarm.behaviour_mut().allowed.disallow_peer(*peer);
                }
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { address, .. } => {
                    tracing::info!(%address, "listening");
                    if !explicit_external && !address.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::Ip4(ip) if ip.is_unspecified())) {
                        swarm.add_external_address(address.clone());
                    }
                    listen_addrs.push(address);
                    if let Some(path) = &cli.info_file {
                        let external: Vec<String> = swarm.external_addresses().map(|a| a.to_string()).collect();
                        let info = serde_json::json!({
                            "peer_id": peer_id.to_string(),
                            "listen": listen_addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                            "external": external,
                        });
                        std::fs::write(path, info.to_string()).with_context(|| format!("writing {}", path.display()))?;
                    }
                }
                SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                    tracing::info!(%send_back_addr, "refused connection: {error}");
                }
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    tracing::debug!(peer = %peer_id, "connection established");
                }
                SwarmEvent::Behaviour(RelayBehaviourEvent::Relay(event)) => match event {
                    relay::Event::ReservationReqAccepted { src_peer_id, renewed } => {
                        if !renewed {
                            tracing::info!(peer = %src_peer_id, "reservation accepted");
                        }
                    }
                    relay::Event::CircuitReqAccepted { src_peer_id, dst_peer_id } => {
                        tracing::info!(src = %src_peer_id, dst = %dst_peer_id, "circuit opened");
                    }
                    relay::Event::CircuitReqDenied { src_peer_id, dst_peer_id, status } => {
                        tracing::info!(src = %src_peer_id, dst = %dst_peer_id, ?status, "circuit denied");
                    }
                    relay::Event::ReservationReqDenied { src_peer_id, status } => {
                        tracing::info!(peer = %src_peer_id, ?status, "reservation denied");
                    }
                    other => tracing::debug!(?other, "relay event"),
                },
                _ => {}
            }
        }
    }
}

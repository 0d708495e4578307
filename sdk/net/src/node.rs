//! [`Node`]: a libp2p swarm (TCP + QUIC, Noise, Yamux, Identify, relay client, DCUtR, Ping,
//! and the `/mesh/job/1`, `/mesh/cancel/1` and `/mesh/blob/1` request-response protocols) driven by one task,
//! with an async handle for sending requests and a channel of inbound ones.
//!
//! Hosts listen before they dial the relay (so hole punching can reuse the port), wait for
//! the relay's Identify before reserving, and reach peers by peer id through relay circuits;
//! DCUtR then upgrades to a direct connection, after which the dialling side closes the
//! relayed one as soon as nothing is in flight on it (request-response spreads requests over
//! every connection to a peer).

use crate::codec::FramedCbor;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, connection_limits, dcutr, identify, identity, noise,
    ping, relay, yamux,
};
use mesh_proto::JobId;
use mesh_proto::p2p::{
    BLOB_PROTOCOL, BlobRequest, BlobResponse, CANCEL_PROTOCOL, CancelRequest, CancelResponse,
    JOB_PROTOCOL, JobRequest, JobResponse, MAX_BLOB_REQUEST_FRAME, MAX_BLOB_RESPONSE_FRAME,
    MAX_CANCEL_FRAME, MAX_JOB_REQUEST_FRAME, MAX_JOB_RESPONSE_FRAME,
};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Identify protocol version of Mesh peers.
pub const IDENTIFY_PROTOCOL: &str = "/mesh/id/1";
/// Default time a job request may take, execution included.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(150);
/// Default time a blob chunk request may take.
pub const DEFAULT_BLOB_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections idle this long are closed.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// QUIC keep-alive period: a silent peer costs one small packet per second.
pub const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(1);
/// A QUIC connection with no packet for this long is dead (a crashed peer is noticed within
/// this bound, well inside a job lease).
pub const QUIC_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Mesh's QUIC settings: keep-alives and a short idle timeout, so dead peers (and dead
/// relay circuits) are noticed in seconds, not minutes.
pub fn quic_config(mut config: libp2p::quic::Config) -> libp2p::quic::Config {
    config.keep_alive_interval = QUIC_KEEP_ALIVE;
    config.max_idle_timeout = QUIC_IDLE_TIMEOUT.as_millis() as u32;
    config
}

/// Inbound requests waiting for the application before the node answers for it.
const INBOUND_BUFFER: usize = 1024;

/// The job protocol's codec.
pub type JobCodec = FramedCbor<JobRequest, JobResponse>;
/// The blob protocol's codec.
pub type BlobCodec = FramedCbor<BlobRequest, BlobResponse>;
/// The cancel protocol's codec.
pub type CancelCodec = FramedCbor<CancelRequest, CancelResponse>;

/// Time allowed for a cancel request.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an unanswered inbound job looks whether its requester is still connected.
const REQUESTER_POLL: Duration = Duration::from_millis(50);

/// How a [`Node`] listens and whom it relays through.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Addresses to listen on directly (e.g. `/ip4/0.0.0.0/udp/0/quic-v1`).
    pub listen: Vec<Multiaddr>,
    /// Relays, each ending in `/p2p/<relay peer id>`.
    pub relays: Vec<Multiaddr>,
    /// Reserve a slot on every relay so others can reach this node (hosts); a node that only
    /// dials out (the gateway) does not.
    pub reserve: bool,
    /// Time allowed for a job request, execution included.
    pub job_timeout: Duration,
    /// Time allowed for a blob chunk.
    pub blob_timeout: Duration,
    /// Established connections allowed per peer.
    pub max_connections_per_peer: u32,
    /// Established connections allowed in total.
    pub max_connections: u32,
    /// Upgrade relayed connections by hole punching (DCUtR). Off only to measure or force the
    /// relayed path.
    pub hole_punching: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: vec![
                "/ip4/0.0.0.0/udp/0/quic-v1".parse().expect("valid"),
                "/ip4/0.0.0.0/tcp/0".parse().expect("valid"),
            ],
            relays: Vec::new(),
            reserve: true,
            job_timeout: DEFAULT_JOB_TIMEOUT,
            blob_timeout: DEFAULT_BLOB_TIMEOUT,
            max_connections_per_peer: 8,
            max_connections: 1024,
            hole_punching: true,
        }
    }
}

/// Why a request to a peer got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// No connection could be made.
    #[error("could not reach {peer}: {reason}")]
    Unreachable {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The peer did not answer in time.
    #[error("{peer} did not answer in time")]
    Timeout {
        /// The peer.
        peer: PeerId,
    },
    /// The connection broke before the answer arrived.
    #[error("connection to {peer} closed before it answered")]
    ConnectionClosed {
        /// The peer.
        peer: PeerId,
    },
    /// The peer does not speak the protocol.
    #[error("{peer} does not support the protocol")]
    Unsupported {
        /// The peer.
        peer: PeerId,
    },
    /// Reading or writing the stream failed (e.g. a frame over the cap, malformed CBOR).
    #[error("stream to {peer} failed: {reason}")]
    Stream {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The node has stopped.
    #[error("the network node has stopped")]
    Stopped,
}

impl NetError {
    fn from_outbound(peer: PeerId, error: request_response::OutboundFailure) -> Self {
        use request_response::OutboundFailure as F;
        match error {
            F::DialFailure => NetError::Unreachable {
                peer,
                reason: "dial failed".into(),
            },
            F::Timeout => NetError::Timeout { peer },
            F::ConnectionClosed => NetError::ConnectionClosed { peer },
            F::UnsupportedProtocols => NetError::Unsupported { peer },
            F::Io(e) => NetError::Stream {
                peer,
                reason: e.to_string(),
            },
        }
    }
}

/// A request from a peer, to be answered through `reply` (dropping it answers nothing and
/// the peer sees the stream close).
#[derive(Debug)]
pub enum Inbound {
    /// Run a job.
    Job {
        /// Who asks (authenticated by Noise).
        peer: PeerId,
        /// Whether it arrived over a relay circuit.
        relayed: bool,
        /// The request.
        request: Box<JobRequest>,
        /// Where the answer goes.
        reply: oneshot::Sender<JobResponse>,
    },
    /// Send a piece of a blob.
    Blob {
        /// Who asks.
        peer: PeerId,
        /// The request.
        request: Box<BlobRequest>,
        /// Where the answer goes.
        reply: oneshot::Sender<BlobResponse>,
    },
    /// Stop a job.
    Cancel {
        /// Who asks.
        peer: PeerId,
        /// The request.
        request: CancelRequest,
        /// Where the answer goes.
        reply: oneshot::Sender<CancelResponse>,
    },
}

/// One connection to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The remote address.
    pub address: Multiaddr,
    /// Whether it runs over a relay circuit.
    pub relayed: bool,
    /// Whether this node dialled it.
    pub outbound: bool,
}

/// What a node can tell about itself.
#[derive(Debug, Clone, Default)]
pub struct NodeStatus {
    /// Addresses it listens on.
    pub listen_addrs: Vec<Multiaddr>,
    /// Relays that accepted a reservation.
    pub reserved_on: Vec<PeerId>,
    /// Open connections per peer.
    pub connections: HashMap<PeerId, Vec<ConnectionInfo>>,
    /// Peers reached directly by hole punching.
    pub hole_punched: Vec<PeerId>,
}

/// The answer to a job request and the connection it came over.
#[derive(Debug)]
pub struct JobAnswer {
    /// The response.
    pub response: JobResponse,
    /// Whether it came over a relay circuit.
    pub relayed: bool,
}

enum Command {
    Job {
        peer: PeerId,
        request: Box<JobRequest>,
        reply: oneshot::Sender<Result<JobAnswer, NetError>>,
    },
    Blob {
        peer: PeerId,
        request: Box<BlobRequest>,
        reply: oneshot::Sender<Result<BlobResponse, NetError>>,
    },
    Cancel {
        peer: PeerId,
        request: CancelRequest,
        reply: oneshot::Sender<Result<CancelResponse, NetError>>,
    },
    Dial {
        peer: PeerId,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
}

/// The behaviours a Mesh node runs.
#[derive(NetworkBehaviour)]
pub struct MeshBehaviour {
    limits: connection_limits::Behaviour,
    observed: crate::candidates::ObservedAddresses,
    relay_client: relay::client::Behaviour,
    dcutr: libp2p::swarm::behaviour::toggle::Toggle<dcutr::Behaviour>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    job: request_response::Behaviour<JobCodec>,
    blob: request_response::Behaviour<BlobCodec>,
    cancel: request_response::Behaviour<CancelCodec>,
}

/// A handle to a running node; the swarm task stops when every handle is dropped.
#[derive(Clone)]
pub struct Node {
    peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<NodeStatus>,
}

/// The libp2p keypair of a Mesh identity (the same Ed25519 key).
pub fn keypair(key: &mesh_proto::SigningKey) -> identity::Keypair {
    identity::Keypair::ed25519_from_bytes(key.seed()).expect("an Ed25519 seed is 32 bytes")
}

/// The relay peer id at the end of a relay address.
pub fn relay_peer(address: &Multiaddr) -> Option<PeerId> {
    address.iter().find_map(|p| match p {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

/// Whether an address runs over a relay circuit.
pub fn is_relayed(address: &Multiaddr) -> bool {
    address.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

impl Node {
    /// Build the swarm, start listening, dial the relays and run the node on the current
    /// tokio runtime. Inbound requests arrive on the returned receiver.
    pub async fn spawn(
        key: &mesh_proto::SigningKey,
        config: NodeConfig,
    ) -> Result<(Node, mpsc::Receiver<Inbound>), NodeError> {
        let keypair = keypair(key);
        let job_config = request_response::Config::default()
            .with_request_timeout(config.job_timeout)
            .with_max_concurrent_streams(256);
        let blob_config = request_response::Config::default()
            .with_request_timeout(config.blob_timeout)
            .with_max_concurrent_streams(64);
        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established_per_peer(Some(config.max_connections_per_peer))
            .with_max_established(Some(config.max_connections));
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                libp2p::tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| NodeError::Transport(e.to_string()))?
            .with_quic_config(quic_config)
            .with_relay_client(noise::Config::new, yamux::Config::default)
            .map_err(|e| NodeError::Transport(e.to_string()))?
            .with_behaviour(|keypair, relay_client| MeshBehaviour {
                limits: connection_limits::Behaviour::new(limits),
                observed: Default::default(),
                relay_client,
                dcutr: config
                    .hole_punching
                    .then(|| dcutr::Behaviour::new(keypair.public().to_peer_id()))
                    .into(),
                identify: identify::Behaviour::new(identify::Config::new(
                    IDENTIFY_PROTOCOL.into(),
                    keypair.public(),
                )),
                ping: ping::Behaviour::default(),
                job: request_response::Behaviour::with_codec(
                    JobCodec::new(MAX_JOB_REQUEST_FRAME, MAX_JOB_RESPONSE_FRAME),
                    [(StreamProtocol::new(JOB_PROTOCOL), ProtocolSupport::Full)],
                    job_config,
                ),
                blob: request_response::Behaviour::with_codec(
                    BlobCodec::new(MAX_BLOB_REQUEST_FRAME, MAX_BLOB_RESPONSE_FRAME),
                    [(StreamProtocol::new(BLOB_PROTOCOL), ProtocolSupport::Full)],
                    blob_config,
                ),
                cancel: request_response::Behaviour::with_codec(
                    CancelCodec::new(MAX_CANCEL_FRAME, MAX_CANCEL_FRAME),
                    [(StreamProtocol::new(CANCEL_PROTOCOL), ProtocolSupport::Full)],
                    request_response::Config::default().with_request_timeout(CANCEL_TIMEOUT),
                ),
            })
            .map_err(|e| NodeError::Transport(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
            .build();
        // Listen first, so the relay and hole punching see (and reuse) these ports.
        let mut listeners = std::collections::HashSet::new();
        for address in &config.listen {
            listeners.insert(
                swarm
                    .listen_on(address.clone())
                    .map_err(|e| NodeError::Listen(address.clone(), e.to_string()))?,
            );
        }
        // Wait until the sockets are bound: a relay dialled earlier would go out from an
        // ephemeral port instead of the listening one, and TCP hole punching needs the relay
        // to observe the port peers can reach.
        let bound = async {
            while !listeners.is_empty() {
                if let SwarmEvent::NewListenAddr { listener_id, .. } =
                    swarm.select_next_some().await
                {
                    listeners.remove(&listener_id);
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), bound).await;
        let mut relays = HashMap::new();
        for address in &config.relays {
            let peer =
                relay_peer(address).ok_or_else(|| NodeError::RelayAddress(address.clone()))?;
            relays.insert(peer, address.clone());
            swarm
                .dial(address.clone())
                .map_err(|e| NodeError::Dial(address.clone(), e.to_string()))?;
        }
        let peer_id = *swarm.local_peer_id();
        let (commands, command_rx) = mpsc::channel(256);
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_BUFFER);
        let (status_tx, status) = watch::channel(NodeStatus::default());
        let driver = Driver {
            swarm,
            config,
            relays,
            reserved: HashSet::new(),
            reserving: HashSet::new(),
            connections: HashMap::new(),
            pending_jobs: HashMap::new(),
            closed_by_us: HashSet::new(),
            pending_blobs: HashMap::new(),
            pending_cancels: HashMap::new(),
            in_flight: HashMap::new(),
            pending_dials: HashMap::new(),
            inbound: inbound_tx,
            status: status_tx,
        };
        tokio::spawn(driver.run(command_rx));
        Ok((
            Node {
                peer_id,
                commands,
                status,
            },
            inbound_rx,
        ))
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// A snapshot of listen addresses, reservations and connections.
    pub fn status(&self) -> NodeStatus {
        self.status.borrow().clone()
    }

    /// Wait until `condition` holds for the status, or `timeout` passes.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&NodeStatus) -> bool,
    ) -> bool {
        let mut status = self.status.clone();
        tokio::time::timeout(timeout, async move {
            loop {
                if condition(&status.borrow_and_update()) {
                    return true;
                }
                if status.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    /// Connect to `peer` (through the relays if not connected yet).
    pub async fn connect(&self, peer: PeerId) -> Result<(), NetError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Dial { peer, reply }).await?;
        answer.await.map_err(|_| NetError::Stopped)?
    }

    /// Send a job to `peer` (reached through the relays if not connected) and wait for its
    /// answer.
    pub async fn request_job(
        &self,
        peer: PeerId,
        request: JobRequest,
    ) -> Result<JobAnswer, NetError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Job {
            peer,
            request: Box::new(request),
            reply,
        })
        .await?;
        answer.await.map_err(|_| NetError::Stopped)?
    }

    /// Ask `peer` to stop `job`, which this node sent it.
    pub async fn cancel_job(&self, peer: PeerId, job: JobId) -> Result<CancelResponse, NetError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Cancel {
            peer,
            request: CancelRequest { job },
            reply,
        })
        .await?;
        answer.await.map_err(|_| NetError::Stopped)?
    }

    /// Ask `peer` for a piece of a blob.
    pub async fn request_blob(
        &self,
        peer: PeerId,
        request: BlobRequest,
    ) -> Result<BlobResponse, NetError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Blob {
            peer,
            request: Box::new(request),
            reply,
        })
        .await?;
        answer.await.map_err(|_| NetError::Stopped)?
    }

    async fn send(&self, command: Command) -> Result<(), NetError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| NetError::Stopped)
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Building the transport failed.
    #[error("building the transport: {0}")]
    Transport(String),
    /// Listening failed.
    #[error("listening on {0}: {1}")]
    Listen(Multiaddr, String),
    /// A relay address does not end in `/p2p/<peer id>`.
    #[error("relay address {0} must end in /p2p/<relay peer id>")]
    RelayAddress(Multiaddr),
    /// Dialling a relay failed at once.
    #[error("dialling {0}: {1}")]
    Dial(Multiaddr, String),
}

type Reply = Pin<Box<dyn Future<Output = Outgoing> + Send>>;

/// A job request waiting for its answer, with a copy to send again if the connection it went
/// out on was one this node closed (the executor answers a repeated ticket once).
struct PendingJob {
    peer: PeerId,
    resend: Option<Box<JobRequest>>,
    reply: oneshot::Sender<Result<JobAnswer, NetError>>,
}

enum Outgoing {
    Job(ResponseChannel<JobResponse>, Option<JobResponse>),
    Blob(ResponseChannel<BlobResponse>, Option<BlobResponse>),
    Cancel(ResponseChannel<CancelResponse>, Option<CancelResponse>),
}

struct Driver {
    swarm: Swarm<MeshBehaviour>,
    config: NodeConfig,
    relays: HashMap<PeerId, Multiaddr>,
    reserved: HashSet<PeerId>,
    reserving: HashSet<PeerId>,
    connections: HashMap<PeerId, HashMap<ConnectionId, ConnectionInfo>>,
    pending_jobs: HashMap<OutboundRequestId, PendingJob>,
    /// Relayed connections this node closed after a direct one came up.
    closed_by_us: HashSet<ConnectionId>,
    pending_blobs: HashMap<OutboundRequestId, oneshot::Sender<Result<BlobResponse, NetError>>>,
    pending_cancels: HashMap<OutboundRequestId, oneshot::Sender<Result<CancelResponse, NetError>>>,
    in_flight: HashMap<PeerId, usize>,
    pending_dials: HashMap<PeerId, Vec<oneshot::Sender<Result<(), NetError>>>>,
    inbound: mpsc::Sender<Inbound>,
    status: watch::Sender<NodeStatus>,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut replies: FuturesUnordered<Reply> = FuturesUnordered::new();
        let mut redial = tokio::time::interval(Duration::from_secs(2));
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_event(event, &mut replies),
                Some(outgoing) = replies.next(), if !replies.is_empty() => self.on_reply(outgoing),
                _ = redial.tick() => self.redial_relays(),
            }
        }
        tracing::debug!("network node stopped");
    }

    /// Reconnect to relays we lost (the swarm itself has no reconnect policy).
    fn redial_relays(&mut self) {
        let missing: Vec<(PeerId, Multiaddr)> = self
            .relays
            .iter()
            .filter(|(peer, _)| !self.swarm.is_connected(peer))
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        for (peer, address) in missing {
            tracing::info!(relay = %peer, "reconnecting to relay");
            self.reserved.remove(&peer);
            self.reserving.remove(&peer);
            if let Err(e) = self.swarm.dial(address) {
                tracing::debug!(relay = %peer, "redial failed: {e}");
            }
        }
        self.publish();
    }

    fn circuit_addresses(&self, peer: PeerId) -> Vec<Multiaddr> {
        self.relays
            .values()
            .map(|relay| {
                relay
                    .clone()
                    .with(Protocol::P2pCircuit)
                    .with(Protocol::P2p(peer))
            })
            .collect()
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Job {
                peer,
                request,
                reply,
            } => {
                let addresses = self.circuit_addresses(peer);
                let id = self.swarm.behaviour_mut().job.send_request_with_addresses(
                    &peer,
                    (*request).clone(),
                    addresses,
                );
                *self.in_flight.entry(peer).or_default() += 1;
                self.pending_jobs.insert(
                    id,
                    PendingJob {
                        peer,
                        resend: Some(request),
                        reply,
                    },
                );
            }
            Command::Blob {
                peer,
                request,
                reply,
            } => {
                let addresses = self.circuit_addresses(peer);
                let id = self
                    .swarm
                    .behaviour_mut()
                    .blob
                    .send_request_with_addresses(&peer, *request, addresses);
                *self.in_flight.entry(peer).or_default() += 1;
                self.pending_blobs.insert(id, reply);
            }
            Command::Cancel {
                peer,
                request,
                reply,
            } => {
                let addresses = self.circuit_addresses(peer);
                let id = self
                    .swarm
                    .behaviour_mut()
                    .cancel
                    .send_request_with_addresses(&peer, request, addresses);
                *self.in_flight.entry(peer).or_default() += 1;
                self.pending_cancels.insert(id, reply);
            }
            Command::Dial { peer, reply } => {
                if self.swarm.is_connected(&peer) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                    .addresses(self.circuit_addresses(peer))
                    .build();
                match self.swarm.dial(opts) {
                    Ok(()) => self.pending_dials.entry(peer).or_default().push(reply),
                    Err(e) => {
                        let _ = reply.send(Err(NetError::Unreachable {
                            peer,
                            reason: e.to_string(),
                        }));
                    }
                }
            }
        }
    }

    fn request_done(&mut self, peer: PeerId) {
        if let Some(n) = self.in_flight.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.in_flight.remove(&peer);
            }
        }
        self.close_relayed_if_direct(peer);
    }

    /// Once a direct connection to `peer` exists and nothing of ours is in flight, close the
    /// relayed ones so every request takes the direct path.
    fn close_relayed_if_direct(&mut self, peer: PeerId) {
        if self.relays.contains_key(&peer) || self.in_flight.contains_key(&peer) {
            return;
        }
        let Some(connections) = self.connections.get(&peer) else {
            return;
        };
        if !connections.values().any(|c| !c.relayed) {
            return;
        }
        // Only the side that dialled closes: the other may be answering on it.
        let relayed: Vec<ConnectionId> = connections
            .iter()
            .filter(|(_, c)| c.relayed && c.outbound)
            .map(|(id, _)| *id)
            .collect();
        if self.closed_by_us.len() > 4096 {
            self.closed_by_us.clear();
        }
        for id in relayed {
            tracing::info!(%peer, "direct connection up; closing the relayed one");
            self.closed_by_us.insert(id);
            self.swarm.close_connection(id);
        }
    }

    fn on_reply(&mut self, outgoing: Outgoing) {
        let sent = match outgoing {
            Outgoing::Job(channel, Some(response)) => self
                .swarm
                .behaviour_mut()
                .job
                .send_response(channel, response)
                .is_ok(),
            Outgoing::Blob(channel, Some(response)) => self
                .swarm
                .behaviour_mut()
                .blob
                .send_response(channel, response)
                .is_ok(),
            Outgoing::Cancel(channel, Some(response)) => self
                .swarm
                .behaviour_mut()
                .cancel
                .send_response(channel, response)
                .is_ok(),
            Outgoing::Job(_, None) | Outgoing::Blob(_, None) | Outgoing::Cancel(_, None) => true,
        };
        if !sent {
            tracing::debug!("the requester went away before the answer was ready");
        }
    }

    fn publish(&self) {
        let status = NodeStatus {
            listen_addrs: self.swarm.listeners().cloned().collect(),
            reserved_on: self.reserved.iter().copied().collect(),
            connections: self
                .connections
                .iter()
                .map(|(peer, c)| (*peer, c.values().cloned().collect()))
                .collect(),
            hole_punched: self.status.borrow().hole_punched.clone(),
        };
        self.status.send_replace(status);
    }

    fn reserve(&mut self, relay: PeerId) {
        if !self.config.reserve || self.reserved.contains(&relay) || self.reserving.contains(&relay)
        {
            return;
        }
        let Some(address) = self.relays.get(&relay) else {
            return;
        };
        let circuit = address.clone().with(Protocol::P2pCircuit);
        match self.swarm.listen_on(circuit.clone()) {
            Ok(_) => {
                self.reserving.insert(relay);
                tracing::info!(%relay, "requesting a reservation");
            }
            Err(e) => tracing::warn!(%relay, "could not listen on {circuit}: {e}"),
        }
    }

    fn on_event(
        &mut self,
        event: SwarmEvent<MeshBehaviourEvent>,
        replies: &mut FuturesUnordered<Reply>,
    ) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.publish();
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let address = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => address.clone(),
                    ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr.clone(),
                };
                let relayed = endpoint.is_relayed();
                tracing::info!(peer = %peer_id, %address, relayed, "connection established");
                self.connections.entry(peer_id).or_default().insert(
                    connection_id,
                    ConnectionInfo {
                        address,
                        relayed,
                        outbound: endpoint.is_dialer(),
                    },
                );
                if let Some(waiters) = self.pending_dials.remove(&peer_id) {
                    for w in waiters {
                        let _ = w.send(Ok(()));
                    }
                }
                self.close_relayed_if_direct(peer_id);
                self.publish();
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                cause,
                ..
            } => {
                tracing::debug!(peer = %peer_id, ?cause, "connection closed");
                if let Some(c) = self.connections.get_mut(&peer_id) {
                    c.remove(&connection_id);
                    if c.is_empty() {
                        self.connections.remove(&peer_id);
                    }
                }
                if self.relays.contains_key(&peer_id) && !self.swarm.is_connected(&peer_id) {
                    self.reserved.remove(&peer_id);
                    self.reserving.remove(&peer_id);
                }
                self.publish();
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(?peer_id, "dial failed: {error}");
                if let Some(peer) = peer_id
                    && let Some(waiters) = self.pending_dials.remove(&peer)
                {
                    for w in waiters {
                        let _ = w.send(Err(NetError::Unreachable {
                            peer,
                            reason: error.to_string(),
                        }));
                    }
                }
            }
            SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } => {
                tracing::info!(?addresses, ?reason, "listener closed");
                for address in addresses {
                    if let Some(relay) = relay_peer(&address).filter(|_| is_relayed(&address)) {
                        self.reserved.remove(&relay);
                        self.reserving.remove(&relay);
                    }
                }
                self.publish();
            }
            SwarmEvent::NewExternalAddrCandidate { address } => {
                tracing::debug!(%address, "external address candidate");
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour(event, replies),
            _ => {}
        }
    }

    fn on_behaviour(&mut self, event: MeshBehaviourEvent, replies: &mut FuturesUnordered<Reply>) {
        match event {
            MeshBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })
                if self.relays.contains_key(&peer_id) =>
            {
                // The relay tells us how the world sees us: a candidate for hole punching.
                tracing::debug!(observed = %info.observed_addr, "identified by relay");
                // (Not confirmed as external: the swarm drops candidates it already confirmed.)
                self.swarm
                    .behaviour_mut()
                    .observed
                    .observed(info.observed_addr.clone());
                self.reserve(peer_id);
            }
            MeshBehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            }) => {
                if !renewal {
                    tracing::info!(relay = %relay_peer_id, "reservation accepted");
                }
                self.reserving.remove(&relay_peer_id);
                self.reserved.insert(relay_peer_id);
                self.publish();
            }
            MeshBehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => match result {
                Ok(_) => {
                    tracing::info!(peer = %remote_peer_id, "hole punch succeeded: direct connection");
                    self.status
                        .send_modify(|s| s.hole_punched.push(remote_peer_id));
                    self.close_relayed_if_direct(remote_peer_id);
                }
                Err(e) => tracing::info!(peer = %remote_peer_id, "hole punch failed: {e}"),
            },
            MeshBehaviourEvent::Job(event) => self.on_job(event, replies),
            MeshBehaviourEvent::Blob(event) => self.on_blob(event, replies),
            MeshBehaviourEvent::Cancel(event) => self.on_cancel(event, replies),
            _ => {}
        }
    }

    fn relayed(&self, peer: &PeerId, connection: &ConnectionId) -> bool {
        self.connections
            .get(peer)
            .and_then(|c| c.get(connection))
            .is_some_and(|c| c.relayed)
    }

    fn on_job(
        &mut self,
        event: request_response::Event<JobRequest, JobResponse>,
        replies: &mut FuturesUnordered<Reply>,
    ) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                connection_id,
                message:
                    Message::Request {
                        request, channel, ..
                    },
            } => {
                let (reply, answer) = oneshot::channel();
                let relayed = self.relayed(&peer, &connection_id);
                let inbound = Inbound::Job {
                    peer,
                    relayed,
                    request: Box::new(request),
                    reply,
                };
                match self.inbound.try_send(inbound) {
                    Ok(()) => replies.push(Box::pin(async move {
                        // Give up on the answer (the application sees its reply sender
                        // close) once the requester can no longer receive it: its
                        // connection closed or the request timed out.
                        let mut answer = answer;
                        let mut poll = tokio::time::interval(REQUESTER_POLL);
                        loop {
                            tokio::select! {
                                response = &mut answer => return Outgoing::Job(channel, response.ok()),
                                _ = poll.tick() => if !channel.is_open() {
                                    return Outgoing::Job(channel, None);
                                },
                            }
                        }
                    })),
                    Err(_) => {
                        let busy = JobResponse::Refused(mesh_proto::p2p::JobRefusal::Busy {
                            queued: INBOUND_BUFFER as u32,
                        });
                        let _ = self.swarm.behaviour_mut().job.send_response(channel, busy);
                    }
                }
            }
            Event::Message {
                peer,
                connection_id,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
            } => {
                let relayed = self.relayed(&peer, &connection_id);
                if let Some(pending) = self.pending_jobs.remove(&request_id) {
                    let _ = pending.reply.send(Ok(JobAnswer { response, relayed }));
                }
                self.request_done(peer);
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                connection_id,
            } => {
                let pending = self.pending_jobs.remove(&request_id);
                if let Some(mut pending) = pending {
                    let ours = matches!(error, request_response::OutboundFailure::ConnectionClosed)
                        && self.closed_by_us.contains(&connection_id);
                    if let (true, Some(request)) = (ours, pending.resend.take()) {
                        // It went out on the relayed connection we were closing: send it
                        // again, over the direct one.
                        tracing::info!(%peer, "resending a job over the direct connection");
                        let id = self.swarm.behaviour_mut().job.send_request(&peer, *request);
                        self.pending_jobs.insert(id, pending);
                        return;
                    }
                    tracing::info!(peer = %pending.peer, "job request failed: {error}");
                    let _ = pending
                        .reply
                        .send(Err(NetError::from_outbound(peer, error)));
                }
                self.request_done(peer);
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::info!(%peer, "inbound job request failed: {error}");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn on_cancel(
        &mut self,
        event: request_response::Event<CancelRequest, CancelResponse>,
        replies: &mut FuturesUnordered<Reply>,
    ) {
        let handled = on_plain_request_response(
            event,
            &mut self.pending_cancels,
            &self.inbound,
            replies,
            |peer, request, reply| Inbound::Cancel {
                peer,
                request,
                reply,
            },
            Outgoing::Cancel,
            "cancel",
        );
        match handled {
            // A full inbound queue: the requester sees the stream close and may ask again.
            Handled::Unqueued(_) => {}
            Handled::Answered(peer) => self.request_done(peer),
            Handled::Nothing => {}
        }
    }

    fn on_blob(
        &mut self,
        event: request_response::Event<BlobRequest, BlobResponse>,
        replies: &mut FuturesUnordered<Reply>,
    ) {
        let handled = on_plain_request_response(
            event,
            &mut self.pending_blobs,
            &self.inbound,
            replies,
            |peer, request, reply| Inbound::Blob {
                peer,
                request: Box::new(request),
                reply,
            },
            Outgoing::Blob,
            "blob",
        );
        match handled {
            Handled::Unqueued(channel) => {
                let busy = BlobResponse::Refused("busy".into());
                let _ = self.swarm.behaviour_mut().blob.send_response(channel, busy);
            }
            Handled::Answered(peer) => self.request_done(peer),
            Handled::Nothing => {}
        }
    }
}

/// What [`on_plain_request_response`] leaves to its caller.
enum Handled<Resp> {
    /// An inbound request found the application's queue full: answer it here (or drop it).
    Unqueued(ResponseChannel<Resp>),
    /// An outbound request to this peer ended (answered or failed).
    Answered(PeerId),
    /// Nothing to do.
    Nothing,
}

/// One event of a request-response protocol whose inbound requests go to the application
/// (answered through `replies`) and whose outbound requests wait in `pending`.
fn on_plain_request_response<Req, Resp: Send + 'static>(
    event: request_response::Event<Req, Resp>,
    pending: &mut HashMap<OutboundRequestId, oneshot::Sender<Result<Resp, NetError>>>,
    inbound: &mpsc::Sender<Inbound>,
    replies: &mut FuturesUnordered<Reply>,
    to_inbound: impl FnOnce(PeerId, Req, oneshot::Sender<Resp>) -> Inbound,
    to_outgoing: fn(ResponseChannel<Resp>, Option<Resp>) -> Outgoing,
    protocol: &str,
) -> Handled<Resp> {
    use request_response::{Event, Message};
    match event {
        Event::Message {
            peer,
            message: Message::Request {
                request, channel, ..
            },
            ..
        } => {
            let (reply, answer) = oneshot::channel();
            if inbound.try_send(to_inbound(peer, request, reply)).is_err() {
                return Handled::Unqueued(channel);
            }
            replies.push(Box::pin(
                async move { to_outgoing(channel, answer.await.ok()) },
            ));
            Handled::Nothing
        }
        Event::Message {
            peer,
            message:
                Message::Response {
                    request_id,
                    response,
                },
            ..
        } => {
            if let Some(reply) = pending.remove(&request_id) {
                let _ = reply.send(Ok(response));
            }
            Handled::Answered(peer)
        }
        Event::OutboundFailure {
            peer,
            request_id,
            error,
            ..
        } => {
            tracing::info!(%peer, "{protocol} request failed: {error}");
            if let Some(reply) = pending.remove(&request_id) {
                let _ = reply.send(Err(NetError::from_outbound(peer, error)));
            }
            Handled::Answered(peer)
        }
        Event::InboundFailure { peer, error, .. } => {
            tracing::info!(%peer, "inbound {protocol} request failed: {error}");
            Handled::Nothing
        }
        Event::ResponseSent { .. } => Handled::Nothing,
    }
}

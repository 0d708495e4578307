//! [`Node`]: a libp2p swarm (TCP + QUIC, Noise, Yamux, Identify, relay client, DCUtR, Ping,
//! and the `/mesh/job/1`, `/mesh/piece/1`, `/mesh/cancel/1` and `/mesh/blob/1`
//! request-response protocols)
//! driven by one task, with an async handle for sending requests and a channel of inbound ones.
//!
//! Hosts listen before they dial the relay (so hole punching can reuse the port), wait for
//! the relay's Identify before reserving, and reach peers by peer id through relay circuits;
//! DCUtR then upgrades to a direct connection, after which the dialling side closes the
//! relayed one as soon as nothing is in flight on it (request-response spreads requests over
//! every connection to a peer).
//!
//! By concern, as iroh splits its socket code:
//! - `handle`: the [`Node`] handle, the commands it sends, and building the swarm;
//! - `driver`: the one task that owns the swarm and routes its events;
//! - `relays`: each relay's state (disconnected, connected, reserving, reserved);
//! - `paths`: the connections to each peer, requests in flight, and closing a relayed
//!   connection once a direct one is up;
//! - `requests`: the request-response protocols, inbound requests handed to the
//!   application and outbound ones waiting for their answers; the pieces a job streams go
//!   straight to whoever waits for that job from that executor.

mod driver;
mod handle;
mod paths;
mod relays;
mod requests;

use libp2p::multiaddr::Protocol;
use libp2p::request_response;
use libp2p::{Multiaddr, PeerId, identity};
use mesh_proto::p2p::{
    BlobRequest, BlobResponse, CancelRequest, CancelResponse, JobRequest, JobResponse,
    PieceRequest, PieceResponse,
};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::oneshot;

pub use handle::{MeshBehaviour, Node};

use crate::codec::FramedCbor;

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
pub(crate) const INBOUND_BUFFER: usize = 1024;

/// The job protocol's codec.
pub type JobCodec = FramedCbor<JobRequest, JobResponse>;
/// The blob protocol's codec.
pub type BlobCodec = FramedCbor<BlobRequest, BlobResponse>;
/// The cancel protocol's codec.
pub type CancelCodec = FramedCbor<CancelRequest, CancelResponse>;
/// The piece protocol's codec.
pub type PieceCodec = FramedCbor<PieceRequest, PieceResponse>;

/// Time allowed for a piece of streamed output to be taken.
const PIECE_TIMEOUT: Duration = Duration::from_secs(10);

/// Time allowed for a cancel request.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an unanswered inbound job looks whether its requester is still connected.
const REQUESTER_POLL: Duration = Duration::from_millis(50);
/// How often lost relays are dialled again.
const REDIAL_INTERVAL: Duration = Duration::from_secs(2);

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
    /// Who may open connections to this node ([`Gate::open`] by default; hosts and the
    /// gateway keep it to their control plane's list of devices).
    pub gate: crate::Gate,
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
            gate: crate::Gate::open(),
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

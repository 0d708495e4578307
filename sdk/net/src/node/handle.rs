//! The [`Node`] handle: building the swarm, and the commands a handle sends its driver.

use super::driver::Driver;
use super::relays::Relays;
use super::{
    BlobCodec, CANCEL_TIMEOUT, CancelCodec, IDENTIFY_PROTOCOL, IDLE_CONNECTION_TIMEOUT,
    INBOUND_BUFFER, Inbound, JobAnswer, JobCodec, NetError, NodeConfig, NodeError, NodeStatus,
    PIECE_TIMEOUT, PieceCodec, keypair, quic_config, relay_peer,
};
use futures::StreamExt;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    PeerId, StreamProtocol, Swarm, connection_limits, dcutr, identify, noise, ping, relay, yamux,
};
use mesh_proto::JobId;
use mesh_proto::p2p::{
    BLOB_PROTOCOL, BlobRequest, BlobResponse, CANCEL_PROTOCOL, CancelRequest, CancelResponse,
    JOB_PROTOCOL, JobRequest, MAX_BLOB_REQUEST_FRAME, MAX_BLOB_RESPONSE_FRAME, MAX_CANCEL_FRAME,
    MAX_JOB_REQUEST_FRAME, MAX_JOB_RESPONSE_FRAME, MAX_PIECE_REQUEST_FRAME,
    MAX_PIECE_RESPONSE_FRAME, PIECE_PROTOCOL, PieceRequest, PieceResponse,
};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

/// What a [`Node`] handle asks its driver to do; each carries where the answer goes.
pub(super) enum Command {
    /// Send a job request.
    Job {
        peer: PeerId,
        request: Box<JobRequest>,
        /// Where the pieces the executor streams go, if the request asks for them.
        pieces: Option<mpsc::UnboundedSender<Vec<u8>>>,
        reply: oneshot::Sender<Result<JobAnswer, NetError>>,
    },
    /// Send a piece of a job's streamed output to its requester.
    Piece {
        peer: PeerId,
        request: Box<PieceRequest>,
        reply: oneshot::Sender<Result<PieceResponse, NetError>>,
    },
    /// Ask for a piece of a blob.
    Blob {
        peer: PeerId,
        request: Box<BlobRequest>,
        reply: oneshot::Sender<Result<BlobResponse, NetError>>,
    },
    /// Ask a peer to stop a job.
    Cancel {
        peer: PeerId,
        request: CancelRequest,
        reply: oneshot::Sender<Result<CancelResponse, NetError>>,
    },
    /// Connect to a peer.
    Dial {
        peer: PeerId,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
}

/// The behaviours a Mesh node runs.
#[derive(NetworkBehaviour)]
pub struct MeshBehaviour {
    pub(super) gate: crate::gate::GateBehaviour,
    pub(super) limits: connection_limits::Behaviour,
    pub(super) observed: crate::candidates::ObservedAddresses,
    pub(super) relay_client: relay::client::Behaviour,
    pub(super) dcutr: libp2p::swarm::behaviour::toggle::Toggle<dcutr::Behaviour>,
    pub(super) identify: identify::Behaviour,
    pub(super) ping: ping::Behaviour,
    pub(super) job: request_response::Behaviour<JobCodec>,
    pub(super) blob: request_response::Behaviour<BlobCodec>,
    pub(super) cancel: request_response::Behaviour<CancelCodec>,
    pub(super) piece: request_response::Behaviour<PieceCodec>,
}

/// A handle to a running node; the swarm task stops when every handle is dropped.
#[derive(Clone)]
pub struct Node {
    peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<NodeStatus>,
}

impl Node {
    /// Build the swarm, start listening, dial the relays and run the node on the current
    /// tokio runtime. Inbound requests arrive on the returned receiver.
    pub async fn spawn(
        key: &mesh_proto::SigningKey,
        config: NodeConfig,
    ) -> Result<(Node, mpsc::Receiver<Inbound>), NodeError> {
        let mut swarm = build_swarm(key, &config)?;
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
                if let SwarmEvent::NewListenAddr {
                    listener_id,
                    address,
                } = swarm.select_next_some().await
                {
                    tracing::info!(%address, "listening");
                    listeners.remove(&listener_id);
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), bound).await;
        let mut relays = Relays::default();
        for address in &config.relays {
            let peer =
                relay_peer(address).ok_or_else(|| NodeError::RelayAddress(address.clone()))?;
            relays.add(peer, address.clone());
            swarm
                .dial(address.clone())
                .map_err(|e| NodeError::Dial(address.clone(), e.to_string()))?;
        }
        let peer_id = *swarm.local_peer_id();
        let (commands, command_rx) = mpsc::channel(256);
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_BUFFER);
        let (status_tx, status) = watch::channel(NodeStatus::default());
        let driver = Driver::new(swarm, config, relays, inbound_tx, status_tx);
        tokio::spawn(driver.run(command_rx).in_current_span());
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
            pieces: None,
            reply,
        })
        .await?;
        answer.await.map_err(|_| NetError::Stopped)?
    }

    /// [`Node::request_job`] for a request that asks to stream (`request.stream`): the
    /// pieces `peer` streams for the job arrive on `pieces`, in order, before the answer;
    /// the sender is dropped when the answer comes. Pieces from anyone else, out of order or
    /// past [`mesh_proto::p2p::MAX_STREAMED_BYTES`] are refused.
    pub async fn request_job_streaming(
        &self,
        peer: PeerId,
        request: JobRequest,
        pieces: mpsc::UnboundedSender<Vec<u8>>,
    ) -> Result<JobAnswer, NetError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Job {
            peer,
            request: Box::new(request),
            pieces: Some(pieces),
            reply,
        })
        .await?;
        answer.await.map_err(|_| NetError::Stopped)?
    }

    /// Send `peer`, the requester of a job this node runs, the next piece of its output.
    pub async fn send_piece(
        &self,
        peer: PeerId,
        request: PieceRequest,
    ) -> Result<PieceResponse, NetError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Piece {
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

/// The swarm a node runs: transports, behaviours and their limits from `config`.
fn build_swarm(
    key: &mesh_proto::SigningKey,
    config: &NodeConfig,
) -> Result<Swarm<MeshBehaviour>, NodeError> {
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
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
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
            gate: crate::gate::GateBehaviour(config.gate.clone()),
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
            piece: request_response::Behaviour::with_codec(
                PieceCodec::new(MAX_PIECE_REQUEST_FRAME, MAX_PIECE_RESPONSE_FRAME),
                [(StreamProtocol::new(PIECE_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(PIECE_TIMEOUT),
            ),
        })
        .map_err(|e| NodeError::Transport(e.to_string()))?
        // (The tokio defaults, with the executor carrying the current span.)
        .with_swarm_config(|_| {
            libp2p::swarm::Config::with_executor(InSpan(tracing::Span::current()))
                .with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT)
        })
        .build();
    Ok(swarm)
}

/// The swarm's executor: tokio, with connection tasks in the span the node was built in, so
/// what they log (a refused inbound request, say) belongs to that node when several run in
/// one process. Without a span, as in the binaries, it is plain `tokio::spawn`.
struct InSpan(tracing::Span);

impl libp2p::swarm::Executor for InSpan {
    fn exec(&self, future: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) {
        tokio::spawn(future.instrument(self.0.clone()));
    }
}

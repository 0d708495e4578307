//! The driver: the one task that owns the swarm, takes the handles' commands, and routes
//! swarm events to the relays, the connection paths and the request-response protocols.

use super::handle::{Command, MeshBehaviour, MeshBehaviourEvent};
use super::paths::Paths;
use super::relays::Relays;
use super::requests::{PendingJob, PieceStream, Reply};
use super::{
    ConnectionInfo, Inbound, NetError, NodeConfig, NodeStatus, REDIAL_INTERVAL, is_relayed,
    relay_peer,
};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::core::ConnectedPoint;
use libp2p::request_response::OutboundRequestId;
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, Swarm, dcutr, identify, relay};
use mesh_proto::JobId;
use mesh_proto::p2p::{BlobResponse, CancelResponse, PieceResponse};
use std::collections::HashMap;
use tokio::sync::{mpsc, oneshot, watch};

/// The state the swarm task keeps besides the swarm.
pub(super) struct Driver {
    pub(super) swarm: Swarm<MeshBehaviour>,
    config: NodeConfig,
    relays: Relays,
    pub(super) paths: Paths,
    pub(super) pending_jobs: HashMap<OutboundRequestId, PendingJob>,
    pub(super) pending_blobs:
        HashMap<OutboundRequestId, oneshot::Sender<Result<BlobResponse, NetError>>>,
    pub(super) pending_cancels:
        HashMap<OutboundRequestId, oneshot::Sender<Result<CancelResponse, NetError>>>,
    pub(super) pending_pieces:
        HashMap<OutboundRequestId, oneshot::Sender<Result<PieceResponse, NetError>>>,
    /// Jobs sent out that stream, by executor and job: where their pieces go.
    pub(super) streams: HashMap<(PeerId, JobId), PieceStream>,
    pending_dials: HashMap<PeerId, Vec<oneshot::Sender<Result<(), NetError>>>>,
    pub(super) inbound: mpsc::Sender<Inbound>,
    status: watch::Sender<NodeStatus>,
}

impl Driver {
    /// A driver for `swarm`, which already listens and dials `relays`.
    pub(super) fn new(
        swarm: Swarm<MeshBehaviour>,
        config: NodeConfig,
        relays: Relays,
        inbound: mpsc::Sender<Inbound>,
        status: watch::Sender<NodeStatus>,
    ) -> Self {
        Driver {
            swarm,
            config,
            relays,
            paths: Paths::default(),
            pending_jobs: HashMap::new(),
            pending_blobs: HashMap::new(),
            pending_cancels: HashMap::new(),
            pending_pieces: HashMap::new(),
            streams: HashMap::new(),
            pending_dials: HashMap::new(),
            inbound,
            status,
        }
    }

    /// Run until every handle is dropped.
    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut replies: FuturesUnordered<Reply> = FuturesUnordered::new();
        let mut redial = tokio::time::interval(REDIAL_INTERVAL);
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
        let swarm = &self.swarm;
        let lost = self.relays.lost(|peer| swarm.is_connected(peer));
        for (peer, address) in lost {
            tracing::info!(relay = %peer, "reconnecting to relay");
            if let Err(e) = self.swarm.dial(address) {
                tracing::debug!(relay = %peer, "redial failed: {e}");
            }
        }
        self.publish();
    }

    /// One command from a handle.
    fn on_command(&mut self, command: Command) {
        match command {
            Command::Job {
                peer,
                request,
                pieces,
                reply,
            } => {
                let stream = match (pieces, request.ticket.peek()) {
                    (Some(pieces), Ok(ticket)) => {
                        self.streams
                            .insert((peer, ticket.job), PieceStream::new(pieces));
                        Some((peer, ticket.job))
                    }
                    _ => None,
                };
                let addresses = self.relays.circuit_addresses(peer);
                let id = self.swarm.behaviour_mut().job.send_request_with_addresses(
                    &peer,
                    (*request).clone(),
                    addresses,
                );
                self.paths.request_sent(peer);
                self.pending_jobs.insert(
                    id,
                    PendingJob {
                        peer,
                        resend: Some(request),
                        stream,
                        reply,
                    },
                );
            }
            Command::Blob {
                peer,
                request,
                reply,
            } => {
                let addresses = self.relays.circuit_addresses(peer);
                let id = self
                    .swarm
                    .behaviour_mut()
                    .blob
                    .send_request_with_addresses(&peer, *request, addresses);
                self.paths.request_sent(peer);
                self.pending_blobs.insert(id, reply);
            }
            Command::Piece {
                peer,
                request,
                reply,
            } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .piece
                    .send_request(&peer, *request);
                self.paths.request_sent(peer);
                self.pending_pieces.insert(id, reply);
            }
            Command::Cancel {
                peer,
                request,
                reply,
            } => {
                let addresses = self.relays.circuit_addresses(peer);
                let id = self
                    .swarm
                    .behaviour_mut()
                    .cancel
                    .send_request_with_addresses(&peer, request, addresses);
                self.paths.request_sent(peer);
                self.pending_cancels.insert(id, reply);
            }
            Command::Dial { peer, reply } => {
                if self.swarm.is_connected(&peer) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                    .addresses(self.relays.circuit_addresses(peer))
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

    /// A request to `peer` ended: maybe its relayed connection can close now.
    pub(super) fn request_done(&mut self, peer: PeerId) {
        self.paths.request_ended(&peer);
        self.close_relayed_if_direct(peer);
    }

    /// Once a direct connection to `peer` exists and nothing of ours is in flight, close the
    /// relayed ones so every request takes the direct path.
    fn close_relayed_if_direct(&mut self, peer: PeerId) {
        if self.relays.contains(&peer) {
            return;
        }
        for id in self.paths.relayed_to_close(&peer) {
            tracing::info!(%peer, "direct connection up; closing the relayed one");
            self.swarm.close_connection(id);
        }
    }

    /// Tell the handles what changed.
    fn publish(&self) {
        let status = NodeStatus {
            listen_addrs: self.swarm.listeners().cloned().collect(),
            reserved_on: self.relays.reserved(),
            connections: self.paths.snapshot(),
            hole_punched: self.status.borrow().hole_punched.clone(),
        };
        self.status.send_replace(status);
    }

    /// Ask `relay` for a reservation, unless this node does not reserve or already asked.
    fn reserve(&mut self, relay: PeerId) {
        if !self.config.reserve {
            return;
        }
        let Some(circuit) = self.relays.begin_reserving(&relay) else {
            return;
        };
        match self.swarm.listen_on(circuit.clone()) {
            Ok(_) => tracing::info!(%relay, "requesting a reservation"),
            Err(e) => {
                self.relays.reserving_failed(&relay);
                tracing::warn!(%relay, "could not listen on {circuit}: {e}");
            }
        }
    }

    /// One swarm event.
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
                self.paths.established(
                    peer_id,
                    connection_id,
                    ConnectionInfo {
                        address,
                        relayed,
                        outbound: endpoint.is_dialer(),
                    },
                );
                self.relays.connected(&peer_id);
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
                self.paths.closed(&peer_id, &connection_id);
                if !self.swarm.is_connected(&peer_id) {
                    self.relays.disconnected(&peer_id);
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
                        let connected = self.swarm.is_connected(&relay);
                        self.relays.reservation_closed(&relay, connected);
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

    /// One event of the behaviours.
    fn on_behaviour(&mut self, event: MeshBehaviourEvent, replies: &mut FuturesUnordered<Reply>) {
        match event {
            MeshBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })
                if self.relays.contains(&peer_id) =>
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
                self.relays.reserved_on(&relay_peer_id);
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
            MeshBehaviourEvent::Piece(event) => self.on_piece(event),
            _ => {}
        }
    }
}

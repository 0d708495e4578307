//! The inbound gate: which peers may open connections to a node.
//!
//! A host, and the control plane's gateway node, accept direct inbound connections only from
//! the peers their control plane names (the approved devices of the network, and the
//! gateway); relayed ones come through a relay that serves approved devices alone, and
//! dialling out (hole punching included) is never gated. Everything an unknown peer could make a node
//! hold (transport buffers, streams, frames being read) is then out of its reach: it is
//! refused once its key is known, before any protocol runs. An unknown peer that tries is
//! counted and wakes [`Gate::denied`], so the node's owner can refresh the list at once (a
//! device approved a moment ago is let in on its next attempt).

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};
use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use tokio::sync::Notify;

/// The shared state of a node's gate: open (every peer may connect) or a set of peers.
#[derive(Debug, Default)]
struct GateState {
    allowed: RwLock<Option<HashSet<PeerId>>>,
    denied: AtomicU64,
    wake: Notify,
}

/// A handle to a node's inbound gate; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<GateState>);

impl Gate {
    /// A gate letting every peer in.
    pub fn open() -> Self {
        Gate::default()
    }

    /// A gate letting only `peers` in.
    pub fn only(peers: impl IntoIterator<Item = PeerId>) -> Self {
        let gate = Gate::default();
        gate.allow_only(peers);
        gate
    }

    /// From now on, accept inbound connections from `peers` alone. Connections already open
    /// stay open (what they carry is still checked: tickets, certificates).
    pub fn allow_only(&self, peers: impl IntoIterator<Item = PeerId>) {
        *self.0.allowed.write().expect("gate lock") = Some(peers.into_iter().collect());
    }

    /// Whether `peer` may open a connection.
    pub fn admits(&self, peer: &PeerId) -> bool {
        match &*self.0.allowed.read().expect("gate lock") {
            None => true,
            Some(peers) => peers.contains(peer),
        }
    }

    /// Peers in the allow-list (`None` when the gate is open).
    pub fn allowed(&self) -> Option<usize> {
        self.0
            .allowed
            .read()
            .expect("gate lock")
            .as_ref()
            .map(HashSet::len)
    }

    /// Inbound connections refused so far.
    pub fn denied_count(&self) -> u64 {
        self.0.denied.load(Ordering::Relaxed)
    }

    /// Resolves after the next refused connection (or at once if one was refused since the
    /// last wait ended).
    pub async fn denied(&self) {
        self.0.wake.notified().await
    }

    fn deny(&self, peer: PeerId, remote: &Multiaddr) -> ConnectionDenied {
        self.0.denied.fetch_add(1, Ordering::Relaxed);
        self.0.wake.notify_one();
        tracing::info!(%peer, %remote, "refused a connection from a peer that is not a known device");
        ConnectionDenied::new(NotAllowed { peer })
    }
}

/// Why a connection was refused: its peer is not in the gate's list.
#[derive(Debug, thiserror::Error)]
#[error("{peer} is not a known device of this network")]
pub struct NotAllowed {
    /// The refused peer.
    pub peer: PeerId,
}

/// The behaviour enforcing a [`Gate`] on inbound connections.
pub struct GateBehaviour(pub(crate) Gate);

impl NetworkBehaviour for GateBehaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // A relayed connection was vouched for by the relay, which serves approved devices
        // alone; the gate is for peers that reach the node's own addresses.
        let relayed = crate::is_relayed(local) || crate::is_relayed(remote);
        if relayed || self.0.admits(&peer) {
            Ok(dummy::ConnectionHandler)
        } else {
            Err(self.0.deny(peer, remote))
        }
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_gate_admits_everyone_a_closed_one_its_list() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let gate = Gate::open();
        assert!(gate.admits(&a) && gate.allowed().is_none());
        gate.allow_only([a]);
        assert!(gate.admits(&a));
        assert!(!gate.admits(&b));
        assert_eq!(gate.allowed(), Some(1));
        let _ = gate.deny(b, &"/ip4/127.0.0.1/tcp/1".parse().unwrap());
        assert_eq!(gate.denied_count(), 1);
        // The refusal is remembered for the next waiter.
        futures::executor::block_on(gate.denied());
    }
}

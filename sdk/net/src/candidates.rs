//! Feeds the addresses relays observe for us to DCUtR as external address candidates.
//!
//! DCUtR offers the candidates the swarm reported (`FromSwarm::NewExternalAddrCandidate`).
//! Identify only reports an observed address when it can translate it to one of our listen
//! addresses, which fails for some setups (a host listening on one interface, as on loopback),
//! leaving DCUtR with nothing to offer. The relay is a trusted observer, so its observation
//! is reported as a candidate here.

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::task::{Context, Poll, Waker};

/// Reports queued addresses as external address candidates.
#[derive(Default)]
pub struct ObservedAddresses {
    queued: VecDeque<Multiaddr>,
    waker: Option<Waker>,
}

impl ObservedAddresses {
    /// Report `address` as a candidate.
    pub fn observed(&mut self, address: Multiaddr) {
        self.queued.push_back(address);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

impl NetworkBehaviour for ObservedAddresses {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
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

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        if let Some(address) = self.queued.pop_front() {
            return Poll::Ready(ToSwarm::NewExternalAddrCandidate(address));
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

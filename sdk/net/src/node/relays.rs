//! The relays a node uses, each with its own state.
//!
//! A relay moves `Disconnected → Connected` when a connection to it comes up, `Connected →
//! Reserving` when the node asks for a slot (after the relay's Identify, so the relay has seen
//! the node's listening port), `Reserving → Reserved` when the relay accepts, and back to
//! `Connected` when the reservation's listener closes or to `Disconnected` when the last
//! connection to it does. Only the driver changes these states, through the methods here.

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use std::collections::HashMap;

/// Where the node stands with one relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RelayState {
    /// No connection (never made, lost, or being dialled again).
    Disconnected,
    /// Connected, with no reservation asked for.
    Connected,
    /// A reservation was asked for and not answered yet.
    Reserving,
    /// The relay holds a slot: peers can reach this node through it.
    Reserved,
}

/// A relay: its address (ending in `/p2p/<relay peer id>`) and state.
#[derive(Debug, Clone)]
struct Relay {
    address: Multiaddr,
    state: RelayState,
}

/// Every relay of a node, by peer id.
#[derive(Debug, Default)]
pub(super) struct Relays {
    relays: HashMap<PeerId, Relay>,
}

impl Relays {
    /// Add a relay, not yet connected.
    pub(super) fn add(&mut self, peer: PeerId, address: Multiaddr) {
        self.relays.insert(
            peer,
            Relay {
                address,
                state: RelayState::Disconnected,
            },
        );
    }

    /// Whether `peer` is one of the relays.
    pub(super) fn contains(&self, peer: &PeerId) -> bool {
        self.relays.contains_key(peer)
    }

    /// The state of relay `peer`, if it is one.
    #[cfg(test)]
    pub(super) fn state(&self, peer: &PeerId) -> Option<RelayState> {
        self.relays.get(peer).map(|r| r.state)
    }

    /// The relays that hold a reservation.
    pub(super) fn reserved(&self) -> Vec<PeerId> {
        self.relays
            .iter()
            .filter(|(_, r)| r.state == RelayState::Reserved)
            .map(|(peer, _)| *peer)
            .collect()
    }

    /// The addresses that reach `peer` through each relay's circuit.
    pub(super) fn circuit_addresses(&self, peer: PeerId) -> Vec<Multiaddr> {
        self.relays
            .values()
            .map(|relay| {
                relay
                    .address
                    .clone()
                    .with(Protocol::P2pCircuit)
                    .with(Protocol::P2p(peer))
            })
            .collect()
    }

    /// A connection to `peer` came up.
    pub(super) fn connected(&mut self, peer: &PeerId) {
        if let Some(relay) = self.relays.get_mut(peer)
            && relay.state == RelayState::Disconnected
        {
            relay.state = RelayState::Connected;
        }
    }

    /// The last connection to `peer` closed: whatever it held is gone.
    pub(super) fn disconnected(&mut self, peer: &PeerId) {
        if let Some(relay) = self.relays.get_mut(peer) {
            relay.state = RelayState::Disconnected;
        }
    }

    /// Relays that have no connection, with their addresses (to dial again). Their state is
    /// `Disconnected` whatever it was: a reservation does not outlive its connection.
    pub(super) fn lost(
        &mut self,
        is_connected: impl Fn(&PeerId) -> bool,
    ) -> Vec<(PeerId, Multiaddr)> {
        let mut lost = Vec::new();
        for (peer, relay) in &mut self.relays {
            if !is_connected(peer) {
                relay.state = RelayState::Disconnected;
                lost.push((*peer, relay.address.clone()));
            }
        }
        lost
    }

    /// Start asking relay `peer` for a reservation: returns the circuit address to listen on,
    /// or `None` when it is not a relay or already holds or is asked for one.
    pub(super) fn begin_reserving(&mut self, peer: &PeerId) -> Option<Multiaddr> {
        let relay = self.relays.get_mut(peer)?;
        match relay.state {
            RelayState::Reserving | RelayState::Reserved => None,
            RelayState::Disconnected | RelayState::Connected => {
                relay.state = RelayState::Reserving;
                Some(relay.address.clone().with(Protocol::P2pCircuit))
            }
        }
    }

    /// Listening on the circuit could not even start: back to `Connected`.
    pub(super) fn reserving_failed(&mut self, peer: &PeerId) {
        if let Some(relay) = self.relays.get_mut(peer)
            && relay.state == RelayState::Reserving
        {
            relay.state = RelayState::Connected;
        }
    }

    /// Relay `peer` accepted (or renewed) a reservation.
    pub(super) fn reserved_on(&mut self, peer: &PeerId) {
        if let Some(relay) = self.relays.get_mut(peer) {
            relay.state = RelayState::Reserved;
        }
    }

    /// The circuit listener on relay `peer` closed (the reservation ended or was refused);
    /// `still_connected` says whether a connection to the relay remains.
    pub(super) fn reservation_closed(&mut self, peer: &PeerId, still_connected: bool) {
        if let Some(relay) = self.relays.get_mut(peer) {
            relay.state = if still_connected {
                RelayState::Connected
            } else {
                RelayState::Disconnected
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay() -> (Relays, PeerId) {
        let peer = PeerId::random();
        let address: Multiaddr = format!("/ip4/127.0.0.1/udp/4001/quic-v1/p2p/{peer}")
            .parse()
            .unwrap();
        let mut relays = Relays::default();
        relays.add(peer, address);
        (relays, peer)
    }

    #[test]
    fn a_reservation_goes_through_every_state() {
        let (mut relays, peer) = relay();
        assert_eq!(relays.state(&peer), Some(RelayState::Disconnected));
        relays.connected(&peer);
        assert_eq!(relays.state(&peer), Some(RelayState::Connected));
        let circuit = relays.begin_reserving(&peer).unwrap();
        assert!(crate::is_relayed(&circuit));
        assert_eq!(relays.state(&peer), Some(RelayState::Reserving));
        // Asked once only.
        assert_eq!(relays.begin_reserving(&peer), None);
        relays.reserved_on(&peer);
        assert_eq!(relays.reserved(), [peer]);
        assert_eq!(relays.begin_reserving(&peer), None);
        // A second connection coming up changes nothing.
        relays.connected(&peer);
        assert_eq!(relays.state(&peer), Some(RelayState::Reserved));
        relays.reservation_closed(&peer, true);
        assert_eq!(relays.state(&peer), Some(RelayState::Connected));
        assert!(relays.reserved().is_empty());
        relays.disconnected(&peer);
        assert_eq!(relays.state(&peer), Some(RelayState::Disconnected));
    }

    #[test]
    fn a_lost_relay_loses_its_reservation_and_is_dialled_again() {
        let (mut relays, peer) = relay();
        relays.connected(&peer);
        relays.begin_reserving(&peer);
        relays.reserved_on(&peer);
        assert!(relays.lost(|_| true).is_empty());
        assert_eq!(relays.state(&peer), Some(RelayState::Reserved));
        let lost = relays.lost(|_| false);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].0, peer);
        assert_eq!(relays.state(&peer), Some(RelayState::Disconnected));
        assert!(relays.reserved().is_empty());
    }

    #[test]
    fn a_failed_listen_can_be_retried_and_strangers_are_ignored() {
        let (mut relays, peer) = relay();
        relays.connected(&peer);
        relays.begin_reserving(&peer);
        relays.reserving_failed(&peer);
        assert_eq!(relays.state(&peer), Some(RelayState::Connected));
        assert!(relays.begin_reserving(&peer).is_some());
        let stranger = PeerId::random();
        assert_eq!(relays.begin_reserving(&stranger), None);
        relays.reserved_on(&stranger);
        assert!(!relays.contains(&stranger));
        assert_eq!(relays.circuit_addresses(stranger).len(), 1);
    }
}

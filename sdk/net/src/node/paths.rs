//! Connection paths: the connections to each peer (relayed or direct, dialled or accepted),
//! the requests this node has in flight to each, and the move from a relayed path to a direct
//! one.
//!
//! request-response spreads requests over every connection to a peer, so once hole punching
//! gives a direct connection the dialling side closes the relayed ones, but only when nothing
//! of its own is in flight (a request on a closing connection would fail). A job that still
//! went out on a connection this node closed is sent again over the direct one; the
//! connections this node closed are remembered for that.

use super::ConnectionInfo;
use libp2p::PeerId;
use libp2p::swarm::ConnectionId;
use std::collections::{HashMap, HashSet};

/// How many closed connection ids are remembered before the set is cleared.
const CLOSED_BY_US_CAP: usize = 4096;

/// The connections and requests in flight per peer.
#[derive(Debug, Default)]
pub(super) struct Paths {
    connections: HashMap<PeerId, HashMap<ConnectionId, ConnectionInfo>>,
    in_flight: HashMap<PeerId, usize>,
    /// Relayed connections this node closed after a direct one came up.
    closed_by_us: HashSet<ConnectionId>,
}

impl Paths {
    /// A connection to `peer` came up.
    pub(super) fn established(&mut self, peer: PeerId, id: ConnectionId, info: ConnectionInfo) {
        self.connections.entry(peer).or_default().insert(id, info);
    }

    /// A connection to `peer` closed.
    pub(super) fn closed(&mut self, peer: &PeerId, id: &ConnectionId) {
        if let Some(connections) = self.connections.get_mut(peer) {
            connections.remove(id);
            if connections.is_empty() {
                self.connections.remove(peer);
            }
        }
    }

    /// Whether connection `id` to `peer` runs over a relay circuit.
    pub(super) fn relayed(&self, peer: &PeerId, id: &ConnectionId) -> bool {
        self.connections
            .get(peer)
            .and_then(|c| c.get(id))
            .is_some_and(|c| c.relayed)
    }

    /// A request to `peer` went out.
    pub(super) fn request_sent(&mut self, peer: PeerId) {
        *self.in_flight.entry(peer).or_default() += 1;
    }

    /// A request to `peer` ended (answered or failed).
    pub(super) fn request_ended(&mut self, peer: &PeerId) {
        if let Some(n) = self.in_flight.get_mut(peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.in_flight.remove(peer);
            }
        }
    }

    /// The relayed connections to `peer` to close now: those this node dialled, once a direct
    /// connection exists and nothing of ours is in flight. They are remembered as closed by us.
    pub(super) fn relayed_to_close(&mut self, peer: &PeerId) -> Vec<ConnectionId> {
        if self.in_flight.contains_key(peer) {
            return Vec::new();
        }
        let Some(connections) = self.connections.get(peer) else {
            return Vec::new();
        };
        if !connections.values().any(|c| !c.relayed) {
            return Vec::new();
        }
        // Only the side that dialled closes: the other may be answering on it.
        let relayed: Vec<ConnectionId> = connections
            .iter()
            .filter(|(id, c)| c.relayed && c.outbound && !self.closed_by_us.contains(id))
            .map(|(id, _)| *id)
            .collect();
        if self.closed_by_us.len() + relayed.len() > CLOSED_BY_US_CAP {
            self.closed_by_us.clear();
        }
        self.closed_by_us.extend(relayed.iter().copied());
        relayed
    }

    /// Whether this node closed connection `id` (so a request lost on it may be sent again).
    pub(super) fn closed_by_us(&self, id: &ConnectionId) -> bool {
        self.closed_by_us.contains(id)
    }

    /// Every connection, per peer (for the node's status).
    pub(super) fn snapshot(&self) -> HashMap<PeerId, Vec<ConnectionInfo>> {
        self.connections
            .iter()
            .map(|(peer, c)| (*peer, c.values().cloned().collect()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(relayed: bool, outbound: bool) -> ConnectionInfo {
        ConnectionInfo {
            address: "/ip4/127.0.0.1/udp/1/quic-v1".parse().unwrap(),
            relayed,
            outbound,
        }
    }

    #[test]
    fn the_dialler_closes_its_relayed_connection_once_direct_and_idle() {
        let mut paths = Paths::default();
        let peer = PeerId::random();
        let relayed = ConnectionId::new_unchecked(1);
        let direct = ConnectionId::new_unchecked(2);
        paths.established(peer, relayed, info(true, true));
        // No direct path yet: keep the relayed one.
        assert!(paths.relayed_to_close(&peer).is_empty());
        paths.established(peer, direct, info(false, true));
        assert!(!paths.relayed(&peer, &direct));
        assert!(paths.relayed(&peer, &relayed));
        // A request in flight holds it open.
        paths.request_sent(peer);
        assert!(paths.relayed_to_close(&peer).is_empty());
        paths.request_ended(&peer);
        assert_eq!(paths.relayed_to_close(&peer), [relayed]);
        assert!(paths.closed_by_us(&relayed));
        assert!(!paths.closed_by_us(&direct));
        // Asked again before the close event: nothing new to close.
        assert!(paths.relayed_to_close(&peer).is_empty());
        paths.closed(&peer, &relayed);
        assert_eq!(paths.snapshot()[&peer], [info(false, true)]);
        paths.closed(&peer, &direct);
        assert!(paths.snapshot().is_empty());
    }

    #[test]
    fn the_accepting_side_never_closes() {
        let mut paths = Paths::default();
        let peer = PeerId::random();
        paths.established(peer, ConnectionId::new_unchecked(1), info(true, false));
        paths.established(peer, ConnectionId::new_unchecked(2), info(false, false));
        assert!(paths.relayed_to_close(&peer).is_empty());
    }

    #[test]
    fn in_flight_counts_never_underflow() {
        let mut paths = Paths::default();
        let peer = PeerId::random();
        paths.request_ended(&peer);
        paths.request_sent(peer);
        paths.request_sent(peer);
        paths.request_ended(&peer);
        paths.request_ended(&peer);
        paths.request_ended(&peer);
        paths.established(peer, ConnectionId::new_unchecked(1), info(true, true));
        paths.established(peer, ConnectionId::new_unchecked(2), info(false, true));
        assert_eq!(paths.relayed_to_close(&peer).len(), 1);
    }
}

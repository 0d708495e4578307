//! In-process devices for tests that play a peer by hand: registered like any device, but
//! driving their own `mesh-net` node (to send hostile requests, or serve bad blobs).

use crate::Mesh;
use mesh_net::{Inbound, Node, NodeConfig, PeerId};
use mesh_proto::{NetworkId, Signed, SigningKey};
use std::time::Duration;

/// A device registered in a network, run in-process.
pub struct Rogue {
    /// Its key (also its libp2p identity).
    pub key: SigningKey,
    /// Its API client.
    pub client: mesh_client::Client,
    /// Its certificate.
    pub cert: Signed<mesh_proto::device::DeviceCert>,
    /// Its device id.
    pub device: mesh_proto::DeviceId,
}

impl Mesh {
    /// Register a fresh in-process device in `network` (which the admin owns).
    pub async fn rogue(&self, network: &NetworkId) -> Rogue {
        let key = crate::fresh_key();
        let (client, cert, device) = self.register_device_in(network, &key).await;
        Rogue {
            key,
            client,
            cert,
            device,
        }
    }

    /// A network node for `key` that dials this mesh's relay (and reserves nothing).
    pub async fn node(&self, key: &SigningKey) -> (Node, tokio::sync::mpsc::Receiver<Inbound>) {
        Node::spawn(
            key,
            NodeConfig {
                listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
                relays: vec![self.relay_addr.parse().unwrap()],
                reserve: false,
                job_timeout: Duration::from_secs(60),
                ..NodeConfig::default()
            },
        )
        .await
        .unwrap()
    }
}

/// Connect `node` to `peer`, retrying while the relay has not yet learnt (from its next
/// allow-list poll) that a freshly registered device may use it.
pub async fn connect(node: &Node, peer: PeerId) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match node.connect(peer).await {
            Ok(()) => return,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("could not reach {peer}: {e}"),
        }
    }
}

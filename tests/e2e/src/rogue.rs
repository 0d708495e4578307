//! In-process devices for tests that play a peer by hand: registered like any device, but
//! driving their own `mesh-net` node (to send hostile requests, or serve bad blobs).

use crate::Network;
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

impl Rogue {
    /// Ask the control plane to schedule a job of `workload` on `input` with this device as
    /// requester.
    pub async fn submit(
        &self,
        network: &NetworkId,
        workload: mesh_proto::Blake3Hash,
        input: &[u8],
    ) -> mesh_proto::api::JobAssignment {
        self.client
            .submit_job(
                network,
                &mesh_proto::api::SubmitJobRequest {
                    workload,
                    input: mesh_proto::Blake3Hash::of(input),
                    input_size: input.len() as u64,
                    idempotency_key: None,
                },
            )
            .await
            .unwrap()
    }
}

impl Network {
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

/// Answer every blob request on `inbound` with pieces of a `total`-byte blob of garbage (so
/// whatever is fetched has the wrong BLAKE3).
pub fn serve_wrong_blobs(mut inbound: tokio::sync::mpsc::Receiver<Inbound>, total: u64) {
    tokio::spawn(async move {
        while let Some(request) = inbound.recv().await {
            if let Inbound::Blob { request, reply, .. } = request {
                let _ = reply.send(mesh_proto::p2p::BlobResponse::Chunk {
                    total,
                    offset: request.offset,
                    data: vec![0x5a; total.saturating_sub(request.offset).min(400 << 10) as usize],
                });
            }
        }
    });
}

/// Answer every blob request on `inbound` with pieces of `blob` (whatever hash is asked for:
/// a requester that serves the one component its tickets name).
pub fn serve_blob(mut inbound: tokio::sync::mpsc::Receiver<Inbound>, blob: Vec<u8>) {
    tokio::spawn(async move {
        while let Some(request) = inbound.recv().await {
            if let Inbound::Blob { request, reply, .. } = request {
                let start = (request.offset as usize).min(blob.len());
                let end = (start + request.length as usize)
                    .min(blob.len())
                    .min(start + (400 << 10));
                let _ = reply.send(mesh_proto::p2p::BlobResponse::Chunk {
                    total: blob.len() as u64,
                    offset: request.offset,
                    data: blob[start..end].to_vec(),
                });
            }
        }
    });
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

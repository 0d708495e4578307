//! The Mesh data plane on libp2p, shared by the device agent, the relay and the control
//! plane's gateway: the [`Node`] (swarm, transports, protocols), the length-prefixed CBOR
//! [`codec`], and offline checks of control-plane-signed certificates and tickets.
//!
//! Message types live in `mesh_proto::p2p`; this crate adds the I/O.

mod candidates;
pub mod codec;
pub mod dispatch;
pub mod gate;
mod node;
pub mod verify;

pub use gate::Gate;
pub use libp2p::{Multiaddr, PeerId};
pub use node::{
    ConnectionInfo, DEFAULT_BLOB_TIMEOUT, DEFAULT_JOB_TIMEOUT, IDENTIFY_PROTOCOL, Inbound,
    JobAnswer, MeshBehaviour, NetError, Node, NodeConfig, NodeError, NodeStatus, QUIC_IDLE_TIMEOUT,
    QUIC_KEEP_ALIVE, is_relayed, keypair, quic_config, relay_peer,
};

/// Bytes `offset..offset + length` of a blob, capped at one chunk, as a blob server answers.
pub fn blob_chunk(bytes: &[u8], offset: u64, length: u32) -> mesh_proto::p2p::BlobResponse {
    use mesh_proto::p2p::{BlobResponse, MAX_BLOB_CHUNK_BYTES};
    let total = bytes.len() as u64;
    if offset > total {
        return BlobResponse::Refused(format!("offset {offset} is past the end ({total} bytes)"));
    }
    let start = offset as usize;
    let end = start
        .saturating_add((length as usize).min(MAX_BLOB_CHUNK_BYTES))
        .min(bytes.len());
    BlobResponse::Chunk {
        total,
        offset,
        data: bytes[start..end].to_vec(),
    }
}

//! Mesh wire types and identity, shared by the host, relay, control plane and CLI.
//!
//! This crate does no I/O and pulls in no runtime (no tokio, libp2p, axum or sqlx), so it
//! builds anywhere, wasm32 included. Binary encodings are CBOR ([`cbor`]), with explicit size
//! limits; JSON is used at the REST and CLI edges.

pub mod api;
pub mod batch;
pub mod cbor;
pub mod compare;
pub mod device;
pub mod document;
mod hash;
pub mod identity;
mod ids;
pub mod p2p;
pub mod pin;
pub mod receipt;
pub mod signed;
pub mod terms;
pub mod verification;
pub mod vrf;
pub mod workload;

pub use compare::{Comparison, Mismatch};
pub use hash::{Blake3Hash, ParseHashError};
pub use identity::{PublicKey, SignDomain, Signature, SignatureError, SigningKey};
pub use ids::{BatchId, DeviceId, InviteId, JobId, NetworkId, ParseIdError, PersonId, TokenId};
pub use receipt::{ModelBinding, RunReceipt, RunTimings};
pub use signed::{Signed, SignedError};
pub use workload::WorkloadMetadata;

/// Version of the Mesh wire protocol; bumped on every incompatible change.
///
/// History:
/// - 1 (2026-11-21): run receipts, workload metadata, comparison rules, device certificates,
///   heartbeats, job tickets, REST bodies, `/mesh/job/1` and `/mesh/blob/1`.
/// - 1 (2026-11-22): `/mesh/cancel/1` added beside them (a requester cancels a running job at
///   its executor). Additive: a peer without it only misses the cancellation, so the version
///   stayed 1.
pub const PROTOCOL_VERSION: u32 = 1;

//! Fuzz targets for the decoders that read what another party sent, and a mutational harness
//! that runs them on stable Rust.
//!
//! Each target takes arbitrary bytes and must neither panic nor accept what it should refuse;
//! some also check a property (a decoded frame re-encodes to something that decodes the
//! same; a token id is in the vocabulary). [`harness::fuzz`] mutates a seed corpus (bit
//! flips, byte and length edits, splices, CBOR and JSON tokens) without coverage feedback:
//! weaker than libFuzzer, but it runs in `cargo test` on the stable toolchain, in CI as a
//! short smoke (`tests/smoke.rs`) and for as long as asked locally (`tests/long.rs`).

pub mod harness;
pub mod seeds;

use mesh_proto::api::*;
use mesh_proto::device::{DeviceCert, Heartbeat};
use mesh_proto::p2p::{
    BlobRequest, BlobResponse, JobRequest, JobResponse, PieceRequest, PieceResponse,
};
use mesh_proto::{NetworkId, RunReceipt, SignDomain, Signed};

/// A target: bytes in, panic on a bug.
pub type Target = fn(&[u8]);

/// Every target, by name (the corpus directory `corpus/<name>/` holds its seeds).
pub const TARGETS: &[(&str, Target)] = &[
    ("cbor_frame", cbor_frame),
    ("signed", signed),
    (
        "certificates_tickets_receipts",
        certificates_tickets_receipts,
    ),
    ("job_document", job_document),
    ("tokenizer", tokenizer),
    ("rest_bodies", rest_bodies),
];

/// Decode `bytes` as CBOR `T` within `limit`; when that works, encoding and decoding again
/// gives the same value.
fn round_trips<T>(bytes: &[u8], limit: usize)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(value) = mesh_proto::cbor::from_slice_limited::<T>(bytes, limit) {
        let again = mesh_proto::cbor::to_vec(&value).expect("a decoded value encodes");
        let back: T = mesh_proto::cbor::from_slice(&again).expect("its encoding decodes");
        assert_eq!(back, value, "CBOR round trip changed the value");
    }
}

/// The libp2p frame codec (a length prefix, then CBOR), as a host or the gateway reads a
/// peer's request or answer: the cap holds before any allocation, and what decodes
/// round-trips.
pub fn cbor_frame(data: &[u8]) {
    const CAP: usize = 1 << 16;
    let mut reader = futures::io::Cursor::new(data);
    let Ok(frame) = futures::executor::block_on(mesh_net::codec::read_frame(&mut reader, CAP))
    else {
        return;
    };
    assert!(frame.len() <= CAP);
    round_trips::<JobRequest>(&frame, CAP);
    round_trips::<JobResponse>(&frame, CAP);
    round_trips::<BlobRequest>(&frame, CAP);
    round_trips::<BlobResponse>(&frame, CAP);
    round_trips::<PieceRequest>(&frame, CAP);
    round_trips::<PieceResponse>(&frame, CAP);
}

/// `Signed<T>` decode, peek and verify: nothing verifies under a key that did not sign it (the
/// seeds are signed by [`seeds::key`], the bytes are mutated, so a verified message must be
/// byte-identical to a seed's payload).
pub fn signed(data: &[u8]) {
    let network = seeds::network();
    let stranger = mesh_proto::SigningKey::from_seed([9; 32]).public_key();
    if let Ok(signed) = mesh_proto::cbor::from_slice::<Signed<Heartbeat>>(data) {
        let _ = signed.peek();
        let _ = signed.hash();
        assert!(
            signed
                .verify(&stranger, SignDomain::Heartbeat, &network)
                .is_err(),
            "a stranger's key verified a heartbeat"
        );
        if let Ok(heartbeat) =
            signed.verify(&seeds::key().public_key(), SignDomain::Heartbeat, &network)
        {
            assert_eq!(
                heartbeat,
                seeds::heartbeat(),
                "a changed heartbeat verified"
            );
            // The same bytes never verify in another domain or network.
            assert!(
                signed
                    .verify(&seeds::key().public_key(), SignDomain::Receipt, &network)
                    .is_err()
            );
            assert!(
                signed
                    .verify(
                        &seeds::key().public_key(),
                        SignDomain::Heartbeat,
                        &NetworkId::from_bytes([7; 16])
                    )
                    .is_err()
            );
        }
    }
}

/// Certificates, tickets and receipts through the checks hosts and the gateway apply.
pub fn certificates_tickets_receipts(data: &[u8]) {
    let network = seeds::network();
    let control_plane = seeds::key().public_key();
    let now = seeds::NOW_MS;
    if let Ok(cert) = mesh_proto::cbor::from_slice::<Signed<DeviceCert>>(data)
        && let Ok(checked) =
            mesh_net::verify::device_cert(&cert, &control_plane, Some(&network), None, now)
    {
        assert_eq!(
            checked,
            seeds::certificate(),
            "a changed certificate verified"
        );
    }
    if let Ok(ticket) = mesh_proto::cbor::from_slice::<Signed<JobTicket>>(data) {
        let executor = seeds::executor_peer();
        if let Ok(checked) = mesh_net::verify::job_ticket(
            &ticket,
            &control_plane,
            &network,
            &executor,
            &executor,
            now,
        ) {
            assert_eq!(checked, seeds::ticket(), "a changed ticket verified");
        }
    }
    if let Ok(receipt) = mesh_proto::cbor::from_slice::<Signed<RunReceipt>>(data)
        && let Ok(checked) =
            mesh_net::verify::receipt(&receipt, &seeds::signed_ticket(), seeds::OUTPUT)
    {
        assert_eq!(checked, seeds::receipt(), "a changed receipt verified");
    }
}

/// Job documents (JSON or CBOR), as the gateway and the comparison rules read outputs.
pub fn job_document(data: &[u8]) {
    if let Ok(value) = mesh_proto::document::parse(data) {
        let _ = mesh_proto::document::to_json_string(data);
        // A JSON document agrees with itself under every rule.
        if mesh_proto::document::is_json(data) {
            for rule in [
                mesh_proto::Comparison::Exact,
                mesh_proto::Comparison::FloatTolerance(0.0),
                mesh_proto::Comparison::Cosine(0.99),
            ] {
                if let Err(e) = rule.compare(data, data) {
                    // Zero vectors and numbers JSON cannot hold exactly are the exceptions.
                    assert!(
                        !matches!(e, mesh_proto::Mismatch::Structure { .. }),
                        "{value} differs from itself in structure: {e}"
                    );
                }
            }
        }
    }
}

/// The WordPiece tokenizer on arbitrary text: ids within the vocabulary, at most the
/// maximum number of tokens.
pub fn tokenizer(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let tokenizer = seeds::tokenizer();
    let ids = tokenizer.encode(&text);
    assert!(ids.len() <= tokenizer.max_tokens());
    let size = tokenizer.vocab().len() as u32;
    assert!(
        ids.iter().all(|&id| id < size),
        "an id outside the vocabulary"
    );
}

/// REST request bodies, decoded as the control plane decodes them, then through the checks
/// it applies to names, policies, invite codes and secrets.
pub fn rest_bodies(data: &[u8]) {
    fn decode<T: serde::de::DeserializeOwned>(data: &[u8]) -> Option<T> {
        serde_json::from_slice(data).ok()
    }
    use mesh_control_plane::domain::membership::{check_name, check_policy};
    if let Some(r) = decode::<CreateNetworkRequest>(data) {
        let _ = check_name(&r.name);
        let _ = check_policy(&r.policy);
    }
    if let Some(r) = decode::<NetworkPolicy>(data) {
        let _ = check_policy(&r);
    }
    if let Some(r) = decode::<AcceptInviteRequest>(data) {
        let _ = mesh_proto::pin::split_invite_code(&r.code);
        if let Some(name) = &r.name
            && let Ok(clean) = check_name(name)
        {
            assert!(
                !clean
                    .chars()
                    .any(mesh_control_plane::domain::membership::is_deceptive)
            );
        }
    }
    if let Some(r) = decode::<RegisterDeviceRequest>(data) {
        let _ = check_name(&r.name);
        let _ = mesh_proto::pin::split_invite_code(&r.invite);
    }
    let _ = decode::<CreateInviteRequest>(data);
    let _ = decode::<SubmitJobRequest>(data);
    let _ = decode::<RunJobRequest>(data);
    let _ = decode::<GrantRequest>(data);
    let _ = decode::<FailJobRequest>(data);
    let _ = decode::<CompleteJobRequest>(data);
    let _ = decode::<UpdateMemberRequest>(data);
    let _ = decode::<CreateTokenRequest>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = mesh_proto::api::check_shared_secret("fuzz", text);
    }
}

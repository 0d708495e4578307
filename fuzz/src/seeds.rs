//! Valid inputs for each target, made with fixed keys, so mutants start from something the
//! decoders accept and the targets know what a genuine message is. The committed corpora
//! (`corpus/<target>/`) are these, written by `tests/long.rs`'s `write_seed_corpus`.

use mesh_proto::api::{JobTicket, SubmitJobRequest};
use mesh_proto::device::{DeviceCert, DeviceLoad, Heartbeat};
use mesh_proto::p2p::{
    BlobRequest, BlobResponse, JobRequest, JobResponse, PieceRequest, PieceResponse,
};
use mesh_proto::{
    Blake3Hash, DeviceId, JobId, NetworkId, PersonId, RunReceipt, RunTimings, SignDomain, Signed,
    SigningKey,
};
use std::sync::OnceLock;

/// The clock of every check (certificates and tickets are valid at it).
pub const NOW_MS: u64 = 1_800_000_000_000;
/// The output the seed receipt pins.
pub const OUTPUT: &[u8] = br#"{"embeddings":[[0.6,0.8]],"tokens":2}"#;

/// The key that signs every seed (it plays the control plane, and the heartbeat's device).
pub fn key() -> SigningKey {
    SigningKey::from_seed([1; 32])
}

/// The executor's key: its peer id is the ticket's executor.
pub fn executor_key() -> SigningKey {
    SigningKey::from_seed([3; 32])
}

/// The executor's libp2p peer id.
pub fn executor_peer() -> mesh_net::PeerId {
    executor_key()
        .public_key()
        .peer_id()
        .parse()
        .expect("a peer id")
}

/// The network of every seed.
pub fn network() -> NetworkId {
    NetworkId::from_bytes([2; 16])
}

/// The seed heartbeat.
pub fn heartbeat() -> Heartbeat {
    Heartbeat {
        device: DeviceId::from_bytes([4; 16]),
        network: network(),
        sent_at_ms: NOW_MS,
        load: DeviceLoad {
            running: 1,
            queued: 2,
            slots: 4,
            others_busy_percent: None,
        },
        terms: Default::default(),
    }
}

/// The seed certificate (of the executor).
pub fn certificate() -> DeviceCert {
    let public_key = executor_key().public_key();
    DeviceCert {
        version: 1,
        device: DeviceId::from_bytes([5; 16]),
        network: network(),
        owner: PersonId::from_bytes([6; 16]),
        peer_id: public_key.peer_id(),
        public_key,
        issued_at_ms: NOW_MS - 1000,
        expires_at_ms: NOW_MS + 3_600_000,
    }
}

/// The seed ticket: the executor may run it and presents it itself.
pub fn ticket() -> JobTicket {
    let peer = executor_key().public_key().peer_id();
    JobTicket {
        job: JobId::from_bytes([7; 16]),
        network: network(),
        requester: PersonId::from_bytes([6; 16]),
        executor: DeviceId::from_bytes([5; 16]),
        executor_peer: peer.clone(),
        requester_peer: peer,
        workload: Blake3Hash::of(b"component"),
        input: Blake3Hash::of(b"input"),
        price: 3,
        expires_at_ms: (NOW_MS + 60_000) as i64,
        // (The terms' fields are left out, so the committed corpus still holds this ticket.)
        workload_name: None,
        publisher: None,
        requester_role: None,
    }
}

/// The seed ticket, signed by the control plane.
pub fn signed_ticket() -> Signed<JobTicket> {
    Signed::sign(&ticket(), &key(), SignDomain::JobTicket, &network()).expect("signs")
}

/// The seed receipt: for the seed ticket, pinning [`OUTPUT`].
pub fn receipt() -> RunReceipt {
    let ticket = ticket();
    RunReceipt {
        job: Some(ticket.job),
        ticket: Some(signed_ticket().hash()),
        component: ticket.workload,
        models: vec![mesh_proto::ModelBinding {
            name: "all-minilm-l6-v2".into(),
            hash: Blake3Hash::of(b"model"),
            variant: "fp32".into(),
        }],
        input: ticket.input,
        output: Blake3Hash::of(OUTPUT),
        backend: "onnxruntime".into(),
        timings: RunTimings::default(),
    }
}

/// The embeddings workload's tokenizer (built once).
pub fn tokenizer() -> &'static mesh_tokenizer::Tokenizer {
    static TOKENIZER: OnceLock<mesh_tokenizer::Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        mesh_tokenizer::Tokenizer::from_vocab_text(include_str!(
            "../../workloads/embeddings/vocab.txt"
        ))
        .expect("the vocabulary parses")
    })
}

fn frame(bytes: Vec<u8>) -> Vec<u8> {
    let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
    out.extend(bytes);
    out
}

fn cbor<T: serde::Serialize>(value: &T) -> Vec<u8> {
    mesh_proto::cbor::to_vec(value).expect("encodes")
}

/// Valid inputs for the target `name`.
pub fn for_target(name: &str) -> Vec<Vec<u8>> {
    let cert =
        Signed::sign(&certificate(), &key(), SignDomain::DeviceCert, &network()).expect("signs");
    let receipt =
        Signed::sign(&receipt(), &executor_key(), SignDomain::Receipt, &network()).expect("signs");
    match name {
        "cbor_frame" => vec![
            frame(cbor(&JobRequest {
                ticket: signed_ticket(),
                requester_cert: Some(cert),
                input: b"input".to_vec(),
                stream: false,
            })),
            frame(cbor(&JobResponse::Done {
                output: OUTPUT.to_vec(),
                receipt,
            })),
            frame(cbor(&BlobRequest {
                ticket: signed_ticket(),
                hash: Blake3Hash::of(b"component"),
                offset: 0,
                length: 1 << 20,
            })),
            frame(cbor(&BlobResponse::Chunk {
                total: 3,
                offset: 0,
                data: vec![1, 2, 3],
            })),
            frame(cbor(&PieceRequest {
                job: ticket().job,
                seq: 3,
                bytes: b"The capital".to_vec(),
            })),
            frame(cbor(&PieceResponse::Refused("out of order".into()))),
        ],
        "signed" => vec![cbor(
            &Signed::sign(&heartbeat(), &key(), SignDomain::Heartbeat, &network()).expect("signs"),
        )],
        "certificates_tickets_receipts" => vec![cbor(&cert), cbor(&signed_ticket()), cbor(&receipt)],
        "job_document" => vec![
            OUTPUT.to_vec(),
            br#"{"texts": ["hello world", "caf\u00e9"], "batch_size": 2}"#.to_vec(),
            cbor(&serde_json::json!({"embeddings": [[0.0, 1.0], [1e-7, -3.5]], "tokens": 4})),
        ],
        "tokenizer" => vec![
            "Hello, world! Tokenise THIS: naïve café 東京 🚀".as_bytes().to_vec(),
            "unaffable antidisestablishmentarianism x".repeat(4).into_bytes(),
        ],
        "rest_bodies" => vec![
            br#"{"name":"home","policy":{"require_device_approval":true,"initial_grant":1000,"allow_credit":false,"credit_limit":0,"job_price":1}}"#.to_vec(),
            br#"{"code":"mesh-invite-abc.k0123456789abcdef0123456789abcdef","name":"Ada"}"#.to_vec(),
            serde_json::to_vec(&SubmitJobRequest {
                workload: Blake3Hash::of(b"component"),
                input: Blake3Hash::of(b"input"),
                input_size: 5,
                idempotency_key: Some("k".into()),
            })
            .expect("encodes"),
            br#"{"person":"usr_00000000000000000000000000000000","amount":5,"idempotency_key":"g"}"#.to_vec(),
        ],
        _ => Vec::new(),
    }
}

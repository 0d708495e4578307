//! Hostile frames on `/mesh/job/1`: a device of the network (so the relay lets it through)
//! speaks the protocol with a raw codec and sends malformed CBOR and a frame announcing
//! 2 GiB. The host refuses each on that stream alone (the oversized one before allocating)
//! and keeps serving. A peer that is not a device of the network gets no connection at all.

use futures::prelude::*;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, noise, relay, yamux};
use mesh_e2e::raw::RawCodec;
use mesh_e2e::{MeshOptions, Network, TestNet};
use mesh_proto::SigningKey;
use mesh_proto::api::{JobState, RunJobRequest};
use std::time::Duration;

#[derive(NetworkBehaviour)]
struct Raw {
    relay_client: relay::client::Behaviour,
    job: request_response::Behaviour<RawCodec>,
}

async fn registered_key(mesh: &Network) -> SigningKey {
    let key = mesh_e2e::fresh_key();
    mesh.register_device(&key).await;
    // Let the relay's next allow-list poll pick the new device up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    key
}

/// Send `bytes` raw on `/mesh/job/1` to `host` through the relay; returns the answer bytes or
/// the failure.
async fn send_raw(
    key: &SigningKey,
    relay: &Multiaddr,
    host: PeerId,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, String> {
    let circuit = relay
        .clone()
        .with(libp2p::multiaddr::Protocol::P2pCircuit)
        .with(libp2p::multiaddr::Protocol::P2p(host));
    send_raw_to(key, circuit, host, bytes).await
}

/// Send `bytes` raw on `/mesh/job/1` to `host` at `address`.
async fn send_raw_to(
    key: &SigningKey,
    address: Multiaddr,
    host: PeerId,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, String> {
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(mesh_net::keypair(key))
        .with_tokio()
        .with_quic_config(mesh_net::quic_config)
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_, relay_client| Raw {
            relay_client,
            job: request_response::Behaviour::with_codec(
                RawCodec,
                [(
                    StreamProtocol::new(mesh_proto::p2p::JOB_PROTOCOL),
                    ProtocolSupport::Outbound,
                )],
                request_response::Config::default().with_request_timeout(Duration::from_secs(20)),
            ),
        })
        .unwrap()
        .build();
    swarm
        .behaviour_mut()
        .job
        .send_request_with_addresses(&host, bytes, vec![address]);
    loop {
        match tokio::time::timeout(Duration::from_secs(30), swarm.select_next_some()).await {
            Err(_) => return Err("no outcome".into()),
            Ok(SwarmEvent::Behaviour(RawEvent::Job(request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            }))) => return Ok(response),
            Ok(SwarmEvent::Behaviour(RawEvent::Job(
                request_response::Event::OutboundFailure { error, .. },
            ))) => {
                return Err(error.to_string());
            }
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_frames_are_refused() {
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 1,
        ..MeshOptions::default()
    })
    .await;
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    let key = registered_key(&mesh).await;
    let relay: Multiaddr = mesh.relay_addr.parse().unwrap();
    let host: PeerId = mesh.hosts[0].peer.parse().unwrap();

    // A well-framed message that is not CBOR of a job request.
    let mut malformed = 3u32.to_be_bytes().to_vec();
    malformed.extend_from_slice(&[0xff, 0x00, 0x13]);
    let err = send_raw(&key, &relay, host, malformed).await.unwrap_err();
    eprintln!("malformed: {err}");
    assert!(!err.is_empty());
    mesh.hosts[0]
        .log
        .wait_for("malformed CBOR", Duration::from_secs(5))
        .await;

    // A frame announcing 2 GiB: refused from the length alone.
    let mut huge = (2u32 << 30).to_be_bytes().to_vec();
    huge.extend_from_slice(&[0u8; 1024]);
    let err = send_raw(&key, &relay, host, huge).await.unwrap_err();
    assert!(!err.is_empty());
    mesh.hosts[0]
        .log
        .wait_for("exceeds the cap", Duration::from_secs(5))
        .await;

    // Nothing else was disturbed.
    let result = mesh
        .admin
        .run_job(
            &mesh.network_id(),
            &RunJobRequest {
                workload,
                input: serde_json::json!({"texts": ["still serving"]}),
                idempotency_key: None,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", mesh.logs()));
    assert_eq!(result.job.state, JobState::Done);
}

/// The host's direct QUIC address on loopback, from its log.
fn direct_address(log: &str) -> Multiaddr {
    let needle = "listening address=/ip4/127.0.0.1/udp/";
    let start =
        log.find(needle).expect("the host logs its listen address") + "listening address=".len();
    let end = log[start..]
        .find(|c: char| c.is_whitespace())
        .map_or(log.len(), |e| start + e);
    log[start..end].parse().expect("a multiaddr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_get_no_connection_and_members_reach_the_codec() {
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 1,
        ..MeshOptions::default()
    })
    .await;
    let host: PeerId = mesh.hosts[0].peer.parse().unwrap();
    let address = direct_address(&mesh.hosts[0].log.text());
    let mut malformed = 3u32.to_be_bytes().to_vec();
    malformed.extend_from_slice(&[0xff, 0x00, 0x13]);
    // A frame announcing 60 KiB that never arrives: what a flood of them would cost the host
    // is what an outsider could hold, if it got in.
    let mut stalled = (60u32 << 10).to_be_bytes().to_vec();
    stalled.extend_from_slice(&[0u8; 1024]);

    // An outsider reaches the host's own address directly (no relay to stop it): the host
    // refuses the connection as soon as it knows the peer's key, before any protocol runs.
    let outsider = mesh_e2e::fresh_key();
    for bytes in [malformed.clone(), stalled] {
        let err = send_raw_to(&outsider, address.clone(), host, bytes)
            .await
            .unwrap_err();
        // (The outsider sees its new connection close or its dial fail, as the race goes.)
        eprintln!("outsider: {err}");
    }
    mesh.hosts[0]
        .log
        .wait_for(
            "refused a connection from a peer that is not a known device",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(mesh.hosts[0].log.count("malformed CBOR"), 0);
    assert_eq!(mesh.hosts[0].log.count("refused an inbound request"), 0);

    // Once it is a device of the network, the same peer gets in (the host fetches the new
    // list soon after refusing it) and its bytes reach the codec, which refuses them.
    mesh.register_device(&outsider).await;
    let mut reached = false;
    for _ in 0..10 {
        let _ = send_raw_to(&outsider, address.clone(), host, malformed.clone()).await;
        if mesh.hosts[0].log.count("malformed CBOR") > 0 {
            reached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        reached,
        "an approved device never got through\n{}",
        mesh.logs()
    );
}

/// A node of `key` that dials the mesh's relay and reserves on it, so others reach it.
async fn reachable_node(
    mesh: &Network,
    key: &SigningKey,
) -> (
    mesh_net::Node,
    tokio::sync::mpsc::Receiver<mesh_net::Inbound>,
) {
    let (node, inbound) = mesh_net::Node::spawn(
        key,
        mesh_net::NodeConfig {
            listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
            relays: vec![mesh.relay_addr.parse().unwrap()],
            reserve: true,
            ..mesh_net::NodeConfig::default()
        },
    )
    .await
    .unwrap();
    assert!(
        node.wait_for(Duration::from_secs(10), |s| !s.reserved_on.is_empty())
            .await,
        "no reservation"
    );
    (node, inbound)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_pieces_reach_only_their_job_in_order_and_within_caps() {
    use mesh_proto::api::JobTicket;
    use mesh_proto::p2p::{JobRefusal, JobRequest, JobResponse, PieceRequest, PieceResponse};
    use mesh_proto::{Blake3Hash, JobId, SignDomain, Signed};
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 0,
        ..MeshOptions::default()
    })
    .await;
    let network = mesh.network_id();
    let admin = mesh.admin.me().await.unwrap().person.id;
    // Three devices of the network: a requester, its executor, and a third member that
    // tries to write into the requester's stream.
    let (requester, executor, intruder) = (
        mesh.rogue(&network).await,
        mesh.rogue(&network).await,
        mesh.rogue(&network).await,
    );
    tokio::time::sleep(Duration::from_secs(2)).await; // the relay's allow-list
    let (requester_node, _) = reachable_node(&mesh, &requester.key).await;
    let (executor_node, mut executor_inbound) = reachable_node(&mesh, &executor.key).await;
    let (intruder_node, _) = reachable_node(&mesh, &intruder.key).await;
    let executor_peer = executor_node.peer_id();
    let requester_peer = requester_node.peer_id();
    // (Nodes only read a ticket's job id; the executor's agent checks the rest.)
    let request = |job: JobId| {
        let ticket = JobTicket {
            job,
            network,
            requester: admin,
            executor: executor.device,
            executor_peer: executor_peer.to_string(),
            requester_peer: requester_peer.to_string(),
            workload: Blake3Hash::of(b"w"),
            input: Blake3Hash::of(b"in"),
            price: 1,
            expires_at_ms: mesh_net::verify::now_ms() as i64 + 60_000,
            workload_name: None,
            publisher: None,
            requester_role: None,
        };
        JobRequest {
            ticket: Signed::sign(&ticket, &requester.key, SignDomain::JobTicket, &network).unwrap(),
            requester_cert: None,
            input: b"in".to_vec(),
            stream: true,
        }
    };
    // The requester sends a job that streams; the executor holds it while it tries things.
    let start = |job: JobId| {
        let (pieces, received) = tokio::sync::mpsc::unbounded_channel();
        let node = requester_node.clone();
        let request = request(job);
        let answer = tokio::spawn(async move {
            node.request_job_streaming(executor_peer, request, pieces)
                .await
        });
        (answer, received)
    };
    let job = JobId::from_bytes([1; 16]);
    let (answer, mut received) = start(job);
    let Some(mesh_net::Inbound::Job { reply, .. }) = executor_inbound.recv().await else {
        panic!("the executor got no job");
    };
    let piece = |seq: u32, bytes: &[u8]| PieceRequest {
        job,
        seq,
        bytes: bytes.to_vec(),
    };
    let from_executor = |p| executor_node.send_piece(requester_peer, p);
    assert_eq!(
        from_executor(piece(0, b"one")).await.unwrap(),
        PieceResponse::Taken
    );
    // Another member's pieces for that job are not its executor's: nothing reaches the job.
    intruder_node.connect(requester_peer).await.unwrap();
    for seq in [1, 0] {
        let response = intruder_node
            .send_piece(requester_peer, piece(seq, b"forged"))
            .await
            .unwrap();
        assert_eq!(response, PieceResponse::Unwanted);
    }
    assert_eq!(
        from_executor(piece(1, b"two")).await.unwrap(),
        PieceResponse::Taken
    );
    // Out of order: refused, and the stream takes nothing more from anyone.
    assert!(matches!(
        from_executor(piece(3, b"four")).await.unwrap(),
        PieceResponse::Refused(why) if why.contains("piece 3 came where piece 2 was due")
    ));
    assert_eq!(
        from_executor(piece(2, b"three")).await.unwrap(),
        PieceResponse::Unwanted
    );
    let _ = reply.send(JobResponse::Refused(JobRefusal::Busy { queued: 0 }));
    answer.await.unwrap().unwrap();
    let mut got = Vec::new();
    while let Some(piece) = received.recv().await {
        got.push(piece);
    }
    assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);

    // Caps: a piece over 64 KiB, and more than 4 MiB in all, are refused.
    let job = JobId::from_bytes([2; 16]);
    let (answer, mut received) = start(job);
    let Some(mesh_net::Inbound::Job { reply, .. }) = executor_inbound.recv().await else {
        panic!("the executor got no job");
    };
    let big = vec![7u8; (64 << 10) + 1];
    let response = executor_node
        .send_piece(
            requester_peer,
            PieceRequest {
                job,
                seq: 0,
                bytes: big,
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(&response, PieceResponse::Refused(why) if why.contains("over the 65536-byte cap")),
        "{response:?}"
    );
    let _ = reply.send(JobResponse::Refused(JobRefusal::Busy { queued: 0 }));
    answer.await.unwrap().unwrap();
    assert!(received.recv().await.is_none());

    let job = JobId::from_bytes([3; 16]);
    let (answer, mut received) = start(job);
    let Some(mesh_net::Inbound::Job { reply, .. }) = executor_inbound.recv().await else {
        panic!("the executor got no job");
    };
    let full = vec![7u8; 64 << 10];
    for seq in 0..64 {
        let response = executor_node
            .send_piece(
                requester_peer,
                PieceRequest {
                    job,
                    seq,
                    bytes: full.clone(),
                },
            )
            .await
            .unwrap();
        assert_eq!(response, PieceResponse::Taken, "piece {seq}");
    }
    let response = executor_node
        .send_piece(
            requester_peer,
            PieceRequest {
                job,
                seq: 64,
                bytes: vec![1],
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(&response, PieceResponse::Refused(why) if why.contains("streamed over 4194304 bytes")),
        "{response:?}"
    );
    let _ = reply.send(JobResponse::Refused(JobRefusal::Busy { queued: 0 }));
    answer.await.unwrap().unwrap();
    let mut total = 0;
    while let Some(piece) = received.recv().await {
        total += piece.len();
    }
    assert_eq!(total, 4 << 20);

    // A job asked for without streaming takes no pieces at all.
    let job = JobId::from_bytes([4; 16]);
    let mut plain = request(job);
    plain.stream = false;
    let node = requester_node.clone();
    let answer = tokio::spawn(async move { node.request_job(executor_peer, plain).await });
    let Some(mesh_net::Inbound::Job { reply, .. }) = executor_inbound.recv().await else {
        panic!("the executor got no job");
    };
    let response = executor_node
        .send_piece(
            requester_peer,
            PieceRequest {
                job,
                seq: 0,
                bytes: b"unasked".to_vec(),
            },
        )
        .await
        .unwrap();
    assert_eq!(response, PieceResponse::Unwanted);
    let _ = reply.send(JobResponse::Refused(JobRefusal::Busy { queued: 0 }));
    answer.await.unwrap().unwrap();
}

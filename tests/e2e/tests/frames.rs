//! Hostile frames on `/mesh/job/1`: a device of the network (so the relay lets it through)
//! speaks the protocol with a raw codec and sends malformed CBOR and a frame announcing
//! 2 GiB. The host refuses each on that stream alone (the oversized one before allocating)
//! and keeps serving.

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
    let circuit = relay
        .clone()
        .with(libp2p::multiaddr::Protocol::P2pCircuit)
        .with(libp2p::multiaddr::Protocol::P2p(host));
    swarm
        .behaviour_mut()
        .job
        .send_request_with_addresses(&host, bytes, vec![circuit]);
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

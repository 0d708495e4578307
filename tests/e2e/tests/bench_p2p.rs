//! Data-plane benchmark (ignored by `cargo test`; run it on release builds with
//! `cargo build --release --workspace --bins` and
//! `cargo test --release -p mesh-e2e --test bench_p2p -- --ignored --nocapture`).
//!
//! Side by side in one run, on the same loopback path through the same relay:
//! - job round trip (`/mesh/job/1`: ticket and certificate checks, queue, sandboxed run,
//!   signed receipt, receipt check) for the no-op echo workload and one-sentence embeddings,
//!   relayed and direct, against bare libp2p request-response of the same sizes answered by a
//!   bare responder in its own process (as the host is); the baseline adds the run time the
//!   executor measured itself, so the ratio is the mesh's overhead, and the time the host's
//!   agent held the job shows where it goes. Tickets are fetched first and both sides send
//!   their requests back to back on a quiet machine (see [`mesh_round_trips`]);
//! - component transfer over `/mesh/blob/1` (1 MiB chunks) against one bare libp2p stream;
//! - relay memory per reserved device, with hundreds of devices.

use futures::prelude::*;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, noise, relay, yamux};
use mesh_e2e::raw::RawCodec;
use mesh_e2e::{Mesh, MeshOptions};
use mesh_net::{Inbound, Node, NodeConfig};
use mesh_proto::api::SubmitJobRequest;
use mesh_proto::p2p::{BlobRequest, BlobResponse, JobRequest, JobResponse, MAX_BLOB_CHUNK_BYTES};
use mesh_proto::{Blake3Hash, SigningKey};
use std::time::{Duration, Instant};

const SAMPLES: usize = 40;

#[derive(NetworkBehaviour)]
struct Bare {
    relay_client: relay::client::Behaviour,
    rr: request_response::Behaviour<RawCodec>,
}

fn bare_swarm(key: &SigningKey) -> Swarm<Bare> {
    libp2p::SwarmBuilder::with_existing_identity(mesh_net::keypair(key))
        .with_tokio()
        .with_quic_config(mesh_net::quic_config)
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_, relay_client| Bare {
            relay_client,
            rr: request_response::Behaviour::with_codec(
                RawCodec,
                [(StreamProtocol::new("/bench/raw/1"), ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(60)),
            ),
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// A bare responder reserving on the relay and listening directly; answers every request with
/// as many bytes as its first four (big-endian) ask for. Returns its direct address.
async fn bare_responder(key: &SigningKey, relay: &Multiaddr) -> Multiaddr {
    let mut swarm = bare_swarm(key);
    swarm
        .listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap())
        .unwrap();
    swarm
        .listen_on(relay.clone().with(Protocol::P2pCircuit))
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    let mut direct = None;
    let mut reserved = false;
    tokio::spawn(async move {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { address, .. } if !mesh_net::is_relayed(&address) => {
                    direct = Some(address);
                }
                SwarmEvent::Behaviour(BareEvent::RelayClient(
                    relay::client::Event::ReservationReqAccepted { .. },
                )) => {
                    reserved = true;
                }
                SwarmEvent::Behaviour(BareEvent::Rr(request_response::Event::Message {
                    message:
                        request_response::Message::Request {
                            channel, request, ..
                        },
                    ..
                })) => {
                    let size = u32::from_be_bytes(request[..4].try_into().unwrap()) as usize;
                    let _ = swarm
                        .behaviour_mut()
                        .rr
                        .send_response(channel, vec![7u8; size]);
                }
                _ => {}
            }
            if reserved
                && direct.is_some()
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(direct.clone().unwrap());
            }
        }
    });
    rx.await.unwrap()
}

/// Median time of `samples` bare round trips of `request_bytes` out and `response_bytes`
/// back, to `peer` at `address`.
async fn bare_round_trips(
    swarm: &mut Swarm<Bare>,
    peer: PeerId,
    address: Multiaddr,
    request_bytes: usize,
    response_bytes: usize,
    samples: usize,
) -> Duration {
    let mut times = Vec::new();
    for i in 0..samples + 3 {
        let mut request = vec![1u8; request_bytes.max(4)];
        request[..4].copy_from_slice(&(response_bytes as u32).to_be_bytes());
        let started = Instant::now();
        swarm
            .behaviour_mut()
            .rr
            .send_request_with_addresses(&peer, request, vec![address.clone()]);
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(BareEvent::Rr(request_response::Event::Message {
                    message: request_response::Message::Response { .. },
                    ..
                })) => break,
                SwarmEvent::Behaviour(BareEvent::Rr(
                    request_response::Event::OutboundFailure { error, .. },
                )) => {
                    panic!("bare request failed: {error}")
                }
                _ => {}
            }
        }
        if i >= 3 {
            times.push(started.elapsed());
        }
    }
    median(&mut times)
}

/// Seconds since midnight of a log line's timestamp (`2026-01-01T12:34:56.789012Z ...`).
fn log_time(line: &str) -> Option<f64> {
    let clock = line.split_once('T')?.1.split_once('Z')?.0;
    let mut parts = clock.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Median time the host's agent held each of the last `n` jobs: from its `job request` log
/// line to its `job done` line (jobs run one at a time here).
fn agent_time(log: &str, n: usize) -> Duration {
    let mut started = None;
    let mut times = Vec::new();
    for line in log.lines() {
        if line.contains("job request") {
            started = log_time(line);
        } else if line.contains("job done")
            && let (Some(a), Some(b)) = (started.take(), log_time(line))
        {
            times.push(Duration::from_secs_f64((b - a).max(0.0)));
        }
    }
    let mut last = times.split_off(times.len().saturating_sub(n));
    if last.is_empty() {
        return Duration::ZERO;
    }
    median(&mut last)
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

struct JobSample {
    round_trip: Duration,
    /// From the host's agent taking the request off its node to handing the answer back.
    in_agent: Duration,
    run: Duration,
    request_bytes: usize,
    response_bytes: usize,
    relayed: bool,
}

/// Median mesh job round trip and the run time the executor reported. The tickets are fetched
/// from the control plane first and the receipts checked and reported after, all untimed, so
/// the jobs go out back to back as the bare requests do, and no control-plane call sits
/// between them. Returns once the host's own reports are done, so the bare round trips that
/// follow start on a quiet machine too. (Interleaving one job and one bare request instead
/// slows the bare one down: it then shares the CPU with what the job leaves behind.)
async fn mesh_round_trips(
    mesh: &Mesh,
    node: &Node,
    client: &mesh_client::Client,
    cert: &mesh_proto::Signed<mesh_proto::device::DeviceCert>,
    workload: Blake3Hash,
    input: &[u8],
) -> JobSample {
    let mut assignments = Vec::new();
    for _ in 0..SAMPLES + 3 {
        let assignment = client
            .submit_job(
                &mesh.network_id(),
                &SubmitJobRequest {
                    workload,
                    input: Blake3Hash::of(input),
                    input_size: input.len() as u64,
                    idempotency_key: None,
                },
            )
            .await
            .unwrap();
        assert!(assignment.ticket.is_some(), "assigned");
        assignments.push(assignment);
    }
    // Let the control plane finish what the submissions left it (as the bare round trips
    // below also start on a quiet machine).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut answers = Vec::new();
    for assignment in &assignments {
        let ticket = assignment.ticket.clone().unwrap();
        let peer: PeerId = assignment
            .executor_peer_id
            .as_ref()
            .unwrap()
            .parse()
            .unwrap();
        let request = JobRequest {
            ticket,
            requester_cert: Some(cert.clone()),
            input: input.to_vec(),
            stream: false,
        };
        let request_bytes = mesh_proto::cbor::to_vec(&request).unwrap().len();
        let started = Instant::now();
        let answer = node.request_job(peer, request).await.unwrap();
        answers.push((started.elapsed(), request_bytes, answer));
    }
    let mut times = Vec::new();
    let mut runs = Vec::new();
    let mut sizes = (0, 0);
    let mut relayed = false;
    for (i, (assignment, (elapsed, request_bytes, answer))) in
        assignments.iter().zip(answers).enumerate()
    {
        let JobResponse::Done { output, receipt } = &answer.response else {
            panic!("{:?}", answer.response)
        };
        let ticket = assignment.ticket.as_ref().unwrap();
        let checked = mesh_net::verify::receipt(receipt, ticket, output).unwrap();
        client
            .report_receipt(
                &mesh.network_id(),
                &assignment.job.id,
                &mesh_proto::api::CompleteJobRequest {
                    receipt: receipt.clone(),
                },
            )
            .await
            .unwrap();
        if i >= 3 {
            times.push(elapsed);
            let t = checked.timings;
            runs.push(Duration::from_micros(
                t.prepare_us + t.instantiate_us + t.run_us,
            ));
            sizes = (
                request_bytes,
                mesh_proto::cbor::to_vec(&answer.response).unwrap().len(),
            );
            relayed = answer.relayed;
        }
    }
    // The host reports its receipts a moment after a burst of jobs: let those calls end.
    tokio::time::sleep(Duration::from_secs(1)).await;
    JobSample {
        round_trip: median(&mut times),
        in_agent: agent_time(&mesh.hosts[0].process.log_text(), SAMPLES),
        run: median(&mut runs),
        request_bytes: sizes.0,
        response_bytes: sizes.1,
        relayed,
    }
}

async fn node_for(
    mesh: &Mesh,
    key: &SigningKey,
    hole_punching: bool,
    reserve: bool,
) -> (Node, tokio::sync::mpsc::Receiver<Inbound>) {
    Node::spawn(
        key,
        NodeConfig {
            listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
            relays: vec![mesh.relay_addr.parse().unwrap()],
            reserve,
            hole_punching,
            ..NodeConfig::default()
        },
    )
    .await
    .unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Environment variable that turns [`bare_responder_process`] into the bare responder for the
/// relay address it holds.
const BARE_RESPONDER_ENV: &str = "MESH_BENCH_BARE_RESPONDER";
/// Seed of the bare responder's key (registered by the benchmark).
const RESPONDER_SEED: [u8; 32] = [0x32; 32];

/// Kills the child process on drop.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start this test binary as the bare responder (see [`bare_responder_process`]); returns
/// it and its direct address once it holds a relay reservation.
fn spawn_bare_responder(relay: &Multiaddr) -> (ChildGuard, Multiaddr) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "bare_responder_process",
            "--ignored",
            "--nocapture",
        ])
        .env(BARE_RESPONDER_ENV, relay.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = ChildGuard(child);
    let mut lines = std::io::BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(address) = line.strip_prefix("BARE_RESPONDER ") {
            // Keep reading, so the child never writes into a closed pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return (guard, address.parse().unwrap());
        }
    }
    panic!("the bare responder exited without an address");
}

/// The bare responder, when started by [`spawn_bare_responder`]; does nothing otherwise.
#[tokio::test(flavor = "current_thread")]
#[ignore = "started by data_plane_benchmark"]
async fn bare_responder_process() {
    let Ok(relay) = std::env::var(BARE_RESPONDER_ENV) else {
        return;
    };
    let address = bare_responder(
        &SigningKey::from_seed(RESPONDER_SEED),
        &relay.parse().unwrap(),
    )
    .await;
    println!("BARE_RESPONDER {address}");
    std::future::pending::<()>().await;
}

// One thread, as in the agent: the requester's node and the bare swarm alike.
#[tokio::test(flavor = "current_thread")]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn data_plane_benchmark() {
    let mesh = Mesh::start(MeshOptions {
        hosts: 1,
        ..MeshOptions::default()
    })
    .await;
    let echo = mesh.publish(mesh_test_artifacts::ECHO).await;
    let embeddings = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    let relay: Multiaddr = mesh.relay_addr.parse().unwrap();
    let requester = SigningKey::from_seed([0x31; 32]);
    let responder = SigningKey::from_seed(RESPONDER_SEED);
    let blob_server = SigningKey::from_seed([0x34; 32]);
    let (client, cert) = mesh.register_device(&requester).await;
    mesh.register_device(&responder).await;
    mesh.register_device(&blob_server).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // the relay's next allow-list poll
    // The bare responder runs in its own process, as the host does, so both sides of the
    // comparison cross the same process boundary.
    let (_bare_process, responder_addr) = spawn_bare_responder(&relay);
    let responder_peer = mesh_net::keypair(&responder).public().to_peer_id();
    let responder_circuit = relay
        .clone()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(responder_peer));
    let one_sentence =
        serde_json::to_vec(&serde_json::json!({"texts": ["A man is playing a guitar."]})).unwrap();
    let noop = br#"{"texts":["x"]}"#.to_vec();

    println!(
        "\n== job round trip (median of {SAMPLES}), mesh vs bare libp2p request-response of the same sizes"
    );
    println!(
        "{:<12} {:<8} {:>10} {:>10} {:>10} {:>12} {:>10} {:>7}",
        "workload", "path", "mesh", "in agent", "run", "bare+run", "bare", "ratio"
    );
    for hole_punching in [false, true] {
        let (node, _inbound) = node_for(&mesh, &requester, hole_punching, false).await;
        let mut bare = bare_swarm(&requester);
        bare.listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap())
            .unwrap();
        for (name, workload, input) in [
            ("echo", echo, &noop),
            ("embeddings", embeddings, &one_sentence),
        ] {
            let sample = mesh_round_trips(&mesh, &node, &client, &cert, workload, input).await;
            let address = if sample.relayed {
                responder_circuit.clone()
            } else {
                responder_addr.clone()
            };
            let bare_rtt = bare_round_trips(
                &mut bare,
                responder_peer,
                address,
                sample.request_bytes,
                sample.response_bytes,
                SAMPLES,
            )
            .await;
            let baseline = bare_rtt + sample.run;
            println!(
                "{:<12} {:<8} {:>10} {:>10} {:>10} {:>12} {:>10} {:>6.2}x",
                name,
                if sample.relayed { "relayed" } else { "direct" },
                ms(sample.round_trip),
                ms(sample.in_agent),
                ms(sample.run),
                ms(baseline),
                ms(bare_rtt),
                sample.round_trip.as_secs_f64() / baseline.as_secs_f64()
            );
        }
    }

    println!(
        "\n== component transfer, 32 MiB: /mesh/blob/1 (1 MiB chunks) vs one bare libp2p stream"
    );
    let blob: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
    let hash = Blake3Hash::of(&blob);
    let (server, mut inbound) = node_for(&mesh, &blob_server, true, true).await;
    assert!(
        server
            .wait_for(Duration::from_secs(20), |s| !s.reserved_on.is_empty())
            .await
    );
    let served = blob.clone();
    tokio::spawn(async move {
        while let Some(request) = inbound.recv().await {
            if let Inbound::Blob { request, reply, .. } = request {
                let _ = reply.send(mesh_net::blob_chunk(
                    &served,
                    request.offset,
                    request.length,
                ));
            }
        }
    });
    // Any ticket will do for the bench server; use a real one.
    let ticket = client
        .submit_job(
            &mesh.network_id(),
            &SubmitJobRequest {
                workload: echo,
                input: Blake3Hash::of(&noop),
                input_size: noop.len() as u64,
                idempotency_key: None,
            },
        )
        .await
        .unwrap()
        .ticket
        .unwrap();
    for hole_punching in [false, true] {
        let (fetcher, _inbound) = node_for(&mesh, &requester, hole_punching, false).await;
        let relay_peer = mesh_net::relay_peer(&relay).unwrap();
        fetcher
            .wait_for(Duration::from_secs(10), |s| {
                s.connections.contains_key(&relay_peer)
            })
            .await;
        let mut tries = 0;
        while let Err(e) = fetcher.connect(server.peer_id()).await {
            tries += 1;
            assert!(tries < 10, "cannot reach the blob server: {e}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if hole_punching {
            fetcher
                .wait_for(Duration::from_secs(10), |s| {
                    s.connections
                        .get(&server.peer_id())
                        .is_some_and(|c| c.iter().any(|c| !c.relayed))
                })
                .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let started = Instant::now();
        let mut got = Vec::with_capacity(blob.len());
        while got.len() < blob.len() {
            match fetcher
                .request_blob(
                    server.peer_id(),
                    BlobRequest {
                        ticket: ticket.clone(),
                        hash,
                        offset: got.len() as u64,
                        length: MAX_BLOB_CHUNK_BYTES as u32,
                    },
                )
                .await
                .unwrap()
            {
                BlobResponse::Chunk { data, .. } => got.extend_from_slice(&data),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(Blake3Hash::of(&got), hash);
        let mesh_time = started.elapsed();
        // Bare: the same 32 MiB as one response on one stream, same path.
        let path = if hole_punching { "direct" } else { "relayed" };
        let mut bare = bare_swarm(&requester);
        let address = if hole_punching {
            responder_addr.clone()
        } else {
            responder_circuit.clone()
        };
        let bare_time =
            bare_round_trips(&mut bare, responder_peer, address, 16, blob.len(), 3).await;
        let mb = blob.len() as f64 / 1e6;
        println!(
            "{:<8} mesh {:>8.1} MB/s   bare {:>8.1} MB/s   ratio {:.2}",
            path,
            mb / mesh_time.as_secs_f64(),
            mb / bare_time.as_secs_f64(),
            bare_time.as_secs_f64() / mesh_time.as_secs_f64()
        );
    }

    println!("\n== relay memory per reserved device");
    let before = rss_kib(mesh.relay.pid());
    let devices = 300;
    let mut keys = Vec::new();
    for i in 0..devices {
        let mut seed = [0u8; 32];
        seed[..4].copy_from_slice(&(1000 + i as u32).to_be_bytes());
        let key = SigningKey::from_seed(seed);
        mesh.register_device(&key).await;
        keys.push(key);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = before.max(rss_kib(mesh.relay.pid()).min(before)); // registrations alone
    let after_list = rss_kib(mesh.relay.pid());
    let mut swarms = Vec::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(devices);
    for key in &keys {
        let mut swarm = bare_swarm(key);
        swarm
            .listen_on(relay.clone().with(Protocol::P2pCircuit))
            .unwrap();
        let done = done_tx.clone();
        swarms.push(tokio::spawn(async move {
            let mut told = false;
            loop {
                if let SwarmEvent::Behaviour(BareEvent::RelayClient(
                    relay::client::Event::ReservationReqAccepted { .. },
                )) = swarm.select_next_some().await
                    && !told
                {
                    told = true;
                    let _ = done.send(()).await;
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut reserved = 0;
    while reserved < devices && Instant::now() < deadline {
        if tokio::time::timeout(Duration::from_secs(5), done_rx.recv())
            .await
            .is_ok()
        {
            reserved += 1;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(mesh.relay.pid());
    println!(
        "{reserved} reserved devices (QUIC): relay RSS {} KiB -> {} KiB (allow-list of {} certificates: {} KiB); {:.1} KB per reserved device",
        before,
        after,
        devices + 2,
        after_list,
        (after.saturating_sub(after_list)) as f64 * 1.024 / reserved.max(1) as f64
    );
    for s in swarms {
        s.abort();
    }
}

//! Across NATs: two home hosts, each behind its own MASQUERADE router that drops unsolicited
//! inbound packets, and the control plane and relay in a "public" namespace. Host 0 sends
//! embeddings jobs to host 1: the first goes over the relay, DCUtR punches a hole, and later
//! ones run over the direct connection, for QUIC and for TCP. Behind symmetric NATs (a fresh
//! port per destination) the punch cannot work and every job completes over the relay.
//!
//! Needs root, iproute2 and iptables (`.ci/run` installs iptables). Without them the tests
//! fail under `CI=true` and are skipped otherwise.

use mesh_e2e::{
    Mesh, MeshOptions, NatKind, Transport, bin, command_in, cosine, reference, vectors,
};
use std::process::Command;

fn can_build_namespaces() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let tools = ["ip", "iptables"].iter().all(|tool| {
        Command::new(tool)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
            || Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
    });
    if root && tools {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "NAT tests need root, iproute2 and iptables"
    );
    eprintln!("skipping: NAT tests need root, iproute2 and iptables");
    false
}

/// Run `count` jobs from host 0 to host 1 and return each result line.
async fn jobs_across(
    transport: Transport,
    nat: NatKind,
    count: usize,
) -> (Mesh, Vec<serde_json::Value>) {
    let mesh = Mesh::start(MeshOptions {
        hosts: 2,
        nat: Some(nat),
        transport,
        ..MeshOptions::default()
    })
    .await;
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    let reference = reference(2);
    let input = mesh.dir.path().join("nat.json");
    let texts: Vec<&str> = reference.iter().map(|(t, _)| t.as_str()).collect();
    std::fs::write(&input, serde_json::json!({ "texts": texts }).to_string()).unwrap();
    let requester = &mesh.hosts[0];
    let out = command_in(requester.ns.as_deref(), &bin("mesh-host"))
        .args([
            "submit",
            "--config",
            requester.config.to_str().unwrap(),
            "--workload",
            &workload.to_string(),
            "--input",
            input.to_str().unwrap(),
            "--count",
            &count.to_string(),
            // Time for DCUtR between jobs (a TCP simultaneous open can take a while).
            "--pause-ms",
            "300",
        ])
        .env("RUST_LOG", "info,libp2p=warn")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let results: Vec<serde_json::Value> = String::from_utf8(mesh.succeeded(out, "submit"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), count);
    for result in &results {
        assert_eq!(result["state"], "done", "{result}");
        assert_eq!(result["executor"], mesh.hosts[1].device.to_string());
        for ((_, want), got) in reference.iter().zip(vectors(&result["output"])) {
            assert!(cosine(want, &got) >= 0.9999);
        }
    }
    (mesh, results)
}

async fn hole_punch(transport: Transport) {
    if !can_build_namespaces() {
        return;
    }
    let (mesh, results) = jobs_across(transport, NatKind::Cone, 8).await;
    let relayed: Vec<bool> = results
        .iter()
        .map(|r| r["relayed"].as_bool().unwrap())
        .collect();
    eprintln!("{transport:?}: relayed per job {relayed:?}");
    assert!(relayed[0], "the first job goes over the relay: {relayed:?}");
    assert!(
        relayed.iter().any(|r| !r),
        "a later job runs over the direct connection: {relayed:?}\n{}",
        mesh.logs()
    );
    // The executor holds a direct connection from the other home's public (router) address:
    // the hole was punched through both NATs.
    let router = format!("/ip4/{}.11/", mesh.topology.as_ref().unwrap().public_net);
    let log = mesh.hosts[1].process.log_text();
    assert!(
        log.lines().any(|l| l.contains("connection established")
            && l.contains(&router)
            && l.contains("relayed=false")),
        "no direct connection from {router}:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_hole_punch_through_two_nats() {
    hole_punch(Transport::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_hole_punch_through_two_nats() {
    hole_punch(Transport::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symmetric_nats_keep_jobs_on_the_relay() {
    if !can_build_namespaces() {
        return;
    }
    let (mesh, results) = jobs_across(Transport::Quic, NatKind::Symmetric, 3).await;
    assert!(results.iter().all(|r| r["relayed"] == true), "{results:?}");
    assert!(
        !mesh.hosts[1]
            .process
            .log_text()
            .contains("hole punch succeeded")
    );
}

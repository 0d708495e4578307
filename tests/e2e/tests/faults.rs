//! Faults: the relay restarted, and the control plane restarted in the middle of a job. Jobs
//! complete, and credits move exactly once.

use mesh_e2e::{Mesh, MeshOptions, bin};
use mesh_proto::api::{JobState, RunJobRequest};
use std::time::{Duration, Instant};

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_control_plane_restarts_lose_nothing() {
    let mut mesh = Mesh::start(MeshOptions::default()).await;
    let network = mesh.network_id();
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;

    // The relay restarts: hosts notice, reconnect and reserve again; jobs flow again.
    let before: Vec<usize> = mesh
        .hosts
        .iter()
        .map(|h| count(&h.process.log_text(), "reservation accepted"))
        .collect();
    mesh.relay.restart();
    mesh.relay
        .wait_for_log("mesh-relay 12D3", Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(40);
    while mesh
        .hosts
        .iter()
        .zip(&before)
        .any(|(h, b)| count(&h.process.log_text(), "reservation accepted") <= *b)
    {
        assert!(
            Instant::now() < deadline,
            "hosts did not reserve again\n{}",
            mesh.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after_relay = mesh
        .admin
        .run_job(
            &network,
            &RunJobRequest {
                workload,
                input: serde_json::json!({"texts": ["after the relay restarted"]}),
                idempotency_key: None,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("job after relay restart: {e}\n{}", mesh.logs()));
    assert_eq!(after_relay.job.state, JobState::Done);

    // The control plane restarts while host 0 runs a job on host 1, device to device.
    let texts: Vec<String> = (0..1500)
        .map(|i| format!("sentence number {i} of a long job that outlives a restart"))
        .collect();
    let input = mesh.dir.path().join("long.json");
    std::fs::write(&input, serde_json::json!({ "texts": texts }).to_string()).unwrap();
    let requests_before = count(&mesh.hosts[1].process.log_text(), "job request");
    let submit = std::process::Command::new(bin("mesh-host"))
        .args([
            "submit",
            "--config",
            mesh.hosts[0].config.to_str().unwrap(),
            "--workload",
            &workload.to_string(),
            "--input",
            input.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&mesh.hosts[1].process.log_text(), "job request") <= requests_before {
        assert!(
            Instant::now() < deadline,
            "the job never arrived\n{}",
            mesh.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    mesh.control_plane.restart();
    let out = tokio::task::spawn_blocking(move || submit.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let out = mesh.succeeded(out, "the job across the restart");
    let result: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(result["state"], "done");
    assert_eq!(
        result["output"]["embeddings"].as_array().unwrap().len(),
        1500
    );
    let job: mesh_proto::JobId = result["job"].as_str().unwrap().parse().unwrap();

    // Settled once, although executor and requester both reported around the restart.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // (reserve, settle, refund) entries of the job.
    assert_eq!(mesh.job_entries(job).await, (1, 1, 0));
    let jobs = mesh.admin.jobs(&network).await.unwrap();
    assert!(jobs.iter().all(|j| j.state == JobState::Done), "{jobs:?}");
}

//! A job's life at its executor beyond the happy path: cancelled by its requester (a deadline,
//! or the requester going away) while it runs, refused by a full host and run elsewhere, a
//! host draining its running job on SIGTERM, and a job whose requester never reports it. In
//! process ([`TestNet`]) except where a process must die or get a signal.

use mesh_e2e::rogue::connect;
use mesh_e2e::testnet::SubmitOptions;
use mesh_e2e::{HostSpec, Mesh, MeshOptions, TestMesh, TestNet, bin};
use mesh_proto::api::{JobInfo, JobState, RunJobRequest};
use mesh_proto::{Blake3Hash, JobId};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// Wait until host `i`'s log holds `needle` more than `before` times.
async fn wait_for_count(mesh: &TestNet, i: usize, needle: &str, before: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while mesh.hosts[i].log.count(needle) <= before {
        assert!(
            Instant::now() < deadline,
            "host {i} never logged {needle:?}\n{}",
            mesh.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The newest job of `workload`.
async fn newest_job(mesh: &impl TestMesh, workload: Blake3Hash) -> JobInfo {
    let jobs = mesh.admin.jobs(&mesh.network_id()).await.unwrap();
    jobs.into_iter()
        .filter(|j| j.workload == workload)
        .max_by_key(|j| j.created_at_ms)
        .expect("a job of the workload")
}

/// Wait until the control plane has `job` in `state`.
async fn wait_for_state(mesh: &impl TestMesh, job: JobId, state: JobState) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = mesh.admin.job(&mesh.network_id(), &job).await.unwrap().job;
        if now.state == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "job {job} is {:?}, not {state:?}\n{}",
            now.state,
            mesh.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_jobs_stop_at_their_executor_and_are_refunded() {
    // One slot per host: the executor can only take the next job once the cancelled one
    // has really stopped.
    let mesh = TestNet::spawn(MeshOptions::default()).await;
    let hostile = mesh.publish(mesh_test_artifacts::HOSTILE).await;
    let echo = mesh.publish(mesh_test_artifacts::ECHO).await;
    let requester = &mesh.hosts[0];

    // 1. The requester's deadline passes while the job spins (it would run for the whole job
    //    time limit): it cancels the job over /mesh/cancel/1.
    let before = mesh.hosts[1].log.count("cancelled by its requester");
    let started = Instant::now();
    let deadline = SubmitOptions {
        timeout: Some(Duration::from_millis(1500)),
        ..SubmitOptions::default()
    };
    let error = requester
        .submit(hostile, b"loop".to_vec(), deadline)
        .await
        .expect_err("a spinning job completed?");
    let error = format!("{error:#}");
    assert!(
        error.contains("deadline passed; the job was cancelled") && error.contains("(cancelled)"),
        "{error}"
    );
    wait_for_count(
        &mesh,
        1,
        "cancelled by its requester",
        before,
        Duration::from_secs(5),
    )
    .await;
    let job = newest_job(&mesh, hostile).await;
    wait_for_state(&mesh, job.id, JobState::Failed).await;
    // Reserved, never paid to the executor, refunded once.
    assert_eq!(mesh.job_entries(job.id).await, (1, 0, 1));
    // The slot is free again: the next job runs at once, long before the spinning job's
    // time limit would have ended.
    requester
        .submit(
            echo,
            br#"{"texts":["x"]}"#.to_vec(),
            SubmitOptions::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("the job after the cancelled one: {e:#}\n{}", mesh.logs()));
    assert!(started.elapsed() < Duration::from_secs(30));
    let log = mesh.hosts[1].log.text();
    assert!(
        log.contains("job failed: the job was cancelled"),
        "the executor did not stop the run\n{log}"
    );
}

/// A requester killed while its job runs (no cancel sent: the process is gone, and its
/// connections with it): the executor cancels the job once the requester has not asked
/// again. A process test, since an in-process requester that is dropped still cancels
/// politely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_requester_has_its_job_cancelled_at_the_executor() {
    let mesh = Mesh::start(MeshOptions::default()).await;
    let hostile = mesh.publish(mesh_test_artifacts::HOSTILE).await;
    let path = mesh.dir.path().join("loop.txt");
    std::fs::write(&path, b"loop").unwrap();
    let before = count(&mesh.hosts[1].process.log_text(), "job request");
    let mut requester = Command::new(bin("mesh-host"))
        .args(["submit", "--config", mesh.hosts[0].config.to_str().unwrap()])
        .args(["--workload", &hostile.to_string()])
        .args(["--input", path.to_str().unwrap()])
        .args(["--idempotency-key", "gone"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&mesh.hosts[1].process.log_text(), "job request") <= before {
        assert!(Instant::now() < deadline, "no job request\n{}", mesh.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let job = newest_job(&mesh, hostile).await;
    wait_for_state(&mesh, job.id, JobState::Running).await;
    requester.kill().unwrap();
    requester.wait().unwrap();
    mesh.hosts[1].process.wait_for_log(
        "the requester went away: cancelling the job",
        Duration::from_secs(15),
    );
    wait_for_state(&mesh, job.id, JobState::Failed).await;
    assert_eq!(mesh.job_entries(job.id).await, (1, 0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_client_that_disconnects_cancels_its_job() {
    let mesh = TestNet::spawn(MeshOptions::default()).await;
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    // A job that runs for seconds, asked for by a client that gives up after one.
    let texts: Vec<String> = (0..4000).map(|i| format!("sentence number {i}")).collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let sent = client
        .post(format!(
            "{}/v1/networks/{}/jobs/run",
            mesh.url,
            mesh.network_id()
        ))
        .bearer_auth(mesh.admin_token())
        .json(&serde_json::json!({ "workload": workload, "input": { "texts": texts } }))
        .send()
        .await;
    assert!(sent.is_err(), "the long job answered within a second?");
    let deadline = Instant::now() + Duration::from_secs(20);
    let executor = loop {
        if let Some(i) = mesh
            .hosts
            .iter()
            .position(|h| h.log.text().contains("job failed: the job was cancelled"))
        {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "the executor never stopped the abandoned job\n{}",
            mesh.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        mesh.hosts[executor]
            .log
            .text()
            .contains("cancelled by its requester")
    );
    let job = newest_job(&mesh, workload).await;
    wait_for_state(&mesh, job.id, JobState::Failed).await;
    assert_eq!(mesh.job_entries(job.id).await, (1, 0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_running_job_and_sends_new_ones_elsewhere() {
    let mut mesh = Mesh::start(MeshOptions::default()).await;
    let network = mesh.network_id();
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    // Long enough to be running when the signal comes.
    let (long_job, draining) = mesh.start_long_job(workload, 1500, "drain").await;
    let other = 1 - draining;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // SIGTERM: the host stops taking jobs and finishes the one it runs.
    let pid = mesh.hosts[draining].process.pid();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    mesh.hosts[draining]
        .process
        .wait_for_log("shutting down: draining jobs", Duration::from_secs(5));

    // A job sent meanwhile runs on the other host.
    let short = mesh
        .admin
        .run_job(
            &network,
            &RunJobRequest {
                workload,
                input: serde_json::json!({ "texts": ["while draining"] }),
                idempotency_key: Some("during-drain".into()),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("a job during the drain failed: {e}\n{}", mesh.logs()));
    assert_eq!(short.job.state, JobState::Done);
    assert_eq!(short.executor, mesh.hosts[other].device);

    let long = long_job
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the draining host lost its job: {e}\n{}", mesh.logs()));
    assert_eq!(long.job.state, JobState::Done);
    assert_eq!(long.attempts, 1, "the job was not finished where it ran");
    assert_eq!(long.executor, mesh.hosts[draining].device);
    assert_eq!(long.output["embeddings"].as_array().unwrap().len(), 1500);
    assert_eq!(mesh.job_entries(long.job.id).await, (1, 1, 0));
    mesh.hosts[draining]
        .process
        .wait_for_log("stopped", Duration::from_secs(10));
    mesh.hosts[draining].process.stop(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_host_answers_busy_and_the_job_runs_on_another_device() {
    // Host 0 holds one job running and one queued; host 1 queues 64.
    let mesh = TestNet::spawn(MeshOptions {
        host_specs: vec![HostSpec {
            queue_capacity: Some(1),
            ..HostSpec::default()
        }],
        ..MeshOptions::default()
    })
    .await;
    let network = mesh.network_id();
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    let busy = "refused a job: busy";
    // Jobs of a few seconds each, one after another (each assigned before the next is sent),
    // until the scheduler has offered one to the full host: it is the least loaded while the
    // other host's queue is longer than its own two.
    let mut jobs = Vec::new();
    for i in 0..10 {
        let texts: Vec<String> = (0..600)
            .map(|n| format!("job {i}, sentence number {n}"))
            .collect();
        let admin = mesh.admin.clone();
        jobs.push(tokio::spawn(async move {
            admin
                .run_job(
                    &network,
                    &RunJobRequest {
                        workload,
                        input: serde_json::json!({ "texts": texts }),
                        idempotency_key: Some(format!("full-{i}")),
                    },
                )
                .await
        }));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let listed = mesh.admin.jobs(&network).await.unwrap();
            let sent = listed.iter().filter(|j| j.workload == workload).count();
            let waiting = listed
                .iter()
                .any(|j| j.workload == workload && j.state == JobState::Queued);
            if sent == jobs.len() && !waiting {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "job {i} was never assigned\n{}",
                mesh.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if mesh.hosts[0].log.count(busy) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refusals = mesh.hosts[0].log.count(busy);
    assert!(refusals > 0, "host 0 was never full\n{}", mesh.logs());

    // Every job completes; the refused ones on the other host, after a second attempt.
    let mut moved = 0;
    for job in jobs {
        let done = job
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("a job failed: {e}\n{}", mesh.logs()));
        assert_eq!(done.job.state, JobState::Done);
        if done.attempts > 1 {
            assert_eq!(done.executor, mesh.hosts[1].device, "{done:?}");
            moved += 1;
        }
        // Reserved once, paid once, never refunded.
        assert_eq!(mesh.job_entries(done.job.id).await, (1, 1, 0));
    }
    // Counted again now that every job is done: a job offered to host 0 just before the loop
    // stopped may have been refused after the first count.
    let refusals = mesh.hosts[0].log.count(busy);
    assert_eq!(
        moved,
        refusals,
        "each refused job moved once\n{}",
        mesh.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_executor_is_paid_when_the_requester_never_reports() {
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 1,
        ..MeshOptions::default()
    })
    .await;
    let network = mesh.network_id();
    let echo = mesh.publish(mesh_test_artifacts::ECHO).await;
    let requester = mesh.rogue(&network).await;
    let (node, _inbound) = mesh.node(&requester.key).await;
    let host: mesh_net::PeerId = mesh.hosts[0].peer.parse().unwrap();
    connect(&node, host).await;
    // A burst of jobs, answered and never reported by their requester.
    let mut jobs = Vec::new();
    for i in 0..5 {
        let input = format!("{{\"texts\":[\"{i}\"]}}").into_bytes();
        let assignment = requester.submit(&network, echo, &input).await;
        let request = mesh_proto::p2p::JobRequest {
            ticket: assignment.ticket.clone().expect("assigned"),
            requester_cert: Some(requester.cert.clone()),
            input,
            stream: false,
        };
        let answer = node.request_job(host, request).await.unwrap();
        assert!(
            matches!(answer.response, mesh_proto::p2p::JobResponse::Done { .. }),
            "{:?}",
            answer.response
        );
        jobs.push(assignment.job.id);
    }
    // The host reports each receipt itself, a moment later: every job settles, once.
    for job in jobs {
        wait_for_state(&mesh, job, JobState::Done).await;
        assert_eq!(mesh.job_entries(job).await, (1, 1, 0), "{}", mesh.logs());
    }
}

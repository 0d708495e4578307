//! End to end on loopback: a control plane, a relay and hosts (in process, and as real
//! processes where one is killed); jobs through the gateway, device to device and through
//! the OpenAI endpoint; hostile peers; a host killed mid-job.

use base64::Engine as _;
use mesh_e2e::rogue::{connect, serve_wrong_blobs};
use mesh_e2e::{Mesh, MeshOptions, TestNet, cosine, reference, vectors};
use mesh_net::dispatch::Assignment;
use mesh_net::{NetError, PeerId};
use mesh_proto::api::{JobState, RunJobRequest};
use mesh_proto::p2p::{JobRefusal, JobRequest, JobResponse};
use mesh_proto::{Blake3Hash, SignDomain, Signed, SigningKey};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_across_the_mesh_and_settle_once() {
    let mut mesh = TestNet::spawn(MeshOptions::default()).await;
    let network = mesh.network_id();
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    let reference = reference(4);
    let texts: Vec<&str> = reference.iter().map(|(t, _)| t.as_str()).collect();

    // Gateway: REST in, libp2p to a host through the relay, checked receipt back.
    let result = mesh
        .admin
        .run_job(
            &network,
            &RunJobRequest {
                workload,
                input: serde_json::json!({ "texts": texts }),
                idempotency_key: None,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("gateway job failed: {e}\n{}", mesh.logs()));
    assert_eq!(result.job.state, JobState::Done);
    assert_eq!(result.attempts, 1);
    assert_eq!(result.receipt.job, Some(result.job.id));
    assert_eq!(result.receipt.component, workload);
    let got = vectors(&result.output);
    assert_eq!(got.len(), reference.len());
    for ((_, want), got) in reference.iter().zip(&got) {
        assert_eq!(got.len(), 384);
        assert!(cosine(want, got) >= 0.9999, "cosine {}", cosine(want, got));
    }
    let executor = mesh
        .hosts
        .iter()
        .find(|h| h.device == result.executor)
        .expect("a host of the mesh ran it");
    assert_eq!(executor.peer, result.executor_peer);
    executor
        .log
        .wait_for("job done", Duration::from_secs(5))
        .await;
    // The first contact goes through the relay; DCUtR then upgrades to a direct connection
    // and later jobs take it.
    let mut direct = None;
    for i in 0..6 {
        let r = mesh
            .admin
            .run_job(
                &network,
                &RunJobRequest {
                    workload,
                    input: serde_json::json!({ "texts": [format!("direct {i}")] }),
                    idempotency_key: None,
                },
            )
            .await
            .unwrap();
        if !r.relayed {
            direct = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let direct = direct.unwrap_or_else(|| panic!("no job went direct\n{}", mesh.logs()));
    assert_eq!(direct.job.state, JobState::Done);
    mesh.control_plane_log
        .wait_for("hole punch succeeded", Duration::from_secs(1))
        .await;
    let jobs_so_far = mesh.admin.jobs(&network).await.unwrap().len();

    // Device to device: host 0 as requester; the scheduler never picks the requester.
    let input = serde_json::json!({ "texts": [texts[0]] }).to_string();
    let d2d = mesh.hosts[0]
        .submit(workload, input.into_bytes(), Default::default())
        .await
        .unwrap_or_else(|e| panic!("submit failed: {e:#}\n{}", mesh.logs()))
        .remove(0);
    assert_eq!(d2d["state"], "done");
    assert_eq!(d2d["executor"], mesh.hosts[1].device.to_string());
    let v = &vectors(&d2d["output"])[0];
    assert!(cosine(&reference[0].1, v) >= 0.9999);

    // OpenAI-compatible endpoint, float and base64 encodings.
    let http = reqwest::Client::new();
    let pair = [texts[1].to_string(), texts[2].to_string()];
    let openai = |format: &'static str| {
        let http = http.clone();
        let pair = pair.clone();
        let url = format!("{}/v1/embeddings", mesh.url);
        let token = mesh.admin_token();
        async move {
            http.post(url)
                .bearer_auth(token)
                .json(&serde_json::json!({
                    "model": "sentence-transformers/all-MiniLM-L6-v2",
                    "input": pair,
                    "encoding_format": format,
                }))
                .send()
                .await
                .unwrap()
        }
    };
    let floats = openai("float").await;
    assert_eq!(floats.status(), 200);
    let floats: serde_json::Value = floats.json().await.unwrap();
    assert_eq!(floats["object"], "list");
    assert_eq!(floats["data"][1]["index"], 1);
    let first: Vec<f32> = floats["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert!(cosine(&reference[1].1, &first) >= 0.9999);
    assert!(floats["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let encoded: serde_json::Value = openai("base64").await.json().await.unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert!(cosine(&decoded, &first) >= 0.99999);
    let unknown = http
        .post(format!("{}/v1/embeddings", mesh.url))
        .bearer_auth(mesh.admin_token())
        .json(&serde_json::json!({"model": "gpt-4", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    // Credits: every job reserved once and settled once.
    let history = mesh.admin.history(&network, None).await.unwrap();
    let count = |kind: &str| history.iter().filter(|e| e.kind == kind).count();
    let jobs = mesh.admin.jobs(&network).await.unwrap();
    assert_eq!(jobs.len(), jobs_so_far + 3);
    assert_eq!(count("job_reserve"), jobs.len(), "{history:?}");
    assert_eq!(count("job_settle"), jobs.len(), "{history:?}");
    assert_eq!(count("job_refund"), 0);
    assert!(jobs.iter().all(|j| j.state == JobState::Done), "{jobs:?}");

    // An unlisted peer is refused at the relay and cannot reach any host.
    let stranger = SigningKey::from_seed([0x5a; 32]);
    let (stranger_node, _inbound) = mesh.node(&stranger).await;
    let host: PeerId = mesh.hosts[1].peer.parse().unwrap();
    let err = stranger_node.connect(host).await.unwrap_err();
    assert!(matches!(err, NetError::Unreachable { .. }), "{err:?}");
    mesh.relay_log
        .wait_for("refused connection", Duration::from_secs(5))
        .await;

    // A revoked device is dropped by the relay within the poll interval and stops.
    mesh.admin
        .revoke_device(&network, &mesh.hosts[0].device)
        .await
        .unwrap();
    mesh.relay_log
        .wait_for("no longer vouched for", Duration::from_secs(10))
        .await;
    mesh.hosts[0].revoked(Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_and_nothing_is_disturbed() {
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 1,
        ..MeshOptions::default()
    })
    .await;
    let network = mesh.network_id();
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    let host: PeerId = mesh.hosts[0].peer.parse().unwrap();
    let rogue = mesh.rogue(&network).await;
    let (rogue_node, inbound) = mesh.node(&rogue.key).await;
    // The rogue serves garbage for every blob it is asked for.
    serve_wrong_blobs(inbound, 1000);
    let input = serde_json::to_vec(&serde_json::json!({"texts": ["hostile"]})).unwrap();
    let assignment = rogue.submit(&network, workload, &input).await;
    let ticket = assignment.ticket.clone().expect("assigned at once");
    assert_eq!(
        Assignment::from_ticket(ticket.clone()).unwrap().executor,
        host
    );
    connect(&rogue_node, host).await;
    let send = |request: JobRequest| {
        let node = rogue_node.clone();
        async move {
            match node.request_job(host, request).await.unwrap().response {
                JobResponse::Refused(r) => r,
                JobResponse::Done { .. } => panic!("a hostile request ran"),
            }
        }
    };

    // The real ticket and input, presented by `node` with `cert`.
    let present = |node: &mesh_net::Node, cert: &Signed<mesh_proto::device::DeviceCert>| {
        let node = node.clone();
        let request = JobRequest {
            ticket: ticket.clone(),
            requester_cert: Some(cert.clone()),
            input: input.clone(),
            stream: false,
        };
        async move { node.request_job(host, request).await.unwrap() }
    };

    // A ticket signed by anyone but the control plane.
    let forger = SigningKey::from_seed([0x66; 32]);
    let forged = Signed::sign(
        &ticket.peek().unwrap(),
        &forger,
        SignDomain::JobTicket,
        &network,
    )
    .unwrap();
    let refusal = send(JobRequest {
        ticket: forged,
        requester_cert: Some(rogue.cert.clone()),
        input: input.clone(),
        stream: false,
    })
    .await;
    assert!(
        matches!(refusal, JobRefusal::InvalidTicket(_)),
        "{refusal:?}"
    );

    // A real ticket without a certificate, and with input that does not match it.
    let refusal = send(JobRequest {
        ticket: ticket.clone(),
        requester_cert: None,
        input: input.clone(),
        stream: false,
    })
    .await;
    assert!(
        matches!(refusal, JobRefusal::NotAuthorized(_)),
        "{refusal:?}"
    );
    let refusal = send(JobRequest {
        ticket: ticket.clone(),
        requester_cert: Some(rogue.cert.clone()),
        input: b"{\"texts\":[\"something else\"]}".to_vec(),
        stream: false,
    })
    .await;
    assert_eq!(refusal, JobRefusal::InputMismatch);

    // The ticket presented by another peer (stolen or replayed elsewhere).
    let thief = mesh.rogue(&network).await;
    let (thief_node, _thief_inbound) = mesh.node(&thief.key).await;
    connect(&thief_node, host).await;
    let stolen = present(&thief_node, &thief.cert).await;
    assert!(
        matches!(stolen.response, JobResponse::Refused(JobRefusal::InvalidTicket(ref m)) if m.contains("another peer")),
        "{:?}",
        stolen.response
    );

    // The host checked the rogue's certificate once (the input mismatch above got past it)
    // and remembers it: a forged certificate, or another device's, from the same peer is
    // still refused.
    let forged_cert = Signed::sign(
        &rogue.cert.peek().unwrap(),
        &forger,
        SignDomain::DeviceCert,
        &network,
    )
    .unwrap();
    for cert in [&forged_cert, &thief.cert] {
        let answer = present(&rogue_node, cert).await;
        assert!(
            matches!(
                answer.response,
                JobResponse::Refused(JobRefusal::NotAuthorized(ref m)) if m.starts_with("certificate")
            ),
            "{:?}",
            answer.response
        );
    }

    // A device of another network, with its own valid certificate.
    let other = mesh
        .admin
        .create_network(&mesh_proto::api::CreateNetworkRequest {
            name: "elsewhere".into(),
            policy: mesh_proto::api::NetworkPolicy {
                require_device_approval: false,
                ..Default::default()
            },
        })
        .await
        .unwrap();
    let outsider = mesh.rogue(&other.id).await;
    let (outsider_node, _o) = mesh.node(&outsider.key).await;
    connect(&outsider_node, host).await;
    let answer = present(&outsider_node, &outsider.cert).await;
    assert!(
        matches!(
            answer.response,
            JobResponse::Refused(JobRefusal::InvalidTicket(_))
        ),
        "{:?}",
        answer.response
    );

    // The honest request runs, although the rogue serves a component with the wrong
    // BLAKE3: the host rejects it and fetches a verified copy from the control plane.
    let answer = present(&rogue_node, &rogue.cert).await;
    let JobResponse::Done { output, receipt } = answer.response else {
        panic!("refused: {:?}\n{}", answer.response, mesh.logs());
    };
    mesh_net::verify::receipt(&receipt, &ticket, &output).unwrap();
    mesh.hosts[0]
        .log
        .wait_for("wrong blake3", Duration::from_secs(1))
        .await;
    // A forged receipt (signed by the rogue, not the executor) is rejected by the plane.
    let mut claims = receipt.peek().unwrap();
    claims.output = Blake3Hash::of(b"forged");
    let forged_receipt = Signed::sign(&claims, &rogue.key, SignDomain::Receipt, &network).unwrap();
    let err = rogue
        .client
        .report_receipt(
            &network,
            &assignment.job.id,
            &mesh_proto::api::CompleteJobRequest {
                receipt: forged_receipt,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(401), "{err}");
    rogue
        .client
        .report_receipt(
            &network,
            &assignment.job.id,
            &mesh_proto::api::CompleteJobRequest {
                receipt: receipt.clone(),
            },
        )
        .await
        .unwrap();

    // The same request replayed by its requester: the same answer, and the job does not run
    // again. The same receipt reported again settles nothing more.
    let replayed = present(&rogue_node, &rogue.cert).await;
    let JobResponse::Done {
        output: replayed_output,
        receipt: replayed_receipt,
    } = replayed.response
    else {
        panic!("replay refused: {:?}", replayed.response);
    };
    assert_eq!(replayed_output, output);
    assert_eq!(replayed_receipt.hash(), receipt.hash());
    let runs = mesh.hosts[0]
        .log
        .text()
        .lines()
        .filter(|l| l.contains("job done") && l.contains(&assignment.job.id.to_string()))
        .count();
    assert_eq!(runs, 1, "the replayed ticket ran again\n{}", mesh.logs());
    rogue
        .client
        .report_receipt(
            &network,
            &assignment.job.id,
            &mesh_proto::api::CompleteJobRequest { receipt },
        )
        .await
        .unwrap();

    // Nothing else was disturbed: the host still serves, and the rogue's job settled once.
    let result = mesh
        .admin
        .run_job(
            &network,
            &RunJobRequest {
                workload,
                input: serde_json::json!({"texts": ["still fine"]}),
                idempotency_key: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(result.job.state, JobState::Done);
    let (_, settles, _) = mesh.job_entries(assignment.job.id).await;
    assert_eq!(settles, 1);
    let _ = rogue.device;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_job_is_replaced_and_the_job_is_charged_once() {
    let mut mesh = Mesh::start(MeshOptions {
        job_lease_s: 5.0,
        ..MeshOptions::default()
    })
    .await;
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    // Kill whichever host received it, as soon as it has.
    let (job, victim) = mesh.start_long_job(workload, 2000, "crash").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    mesh.hosts[victim].process.kill();
    let result = job
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the job did not survive the crash: {e}\n{}", mesh.logs()));
    assert_eq!(result.job.state, JobState::Done);
    assert_eq!(result.attempts, 2);
    assert_eq!(result.executor, mesh.hosts[1 - victim].device);
    assert_eq!(vectors(&result.output).len(), 2000);
    // (reserve, settle, refund) entries of the job.
    assert_eq!(mesh.job_entries(result.job.id).await, (1, 1, 0));
}

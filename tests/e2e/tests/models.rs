//! Models travel over `/mesh/blob/1`: a host whose manifest pins a model it has no file for
//! fetches it from the job's requester (in chunks, verified by BLAKE3 before it is stored),
//! once; bytes that do not hash right are refused and never stored.

use mesh_e2e::rogue::{connect, serve_wrong_blobs};
use mesh_e2e::{HostSpec, MeshOptions, TestNet, cosine, reference, vectors};
use mesh_net::PeerId;
use mesh_proto::Blake3Hash;
use mesh_proto::p2p::{JobRefusal, JobRequest, JobResponse};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_model_files_fetches_them_from_the_requester() {
    // Host 1 has the manifest (the pinned hashes) but none of the model files.
    let prepared = mesh_e2e::model_dir();
    let bare = tempfile::tempdir().unwrap();
    std::fs::copy(
        prepared.join("manifest.json"),
        bare.path().join("manifest.json"),
    )
    .unwrap();
    let mesh = TestNet::spawn(MeshOptions {
        host_specs: vec![
            HostSpec::default(),
            HostSpec {
                model_dir: Some(bare.path().to_path_buf()),
                ..HostSpec::default()
            },
        ],
        ..MeshOptions::default()
    })
    .await;
    let network = mesh.network_id();
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    let executor: PeerId = mesh.hosts[1].peer.parse().unwrap();

    // A requester that answers every blob request with bytes that do not hash right: the
    // host refuses the job, and stores nothing.
    let rogue = mesh.rogue(&network).await;
    let (rogue_node, inbound) = mesh.node(&rogue.key).await;
    serve_wrong_blobs(inbound, 3 << 20);
    let input = serde_json::to_vec(&serde_json::json!({"texts": ["poisoned?"]})).unwrap();
    let ticket = loop {
        let assignment = rogue.submit(&network, workload, &input).await;
        let ticket = assignment.ticket.expect("assigned at once");
        if ticket.peek().unwrap().executor == mesh.hosts[1].device {
            break ticket;
        }
        // Assigned to host 0 (which has the files): give it back and ask again.
        rogue
            .client
            .reassign_job(
                &network,
                &assignment.job.id,
                &mesh_proto::api::FailJobRequest {
                    reason: "test wants host 1".into(),
                    retryable: false,
                    executor_peer: None,
                },
            )
            .await
            .unwrap();
    };
    connect(&rogue_node, executor).await;
    let answer = rogue_node
        .request_job(
            executor,
            JobRequest {
                ticket,
                requester_cert: Some(rogue.cert.clone()),
                input,
                stream: false,
            },
        )
        .await
        .unwrap();
    match answer.response {
        JobResponse::Refused(JobRefusal::ComponentUnavailable(reason)) => {
            assert!(reason.contains("wrong blake3"), "{reason}");
        }
        other => panic!("a poisoned model was used: {other:?}\n{}", mesh.logs()),
    }
    let stored: Vec<_> = std::fs::read_dir(bare.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(stored, vec![std::ffi::OsString::from("manifest.json")]);

    // An honest device requester (host 0) has the files: host 1 fetches the model it needs
    // from it, verifies and stores it, and computes correct embeddings.
    let corpus = reference(3);
    let texts: Vec<&str> = corpus.iter().map(|(t, _)| t.as_str()).collect();
    let input = serde_json::json!({ "texts": texts })
        .to_string()
        .into_bytes();
    let submit = || async {
        mesh.hosts[0]
            .submit(workload, input.clone(), Default::default())
            .await
            .unwrap_or_else(|e| panic!("submit failed: {e:#}\n{}", mesh.logs()))
            .remove(0)
    };
    let first = submit().await;
    assert_eq!(first["executor"], mesh.hosts[1].device.to_string());
    for ((_, expected), got) in corpus.iter().zip(vectors(&first["output"])) {
        assert!(cosine(expected, &got) >= 0.9999);
    }
    let log = mesh.hosts[1].log.text();
    assert_eq!(mesh.hosts[1].log.count("fetched model"), 1, "{log}");
    println!(
        "{}",
        log.lines().find(|l| l.contains("fetched model")).unwrap()
    );
    let used = first["receipt"]["models"][0]["hash"].as_str().unwrap();
    let file = bare.path().join(format!(
        "{}.onnx",
        used.trim_start_matches(Blake3Hash::PREFIX)
    ));
    let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert_eq!(Blake3Hash::of(&bytes).to_string(), used);

    // The next job finds it stored.
    let second = submit().await;
    assert_eq!(second["executor"], mesh.hosts[1].device.to_string());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(mesh.hosts[1].log.count("fetched model"), 1);
}

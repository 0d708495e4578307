//! Two control-plane processes against one PostgreSQL database serve the same networks
//! consistently: no lost update, no double assignment, and the ledger sums hold.

mod common;

use common::*;
use mesh_client::Client;
use mesh_control_plane::Server;
use mesh_proto::Blake3Hash;
use mesh_proto::api::*;
use mesh_proto::device::DeviceLoad;
use std::collections::HashSet;

#[tokio::test]
async fn two_processes_share_one_postgres() {
    if !stores().contains(&Store::Postgres) {
        return;
    }
    let plane = TestPlane::spawn(Store::Postgres).await;
    // A second control plane on the same database (its own sweeper, its own pool).
    let second = Server::spawn(plane.db.config.clone()).await.unwrap();
    let token = plane
        .admin
        .create_token(&CreateTokenRequest {
            label: "second".into(),
            expires_in_s: None,
        })
        .await
        .unwrap();
    let admin2 = Client::new(&second.url(), Some(token.token)).unwrap();
    assert_eq!(
        admin2.control_plane_key().await.unwrap(),
        plane.admin.control_plane_key().await.unwrap(),
        "both processes sign with the same key"
    );

    let network = plane
        .network(NetworkPolicy {
            require_device_approval: false,
            job_price: 1,
            initial_grant: 0,
            ..NetworkPolicy::default()
        })
        .await;
    let workload = admin2
        .publish_workload(
            &network.id,
            std::fs::read(mesh_test_artifacts::ECHO).unwrap(),
        )
        .await
        .unwrap();
    let mut devices = Vec::new();
    for seed in 0..3u8 {
        let inviter = if seed % 2 == 0 { &plane.admin } else { &admin2 };
        let mut device =
            register_device(inviter, &network.id, 60 + seed, embedding_capabilities()).await;
        device
            .heartbeat(DeviceLoad {
                running: 0,
                queued: 0,
                slots: 100,
                others_busy_percent: None,
            })
            .await;
        devices.push(device);
    }
    let (alice, alice_id) = plane.person(&network.id, Role::Member, "alice").await;
    admin2
        .grant(
            &network.id,
            &GrantRequest {
                person: alice_id,
                amount: 40,
                idempotency_key: "g".into(),
                memo: None,
            },
        )
        .await
        .unwrap();
    let alice_token = alice
        .create_token(&CreateTokenRequest {
            label: "two".into(),
            expires_in_s: None,
        })
        .await
        .unwrap()
        .token;
    let clients = [
        alice.clone(),
        Client::new(&second.url(), Some(alice_token)).unwrap(),
    ];

    // 60 submissions spread over both processes, all at once: 40 credits buy exactly 40 jobs.
    let handles: Vec<_> = (0..60)
        .map(|i| {
            let client = clients[i % 2].clone();
            let network = network.id;
            let hash = workload.hash;
            tokio::spawn(async move {
                client
                    .submit_job(
                        &network,
                        &SubmitJobRequest {
                            workload: hash,
                            input: Blake3Hash::of(format!("{i}").as_bytes()),
                            input_size: 1,
                            idempotency_key: Some(format!("k{i}")),
                        },
                    )
                    .await
            })
        })
        .collect();
    let mut accepted = Vec::new();
    for handle in handles {
        match handle.await.unwrap() {
            Ok(assignment) => accepted.push(assignment.job),
            Err(e)
                if matches!(
                    e.code(),
                    Some("insufficient_credits" | "concurrent_transfer")
                ) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(accepted.len(), 40);
    assert_eq!(alice.balance(&network.id, None).await.unwrap().balance, 0);

    // Each job is held by exactly one device, assigned exactly once, however many sweepers ran.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let jobs = admin2.jobs(&network.id).await.unwrap();
    assert_eq!(jobs.len(), 40);
    let ids: HashSet<_> = jobs.iter().map(|j| j.id).collect();
    assert_eq!(ids.len(), 40);
    for job in &jobs {
        assert_eq!(job.state, JobState::Assigned, "{job:?}");
        assert_eq!(job.attempts, 1, "assigned once: {job:?}");
        assert!(job.executor.is_some());
    }
    // Devices report through either process; completion settles once.
    for job in jobs.iter().take(10) {
        let device = devices.iter().find(|d| Some(d.id) == job.executor).unwrap();
        let other_process = device
            .client
            .with_token(Some(device.registered.token.clone()));
        let second_client =
            Client::new(&second.url(), Some(device.registered.token.clone())).unwrap();
        // Two different receipts race through the two processes: exactly one settles (the
        // same receipt twice would be an idempotent no-op).
        let first = CompleteJobRequest {
            receipt: signed_receipt(&device.key, &network.id, job, b"o"),
        };
        let second = CompleteJobRequest {
            receipt: signed_receipt(&device.key, &network.id, job, b"p"),
        };
        let (a, b) = tokio::join!(
            other_process.complete_job(&job.id, &first),
            second_client.complete_job(&job.id, &second)
        );
        assert!(
            a.is_ok() != b.is_ok(),
            "exactly one completion wins: {a:?} {b:?}"
        );
    }
    let (balances, entries) =
        mesh_control_plane::http::credits::ledger_sums(plane.server.state(), &network.id)
            .await
            .unwrap();
    assert_eq!((balances, entries), (0, 0));
    let settled = plane
        .admin
        .history(&network.id, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "job_settle")
        .count();
    assert_eq!(
        settled, 10,
        "each completed job paid its device owner (the admin) once"
    );
}

//! The control plane's domain, end to end over HTTP, on SQLite and on PostgreSQL.

mod common;

use common::*;
use mesh_client::{Client, ClientError};
use mesh_control_plane::Server;
use mesh_proto::api::*;
use mesh_proto::device::{DeviceCert, DeviceLoad};
use mesh_proto::{Blake3Hash, NetworkId, RunReceipt, SignDomain, Signed, SigningKey};
use reqwest::StatusCode;
use std::time::Duration;

fn status(result: Result<impl std::fmt::Debug, ClientError>) -> StatusCode {
    match result {
        Err(e) => e.status().unwrap_or_else(|| panic!("transport error: {e}")),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

#[tokio::test]
async fn networks_people_and_invites() {
    for store in stores() {
        let plane = TestPlane::spawn(store).await;
        let network = plane.network(NetworkPolicy::default()).await;
        assert_eq!(network.role, Role::Owner);
        let (alice, alice_id) = plane.person(&network.id, Role::Member, "alice").await;
        let me = alice.me().await.unwrap();
        assert_eq!(me.person.name, "alice");
        assert_eq!(me.networks.len(), 1);
        assert_eq!(
            alice.balance(&network.id, None).await.unwrap().balance,
            1000,
            "initial grant"
        );

        // Members cannot do admin actions.
        let invite_req = CreateInviteRequest {
            kind: InviteKind::Person,
            role: None,
            expires_in_s: None,
        };
        assert_eq!(
            status(alice.create_invite(&network.id, &invite_req).await),
            StatusCode::FORBIDDEN
        );

        // Invites are single use.
        let invite = plane
            .admin
            .create_invite(&network.id, &invite_req)
            .await
            .unwrap();
        let accept = AcceptInviteRequest {
            code: invite.code.clone(),
            name: Some("bob".into()),
        };
        plane.anonymous().accept_invite(&accept).await.unwrap();
        let again = plane.anonymous().accept_invite(&accept).await;
        assert_eq!(
            again.as_ref().err().and_then(ClientError::code),
            Some("invite_used")
        );
        assert_eq!(status(again), StatusCode::GONE);
        let unknown = AcceptInviteRequest {
            code: "mesh-invite-nope".into(),
            name: Some("x".into()),
        };
        assert_eq!(
            status(plane.anonymous().accept_invite(&unknown).await),
            StatusCode::NOT_FOUND
        );

        // Another network's admin sees nothing of this one.
        let (outsider, _) = {
            let other = plane
                .anonymous()
                .accept_invite(&AcceptInviteRequest {
                    code: plane
                        .admin
                        .create_invite(&network.id, &invite_req)
                        .await
                        .unwrap()
                        .code,
                    name: Some("outsider".into()),
                })
                .await
                .unwrap();
            let client = plane.admin.with_token(other.token);
            plane
                .admin
                .remove_member(&network.id, &other.person)
                .await
                .unwrap();
            (client, other.person)
        };
        let theirs = outsider
            .create_network(&CreateNetworkRequest {
                name: "theirs".into(),
                policy: NetworkPolicy::default(),
            })
            .await
            .unwrap();
        assert_eq!(
            status(outsider.network(&network.id).await),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(outsider.members(&network.id).await),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(plane.admin.members(&theirs.id).await),
            StatusCode::NOT_FOUND
        );

        // Role changes; the last owner cannot step down.
        let admin_id = plane.admin.me().await.unwrap().person.id;
        let last_owner = plane
            .admin
            .update_member(&network.id, &admin_id, Role::Member)
            .await;
        assert_eq!(status(last_owner), StatusCode::CONFLICT);
        plane
            .admin
            .update_member(&network.id, &alice_id, Role::Admin)
            .await
            .unwrap();
        alice.create_invite(&network.id, &invite_req).await.unwrap();

        // Removal takes effect at once.
        plane
            .admin
            .remove_member(&network.id, &alice_id)
            .await
            .unwrap();
        assert_eq!(
            status(alice.network(&network.id).await),
            StatusCode::NOT_FOUND
        );

        // Tokens: revocation is immediate, expiry is honoured.
        let extra = plane
            .admin
            .create_token(&CreateTokenRequest {
                label: "ci".into(),
                expires_in_s: None,
            })
            .await
            .unwrap();
        let extra_client = plane.admin.with_token(Some(extra.token));
        extra_client.me().await.unwrap();
        plane.admin.revoke_token(&extra.id).await.unwrap();
        assert_eq!(status(extra_client.me().await), StatusCode::UNAUTHORIZED);
        assert_eq!(
            status(plane.admin.with_token(Some("mesh_bogus".into())).me().await),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(plane.anonymous().me().await),
            StatusCode::UNAUTHORIZED
        );
    }
}

#[tokio::test]
async fn device_registration_certificates_and_heartbeats() {
    for store in stores() {
        let plane = TestPlane::spawn(store).await;
        let network = plane.network(NetworkPolicy::default()).await;
        let mut device =
            register_device(&plane.admin, &network.id, 1, embedding_capabilities()).await;
        assert_eq!(
            device.registered.status,
            DeviceStatus::Pending,
            "approval required by default"
        );
        assert!(device.registered.certificate.is_none());
        assert_eq!(
            status(device.client.certificate(&device.id).await),
            StatusCode::CONFLICT
        );
        // Until approved, a device may only heartbeat (which tells it its status) and ask for
        // its certificate: it reads nothing of the network and runs nothing on its owner's
        // credits.
        let pending = device.heartbeat(DeviceLoad::default()).await;
        assert_eq!(pending.status, DeviceStatus::Pending);
        let refused = device.client.devices(&network.id).await.unwrap_err();
        assert_eq!(refused.status(), Some(StatusCode::FORBIDDEN));
        assert!(
            refused
                .to_string()
                .contains("waits for an admin's approval"),
            "{refused}"
        );
        assert_eq!(
            status(device.client.members(&network.id).await),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status(device.client.jobs(&network.id).await),
            StatusCode::FORBIDDEN
        );
        let submit = SubmitJobRequest {
            workload: Blake3Hash::of(b"anything"),
            input: Blake3Hash::of(b"x"),
            input_size: 1,
            idempotency_key: None,
        };
        assert_eq!(
            status(device.client.submit_job(&network.id, &submit).await),
            StatusCode::FORBIDDEN
        );

        plane
            .admin
            .approve_device(&network.id, &device.id)
            .await
            .unwrap();
        device.client.devices(&network.id).await.unwrap();
        let cert = device.client.certificate(&device.id).await.unwrap();
        // Relays and peers check certificates offline with the control plane's key.
        let cp_key = plane
            .anonymous()
            .control_plane_key()
            .await
            .unwrap()
            .public_key;
        assert_eq!(cert.control_plane_key, cp_key);
        let body: DeviceCert = cert
            .certificate
            .verify(&cp_key, SignDomain::DeviceCert, &network.id)
            .unwrap();
        assert_eq!(body.device, device.id);
        assert_eq!(body.public_key, device.key.public_key());
        assert_eq!(body.peer_id, device.key.public_key().peer_id());
        assert!(
            cert.certificate
                .verify(&cp_key, SignDomain::JobTicket, &network.id)
                .is_err()
        );

        // Heartbeats: signed, monotonic, only as oneself.
        let load = DeviceLoad {
            running: 1,
            queued: 2,
            slots: 4,
            others_busy_percent: None,
        };
        let response = device.heartbeat(load).await;
        assert_eq!(response.status, DeviceStatus::Approved);
        let listed = plane.admin.devices(&network.id).await.unwrap();
        assert!(listed[0].online);
        assert_eq!(listed[0].load, load);
        let signed = device.heartbeat_payload(load);
        device.client.heartbeat(&device.id, &signed).await.unwrap();
        let replay = device.client.heartbeat(&device.id, &signed).await;
        assert_eq!(
            replay.as_ref().err().and_then(ClientError::code),
            Some("replayed_heartbeat")
        );

        let mut other =
            register_device(&plane.admin, &network.id, 2, embedding_capabilities()).await;
        let forged = other.heartbeat_payload(load);
        assert_eq!(
            status(device.client.heartbeat(&other.id, &forged).await),
            StatusCode::FORBIDDEN
        );
        // A heartbeat for the right device signed with the wrong key.
        let mut impostor = TestDevice {
            key: SigningKey::from_seed([9; 32]),
            id: device.id,
            network: device.network,
            client: device.client.clone(),
            registered: device.registered.clone(),
            last_heartbeat_ms: device.last_heartbeat_ms + 10,
        };
        let bad = impostor.heartbeat_payload(load);
        assert_eq!(
            status(device.client.heartbeat(&device.id, &bad).await),
            StatusCode::UNAUTHORIZED
        );

        // Registration replays and bad proofs are refused.
        let invite = plane
            .admin
            .create_invite(
                &network.id,
                &CreateInviteRequest {
                    kind: InviteKind::Device,
                    role: None,
                    expires_in_s: None,
                },
            )
            .await
            .unwrap();
        let challenge = plane.anonymous().challenge(&invite.code).await.unwrap();
        let key = SigningKey::from_seed([7; 32]);
        let mut request = RegisterDeviceRequest {
            invite: invite.code.clone(),
            challenge: challenge.challenge.clone(),
            name: "evil".into(),
            public_key: key.public_key(),
            proof: key.sign(SignDomain::Registration, &network.id, b"something else"),
            capabilities: embedding_capabilities(),
        };
        assert_eq!(
            status(plane.anonymous().register_device(&request).await),
            StatusCode::UNAUTHORIZED
        );
        let proof = mesh_proto::device::RegistrationProof {
            challenge: challenge.challenge.clone(),
            public_key: key.public_key(),
        };
        request.proof = key.sign(
            SignDomain::Registration,
            &network.id,
            &mesh_proto::cbor::to_vec(&proof).unwrap(),
        );
        plane.anonymous().register_device(&request).await.unwrap();
        // Same invite and challenge again: both are spent.
        assert_eq!(
            status(plane.anonymous().register_device(&request).await),
            StatusCode::GONE
        );

        // Revocation is immediate: the device's token stops working.
        plane
            .admin
            .revoke_device(&network.id, &other.id)
            .await
            .unwrap();
        let after = other.heartbeat_payload(load);
        assert_eq!(
            status(other.client.heartbeat(&other.id, &after).await),
            StatusCode::UNAUTHORIZED
        );
    }
}

#[tokio::test]
async fn presence_marks_silent_devices_offline() {
    for store in stores() {
        let plane =
            TestPlane::spawn_with(store, |c| c.offline_after = Duration::from_millis(500)).await;
        let network = plane.open_network().await;
        let mut device =
            register_device(&plane.admin, &network.id, 3, embedding_capabilities()).await;
        assert_eq!(device.registered.status, DeviceStatus::Approved);
        assert!(device.registered.certificate.is_some());
        device.heartbeat(DeviceLoad::default()).await;
        assert!(plane.admin.devices(&network.id).await.unwrap()[0].online);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while plane.admin.devices(&network.id).await.unwrap()[0].online {
            assert!(
                std::time::Instant::now() < deadline,
                "device never went offline"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        device.heartbeat(DeviceLoad::default()).await;
        assert!(plane.admin.devices(&network.id).await.unwrap()[0].online);
    }
}

#[tokio::test]
async fn workload_registry() {
    for store in stores() {
        let plane = TestPlane::spawn(store).await;
        let network = plane.network(NetworkPolicy::default()).await;
        let bytes = std::fs::read(mesh_test_artifacts::EMBEDDINGS).unwrap();
        let published = plane
            .admin
            .publish_workload(&network.id, bytes.clone())
            .await
            .unwrap();
        assert_eq!(published.name, "embeddings");
        assert_eq!(published.models, ["all-minilm-l6-v2"]);
        assert_eq!(published.hash, Blake3Hash::of(&bytes));
        assert_eq!(published.size, bytes.len() as u64);
        // Idempotent.
        let again = plane
            .admin
            .publish_workload(&network.id, bytes.clone())
            .await
            .unwrap();
        assert_eq!(again, published);
        assert_eq!(plane.admin.workloads(&network.id).await.unwrap().len(), 1);
        assert_eq!(
            plane
                .admin
                .download_component(&network.id, &published.hash)
                .await
                .unwrap(),
            bytes
        );

        // Not components of the Mesh world: refused with a clear error.
        for (bad, what) in [
            (b"not wasm at all".to_vec(), "garbage"),
            (
                std::fs::read(mesh_test_artifacts::HOSTILE_SOCKETS).unwrap(),
                "imports sockets",
            ),
            (
                std::fs::read(mesh_test_artifacts::NOT_A_WORKLOAD).unwrap(),
                "missing exports",
            ),
        ] {
            let result = plane.admin.publish_workload(&network.id, bad).await;
            assert_eq!(
                result.as_ref().err().and_then(ClientError::code),
                Some("invalid_component"),
                "{what}"
            );
        }
        // Members cannot publish.
        let (member, _) = plane.person(&network.id, Role::Member, "m").await;
        let echo = std::fs::read(mesh_test_artifacts::ECHO).unwrap();
        assert_eq!(
            status(member.publish_workload(&network.id, echo.clone()).await),
            StatusCode::FORBIDDEN
        );
        member.workload(&network.id, &published.hash).await.unwrap();

        // Yanked workloads take no new jobs.
        let yanked = plane
            .admin
            .yank_workload(&network.id, &published.hash)
            .await
            .unwrap();
        assert!(yanked.yanked);
        let submit = SubmitJobRequest {
            workload: published.hash,
            input: Blake3Hash::of(b"x"),
            input_size: 1,
            idempotency_key: None,
        };
        assert_eq!(
            status(plane.admin.submit_job(&network.id, &submit).await),
            StatusCode::CONFLICT
        );
    }
}

async fn network_with_device(
    plane: &TestPlane,
    policy: NetworkPolicy,
) -> (NetworkInfo, WorkloadInfo, TestDevice) {
    network_with_device_of(plane, policy, false).await
}

/// Like [`network_with_device`], but the device belongs to another person (an admin, so it
/// could invite it), so the admin's jobs on it are checked.
async fn network_with_anothers_device(
    plane: &TestPlane,
) -> (NetworkInfo, WorkloadInfo, TestDevice) {
    network_with_device_of(plane, NetworkPolicy::default(), true).await
}

/// A network (devices join without approval) with the echo workload and one device, the
/// admin's or (`anothers`) another admin's.
async fn network_with_device_of(
    plane: &TestPlane,
    policy: NetworkPolicy,
    anothers: bool,
) -> (NetworkInfo, WorkloadInfo, TestDevice) {
    let network = plane
        .network(NetworkPolicy {
            require_device_approval: false,
            ..policy
        })
        .await;
    let workload = plane
        .admin
        .publish_workload(
            &network.id,
            std::fs::read(mesh_test_artifacts::ECHO).unwrap(),
        )
        .await
        .unwrap();
    let owner = if anothers {
        plane.person(&network.id, Role::Admin, "host owner").await.0
    } else {
        plane.admin.clone()
    };
    let seed = if anothers { 13 } else { 11 };
    let mut device = register_device(&owner, &network.id, seed, embedding_capabilities()).await;
    device
        .heartbeat(DeviceLoad {
            running: 0,
            queued: 0,
            slots: 4,
            others_busy_percent: None,
        })
        .await;
    (network, workload, device)
}

fn receipt(device: &TestDevice, job: &JobInfo, output: &[u8]) -> Signed<RunReceipt> {
    signed_receipt(&device.key, &device.network, job, output)
}

#[tokio::test]
async fn jobs_are_assigned_run_and_settled_once() {
    for store in stores() {
        let plane = TestPlane::spawn(store).await;
        let (network, workload, device) = network_with_device(
            &plane,
            NetworkPolicy {
                job_price: 5,
                ..NetworkPolicy::default()
            },
        )
        .await;
        let (alice, alice_id) = plane.person(&network.id, Role::Member, "alice").await;
        let submit = SubmitJobRequest {
            workload: workload.hash,
            input: Blake3Hash::of(b"input"),
            input_size: 5,
            idempotency_key: Some("job-1".into()),
        };
        let assignment = alice.submit_job(&network.id, &submit).await.unwrap();
        assert_eq!(assignment.job.state, JobState::Assigned);
        assert_eq!(assignment.job.executor, Some(device.id));
        assert_eq!(
            assignment.executor_peer_id.as_deref(),
            Some(device.key.public_key().peer_id().as_str())
        );
        let cp_key = plane.admin.control_plane_key().await.unwrap().public_key;
        let ticket = assignment
            .ticket
            .clone()
            .unwrap()
            .verify(&cp_key, SignDomain::JobTicket, &network.id)
            .unwrap();
        assert_eq!(ticket.executor, device.id);
        assert_eq!(ticket.price, 5);
        // Reading the job again later gives the same ticket, bound to the lease, not a
        // fresh one that outlives it.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let reread = alice.job(&network.id, &assignment.job.id).await.unwrap();
        assert_eq!(reread.ticket, assignment.ticket);
        assert_eq!(
            Some(ticket.expires_at_ms),
            reread.job.lease_expires_at_ms,
            "the ticket expires with the lease"
        );
        assert_eq!(
            alice.balance(&network.id, None).await.unwrap().balance,
            995,
            "reserved"
        );
        // Same idempotency key: same job, charged once.
        let again = alice.submit_job(&network.id, &submit).await.unwrap();
        assert_eq!(again.job.id, assignment.job.id);
        assert_eq!(alice.balance(&network.id, None).await.unwrap().balance, 995);
        // The same key for another input is refused, not answered with the old job.
        let other_input = SubmitJobRequest {
            input: Blake3Hash::of(b"other input"),
            ..submit.clone()
        };
        let reused = alice
            .submit_job(&network.id, &other_input)
            .await
            .unwrap_err();
        assert_eq!(reused.code(), Some("idempotency_key_reused"), "{reused}");
        assert_eq!(alice.balance(&network.id, None).await.unwrap().balance, 995);

        // Only the executor may report; a receipt must be signed by it.
        let job = assignment.job.clone();
        assert_eq!(
            status(alice.start_job(&job.id).await),
            StatusCode::FORBIDDEN
        );
        device.client.start_job(&job.id).await.unwrap();
        let forged = {
            let mut other = TestDevice {
                key: SigningKey::from_seed([99; 32]),
                ..clone_device(&device)
            };
            other.last_heartbeat_ms = 0;
            receipt(&other, &job, b"out")
        };
        let bad = device
            .client
            .complete_job(&job.id, &CompleteJobRequest { receipt: forged })
            .await;
        assert_eq!(status(bad), StatusCode::UNAUTHORIZED);
        let done = device
            .client
            .complete_job(
                &job.id,
                &CompleteJobRequest {
                    receipt: receipt(&device, &job, b"out"),
                },
            )
            .await
            .unwrap();
        assert_eq!(done.state, JobState::Done);
        assert_eq!(done.receipt.unwrap().output, Blake3Hash::of(b"out"));
        // Reporting the same receipt again (the requester reports too) is a no-op: paid once.
        let twice = device
            .client
            .complete_job(
                &job.id,
                &CompleteJobRequest {
                    receipt: receipt(&device, &job, b"out"),
                },
            )
            .await
            .unwrap();
        assert_eq!(twice.state, JobState::Done);
        // A different receipt for a settled job is a conflict.
        let conflicting = device
            .client
            .complete_job(
                &job.id,
                &CompleteJobRequest {
                    receipt: receipt(&device, &job, b"other output"),
                },
            )
            .await;
        assert_eq!(status(conflicting), StatusCode::CONFLICT);
        let admin_id = plane.admin.me().await.unwrap().person.id;
        assert_eq!(
            plane
                .admin
                .balance(&network.id, None)
                .await
                .unwrap()
                .balance,
            1005,
            "device owner paid once"
        );
        let history = alice.history(&network.id, Some(&alice_id)).await.unwrap();
        assert_eq!(history.len(), 2, "grant and reservation");
        let _ = admin_id;

        // Failure that can be retried goes back to the queue, then fails for good and refunds.
        let failing = alice
            .submit_job(
                &network.id,
                &SubmitJobRequest {
                    idempotency_key: Some("job-2".into()),
                    ..submit.clone()
                },
            )
            .await
            .unwrap()
            .job;
        let requeued = device
            .client
            .fail_job(
                &failing.id,
                &FailJobRequest {
                    reason: "out of memory".into(),
                    retryable: false,
                    executor_peer: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(requeued.state, JobState::Failed);
        assert_eq!(
            alice.balance(&network.id, None).await.unwrap().balance,
            995,
            "refunded"
        );
        let (balances, entries) =
            mesh_control_plane::http::credits::ledger_sums(plane.server.state(), &network.id)
                .await
                .unwrap();
        assert_eq!((balances, entries), (0, 0), "ledger sums to zero");
        // A person's key is not their devices' (the device here is the admin's): another
        // requester of the same owner gets a conflict, never the first one's job and ticket.
        let admins = SubmitJobRequest {
            idempotency_key: Some("shared".into()),
            ..submit.clone()
        };
        plane.admin.submit_job(&network.id, &admins).await.unwrap();
        let taken = device
            .client
            .submit_job(&network.id, &admins)
            .await
            .unwrap_err();
        assert_eq!(taken.code(), Some("idempotency_key_in_use"), "{taken}");
        assert_eq!(alice.balance(&network.id, None).await.unwrap().balance, 995);
    }
}

fn clone_device(device: &TestDevice) -> TestDevice {
    TestDevice {
        key: SigningKey::from_seed(device.key.seed()),
        id: device.id,
        network: device.network,
        client: device.client.clone(),
        registered: device.registered.clone(),
        last_heartbeat_ms: device.last_heartbeat_ms,
    }
}

#[tokio::test]
async fn expired_leases_are_reassigned_and_refunded_exactly_once() {
    for store in stores() {
        let plane = TestPlane::spawn_with(store, |c| {
            c.job_lease = Duration::from_millis(300);
            c.max_job_attempts = 2;
        })
        .await;
        let (network, workload, mut device) = network_with_device(
            &plane,
            NetworkPolicy {
                job_price: 7,
                ..NetworkPolicy::default()
            },
        )
        .await;
        let job = plane
            .admin
            .submit_job(
                &network.id,
                &SubmitJobRequest {
                    workload: workload.hash,
                    input: Blake3Hash::of(b"i"),
                    input_size: 1,
                    idempotency_key: None,
                },
            )
            .await
            .unwrap()
            .job;
        assert_eq!(job.state, JobState::Assigned);
        // The executor goes silent: the lease expires, the job is reassigned (attempt 2), then
        // expires again and fails with a refund.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let final_state = loop {
            device
                .heartbeat(DeviceLoad {
                    running: 0,
                    queued: 0,
                    slots: 4,
                    others_busy_percent: None,
                })
                .await;
            let current = plane.admin.job(&network.id, &job.id).await.unwrap().job;
            if current.state == JobState::Failed {
                break current;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "job stuck in {:?}",
                current.state
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(final_state.attempts, 2);
        assert!(final_state.error.unwrap().contains("lease"));
        assert_eq!(
            plane
                .admin
                .balance(&network.id, None)
                .await
                .unwrap()
                .balance,
            1000,
            "refunded once"
        );
        let refunds = plane
            .admin
            .history(&network.id, None)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "job_refund")
            .count();
        assert_eq!(refunds, 1);
        let (balances, entries) =
            mesh_control_plane::http::credits::ledger_sums(plane.server.state(), &network.id)
                .await
                .unwrap();
        assert_eq!((balances, entries), (0, 0));
    }
}

/// A requester that gives up on a job its executor holds (as one that already has the
/// result might, to be refunded) refunds nothing by saying so: the executor that reports a
/// receipt is paid; one that does not lets its lease expire, and only then is the requester
/// refunded, once, with no further attempt.
#[tokio::test]
async fn a_requester_cannot_refund_itself_a_job_its_executor_holds() {
    for store in stores() {
        let plane = TestPlane::spawn_with(store, |c| {
            c.job_lease = Duration::from_millis(400);
        })
        .await;
        let (network, workload, mut device) = network_with_device(
            &plane,
            NetworkPolicy {
                job_price: 7,
                ..NetworkPolicy::default()
            },
        )
        .await;
        let submit = |input: &'static [u8]| {
            let admin = plane.admin.clone();
            let hash = workload.hash;
            async move {
                admin
                    .submit_job(
                        &network.id,
                        &SubmitJobRequest {
                            workload: hash,
                            input: Blake3Hash::of(input),
                            input_size: input.len() as u64,
                            idempotency_key: None,
                        },
                    )
                    .await
                    .unwrap()
                    .job
            }
        };
        let give_up = FailJobRequest {
            reason: "I give up".into(),
            retryable: false,
            executor_peer: None,
        };
        let entries = |job: mesh_proto::JobId| {
            let admin = plane.admin.clone();
            async move {
                let history = admin.history(&network.id, None).await.unwrap();
                let count = |kind: &str| {
                    history
                        .iter()
                        .filter(|e| e.job == Some(job) && e.kind == kind)
                        .count()
                };
                (count("job_settle"), count("job_refund"))
            }
        };

        // 1. The executor did the work and reports it: it is paid, the requester is not
        //    refunded.
        let job = submit(b"done").await;
        assert_eq!(job.state, JobState::Assigned);
        let after = plane
            .admin
            .reassign_job(&network.id, &job.id, &give_up)
            .await
            .unwrap();
        assert_eq!(after.job.state, JobState::Assigned, "{after:?}");
        assert_eq!(after.job.executor, Some(device.id));
        assert_eq!(entries(job.id).await, (0, 0));
        let done = device
            .client
            .complete_job(
                &job.id,
                &CompleteJobRequest {
                    receipt: receipt(&device, &job, b"out"),
                },
            )
            .await
            .unwrap();
        assert_eq!(done.state, JobState::Done);
        assert_eq!(entries(job.id).await, (1, 0));

        // 2. The executor never answers: the lease expires and the job fails with one
        //    refund, without being offered to the other device that is idle now.
        let job = submit(b"silent").await;
        assert_eq!(job.executor, Some(device.id));
        let mut other =
            register_device(&plane.admin, &network.id, 12, embedding_capabilities()).await;
        plane
            .admin
            .reassign_job(&network.id, &job.id, &give_up)
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let failed = loop {
            device.heartbeat(DeviceLoad::default()).await;
            other.heartbeat(DeviceLoad::default()).await;
            let current = plane.admin.job(&network.id, &job.id).await.unwrap().job;
            if current.state == JobState::Failed {
                break current;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "job stuck in {:?}",
                current.state
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(failed.executor, Some(device.id), "{failed:?}");
        assert!(
            failed.error.as_deref().unwrap().contains("lease"),
            "{failed:?}"
        );
        assert_eq!(entries(job.id).await, (0, 1));
        let (balances, entries) =
            mesh_control_plane::http::credits::ledger_sums(plane.server.state(), &network.id)
                .await
                .unwrap();
        assert_eq!((balances, entries), (0, 0));
    }
}

#[tokio::test]
async fn concurrent_spends_never_overdraw() {
    for store in stores() {
        let plane = TestPlane::spawn(store).await;
        let (network, workload, _device) = network_with_device(
            &plane,
            NetworkPolicy {
                job_price: 10,
                initial_grant: 0,
                ..NetworkPolicy::default()
            },
        )
        .await;
        let (alice, alice_id) = plane.person(&network.id, Role::Member, "alice").await;
        plane
            .admin
            .grant(
                &network.id,
                &GrantRequest {
                    person: alice_id,
                    amount: 255,
                    idempotency_key: "g1".into(),
                    memo: None,
                },
            )
            .await
            .unwrap();
        // The same grant again is a no-op.
        let repeat = plane
            .admin
            .grant(
                &network.id,
                &GrantRequest {
                    person: alice_id,
                    amount: 255,
                    idempotency_key: "g1".into(),
                    memo: None,
                },
            )
            .await
            .unwrap();
        assert!(!repeat.created);
        // An admin granting to themselves needs the policy to say admins may; the audit log
        // says it happened.
        let me = plane.admin.me().await.unwrap().person.id;
        let own = GrantRequest {
            person: me,
            amount: 1_000_000,
            idempotency_key: "to-me".into(),
            memo: None,
        };
        let refused = plane.admin.grant(&network.id, &own).await.unwrap_err();
        assert_eq!(refused.status(), Some(StatusCode::FORBIDDEN), "{refused}");
        let mut policy = plane.admin.network(&network.id).await.unwrap().policy;
        policy.admins_grant_themselves = true;
        plane
            .admin
            .update_policy(&network.id, &policy)
            .await
            .unwrap();
        assert!(plane.admin.grant(&network.id, &own).await.unwrap().created);
        let audit = plane.admin.audit_log(&network.id).await.unwrap();
        assert!(
            audit
                .iter()
                .any(|e| e.action == "credits.grant" && e.detail.contains("(to themselves)")),
            "{audit:?}"
        );
        // The same key for another amount or another person is refused, not ignored.
        let (_, bob_id) = plane.person(&network.id, Role::Member, "bob").await;
        for (person, amount) in [(alice_id, 256), (bob_id, 255)] {
            let reused = plane
                .admin
                .grant(
                    &network.id,
                    &GrantRequest {
                        person,
                        amount,
                        idempotency_key: "g1".into(),
                        memo: None,
                    },
                )
                .await
                .unwrap_err();
            assert_eq!(reused.status(), Some(StatusCode::CONFLICT), "{reused}");
            assert_eq!(reused.code(), Some("idempotency_key_reused"));
        }
        let submits = (0..100).map(|i| {
            let alice = alice.clone();
            let network = network.id;
            let hash = workload.hash;
            tokio::spawn(async move {
                alice
                    .submit_job(
                        &network,
                        &SubmitJobRequest {
                            workload: hash,
                            input: Blake3Hash::of(format!("{i}").as_bytes()),
                            input_size: 1,
                            idempotency_key: Some(format!("spend-{i}")),
                        },
                    )
                    .await
            })
        });
        let mut accepted = 0;
        let mut refused = 0;
        for handle in submits.collect::<Vec<_>>() {
            match handle.await.unwrap() {
                Ok(_) => accepted += 1,
                Err(e) if e.code() == Some("insufficient_credits") => refused += 1,
                Err(e) if e.code() == Some("concurrent_transfer") => refused += 1,
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert_eq!(accepted, 25, "255 credits buy exactly 25 jobs at 10");
        assert_eq!(refused, 75);
        assert_eq!(alice.balance(&network.id, None).await.unwrap().balance, 5);
        let (balances, entries) =
            mesh_control_plane::http::credits::ledger_sums(plane.server.state(), &network.id)
                .await
                .unwrap();
        assert_eq!((balances, entries), (0, 0));
    }
}

#[tokio::test]
async fn weak_shared_secrets_are_refused_at_start() {
    for (relay, metrics) in [
        (Some("x"), None),
        (None, Some("short-token")),
        (Some("has spaces in it 0123456789abcdef"), None),
    ] {
        let mut db = TestDb::new(Store::Sqlite).await;
        db.config.relay_secret = relay.map(str::to_string);
        db.config.metrics_token = metrics.map(str::to_string);
        let error = match Server::spawn(db.config.clone()).await {
            Ok(_) => panic!("{relay:?} {metrics:?} accepted"),
            Err(e) => e.to_string(),
        };
        assert!(error.contains("at least 32"), "{error}");
    }
}

#[tokio::test]
async fn errors_are_json_with_stable_codes_and_limits_hold() {
    const METRICS_TOKEN: &str = "metrics-token-0123456789abcdef0123456789";
    let plane = TestPlane::spawn_with(Store::Sqlite, |c| {
        c.metrics_token = Some(METRICS_TOKEN.into())
    })
    .await;
    let http = reqwest::Client::new();
    let url = plane.server.url();
    let health: Health = http
        .get(format!("{url}/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health.status, "ok");
    // `/metrics` counts every network: only for the scraper's token, not a person's.
    let persons = plane
        .admin
        .create_token(&CreateTokenRequest {
            label: "a person's".into(),
            expires_in_s: None,
        })
        .await
        .unwrap()
        .token;
    for token in [None, Some("wrong"), Some(persons.as_str())] {
        let mut request = http.get(format!("{url}/metrics"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        assert_eq!(
            request.send().await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let metrics = http
        .get(format!("{url}/metrics"))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "mesh_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("mesh_devices_online 0"));

    let no_route = http.get(format!("{url}/v1/nope")).send().await.unwrap();
    assert_eq!(no_route.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = no_route.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_route");

    // Malformed JSON and oversized bodies.
    let token = plane
        .admin
        .create_token(&CreateTokenRequest {
            label: "t".into(),
            expires_in_s: None,
        })
        .await
        .unwrap()
        .token;
    let bad = http
        .post(format!("{url}/v1/networks"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = bad.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
    let huge = http
        .post(format!("{url}/v1/networks"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(format!("{{\"name\": \"{}\"}}", "x".repeat(2 << 20)))
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value = huge.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
    let long_name = plane
        .admin
        .create_network(&CreateNetworkRequest {
            name: "x".repeat(500),
            policy: NetworkPolicy::default(),
        })
        .await;
    assert_eq!(
        long_name.as_ref().err().and_then(ClientError::code),
        Some("bad_request")
    );
}

#[tokio::test]
async fn expiry_and_credit_policy() {
    for store in stores() {
        let plane = TestPlane::spawn(store).await;
        // Tokens and invites expire.
        let short = plane
            .admin
            .create_token(&CreateTokenRequest {
                label: "short".into(),
                expires_in_s: Some(1),
            })
            .await
            .unwrap();
        let network = plane
            .network(NetworkPolicy {
                allow_credit: true,
                credit_limit: 15,
                job_price: 10,
                initial_grant: 0,
                require_device_approval: false,
                admins_grant_themselves: false,
            })
            .await;
        let invite = plane
            .admin
            .create_invite(
                &network.id,
                &CreateInviteRequest {
                    kind: InviteKind::Person,
                    role: None,
                    expires_in_s: Some(1),
                },
            )
            .await
            .unwrap();
        let short_client = plane.admin.with_token(Some(short.token));
        short_client.me().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(status(short_client.me().await), StatusCode::UNAUTHORIZED);
        let late = plane
            .anonymous()
            .accept_invite(&AcceptInviteRequest {
                code: invite.code,
                name: Some("late".into()),
            })
            .await;
        assert_eq!(
            late.as_ref().err().and_then(ClientError::code),
            Some("invite_expired")
        );

        // With credit allowed, a balance may go down to -credit_limit and no further.
        let workload = plane
            .admin
            .publish_workload(
                &network.id,
                std::fs::read(mesh_test_artifacts::ECHO).unwrap(),
            )
            .await
            .unwrap();
        let submit = |key: &str| SubmitJobRequest {
            workload: workload.hash,
            input: Blake3Hash::of(key.as_bytes()),
            input_size: 1,
            idempotency_key: Some(key.into()),
        };
        plane
            .admin
            .submit_job(&network.id, &submit("a"))
            .await
            .unwrap();
        assert_eq!(
            plane
                .admin
                .balance(&network.id, None)
                .await
                .unwrap()
                .balance,
            -10
        );
        let over = plane.admin.submit_job(&network.id, &submit("b")).await;
        assert_eq!(status(over), StatusCode::PAYMENT_REQUIRED);
        assert_eq!(
            plane
                .admin
                .balance(&network.id, None)
                .await
                .unwrap()
                .balance,
            -10
        );
        let (balances, entries) =
            mesh_control_plane::http::credits::ledger_sums(plane.server.state(), &network.id)
                .await
                .unwrap();
        assert_eq!((balances, entries), (0, 0));
    }
}

#[tokio::test]
async fn concurrent_heartbeats_keep_the_newest_and_refuse_replays() {
    for store in stores() {
        let plane = TestPlane::spawn(store).await;
        let network = plane.open_network().await;
        let mut device =
            register_device(&plane.admin, &network.id, 21, embedding_capabilities()).await;
        let signed: Vec<_> = (0..20)
            .map(|i| {
                device.heartbeat_payload(DeviceLoad {
                    running: i,
                    queued: 0,
                    slots: 32,
                    others_busy_percent: None,
                })
            })
            .collect();
        let newest = signed.last().unwrap().clone();
        // Sent all at once, in reverse order: they meet in one batch or several.
        let results = futures_join(signed.into_iter().rev().map(|s| {
            let client = device.client.clone();
            let id = device.id;
            async move { client.heartbeat(&id, &s).await }
        }))
        .await;
        assert!(results.iter().any(Result::is_ok));
        for r in &results {
            if let Err(e) = r {
                assert_eq!(e.code(), Some("replayed_heartbeat"), "{e}");
            }
        }
        // The newest is stored: sending it again is a replay; a newer one is accepted.
        let replay = device.client.heartbeat(&device.id, &newest).await;
        assert_eq!(
            replay.as_ref().err().and_then(ClientError::code),
            Some("replayed_heartbeat")
        );
        device
            .heartbeat(DeviceLoad {
                running: 0,
                queued: 0,
                slots: 32,
                others_busy_percent: None,
            })
            .await;
        assert_eq!(
            plane.admin.devices(&network.id).await.unwrap()[0]
                .load
                .running,
            0
        );
    }
}

async fn futures_join<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn every_settled_job_gets_a_verifiable_selection_and_payloads_are_checked() {
    for store in stores() {
        let plane = TestPlane::spawn(store).await;
        let (network, workload, device) = network_with_anothers_device(&plane).await;
        let vrf = plane.anonymous().vrf_key().await.unwrap();
        assert_eq!(vrf.suite, "ECVRF-EDWARDS25519-SHA512-TAI");
        let mut selected = None;
        let mut unselected = None;
        let mut not_selected = 0;
        for i in 0..24 {
            let input = format!("input {i}").into_bytes();
            let job = plane
                .admin
                .submit_job(
                    &network.id,
                    &SubmitJobRequest {
                        workload: workload.hash,
                        input: Blake3Hash::of(&input),
                        input_size: input.len() as u64,
                        idempotency_key: None,
                    },
                )
                .await
                .unwrap()
                .job;
            // Not settled yet: no decision.
            assert_eq!(
                status(plane.admin.job_check(&network.id, &job.id).await),
                StatusCode::NOT_FOUND
            );
            let output = format!("output {i}").into_bytes();
            let done = device
                .client
                .complete_job(
                    &job.id,
                    &CompleteJobRequest {
                        receipt: receipt(&device, &job, &output),
                    },
                )
                .await
                .unwrap();
            let check = plane.admin.job_check(&network.id, &job.id).await.unwrap();
            assert_eq!(check.executor, device.id);
            // A new device is checked at the initial rate.
            assert_eq!(check.selection.rate_ppm, vrf.policy.initial_ppm);
            check
                .selection
                .verify(
                    &vrf.public_key,
                    &network.id,
                    &job.id,
                    done.receipt.as_ref().unwrap(),
                )
                .unwrap();
            // The control plane's own check, for clients that cannot run the VRF, agrees.
            assert_eq!(
                check.selection_check,
                Some(mesh_proto::api::SelectionCheck {
                    holds: true,
                    detail: String::new()
                })
            );
            // A lie about the decision, or the proof of another job, does not verify.
            let mut lie = check.selection.clone();
            lie.selected = !lie.selected;
            assert!(
                lie.verify(
                    &vrf.public_key,
                    &network.id,
                    &job.id,
                    done.receipt.as_ref().unwrap()
                )
                .is_err()
            );
            if check.selection.selected {
                // No gateway here, so nobody re-executes it: it waits for the payload.
                assert_eq!(check.state, CheckState::Selected);
                selected.get_or_insert((job, done, input, output));
            } else {
                assert_eq!(check.state, CheckState::NotSelected);
                not_selected += 1;
                unselected.get_or_insert((job, input));
            }
        }
        // At 50%, 24 jobs without both outcomes happen with probability 2^-23.
        assert!(not_selected > 0);
        let (job, done, input, output) = selected.expect("some job was selected");

        // A stored decision that was flipped afterwards (a tampered database, say) is
        // reported as not holding, with the reason.
        let (tampered, _) = unselected.as_ref().unwrap();
        sqlx::query("UPDATE checks SET selected = 1 WHERE job_id = $1")
            .bind(tampered.id.to_string())
            .execute(&plane.server.state().db.pool)
            .await
            .unwrap();
        let verdict = plane
            .admin
            .job_check(&network.id, &tampered.id)
            .await
            .unwrap()
            .selection_check
            .unwrap();
        assert!(!verdict.holds);
        assert!(verdict.detail.contains("decision"), "{verdict:?}");
        sqlx::query("UPDATE checks SET selected = 0 WHERE job_id = $1")
            .bind(tampered.id.to_string())
            .execute(&plane.server.state().db.pool)
            .await
            .unwrap();

        // The requester hands over input and output, by the hashes the receipt names.
        let admin = &plane.admin;
        let bad = admin
            .upload_payload(&network.id, &job.id, b"something else".to_vec())
            .await;
        assert_eq!(status(bad), StatusCode::BAD_REQUEST);
        admin
            .upload_payload(&network.id, &job.id, input.clone())
            .await
            .unwrap();
        admin
            .upload_payload(&network.id, &job.id, output.clone())
            .await
            .unwrap();
        let receipt = done.receipt.unwrap();
        assert_eq!(
            admin
                .download_payload(&network.id, &job.id, &receipt.output)
                .await
                .unwrap(),
            output
        );
        // A body that does not hash to the path's hash is refused.
        let url = format!(
            "{}/v1/networks/{}/jobs/{}/payloads/{}",
            plane.server.url(),
            network.id,
            job.id,
            receipt.input
        );
        let token = admin
            .create_token(&CreateTokenRequest {
                label: "raw".into(),
                expires_in_s: None,
            })
            .await
            .unwrap()
            .token;
        let response = reqwest::Client::new()
            .put(&url)
            .bearer_auth(token)
            .body(b"not the input".to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        // Only the requester: the executing device may not upload or read.
        assert_eq!(
            status(
                device
                    .client
                    .download_payload(&network.id, &job.id, &receipt.output)
                    .await
            ),
            StatusCode::FORBIDDEN
        );
        // A job nobody will re-execute takes no payloads: they would only fill the store.
        let (unselected, unselected_input) = unselected.expect("some job was not selected");
        let refused = admin
            .upload_payload(&network.id, &unselected.id, unselected_input)
            .await;
        assert_eq!(
            refused.as_ref().err().and_then(ClientError::code),
            Some("not_selected")
        );

        // A member who can read this job's hashes makes a network of her own, runs a job on
        // her own device and signs a receipt naming them: payloads are bound to the job they
        // were uploaded for, so she reads nothing.
        let (mallory, _) = plane.person(&network.id, Role::Member, "mallory").await;
        let hashes = mallory.job(&network.id, &job.id).await.unwrap();
        let theirs = mallory
            .create_network(&CreateNetworkRequest {
                name: "mallory's".into(),
                policy: NetworkPolicy {
                    require_device_approval: false,
                    ..NetworkPolicy::default()
                },
            })
            .await
            .unwrap();
        let echo = mallory
            .publish_workload(
                &theirs.id,
                std::fs::read(mesh_test_artifacts::ECHO).unwrap(),
            )
            .await
            .unwrap();
        let mut accomplice =
            register_device(&mallory, &theirs.id, 12, embedding_capabilities()).await;
        accomplice
            .heartbeat(DeviceLoad {
                running: 0,
                queued: 0,
                slots: 4,
                others_busy_percent: None,
            })
            .await;
        let forged = mallory
            .submit_job(
                &theirs.id,
                &SubmitJobRequest {
                    workload: echo.hash,
                    input: hashes.job.input,
                    input_size: input.len() as u64,
                    idempotency_key: None,
                },
            )
            .await
            .unwrap()
            .job;
        accomplice
            .client
            .complete_job(
                &forged.id,
                &CompleteJobRequest {
                    receipt: receipt_naming(&accomplice.key, &theirs.id, &forged, receipt.output),
                },
            )
            .await
            .unwrap();
        for hash in [&receipt.input, &receipt.output] {
            assert_eq!(
                status(mallory.download_payload(&theirs.id, &forged.id, hash).await),
                StatusCode::NOT_FOUND
            );
        }
        // Nor through the victim's job: she is not its requester.
        assert_eq!(
            status(
                mallory
                    .download_payload(&network.id, &job.id, &receipt.output)
                    .await
            ),
            StatusCode::FORBIDDEN
        );
        // The device's record is untouched until a check concludes.
        let devices = admin.devices(&network.id).await.unwrap();
        let d = devices.iter().find(|d| d.id == device.id).unwrap();
        assert_eq!(d.checks, Default::default());
        assert_eq!(d.trust, 0.5);
    }
}

#[tokio::test]
async fn payloads_have_a_quota_and_are_forgotten_after_their_retention() {
    for store in stores() {
        let input = b"the input of a selected job".to_vec();
        let output = vec![7u8; 4096];
        let plane = TestPlane::spawn_with(store, |c| {
            c.payload_quota = input.len() as u64 + 100;
            c.payload_retention = Duration::ZERO;
        })
        .await;
        let (network, workload, device) = network_with_anothers_device(&plane).await;
        let admin = &plane.admin;
        // At the initial rate of 50%, 30 jobs without a selected one happen with p = 2^-30.
        let mut selected = None;
        for i in 0..30 {
            let input = [input.clone(), vec![i]].concat();
            let job = admin
                .submit_job(
                    &network.id,
                    &SubmitJobRequest {
                        workload: workload.hash,
                        input: Blake3Hash::of(&input),
                        input_size: input.len() as u64,
                        idempotency_key: None,
                    },
                )
                .await
                .unwrap()
                .job;
            let output = [output.clone(), vec![i]].concat();
            device
                .client
                .complete_job(
                    &job.id,
                    &CompleteJobRequest {
                        receipt: receipt(&device, &job, &output),
                    },
                )
                .await
                .unwrap();
            if admin
                .job_check(&network.id, &job.id)
                .await
                .unwrap()
                .selection
                .selected
            {
                selected = Some((job, input, output));
                break;
            }
        }
        let (job, input, output) = selected.expect("a job was selected");
        admin
            .upload_payload(&network.id, &job.id, input.clone())
            .await
            .unwrap();
        // Uploading it again is a no-op, not a second charge on the quota.
        admin
            .upload_payload(&network.id, &job.id, input.clone())
            .await
            .unwrap();
        let over = admin
            .upload_payload(&network.id, &job.id, output.clone())
            .await;
        assert_eq!(
            over.as_ref().err().and_then(ClientError::code),
            Some("payload_quota"),
            "{store:?}"
        );
        let input_hash = Blake3Hash::of(&input);
        assert_eq!(
            admin
                .download_payload(&network.id, &job.id, &input_hash)
                .await
                .unwrap(),
            input
        );
        // While the check is open its payloads stay, whatever the retention.
        let state = plane.server.state();
        assert_eq!(
            mesh_control_plane::domain::checks::expire_payloads(state)
                .await
                .unwrap(),
            0
        );
        // Once it concluded, and the retention passed, they go.
        mesh_control_plane::store::checks::finish(
            &state.db.pool,
            &job.id,
            &[CheckState::Selected],
            CheckState::Unverifiable,
            None,
            "test: concluded",
            0,
        )
        .await
        .unwrap();
        assert_eq!(
            mesh_control_plane::domain::checks::expire_payloads(state)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            status(
                admin
                    .download_payload(&network.id, &job.id, &input_hash)
                    .await
            ),
            StatusCode::NOT_FOUND
        );
    }
}

#[tokio::test]
async fn the_requesters_own_devices_results_are_never_checked() {
    for store in stores() {
        let plane = TestPlane::spawn(store).await;
        // The admin's own device runs the admin's jobs: nobody else has a stake in them.
        let (network, workload, device) =
            network_with_device(&plane, NetworkPolicy::default()).await;
        let vrf = plane.anonymous().vrf_key().await.unwrap();
        for i in 0..8u8 {
            let input = vec![i; 3];
            let job = plane
                .admin
                .submit_job(
                    &network.id,
                    &SubmitJobRequest {
                        workload: workload.hash,
                        input: Blake3Hash::of(&input),
                        input_size: input.len() as u64,
                        idempotency_key: None,
                    },
                )
                .await
                .unwrap()
                .job;
            let done = device
                .client
                .complete_job(
                    &job.id,
                    &CompleteJobRequest {
                        receipt: receipt(&device, &job, b"out"),
                    },
                )
                .await
                .unwrap();
            let check = plane.admin.job_check(&network.id, &job.id).await.unwrap();
            assert_eq!(check.selection.rate_ppm, 0, "{store:?}");
            assert!(!check.selection.selected);
            assert_eq!(check.state, CheckState::NotSelected);
            // The decision still verifies offline: a rate of 0 selects nothing.
            check
                .selection
                .verify(
                    &vrf.public_key,
                    &network.id,
                    &job.id,
                    done.receipt.as_ref().unwrap(),
                )
                .unwrap();
        }
    }
}

/// Accept a person invite `code` as a new person; the error code, if it was refused.
async fn accept(plane: &TestPlane, code: &str) -> Result<Client, ClientError> {
    let accepted = plane
        .anonymous()
        .accept_invite(&AcceptInviteRequest {
            code: code.into(),
            name: Some("newcomer".into()),
        })
        .await?;
    Ok(plane.admin.with_token(accepted.token))
}

async fn invite(
    client: &Client,
    network: &NetworkId,
    kind: InviteKind,
    role: Option<Role>,
) -> CreatedInvite {
    client
        .create_invite(
            network,
            &CreateInviteRequest {
                kind,
                role,
                expires_in_s: None,
            },
        )
        .await
        .unwrap()
}

fn code_of<T: std::fmt::Debug>(result: &Result<T, ClientError>) -> Option<&str> {
    result.as_ref().err().and_then(ClientError::code)
}

#[tokio::test]
async fn invites_hold_only_while_their_maker_may_grant_them() {
    for store in stores() {
        let plane = TestPlane::spawn(store).await;
        let network = plane.network(NetworkPolicy::default()).await;
        let owner = &plane.admin;
        let me = owner.me().await.unwrap().person.id;
        // A second owner, so the first can be demoted.
        let (second, second_id) = plane.person(&network.id, Role::Admin, "second owner").await;
        owner
            .update_member(&network.id, &second_id, Role::Owner)
            .await
            .unwrap();

        // Invites are listed (codes are not), and can be revoked.
        let admin_invite = invite(owner, &network.id, InviteKind::Person, Some(Role::Admin)).await;
        let member_invite = invite(owner, &network.id, InviteKind::Person, None).await;
        let revoked = invite(owner, &network.id, InviteKind::Person, None).await;
        let open = owner.invites(&network.id).await.unwrap();
        let ids: Vec<_> = open.iter().map(|i| i.id).collect();
        for i in [&admin_invite, &member_invite, &revoked] {
            assert!(ids.contains(&i.id), "{store:?}: {:?} not listed", i.id);
        }
        assert_eq!(
            open.iter().find(|i| i.id == admin_invite.id).unwrap().role,
            Role::Admin
        );
        owner.revoke_invite(&network.id, &revoked.id).await.unwrap();
        assert_eq!(
            code_of(&accept(&plane, &revoked.code).await),
            Some("invite_revoked")
        );
        assert!(
            !owner
                .invites(&network.id)
                .await
                .unwrap()
                .iter()
                .any(|i| i.id == revoked.id)
        );
        // Revoking it again: there is no such open invite.
        assert_eq!(
            status(owner.revoke_invite(&network.id, &revoked.id).await),
            StatusCode::NOT_FOUND
        );

        // An admin may not revoke an invite that grants admin; a member may not list them.
        let (admin, admin_id) = plane.person(&network.id, Role::Admin, "an admin").await;
        assert_eq!(
            status(admin.revoke_invite(&network.id, &admin_invite.id).await),
            StatusCode::FORBIDDEN
        );
        let (member, _) = plane.person(&network.id, Role::Member, "a member").await;
        assert_eq!(
            status(member.invites(&network.id).await),
            StatusCode::FORBIDDEN
        );

        // The first owner steps down to admin: the admin invite they made is void, their
        // member invite still works.
        second
            .update_member(&network.id, &me, Role::Admin)
            .await
            .unwrap();
        assert_eq!(
            code_of(&accept(&plane, &admin_invite.code).await),
            Some("invite_revoked"),
            "{store:?}"
        );
        accept(&plane, &member_invite.code).await.unwrap();

        // An admin who is removed takes their open invites with them, devices' too.
        let person_invite = invite(&admin, &network.id, InviteKind::Person, None).await;
        let device_invite = invite(&admin, &network.id, InviteKind::Device, None).await;
        second.remove_member(&network.id, &admin_id).await.unwrap();
        assert_eq!(
            code_of(&accept(&plane, &person_invite.code).await),
            Some("invite_revoked")
        );
        let challenge = plane.anonymous().challenge(&device_invite.code).await;
        let registered = match challenge {
            Ok(c) => {
                let key = SigningKey::from_seed([42; 32]);
                let proof = mesh_proto::device::RegistrationProof {
                    challenge: c.challenge.clone(),
                    public_key: key.public_key(),
                };
                let payload = mesh_proto::cbor::to_vec(&proof).unwrap();
                plane
                    .anonymous()
                    .register_device(&RegisterDeviceRequest {
                        invite: device_invite.code.clone(),
                        challenge: c.challenge,
                        name: "orphan".into(),
                        public_key: key.public_key(),
                        proof: key.sign(SignDomain::Registration, &c.network, &payload),
                        capabilities: embedding_capabilities(),
                    })
                    .await
                    .map(|_| ())
            }
            Err(e) => Err(e),
        };
        assert_eq!(code_of(&registered), Some("invite_revoked"), "{store:?}");
    }
}

#[tokio::test]
async fn only_owners_revoke_an_owners_device() {
    for store in stores() {
        let plane = TestPlane::spawn(store).await;
        let network = plane.open_network().await;
        let owners_device =
            register_device(&plane.admin, &network.id, 21, embedding_capabilities()).await;
        let (admin, _) = plane.person(&network.id, Role::Admin, "an admin").await;
        let admins_device =
            register_device(&admin, &network.id, 22, embedding_capabilities()).await;
        assert_eq!(
            status(admin.revoke_device(&network.id, &owners_device.id).await),
            StatusCode::FORBIDDEN,
            "{store:?}"
        );
        // Still approved: nothing happened.
        let devices = plane.admin.devices(&network.id).await.unwrap();
        let d = devices.iter().find(|d| d.id == owners_device.id).unwrap();
        assert_eq!(d.status, DeviceStatus::Approved);
        // An admin may revoke their own (or another admin's) device; an owner any device.
        admin
            .revoke_device(&network.id, &admins_device.id)
            .await
            .unwrap();
        plane
            .admin
            .revoke_device(&network.id, &owners_device.id)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_token_never_outlives_the_token_it_was_made_with() {
    for store in stores() {
        let plane = TestPlane::spawn(store).await;
        let hour = plane
            .admin
            .create_token(&CreateTokenRequest {
                label: "an hour".into(),
                expires_in_s: Some(3600),
            })
            .await
            .unwrap();
        let parent = plane.admin.with_token(Some(hour.token.clone()));
        // Asking for no expiry, or a later one, gets the parent's.
        let child = parent
            .create_token(&CreateTokenRequest {
                label: "forever?".into(),
                expires_in_s: None,
            })
            .await
            .unwrap();
        assert_eq!(child.expires_at_ms, hour.expires_at_ms, "{store:?}");
        let later = parent
            .create_token(&CreateTokenRequest {
                label: "a year?".into(),
                expires_in_s: Some(365 * 86400),
            })
            .await
            .unwrap();
        assert_eq!(later.expires_at_ms, hour.expires_at_ms);
        let sooner = parent
            .create_token(&CreateTokenRequest {
                label: "a minute".into(),
                expires_in_s: Some(60),
            })
            .await
            .unwrap();
        assert!(sooner.expires_at_ms.unwrap() < hour.expires_at_ms.unwrap());
        let child_client = plane.admin.with_token(Some(child.token.clone()));
        let grandchild = child_client
            .create_token(&CreateTokenRequest {
                label: "grandchild".into(),
                expires_in_s: None,
            })
            .await
            .unwrap();
        let grandchild_client = plane.admin.with_token(Some(grandchild.token.clone()));
        let listed = plane.admin.list_tokens().await.unwrap();
        assert_eq!(
            listed
                .iter()
                .find(|t| t.id == grandchild.id)
                .unwrap()
                .parent,
            Some(child.id)
        );
        // Revoking the parent revokes its descendants; the token that made it lives on.
        plane.admin.revoke_token(&hour.id).await.unwrap();
        for client in [&parent, &child_client, &grandchild_client] {
            assert_eq!(
                status(client.me().await),
                StatusCode::UNAUTHORIZED,
                "{store:?}"
            );
        }
        plane.admin.me().await.unwrap();
        let listed = plane.admin.list_tokens().await.unwrap();
        for id in [hour.id, child.id, later.id, sooner.id, grandchild.id] {
            assert!(listed.iter().find(|t| t.id == id).unwrap().revoked);
        }
    }
}

#[tokio::test]
async fn two_owners_demoting_each_other_at_once_leave_one_owner() {
    for store in stores() {
        let plane = TestPlane::spawn(store).await;
        let network = plane.network(NetworkPolicy::default()).await;
        let me = plane.admin.me().await.unwrap().person.id;
        let (other, other_id) = plane.person(&network.id, Role::Admin, "other").await;
        plane
            .admin
            .update_member(&network.id, &other_id, Role::Owner)
            .await
            .unwrap();
        for round in 0..20 {
            let (a, b) = tokio::join!(
                plane
                    .admin
                    .update_member(&network.id, &other_id, Role::Admin),
                other.update_member(&network.id, &me, Role::Admin),
            );
            let owners = plane
                .admin
                .members(&network.id)
                .await
                .or(other.members(&network.id).await)
                .unwrap()
                .iter()
                .filter(|m| m.role == Role::Owner)
                .count();
            assert_eq!(owners, 1, "{store:?} round {round}: {a:?} {b:?}");
            assert_eq!(
                usize::from(a.is_ok()) + usize::from(b.is_ok()),
                1,
                "{store:?} round {round}"
            );
            // The loser is refused as the last owner, or (when the winner committed before
            // its role was checked) as no longer an owner.
            for r in [&a, &b] {
                if let Err(e) = r {
                    assert!(
                        matches!(e.code(), Some("last_owner" | "forbidden")),
                        "{store:?}: {e}"
                    );
                }
            }
            // Whoever is still owner makes the other owner again for the next round.
            if a.is_ok() {
                plane
                    .admin
                    .update_member(&network.id, &other_id, Role::Owner)
                    .await
                    .unwrap();
            } else {
                other
                    .update_member(&network.id, &me, Role::Owner)
                    .await
                    .unwrap();
            }
        }
    }
}

/// The SQLite file holds the signing key and the VRF seed: it and its directory are the
/// operator's alone from the moment they exist, whatever the umask.
#[cfg(unix)]
#[tokio::test]
async fn the_database_and_its_directory_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("state/mesh-data");
    let plane = TestPlane::spawn_with(Store::Sqlite, |c| c.data_dir = data.clone()).await;
    plane.network(NetworkPolicy::default()).await;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&root.path().join("state")), 0o700);
    for file in ["mesh.db", "mesh.db-wal", "mesh.db-shm"] {
        let path = data.join(file);
        assert!(path.exists(), "{file}");
        assert_eq!(mode(&path), 0o600, "{file}");
    }
}

#[tokio::test]
async fn component_chunks_are_read_one_at_a_time() {
    for store in stores() {
        let plane = TestPlane::spawn(store).await;
        let network = plane.network(NetworkPolicy::default()).await;
        let bytes = std::fs::read(mesh_test_artifacts::ECHO).unwrap();
        let workload = plane
            .admin
            .publish_workload(&network.id, bytes.clone())
            .await
            .unwrap();
        let pool = &plane.server.state().db.pool;
        let total = bytes.len() as u64;
        for (offset, length) in [
            (0u64, 1000u32),
            (total / 2, 4096),
            (total - 10, 1000),
            (total, 10),
        ] {
            let (got_total, chunk) = mesh_control_plane::store::workloads::component_chunk(
                pool,
                &workload.hash,
                offset,
                length,
            )
            .await
            .unwrap()
            .unwrap();
            assert_eq!(got_total, total, "{store:?}");
            let end = (offset as usize + length as usize).min(bytes.len());
            assert_eq!(chunk, bytes[offset as usize..end], "{store:?} at {offset}");
        }
        assert!(
            mesh_control_plane::store::workloads::component_chunk(
                pool,
                &Blake3Hash::of(b"none"),
                0,
                10
            )
            .await
            .unwrap()
            .is_none()
        );
    }
}

/// `component` with one more core module, instantiated at the end: a table of `elements`
/// funcrefs, or (for `functions > 0`) that many never-called functions (a big module nobody
/// uses, which still has to be compiled).
fn with_extra_module(component: &[u8], elements: u64, functions: u32) -> Vec<u8> {
    use wasm_encoder::{
        CodeSection, Function, FunctionSection, Instruction, Module, RefType, TableSection,
        TableType, TypeSection,
    };
    // Core modules of the top-level component (nested ones have their own index spaces).
    let (mut depth, mut modules) = (0u32, 0u32);
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        match payload.unwrap() {
            wasmparser::Payload::ModuleSection { .. } => {
                if depth == 0 {
                    modules += 1;
                }
                depth += 1;
            }
            wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) if depth > 0 => depth -= 1,
            _ => {}
        }
    }
    let mut module = Module::new();
    if functions > 0 {
        let mut types = TypeSection::new();
        types.ty().function([], [wasm_encoder::ValType::I32]);
        module.section(&types);
        let mut funcs = FunctionSection::new();
        let mut code = CodeSection::new();
        for i in 0..functions {
            funcs.function(0);
            let mut f = Function::new([]);
            for k in 0..200 {
                f.instruction(&Instruction::I32Const((i as i32).wrapping_mul(k)));
                f.instruction(&Instruction::Drop);
            }
            f.instruction(&Instruction::I32Const(i as i32));
            f.instruction(&Instruction::End);
            code.function(&f);
        }
        module.section(&funcs);
        module.section(&code);
    } else {
        let mut tables = TableSection::new();
        tables.table(TableType {
            element_type: RefType::FUNCREF,
            minimum: elements,
            maximum: None,
            table64: false,
            shared: false,
        });
        module.section(&tables);
    }
    let module = module.finish();
    let mut out = component.to_vec();
    let mut section = |id: u8, data: &[u8]| {
        out.push(id);
        let mut len = data.len() as u64;
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            out.push(if len == 0 { byte } else { byte | 0x80 });
            if len == 0 {
                break;
            }
        }
        out.extend_from_slice(data);
    };
    // Component section 1: a core module; section 2: core instances (one: instantiate it).
    section(1, &module);
    let mut instances = wasm_encoder::InstanceSection::new();
    instances.instantiate(modules, Vec::<(&str, wasm_encoder::ModuleArg)>::new());
    let mut encoded = Vec::new();
    wasm_encoder::Encode::encode(&instances, &mut encoded);
    // `encode` writes the section's contents with its length prefix: strip it.
    let mut prefix = 0;
    while encoded[prefix] & 0x80 != 0 {
        prefix += 1;
    }
    section(2, &encoded[prefix + 1..]);
    out
}

#[tokio::test]
async fn uploads_are_validated_within_bounds() {
    let plane = TestPlane::spawn(Store::Sqlite).await;
    let network = plane.network(NetworkPolicy::default()).await;
    let echo = std::fs::read(mesh_test_artifacts::ECHO).unwrap();
    // The construction itself is sound: a small table is fine.
    let small = with_extra_module(&echo, 10, 0);
    plane
        .admin
        .publish_workload(&network.id, small)
        .await
        .unwrap();
    // A component that declares a 50-million-element table is refused when it describes
    // itself (it would take 400 MB on every host).
    let huge = with_extra_module(&echo, 50_000_000, 0);
    let refused = plane.admin.publish_workload(&network.id, huge).await;
    assert_eq!(
        refused.as_ref().err().and_then(ClientError::code),
        Some("invalid_component"),
        "{refused:?}"
    );
    // A big module nobody calls still compiles, but without optimisation: print how long.
    let big = with_extra_module(&echo, 0, 20_000);
    let started = std::time::Instant::now();
    let result = plane.admin.publish_workload(&network.id, big.clone()).await;
    eprintln!(
        "a component with 20,000 unused functions ({} MB): {:?} in {:?}",
        big.len() >> 20,
        result.as_ref().map(|w| &w.name),
        started.elapsed()
    );
}

#[tokio::test]
async fn the_audit_log_pages_and_an_executor_cannot_flood_it() {
    for store in stores() {
        let plane = TestPlane::spawn(store).await;
        let (network, workload, device) = network_with_anothers_device(&plane).await;
        for _ in 0..25 {
            invite(&plane.admin, &network.id, InviteKind::Person, None).await;
        }
        // Pages of 7, following the cursor, give what one big page gives.
        let all = plane
            .admin
            .audit_page(&network.id, None, Some(500))
            .await
            .unwrap();
        assert!(all.len() >= 25, "{store:?}: {}", all.len());
        let mut paged = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = plane
                .admin
                .audit_page(&network.id, cursor.as_deref(), Some(7))
                .await
                .unwrap();
            assert!(page.len() <= 7);
            let Some(last) = page.last() else { break };
            cursor = Some(last.cursor());
            paged.extend(page);
        }
        assert_eq!(paged, all, "{store:?}");
        assert!(
            all.windows(2)
                .all(|w| (w[0].at_ms, &w[0].id) > (w[1].at_ms, &w[1].id))
        );
        assert_eq!(
            status(
                plane
                    .admin
                    .audit_page(&network.id, Some("nonsense"), None)
                    .await
            ),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(plane.admin.audit_page(&network.id, None, Some(501)).await),
            StatusCode::BAD_REQUEST
        );

        // An executor that reports other receipts for its job again and again is refused
        // each time and recorded once.
        let input = b"flood".to_vec();
        let job = plane
            .admin
            .submit_job(
                &network.id,
                &SubmitJobRequest {
                    workload: workload.hash,
                    input: Blake3Hash::of(&input),
                    input_size: input.len() as u64,
                    idempotency_key: None,
                },
            )
            .await
            .unwrap()
            .job;
        device
            .client
            .complete_job(
                &job.id,
                &CompleteJobRequest {
                    receipt: receipt(&device, &job, b"first"),
                },
            )
            .await
            .unwrap();
        for i in 0..20 {
            let other = receipt(&device, &job, format!("other {i}").as_bytes());
            let refused = device
                .client
                .complete_job(&job.id, &CompleteJobRequest { receipt: other })
                .await;
            assert_eq!(code_of(&refused), Some("conflicting_receipt"));
        }
        let conflicts = plane
            .admin
            .audit_page(&network.id, None, Some(500))
            .await
            .unwrap()
            .iter()
            .filter(|e| e.action == "conflicting_receipt")
            .count();
        assert_eq!(conflicts, 1, "{store:?}");
    }
}

/// A quarantined device gets no jobs until an admin other than its owner releases it; the
/// release is audited, and a device that is not quarantined has nothing to release.
#[tokio::test]
async fn another_admin_releases_a_quarantined_device() {
    for store in stores() {
        let plane = TestPlane::spawn(store).await;
        let network = plane.open_network().await;
        let (owner, _) = plane.person(&network.id, Role::Admin, "host owner").await;
        let device = register_device(&owner, &network.id, 21, embedding_capabilities()).await;
        let err = plane
            .admin
            .release_device(&network.id, &device.id)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("not_quarantined"), "{err}");

        sqlx::query("UPDATE devices SET quarantined_at = 1 WHERE id = $1")
            .bind(device.id.to_string())
            .execute(&plane.server.state().db.pool)
            .await
            .unwrap();
        // Its owner, an admin too, may not vouch for it.
        let err = owner
            .release_device(&network.id, &device.id)
            .await
            .unwrap_err();
        assert_eq!(err.status().map(|s| s.as_u16()), Some(403), "{err}");
        let released = plane
            .admin
            .release_device(&network.id, &device.id)
            .await
            .unwrap();
        assert_eq!(released.quarantined_at_ms, None);
        let audit = plane.admin.audit_log(&network.id).await.unwrap();
        assert!(
            audit
                .iter()
                .any(|e| e.action == "device.released" && e.detail == device.id.to_string()),
            "{audit:?}"
        );
        let err = plane
            .admin
            .release_device(&network.id, &device.id)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("not_quarantined"), "{err}");
    }
}

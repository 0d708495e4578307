//! Devices' terms, at the scheduler: a job goes only to devices whose terms (their own,
//! reported by heartbeats; their owner's; the admins') admit it, a job no device admits waits
//! and says why, and only the device's owner and the network's admins set their layers, which
//! can only narrow each other.

mod common;

use common::*;
use mesh_client::Client;
use mesh_proto::api::*;
use mesh_proto::device::DeviceLoad;
use mesh_proto::terms::{DeviceTerms, RequesterRule, TermsLayer, When, Window, WorkloadRule};
use mesh_proto::{Blake3Hash, DeviceId, NetworkId, PersonId};
use reqwest::StatusCode;

fn idle_load() -> DeviceLoad {
    DeviceLoad {
        running: 0,
        queued: 0,
        slots: 4,
        others_busy_percent: Some(5),
    }
}

/// A window of one hour that starts `from_now_minutes` from now (UTC, every day).
fn window(from_now_minutes: i64) -> When {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let minute = ((now / 60_000 + from_now_minutes).rem_euclid(24 * 60)) as u16;
    When::Schedule {
        windows: vec![Window {
            days: Vec::new(),
            start_minute: minute,
            end_minute: (minute + 60) % (24 * 60),
        }],
        utc_offset_minutes: 0,
    }
}

/// A network (devices join without approval) with the echo workload, and two devices of the
/// admin: `a`, whose terms each case sets, and `b`, which takes anything.
struct Pair {
    network: NetworkId,
    workload: WorkloadInfo,
    a: TestDevice,
    b: TestDevice,
}

async fn pair(plane: &TestPlane) -> Pair {
    let network = plane
        .network(NetworkPolicy {
            require_device_approval: false,
            job_price: 1,
            ..NetworkPolicy::default()
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
    let mut a = register_device(&plane.admin, &network.id, 21, embedding_capabilities()).await;
    let mut b = register_device(&plane.admin, &network.id, 22, embedding_capabilities()).await;
    a.heartbeat(idle_load()).await;
    b.heartbeat(idle_load()).await;
    Pair {
        network: network.id,
        workload,
        a,
        b,
    }
}

/// Submit a job of `workload` as `client`; where it was placed (`None`: it waits).
async fn place(client: &Client, network: &NetworkId, workload: &Blake3Hash) -> JobAssignment {
    let mut key = [0u8; 8];
    getrandom::fill(&mut key).unwrap();
    client
        .submit_job(
            network,
            &SubmitJobRequest {
                workload: *workload,
                input: Blake3Hash::of(&key),
                input_size: 8,
                idempotency_key: Some(format!("{key:?}")),
            },
        )
        .await
        .unwrap()
}

/// Where two jobs of `client` went. Devices least loaded go first, so with both devices
/// admitting, each gets one.
async fn two_jobs(pair: &Pair, client: &Client) -> Vec<Option<DeviceId>> {
    let mut placed = Vec::new();
    for _ in 0..2 {
        placed.push(
            place(client, &pair.network, &pair.workload.hash)
                .await
                .job
                .executor,
        );
    }
    placed
}

/// Report `terms` as device `a`'s own and check where `client`'s jobs go: `a` gets one of two
/// when `admitted`, none otherwise.
async fn check_device_terms(
    plane: &TestPlane,
    client: &Client,
    terms: DeviceTerms,
    load: DeviceLoad,
    admitted: bool,
    case: &str,
) {
    let mut pair = pair(plane).await;
    pair.a.heartbeat_with(load, terms).await.unwrap();
    let placed = two_jobs(&pair, client).await;
    let on_a = placed.iter().filter(|d| **d == Some(pair.a.id)).count();
    assert!(placed.iter().all(Option::is_some), "{case}: {placed:?}");
    if admitted {
        assert_eq!(on_a, 1, "{case}: the device admits the job: {placed:?}");
    } else {
        assert_eq!(
            on_a, 0,
            "{case}: the device's terms refuse the job: {placed:?}"
        );
    }
}

#[tokio::test]
async fn each_term_decides_where_the_scheduler_sends_jobs() {
    for store in stores() {
        let plane = TestPlane::spawn(store).await;
        let admin_id = plane.admin.me().await.unwrap().person.id;
        let stranger = PersonId::from_bytes([77; 16]);
        let only = |workloads: Vec<WorkloadRule>| DeviceTerms {
            workloads,
            ..DeviceTerms::default()
        };
        let for_ = |requesters: Vec<RequesterRule>| DeviceTerms {
            requesters,
            ..DeviceTerms::default()
        };
        let when = |when: When| DeviceTerms {
            when,
            ..DeviceTerms::default()
        };
        let admin = &plane.admin;
        let load = idle_load();
        // Workloads: by name, hash, publisher.
        let name = pair(&plane).await.workload.name;
        for (terms, admitted, case) in [
            (
                only(vec![WorkloadRule::Name("chat".into())]),
                false,
                "another name",
            ),
            (
                only(vec![WorkloadRule::Name(name.clone())]),
                true,
                "its name",
            ),
            (
                only(vec![WorkloadRule::Hash(Blake3Hash::of(b"other"))]),
                false,
                "another hash",
            ),
            (
                only(vec![WorkloadRule::Publisher(stranger)]),
                false,
                "another publisher",
            ),
            (
                only(vec![WorkloadRule::Publisher(admin_id)]),
                true,
                "its publisher",
            ),
            // Requesters: a person, a role.
            (
                for_(vec![RequesterRule::Person(stranger)]),
                false,
                "another person",
            ),
            (
                for_(vec![RequesterRule::Person(admin_id)]),
                true,
                "the requester",
            ),
            (
                for_(vec![RequesterRule::Role(Role::Owner)]),
                true,
                "owners (the admin owns the network)",
            ),
            // When: a schedule, idleness.
            (when(window(120)), false, "outside the schedule"),
            (when(window(-10)), true, "inside the schedule"),
            (
                when(When::Idle {
                    max_busy_percent: 30,
                }),
                true,
                "idle",
            ),
        ] {
            check_device_terms(&plane, admin, terms, load, admitted, case).await;
        }
        let busy = DeviceLoad {
            others_busy_percent: Some(80),
            ..idle_load()
        };
        let unmeasured = DeviceLoad {
            others_busy_percent: None,
            ..idle_load()
        };
        let idle_only = when(When::Idle {
            max_busy_percent: 30,
        });
        check_device_terms(
            &plane,
            admin,
            idle_only.clone(),
            busy,
            false,
            "its user is busy",
        )
        .await;
        check_device_terms(&plane, admin, idle_only, unmeasured, false, "not measured").await;
        // A role the requester lacks: a member's job skips a device for admins.
        let mut pair_ = pair(&plane).await;
        let (member, _) = plane.person(&pair_.network, Role::Member, "member").await;
        pair_
            .a
            .heartbeat_with(load, for_(vec![RequesterRule::Role(Role::Admin)]))
            .await
            .unwrap();
        let placed = two_jobs(&pair_, &member).await;
        assert_eq!(placed, vec![Some(pair_.b.id); 2], "for admins only");

        // At most N jobs at once: `a` alone, taking one job at a time. The second job waits,
        // says why, and is placed once the first is done.
        let mut pair_ = pair(&plane).await;
        let one = DeviceTerms {
            max_jobs: Some(1),
            ..DeviceTerms::default()
        };
        pair_.a.heartbeat_with(load, one).await.unwrap();
        pair_
            .b
            .heartbeat_with(load, only(vec![WorkloadRule::Name("chat".into())]))
            .await
            .unwrap();
        let first = place(admin, &pair_.network, &pair_.workload.hash).await;
        assert_eq!(first.job.executor, Some(pair_.a.id));
        let second = place(admin, &pair_.network, &pair_.workload.hash).await;
        assert_eq!(second.job.state, JobState::Queued, "{second:?}");
        let waiting = second.waiting.clone().unwrap_or_default();
        assert!(
            waiting.contains("as many jobs as its terms allow (1)")
                && waiting.contains("do not include this workload"),
            "{waiting}"
        );
        // A requester that stops waiting gives a queued job up: it fails, refunded.
        let third = place(admin, &pair_.network, &pair_.workload.hash).await;
        assert_eq!(third.job.state, JobState::Queued);
        let balance = admin.balance(&pair_.network, None).await.unwrap().balance;
        let given_up = admin
            .reassign_job(
                &pair_.network,
                &third.job.id,
                &FailJobRequest {
                    reason: "waited long enough".into(),
                    retryable: false,
                    executor_peer: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(given_up.job.state, JobState::Failed);
        assert_eq!(
            admin.balance(&pair_.network, None).await.unwrap().balance,
            balance + 1,
            "refunded"
        );
        pair_.a.client.start_job(&first.job.id).await.unwrap();
        pair_
            .a
            .client
            .complete_job(
                &first.job.id,
                &CompleteJobRequest {
                    receipt: signed_receipt(&pair_.a.key, &pair_.network, &first.job, b"out"),
                },
            )
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let now = admin.job(&pair_.network, &second.job.id).await.unwrap();
            if now.job.state == JobState::Assigned {
                assert_eq!(now.job.executor, Some(pair_.a.id));
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{now:?}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn owners_and_admins_set_their_layers_and_neither_widens_the_other() {
    for store in stores() {
        let plane = TestPlane::spawn(store).await;
        let network = plane.open_network().await;
        let workload = plane
            .admin
            .publish_workload(
                &network.id,
                std::fs::read(mesh_test_artifacts::ECHO).unwrap(),
            )
            .await
            .unwrap();
        // Carol is an admin (members cannot add devices), and owns a device.
        let (carol, _) = plane.person(&network.id, Role::Admin, "carol").await;
        let (dave, _) = plane.person(&network.id, Role::Member, "dave").await;
        let (alice, _) = plane.person(&network.id, Role::Member, "alice").await;
        // Carol's device, and the admin's open one.
        let mut mine = register_device(&carol, &network.id, 31, embedding_capabilities()).await;
        let mut open =
            register_device(&plane.admin, &network.id, 32, embedding_capabilities()).await;
        mine.heartbeat(idle_load()).await;
        open.heartbeat(idle_load()).await;
        let mut pair = Pair {
            network: network.id,
            workload,
            a: mine,
            b: open,
        };
        let (network, device) = (pair.network, pair.a.id);
        let set = |client: &Client, layer: Option<TermsLayer>, terms: DeviceTerms| {
            let client = client.clone();
            async move {
                client
                    .set_device_terms(&network, &device, &SetTermsRequest { layer, terms })
                    .await
            }
        };
        let chat_only = DeviceTerms {
            workloads: vec![WorkloadRule::Name("chat".into())],
            ..DeviceTerms::default()
        };
        // The owner narrows the owner's layer (the default for the device's owner).
        let shown = set(&carol, None, chat_only.clone()).await.unwrap();
        assert_eq!(shown.terms.owner, chat_only);
        assert!(shown.terms.admins.is_open());
        assert_eq!(two_jobs(&pair, &alice).await, vec![Some(pair.b.id); 2]);
        // The device hears of it with its next heartbeat, to enforce it too.
        let answer = pair
            .a
            .heartbeat_with(idle_load(), DeviceTerms::default())
            .await
            .unwrap();
        assert_eq!(answer.terms.owner, chat_only);

        // Nobody else touches the owner's layer; only admins set the admins' layer.
        let err = set(
            &plane.admin,
            Some(TermsLayer::Owner),
            DeviceTerms::default(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::FORBIDDEN), "{err}");
        let err = set(&dave, None, DeviceTerms::default()).await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::FORBIDDEN), "{err}");
        let err = set(&alice, Some(TermsLayer::Admins), DeviceTerms::default())
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::FORBIDDEN), "{err}");
        let err = pair
            .a
            .client
            .set_device_terms(
                &pair.network,
                &pair.a.id,
                &SetTermsRequest {
                    layer: None,
                    terms: DeviceTerms::default(),
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::FORBIDDEN), "a device: {err}");
        // Admins' open layer does not widen the owner's.
        let shown = set(&plane.admin, None, DeviceTerms::default())
            .await
            .unwrap();
        assert_eq!(shown.terms.owner, chat_only);
        assert_eq!(two_jobs(&pair, &alice).await, vec![Some(pair.b.id); 2]);

        // The owner lifts theirs; the admins keep the device for admins: a member's jobs
        // still skip it, the admin's may go there.
        set(&carol, None, DeviceTerms::default()).await.unwrap();
        let for_admins = DeviceTerms {
            requesters: vec![RequesterRule::Role(Role::Admin)],
            ..DeviceTerms::default()
        };
        let shown = set(&plane.admin, None, for_admins.clone()).await.unwrap();
        assert_eq!(shown.terms.admins, for_admins);
        assert!(shown.terms.owner.is_open());
        assert_eq!(two_jobs(&pair, &alice).await, vec![Some(pair.b.id); 2]);
        let listed = plane.admin.devices(&pair.network).await.unwrap();
        let listed = listed.iter().find(|d| d.id == pair.a.id).unwrap();
        assert_eq!(
            listed.terms.admins, for_admins,
            "the device list shows the terms"
        );
        // Every change is in the audit log.
        let log = plane.admin.audit_log(&pair.network).await.unwrap();
        assert_eq!(
            log.iter().filter(|e| e.action == "device.terms").count(),
            4,
            "{log:?}"
        );

        // Nonsense is refused with a reason, and changes nothing.
        let share = DeviceTerms {
            cpu_share: Some(0.5),
            ..DeviceTerms::default()
        };
        let err = set(&carol, None, share).await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST), "{err}");
        assert!(err.to_string().contains("host config"), "{err}");
        for bad in [
            DeviceTerms {
                max_jobs: Some(0),
                ..DeviceTerms::default()
            },
            DeviceTerms {
                when: When::Schedule {
                    windows: Vec::new(),
                    utc_offset_minutes: 0,
                },
                ..DeviceTerms::default()
            },
            DeviceTerms {
                workloads: vec![WorkloadRule::Name("x".repeat(200))],
                ..DeviceTerms::default()
            },
        ] {
            let err = set(&carol, None, bad).await.unwrap_err();
            assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST), "{err}");
        }
        let raw = reqwest::Client::new()
            .put(format!(
                "{}/v1/networks/{}/devices/{}/terms",
                plane.server.url(),
                pair.network,
                pair.a.id
            ))
            .bearer_auth(
                plane
                    .admin
                    .create_token(&CreateTokenRequest {
                        label: "raw".into(),
                        expires_in_s: None,
                    })
                    .await
                    .unwrap()
                    .token,
            )
            .header("content-type", "application/json")
            .body(r#"{"terms": {"when": {"kind": "sometimes"}}}"#)
            .send()
            .await
            .unwrap();
        // Well-formed JSON that is not terms: 422, like every body of the wrong shape.
        assert_eq!(raw.status(), StatusCode::UNPROCESSABLE_ENTITY);
        // A device's own terms must make sense too.
        let err = pair
            .a
            .heartbeat_with(
                idle_load(),
                DeviceTerms {
                    max_jobs: Some(0),
                    ..DeviceTerms::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST), "{err}");
        let listed = plane.admin.devices(&pair.network).await.unwrap();
        let listed = listed.iter().find(|d| d.id == pair.a.id).unwrap();
        assert!(listed.terms.owner.is_open() && listed.terms.device.is_open());
        assert_eq!(listed.terms.admins, for_admins);

        // Another network's device is not found; a revoked one has no terms to set.
        let other = plane.network(NetworkPolicy::default()).await;
        let err = plane
            .admin
            .set_device_terms(
                &other.id,
                &pair.a.id,
                &SetTermsRequest {
                    layer: None,
                    terms: DeviceTerms::default(),
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::NOT_FOUND), "{err}");
        plane
            .admin
            .revoke_device(&pair.network, &pair.a.id)
            .await
            .unwrap();
        let err = set(&carol, None, DeviceTerms::default()).await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::CONFLICT), "{err}");
    }
}

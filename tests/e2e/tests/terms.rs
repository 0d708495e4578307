//! Owners' terms, end to end: the scheduler sends a job only where every layer of terms
//! admits it (the device's own, reported by its heartbeats, and its owner's and admins' in
//! the network) and says why when none does; the host enforces them too, so a ticket they
//! forbid is refused with a typed reason whoever signed it; a device that takes jobs only
//! while idle hands its running job back when its user gets busy, and the job finishes on
//! another device, charged once.

use mesh_e2e::{HostSpec, MeshOptions, TestNet};
use mesh_proto::api::{JobTicket, Role, SetTermsRequest};
use mesh_proto::p2p::{JobRefusal, JobRequest, JobResponse};
use mesh_proto::terms::{
    DeviceTerms, RequesterRule, TermsLayer, TermsRefusal, When, Window, WorkloadRule,
};
use mesh_proto::{Blake3Hash, PersonId, SignDomain, Signed};
use std::time::Duration;

fn with_terms(terms: DeviceTerms) -> HostSpec {
    HostSpec {
        terms: Some(terms),
        ..HostSpec::default()
    }
}

/// A schedule whose only window starts two hours from now (so now is outside it).
fn not_now() -> When {
    let minute = (mesh_net::verify::now_ms() / 60_000 % (24 * 60)) as u16;
    let start = (minute + 120) % (24 * 60);
    When::Schedule {
        windows: vec![Window {
            days: Vec::new(),
            start_minute: start,
            end_minute: (start + 60) % (24 * 60),
        }],
        utc_offset_minutes: 0,
    }
}

fn texts(n: usize) -> Vec<u8> {
    let texts: Vec<String> = (0..n)
        .map(|i| format!("sentence number {i} of the test"))
        .collect();
    serde_json::to_vec(&serde_json::json!({ "texts": texts })).unwrap()
}

/// What host0 is told when it asks for a small job that no device takes.
async fn submit_refused(mesh: &TestNet, workload: Blake3Hash) -> String {
    let err = mesh.hosts[0]
        .submit(workload, texts(2), Default::default())
        .await
        .unwrap_err();
    format!("{err:#}")
}

/// A job that keeps a device busy for a while: 2,048 texts of the model's full length.
fn long_texts() -> Vec<u8> {
    let long = "a long sentence about the weather and the sea ".repeat(30);
    let texts: Vec<String> = (0..2048).map(|i| format!("{i} {long}")).collect();
    serde_json::to_vec(&serde_json::json!({ "texts": texts })).unwrap()
}

/// Nothing charged, nothing asked of the refusing hosts: a job no device's terms admit fails
/// at the scheduler, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_sends_jobs_only_where_terms_admit_them() {
    // host0 asks; host1 runs only `chat`, host2 only for someone else, host3 only later.
    let mut mesh = TestNet::spawn(MeshOptions {
        hosts: 4,
        host_specs: vec![
            HostSpec::default(),
            with_terms(DeviceTerms {
                workloads: vec![WorkloadRule::Name("chat".into())],
                ..DeviceTerms::default()
            }),
            with_terms(DeviceTerms {
                requesters: vec![RequesterRule::Person(PersonId::from_bytes([9; 16]))],
                ..DeviceTerms::default()
            }),
            with_terms(DeviceTerms {
                when: not_now(),
                ..DeviceTerms::default()
            }),
        ],
        ..MeshOptions::default()
    })
    .await;
    let network = mesh.network_id();
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    // The device list shows each device's own terms, as its heartbeats report them.
    let devices = mesh.admin.devices(&network).await.unwrap();
    let shown = |host: usize| {
        devices
            .iter()
            .find(|d| d.id == mesh.hosts[host].device)
            .unwrap()
            .terms
            .device
            .clone()
    };
    assert_eq!(shown(1).workloads, vec![WorkloadRule::Name("chat".into())]);
    assert!(matches!(shown(3).when, When::Schedule { .. }));
    let before = mesh.admin.balance(&network, None).await.unwrap().balance;
    let err = submit_refused(&mesh, workload).await;
    for reason in [
        "3 devices' terms refuse this job",
        "do not include this workload",
        "do not include this requester",
        "outside this device's schedule",
    ] {
        assert!(err.contains(reason), "{reason}: {err}");
    }
    for host in 1..4 {
        assert!(
            !mesh.hosts[host].log.text().contains("job request"),
            "{} was asked: {}",
            mesh.hosts[host].name,
            mesh.logs()
        );
    }
    let after = mesh.admin.balance(&network, None).await.unwrap().balance;
    assert_eq!(after, before, "a job nobody may run costs nothing");

    // A device whose terms allow it joins: the same job runs there, charged once.
    let open = mesh.start_host("host4", &MeshOptions::default()).await;
    mesh.hosts.push(open);
    mesh.wait_online(5).await;
    let done = mesh.hosts[0]
        .submit(workload, texts(2), Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    assert_eq!(done[0]["state"], "done");
    assert_eq!(done[0]["executor"], mesh.hosts[4].device.to_string());
    let job: mesh_proto::JobId = done[0]["job"].as_str().unwrap().parse().unwrap();
    assert_eq!(mesh.job_entries(job).await, (1, 1, 0), "charged once");

    // Its owner narrows its terms in the network: the scheduler follows at once, and the
    // device hears of them with its next heartbeat.
    let stranger_only = DeviceTerms {
        requesters: vec![RequesterRule::Person(PersonId::from_bytes([9; 16]))],
        ..DeviceTerms::default()
    };
    mesh.admin
        .set_device_terms(
            &network,
            &mesh.hosts[4].device,
            &SetTermsRequest {
                layer: Some(TermsLayer::Owner),
                terms: stranger_only,
            },
        )
        .await
        .unwrap();
    let err = submit_refused(&mesh, workload).await;
    assert!(err.contains("4 devices' terms refuse this job"), "{err}");
    mesh.hosts[4]
        .log
        .wait_for(
            "the network's terms for this device",
            Duration::from_secs(5),
        )
        .await;
}

/// A control plane that signs a ticket anyway (a bug, or a compromise) cannot override an
/// owner: the host checks every ticket against its terms, its own and its network's, and
/// checks the workload's name against the component itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_refuses_a_ticket_its_terms_forbid_whoever_signed_it() {
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 2,
        host_specs: vec![
            with_terms(DeviceTerms {
                workloads: vec![WorkloadRule::Name("chat".into())],
                ..DeviceTerms::default()
            }),
            HostSpec::default(),
        ],
        ..MeshOptions::default()
    })
    .await;
    let network = mesh.network_id();
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    let admin = mesh.admin.me().await.unwrap().person.id;
    // host1 runs jobs for a stranger only, by its owner's terms in the network.
    mesh.admin
        .set_device_terms(
            &network,
            &mesh.hosts[1].device,
            &SetTermsRequest {
                layer: None,
                terms: DeviceTerms {
                    requesters: vec![RequesterRule::Person(PersonId::from_bytes([9; 16]))],
                    ..DeviceTerms::default()
                },
            },
        )
        .await
        .unwrap();
    mesh.hosts[1]
        .log
        .wait_for(
            "the network's terms for this device",
            Duration::from_secs(5),
        )
        .await;
    let before = mesh.admin.balance(&network, None).await.unwrap().balance;

    // A requester device that serves the component; the honest scheduler places its job
    // nowhere (no device's terms admit it).
    let rogue = mesh.rogue(&network).await;
    let (node, inbound) = mesh.node(&rogue.key).await;
    mesh_e2e::rogue::serve_blob(
        inbound,
        std::fs::read(mesh_test_artifacts::EMBEDDINGS).unwrap(),
    );
    let input = texts(2);
    let queued = rogue.submit(&network, workload, &input).await;
    assert_eq!(queued.job.state, mesh_proto::api::JobState::Queued);
    assert!(queued.ticket.is_none());

    // Tickets for it signed with the control plane's own key, naming each host.
    let key = mesh.control_plane().state().key.clone();
    let forge = |host: usize, workload_name: &str| {
        let ticket = JobTicket {
            job: queued.job.id,
            network,
            requester: admin,
            executor: mesh.hosts[host].device,
            executor_peer: mesh.hosts[host].peer.clone(),
            requester_peer: rogue.key.public_key().peer_id(),
            workload,
            input: Blake3Hash::of(&input),
            price: 1,
            expires_at_ms: mesh_net::verify::now_ms() as i64 + 60_000,
            workload_name: Some(workload_name.into()),
            publisher: Some(admin),
            requester_role: Some(Role::Owner),
        };
        JobRequest {
            ticket: Signed::sign(&ticket, &key, SignDomain::JobTicket, &network).unwrap(),
            requester_cert: Some(rogue.cert.clone()),
            input: input.clone(),
            stream: false,
        }
    };
    let ask = |host: usize, request: JobRequest| {
        let node = node.clone();
        let peer: mesh_net::PeerId = mesh.hosts[host].peer.parse().unwrap();
        async move {
            mesh_e2e::rogue::connect(&node, peer).await;
            match node.request_job(peer, request).await.unwrap().response {
                JobResponse::Refused(refusal) => refusal,
                JobResponse::Done { .. } => panic!("a job the terms forbid ran"),
            }
        }
    };
    // The truth about the workload: host0's own terms refuse it at once.
    let name = mesh.admin.workloads(&network).await.unwrap()[0]
        .name
        .clone();
    assert_eq!(
        ask(0, forge(0, &name)).await,
        JobRefusal::Terms(TermsRefusal::Workload)
    );
    // A lie about its name: refused once the component shows its own.
    assert_eq!(
        ask(0, forge(0, "chat")).await,
        JobRefusal::Terms(TermsRefusal::Workload)
    );
    mesh.hosts[0]
        .log
        .wait_for(
            "another workload than the component declares",
            Duration::from_secs(5),
        )
        .await;
    // host1 enforces the network's terms it was given, not only its own.
    assert_eq!(
        ask(1, forge(1, &name)).await,
        JobRefusal::Terms(TermsRefusal::Requester)
    );
    // The hosts' reports of those refusals move nothing: the job still waits, and its
    // requester giving it up refunds it in full.
    let job = rogue.client.job(&network, &queued.job.id).await.unwrap();
    assert_eq!(job.job.state, mesh_proto::api::JobState::Queued, "{job:?}");
    rogue
        .client
        .reassign_job(
            &network,
            &queued.job.id,
            &mesh_proto::api::FailJobRequest {
                reason: "nobody may run it".into(),
                retryable: false,
                executor_peer: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        mesh.admin.balance(&network, None).await.unwrap().balance,
        before,
        "nothing ran, nothing was charged"
    );
}

/// Keep every core busy until dropped (the device's own user at work).
struct CpuHogs(Vec<std::process::Child>);

impl CpuHogs {
    fn start() -> CpuHogs {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        CpuHogs(
            (0..cores)
                .map(|_| {
                    std::process::Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .unwrap()
                })
                .collect(),
        )
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        for hog in &mut self.0 {
            let _ = hog.kill();
            let _ = hog.wait();
        }
    }
}

/// Wait until the control plane has heard that `host`'s user is busy (`busy`) or not.
async fn reported_busy(mesh: &TestNet, host: usize, busy: bool) {
    let network = mesh.network_id();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let devices = mesh.admin.devices(&network).await.unwrap();
        let load = devices
            .iter()
            .find(|d| d.id == mesh.hosts[host].device)
            .unwrap()
            .load;
        if load.others_busy_percent.is_some_and(|p| (p > 25) == busy) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{load:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_only_device_hands_its_job_back_and_the_job_finishes_elsewhere_charged_once() {
    let mut mesh = TestNet::spawn(MeshOptions {
        hosts: 2,
        host_specs: vec![
            HostSpec::default(),
            with_terms(DeviceTerms {
                when: When::Idle {
                    max_busy_percent: 25,
                },
                ..DeviceTerms::default()
            }),
        ],
        ..MeshOptions::default()
    })
    .await;
    let network = mesh.network_id();
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    // Idle (and the control plane has heard so): it runs jobs.
    reported_busy(&mesh, 1, false).await;
    let done = mesh.hosts[0]
        .submit(workload, texts(2), Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    assert_eq!(done[0]["executor"], mesh.hosts[1].device.to_string());

    // A long job starts there, and another device joins; then the first device's user gets
    // busy: the job is handed back and finishes on the other device, charged once.
    let long = mesh.hosts[0].spawn_submit(workload, long_texts(), Default::default());
    mesh.hosts[1]
        .log
        .wait_for("job request", Duration::from_secs(10))
        .await;
    let other = mesh.start_host("host2", &MeshOptions::default()).await;
    mesh.hosts.push(other);
    mesh.wait_online(3).await;
    let hogs = CpuHogs::start();
    mesh.hosts[1]
        .log
        .wait_for("handing the job back", Duration::from_secs(10))
        .await;
    reported_busy(&mesh, 1, true).await;
    drop(hogs);
    let done = long
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    assert_eq!(done[0]["state"], "done");
    assert_eq!(done[0]["executor"], mesh.hosts[2].device.to_string());
    let job: mesh_proto::JobId = done[0]["job"].as_str().unwrap().parse().unwrap();
    assert_eq!(mesh.job_entries(job).await, (1, 1, 0), "charged once");

    // While its user is busy, the scheduler gives it nothing, and says why.
    reported_busy(&mesh, 1, false).await;
    mesh.hosts[2].stop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while mesh
        .admin
        .devices(&network)
        .await
        .unwrap()
        .iter()
        .any(|d| d.id == mesh.hosts[2].device && d.online)
    {
        assert!(tokio::time::Instant::now() < deadline, "host2 still online");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let hogs = CpuHogs::start();
    reported_busy(&mesh, 1, true).await;
    let before = mesh.admin.balance(&network, None).await.unwrap().balance;
    let err = submit_refused(&mesh, workload).await;
    assert!(err.contains("owner is using it"), "{err}");
    assert_eq!(
        mesh.admin.balance(&network, None).await.unwrap().balance,
        before,
        "a job nobody took costs nothing"
    );
    // Idle again: it takes jobs again.
    drop(hogs);
    reported_busy(&mesh, 1, false).await;
    let done = mesh.hosts[0]
        .submit(workload, texts(2), Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    assert_eq!(done[0]["executor"], mesh.hosts[1].device.to_string());
}

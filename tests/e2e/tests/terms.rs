//! The owner's terms, enforced by the host itself from its own config: a job they forbid is
//! refused with a typed reason (whatever its ticket says), runs on another device when one
//! can take it, and is charged once; a device that takes jobs only while idle refuses them,
//! and hands its running job back, while its user's processes keep the CPU busy.

use mesh_e2e::{HostSpec, MeshOptions, TestNet};
use mesh_proto::PersonId;
use mesh_proto::terms::{DeviceTerms, RequesterRule, When, Window, WorkloadRule};
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

/// A job that keeps a device busy for a while: 2,048 texts of the model's full length.
fn long_texts() -> Vec<u8> {
    let long = "a long sentence about the weather and the sea ".repeat(30);
    let texts: Vec<String> = (0..2048).map(|i| format!("{i} {long}")).collect();
    serde_json::to_vec(&serde_json::json!({ "texts": texts })).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_jobs_are_refused_for_their_reason_and_move_to_a_device_that_takes_them() {
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
    let before = mesh.admin.balance(&network, None).await.unwrap().balance;
    let err = mesh.hosts[0]
        .submit(workload, texts(2), Default::default())
        .await
        .unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("terms") || err.contains("schedule"), "{err}");
    for (host, reason) in [
        (1, "do not include this workload"),
        (2, "do not include this requester"),
        (3, "outside this device's schedule"),
    ] {
        mesh.hosts[host]
            .log
            .wait_for(reason, Duration::from_secs(5))
            .await;
    }
    // Refused everywhere: nothing ran, nothing was charged.
    let after = mesh.admin.balance(&network, None).await.unwrap().balance;
    assert_eq!(after, before, "a refused job costs nothing");

    // A device whose terms allow it joins: the same job now runs there, charged once. (The
    // scheduler does not know the hosts' terms yet, so the job may try a refusing host
    // first; two of them leave, so it tries at most one.)
    mesh.hosts[2].stop();
    mesh.hosts[3].stop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let devices = mesh.admin.devices(&network).await.unwrap();
        if devices.iter().filter(|d| d.online).count() == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{devices:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let spec = MeshOptions::default();
    let open = mesh.start_host("host4", &spec).await;
    open.log
        .wait_for("reservation accepted", Duration::from_secs(30))
        .await;
    mesh.hosts.push(open);
    mesh.wait_online(3).await;
    let done = mesh.hosts[0]
        .submit(workload, texts(2), Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    assert_eq!(done[0]["state"], "done");
    assert_eq!(done[0]["executor"], mesh.hosts[4].device.to_string());
    let job: mesh_proto::JobId = done[0]["job"].as_str().unwrap().parse().unwrap();
    let (reserved, settled, refunded) = mesh.job_entries(job).await;
    assert_eq!((reserved, settled, refunded), (1, 1, 0), "charged once");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_only_device_hands_its_job_back_while_its_user_is_busy() {
    let mesh = TestNet::spawn(MeshOptions {
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
    // Idle: it runs jobs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let done = mesh.hosts[0]
        .submit(workload, texts(2), Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    assert_eq!(done[0]["executor"], mesh.hosts[1].device.to_string());
    let before = mesh.admin.balance(&network, None).await.unwrap().balance;

    // A long job starts; then the device's user gets busy: the job is handed back.
    let long = mesh.hosts[0].spawn_submit(workload, long_texts(), Default::default());
    mesh.hosts[1]
        .log
        .wait_for("job request", Duration::from_secs(10))
        .await;
    let hogs = CpuHogs::start();
    mesh.hosts[1]
        .log
        .wait_for("handing the job back", Duration::from_secs(10))
        .await;
    let err = format!("{:#}", long.await.unwrap().unwrap_err());
    assert!(err.contains("owner"), "{err}");
    // While busy, new jobs are refused for that reason.
    let err = format!(
        "{:#}",
        mesh.hosts[0]
            .submit(workload, texts(2), Default::default())
            .await
            .unwrap_err()
    );
    assert!(err.contains("owner is using it"), "{err}");
    // Neither the handed-back job nor the refused one was charged.
    assert_eq!(
        mesh.admin.balance(&network, None).await.unwrap().balance,
        before
    );
    // Idle again: it takes jobs again.
    drop(hogs);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let done = mesh.hosts[0]
        .submit(workload, texts(2), Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    assert_eq!(done[0]["state"], "done");
}

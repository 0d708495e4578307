//! Verification end to end: honest hosts on three inference backends (three owners) and two
//! colluding cheaters of a fourth owner (in-process agents with fault injection, `collude`:
//! wrong embeddings, identical on both, so they would vouch for each other). Embedding jobs run
//! through the gateway; the control plane's VRF picks results to re-execute on other owners'
//! devices, a third device breaks ties, ringers catch wrong items. The cheaters must end up
//! quarantined and clawed back; honest devices, whatever their backend, never fail a check.
//! Smaller networks test who may judge: a requester with an accomplice (three owners), and
//! two owners, where nobody neutral is left.

use mesh_e2e::{HostSpec, MeshOptions, TestNet, bin, cosine, reference, vectors};
use mesh_proto::api::{CheckState, JobState, RunJobRequest};
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cheaters_are_caught_and_honest_devices_never_penalised() {
    let honest = |owner: usize, backend: &str| HostSpec {
        owner,
        backend: Some(backend.into()),
        fault: None,
        ..HostSpec::default()
    };
    let cheater = HostSpec {
        owner: 4,
        backend: Some("onnxruntime".into()),
        fault: Some("collude".into()),
        ..HostSpec::default()
    };
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 5,
        host_specs: vec![
            honest(1, "onnxruntime"),
            honest(2, "openvino"),
            honest(3, "tract"),
            cheater.clone(),
            cheater,
        ],
        ..MeshOptions::default()
    })
    .await;
    let network = mesh.network_id();
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    let cheaters: Vec<_> = mesh.hosts[3..].iter().map(|h| h.device).collect();
    let corpus = reference(101);

    let jobs = run_until_quarantined(&mesh, workload, &cheaters, &corpus).await;

    // Let the check worker finish what is selected.
    let checks = settled_checks(&mesh, &jobs).await;

    // Every selection, checked or not, verifies offline against the published VRF key.
    let vrf = mesh.admin.vrf_key().await.unwrap();
    assert_eq!(vrf.suite, "ECVRF-EDWARDS25519-SHA512-TAI");
    for check in &checks {
        let job = mesh.admin.job(&network, &check.job).await.unwrap().job;
        check
            .selection
            .verify(
                &vrf.public_key,
                &network,
                &job.id,
                job.receipt.as_ref().unwrap(),
            )
            .unwrap();
    }
    // And through the CLI.
    let cli = std::process::Command::new(bin("mesh"))
        .args(["job", "verify", &checks[0].job.to_string()])
        .env("MESH_SERVER", &mesh.url)
        .env("MESH_TOKEN", mesh.admin_token())
        .env("MESH_NETWORK", network.to_string())
        .env("MESH_CONFIG", mesh.dir.path().join("cli.toml"))
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "mesh job verify: {}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(String::from_utf8_lossy(&cli.stdout).contains("selection: valid"));

    let devices: HashMap<_, _> = mesh
        .admin
        .devices(&network)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.id, d))
        .collect();
    let summary = || trust_summary(devices.values());
    eprintln!("{}", summary());
    for check in &checks {
        eprintln!(
            "check {} by {}: {:?} {} selected={} rate={} {:?}",
            check.job,
            devices[&check.executor].name,
            check.state,
            check.reason,
            check.selection.selected,
            check.selection.rate_ppm,
            check.detail
        );
    }

    // The cheaters: caught, quarantined, clawed back.
    for cheater in &cheaters {
        let d = &devices[cheater];
        assert!(
            d.quarantined_at_ms.is_some() && d.checks.failed >= 2,
            "cheater {} not quarantined\n{}\n{}",
            d.name,
            summary(),
            mesh.logs()
        );
        assert!(d.trust < 0.5);
    }
    // The admins were told, in the audit log.
    let audit = mesh.admin.audit_log(&network).await.unwrap();
    for cheater in &cheaters {
        assert!(
            audit
                .iter()
                .any(|e| e.action == "device_quarantined" && e.actor == cheater.to_string()),
            "no quarantine of {cheater} in the audit log: {audit:?}"
        );
    }
    // Honest devices: never a failed check, whichever backend checked whom.
    let mut cross_backend_passes = 0;
    for check in &checks {
        if cheaters.contains(&check.executor) {
            continue;
        }
        assert!(
            !matches!(check.state, CheckState::Failed | CheckState::Inconclusive),
            "an honest device's check went {:?}: {:?}\n{}",
            check.state,
            check.detail,
            summary()
        );
        if check.state == CheckState::Passed
            && let Some(check_job) = check.check_job
        {
            let backend = |job| {
                let admin = mesh.admin.clone();
                async move {
                    admin
                        .job(&network, &job)
                        .await
                        .unwrap()
                        .job
                        .receipt
                        .unwrap()
                        .backend
                }
            };
            let (original, again) = (backend(check.job).await, backend(check_job).await);
            eprintln!("honest check: {original} checked on {again}");
            if original != again {
                cross_backend_passes += 1;
            }
        }
    }
    for host in &mesh.hosts[..3] {
        let d = &devices[&host.device];
        assert_eq!(
            d.checks.failed,
            0,
            "{} was penalised\n{}",
            d.name,
            summary()
        );
        assert!(d.quarantined_at_ms.is_none());
    }
    assert!(
        cross_backend_passes >= 1,
        "no check compared two backends\n{}",
        summary()
    );

    // A cheater's job that failed its re-execution: the requester can fetch the verified
    // result, and the executor's owner paid the job back (a ledger entry, not an edit).
    let cheaters_owner = mesh.owners[4].history(&network, None).await.unwrap();
    let clawbacks = cheaters_owner
        .iter()
        .filter(|e| e.kind == "job_clawback")
        .count();
    assert!(clawbacks >= 2, "clawbacks: {clawbacks}");
    let mut verifiers_paid = 0;
    for owner in &mesh.owners[1..4] {
        let history = owner.history(&network, None).await.unwrap();
        verifiers_paid += history.iter().filter(|e| e.kind == "verify_pay").count();
    }
    assert!(verifiers_paid >= 1);
    if let Some(failed) = checks
        .iter()
        .find(|c| c.state == CheckState::Failed && c.verified_output.is_some())
    {
        let verified = failed.verified_output.unwrap();
        let bytes = mesh
            .admin
            .download_payload(&network, &failed.job, &verified)
            .await
            .unwrap();
        let doc = mesh_proto::document::parse(&bytes).unwrap();
        assert_eq!(vectors(&doc).len(), 8);
    }

    // Quarantined devices get no more jobs.
    for i in 0..4 {
        let result = mesh
            .admin
            .run_job(
                &network,
                &RunJobRequest {
                    workload,
                    input: serde_json::json!({ "texts": [format!("after quarantine {i}")] }),
                    idempotency_key: None,
                },
            )
            .await
            .unwrap();
        assert!(!cheaters.contains(&result.executor));
    }
}

/// A cheater with an honest history: it passes its first checks, its check rate falls to
/// (almost) nothing, then it falsifies half of its items. Spot checks alone would hardly ever
/// see it again; ringers (items of the requester's earlier verified jobs) catch it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ringers_catch_a_cheater_with_an_honest_history() {
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 4,
        host_specs: vec![
            HostSpec {
                owner: 1,
                backend: Some("onnxruntime".into()),
                fault: None,
                ..HostSpec::default()
            },
            HostSpec {
                owner: 2,
                backend: Some("openvino".into()),
                fault: None,
                ..HostSpec::default()
            },
            HostSpec {
                owner: 3,
                backend: Some("onnxruntime".into()),
                fault: Some("items:0.5@8".into()),
                ..HostSpec::default()
            },
            // A third honest owner: more of the checks that fill the ringer pool involve
            // neither the cheater nor its own results.
            HostSpec {
                owner: 4,
                backend: Some("onnxruntime".into()),
                fault: None,
                ..HostSpec::default()
            },
        ],
        // Checks halve with every pass down to one in a million: after its honest start the
        // cheater is practically never re-executed. Quarantine after five failures: its lies
        // as a verifier (it re-executes others' jobs too) fail checks as well, and two or
        // three of those alone would quarantine it before any ringer had a chance.
        control_plane_config:
            "[check_policy]\ninitial_ppm = 1000000\nhalve_every = 1\nfloor_ppm = 1\n\
                               quarantine_after = 5\n"
                .into(),
        ..MeshOptions::default()
    })
    .await;
    let network = mesh.network_id();
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    let cheater = mesh.hosts[2].device;
    let corpus = reference(101);
    let mut jobs = Vec::new();
    for i in 0..120 {
        // 32 items: every job carries ringers once the pool has some. Each item is a text of
        // its own, as in real work: the pool keeps one ringer per distinct text, so the 101
        // texts of the corpus alone would leave it nearly empty for any one device.
        let texts: Vec<String> = (0..32)
            .map(|k| format!("{} ({i}.{k})", corpus[(i * 7 + k * 3) % corpus.len()].0))
            .collect();
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
            .unwrap_or_else(|e| panic!("job {i} failed: {e}\n{}", mesh.logs()));
        jobs.push(result.job.id);
        let devices = mesh.admin.devices(&network).await.unwrap();
        if devices
            .iter()
            .any(|d| d.id == cheater && d.quarantined_at_ms.is_some())
        {
            break;
        }
        // Let the check worker confirm the early results (which fills the ringer pool) before
        // the next job, and let every device report itself idle again: idle devices share
        // the work, so the cheater's honest start (its first 8 jobs) falls within the first
        // 30 or so. (A verifier's last heartbeat still shows its check job running for up to
        // a second; without the wait, the job after a check goes to its executor, the
        // cheater as often as not, again and again.)
        if i < 16 {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline
                && mesh
                    .admin
                    .job_check(&network, &result.job.id)
                    .await
                    .is_ok_and(|c| {
                        matches!(
                            c.state,
                            CheckState::Selected | CheckState::Running | CheckState::Disputed
                        )
                    })
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            while Instant::now() < deadline
                && mesh
                    .admin
                    .devices(&network)
                    .await
                    .unwrap()
                    .iter()
                    .any(|d| d.load.running + d.load.queued > 0)
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let devices = mesh.admin.devices(&network).await.unwrap();
    let summary = trust_summary(devices.iter());
    // A job whose ringer failed was answered by its re-run, so look at every job.
    let mut by_ringer = 0;
    for job in mesh.admin.jobs(&network).await.unwrap() {
        if let Ok(check) = mesh.admin.job_check(&network, &job.id).await
            && check.executor == cheater
            && check.state == CheckState::Failed
            && check.reason == mesh_proto::api::CheckReason::Ringer
        {
            by_ringer += 1;
        }
    }
    let d = devices.iter().find(|d| d.id == cheater).unwrap();
    assert!(
        d.quarantined_at_ms.is_some(),
        "the cheater was not quarantined after {} jobs\n{summary}\n{}",
        jobs.len(),
        mesh.logs()
    );
    assert!(
        by_ringer >= 1,
        "no ringer caught it in {} jobs\n{summary}\n{}",
        jobs.len(),
        mesh.logs()
    );
    for d in devices.iter().filter(|d| d.id != cheater) {
        assert_eq!(d.checks.failed, 0, "{} was penalised\n{summary}", d.name);
    }
}

/// Run embedding jobs of 8 sentences, as many at a time as there are hosts (so every device,
/// not only the most trusted, gets work each round), until every one of `cheaters` is
/// quarantined (at least 5 rounds, at most 30). Honest executors' answers are checked against the reference embeddings.
async fn run_until_quarantined(
    mesh: &TestNet,
    workload: mesh_proto::Blake3Hash,
    cheaters: &[mesh_proto::DeviceId],
    corpus: &[(String, Vec<f32>)],
) -> Vec<(mesh_proto::JobId, mesh_proto::DeviceId)> {
    let network = mesh.network_id();
    let mut jobs = Vec::new();
    for round in 0..30 {
        jobs.extend(run_round(mesh, &mesh.admin, workload, cheaters, corpus, round).await);
        let devices = mesh.admin.devices(&network).await.unwrap();
        let quarantined = devices
            .iter()
            .filter(|d| cheaters.contains(&d.id) && d.quarantined_at_ms.is_some())
            .count();
        if quarantined == cheaters.len() && round >= 4 {
            break;
        }
    }
    jobs
}

/// One round of [`run_until_quarantined`]: as many embedding jobs at once as there are hosts,
/// requested by `requester`; returns each job and its executor.
async fn run_round(
    mesh: &TestNet,
    requester: &mesh_client::Client,
    workload: mesh_proto::Blake3Hash,
    cheaters: &[mesh_proto::DeviceId],
    corpus: &[(String, Vec<f32>)],
    round: usize,
) -> Vec<(mesh_proto::JobId, mesh_proto::DeviceId)> {
    let network = mesh.network_id();
    let width = mesh.hosts.len();
    let mut running = Vec::new();
    for k in 0..width {
        let i = round * width + k;
        let texts: Vec<String> = (0..8)
            .map(|j| corpus[(i * 8 + j * 13) % corpus.len()].0.clone())
            .collect();
        let requester = requester.clone();
        running.push(tokio::spawn(async move {
            let result = requester
                .run_job(
                    &network,
                    &RunJobRequest {
                        workload,
                        input: serde_json::json!({ "texts": texts }),
                        idempotency_key: None,
                    },
                )
                .await;
            (texts, result)
        }));
    }
    let mut jobs = Vec::new();
    for task in running {
        let (texts, result) = task.await.unwrap();
        let result = match result {
            Ok(result) => result,
            // Every run the gateway tried went to a liar, each caught by its ringers (with
            // three lying owners of six, one job in about twenty while trust is still even):
            // nothing wrong is returned, the requester is told so.
            Err(e) if e.code() == Some("verification_failed") => continue,
            Err(e) => panic!("a job failed: {e}\n{}", mesh.logs()),
        };
        assert_eq!(result.job.state, JobState::Done);
        jobs.push((result.job.id, result.executor));
        // What the requester gets back is right when no cheater ran it; a ringer failure
        // re-runs the job elsewhere before answering.
        if !cheaters.contains(&result.executor) {
            let got = vectors(&result.output);
            assert_eq!(got.len(), texts.len());
            for (text, vector) in texts.iter().zip(&got) {
                let want = &corpus.iter().find(|(t, _)| t == text).unwrap().1;
                assert!(cosine(want, vector) > 0.99, "honest result off");
            }
        }
    }
    jobs
}

/// The checks of `jobs` once none is open any more (or after two minutes).
async fn settled_checks(
    mesh: &TestNet,
    jobs: &[(mesh_proto::JobId, mesh_proto::DeviceId)],
) -> Vec<mesh_proto::api::CheckInfo> {
    let network = mesh.network_id();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut checks = Vec::new();
        for (job, _) in jobs {
            checks.push(mesh.admin.job_check(&network, job).await.unwrap());
        }
        let open = checks.iter().any(|c| {
            matches!(
                c.state,
                CheckState::Selected | CheckState::Running | CheckState::Disputed
            )
        });
        if !open || Instant::now() > deadline {
            return checks;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How many of `jobs` run by `executor` the VRF selected for re-execution.
async fn selected_of(
    mesh: &TestNet,
    jobs: &[(mesh_proto::JobId, mesh_proto::DeviceId)],
    executor: mesh_proto::DeviceId,
) -> usize {
    let mut n = 0;
    for (job, by) in jobs {
        if *by == executor
            && mesh
                .admin
                .job_check(&mesh.network_id(), job)
                .await
                .is_ok_and(|c| c.selection.selected)
        {
            n += 1;
        }
    }
    n
}

/// How many entries of `kind` are in `client`'s credit history.
async fn entries(
    client: &mesh_client::Client,
    network: &mesh_proto::NetworkId,
    kind: &str,
) -> usize {
    client
        .history(network, None)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == kind)
        .count()
}

/// Three owners: the requester's own device and an accomplice's both lie, identically. The
/// requester's devices never judge its jobs, so the accomplice alone can only dispute the
/// honest executor's results: with no second judge left the check is inconclusive, nobody is
/// paid, the requester gets nothing back, and the honest device is never failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_and_an_accomplice_cannot_outvote_an_honest_executor() {
    let host = |owner: usize, fault: Option<&str>| HostSpec {
        owner,
        backend: Some("onnxruntime".into()),
        fault: fault.map(str::to_string),
        ..HostSpec::default()
    };
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 3,
        host_specs: vec![
            host(1, Some("collude")),
            host(2, Some("collude")),
            host(3, None),
        ],
        ..MeshOptions::default()
    })
    .await;
    let network = mesh.network_id();
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    let (requesters, accomplice, honest) = (
        mesh.hosts[0].device,
        mesh.hosts[1].device,
        mesh.hosts[2].device,
    );
    let requester = mesh.owners[1].clone();
    let corpus = reference(101);
    // Rounds until some of the honest device's results were selected, at most 30.
    let mut jobs = Vec::new();
    for round in 0..30 {
        jobs.extend(
            run_round(
                &mesh,
                &requester,
                workload,
                &[requesters, accomplice],
                &corpus,
                round,
            )
            .await,
        );
        if round >= 4 && selected_of(&mesh, &jobs, honest).await >= 2 {
            break;
        }
    }
    let checks = settled_checks(&mesh, &jobs).await;
    let devices = mesh.admin.devices(&network).await.unwrap();
    let summary = trust_summary(devices.iter());
    let mut disputed_honest = 0;
    for check in &checks {
        eprintln!(
            "check {} of {}: {:?} verifier {:?} tie-breaker {:?}: {:?}",
            check.job, check.executor, check.state, check.verifier, check.tiebreaker, check.detail
        );
        // The requester's own results are never checked; its devices never judge.
        if check.executor == requesters {
            assert_eq!(check.selection.rate_ppm, 0);
            assert_eq!(check.state, CheckState::NotSelected);
        }
        assert_ne!(check.verifier, Some(requesters), "{summary}");
        assert_ne!(check.tiebreaker, Some(requesters), "{summary}");
        // Nobody is left to break a tie.
        assert_eq!(check.tiebreaker, None);
        if check.executor == honest && check.selection.selected {
            assert_eq!(check.verifier, Some(accomplice));
            assert_eq!(check.state, CheckState::Inconclusive, "{:?}", check.detail);
            disputed_honest += 1;
        }
    }
    assert!(
        disputed_honest >= 1,
        "no check of the honest device's results\n{summary}"
    );
    let d = devices.iter().find(|d| d.id == honest).unwrap();
    assert_eq!(
        d.checks.failed, 0,
        "the honest device was penalised\n{summary}"
    );
    assert!(d.quarantined_at_ms.is_none());
    // No clawback, no refund and no verifier pay for the requester; no pay for the
    // accomplice's dispute.
    for kind in ["job_clawback", "verify_pay", "job_refund"] {
        assert_eq!(entries(&requester, &network, kind).await, 0, "{kind}");
        assert_eq!(entries(&mesh.owners[2], &network, kind).await, 0, "{kind}");
    }
    let audit = mesh.admin.audit_log(&network).await.unwrap();
    assert!(
        audit.iter().any(|e| e.action == "check_inconclusive"),
        "no inconclusive check in the audit log: {audit:?}"
    );
}

/// Two owners: the requester's device is honest, the other owner's lies. Nobody neutral can
/// judge, so the requester's own device re-executes the other's results: it confirms nothing,
/// but a disagreement costs the liar its pay (to the network, not to the requester), pays
/// nobody, and keeps the liar's trust where a new device's is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_owners_a_liar_loses_its_pay_and_nobody_profits() {
    let host = |owner: usize, fault: Option<&str>| HostSpec {
        owner,
        backend: Some("onnxruntime".into()),
        fault: fault.map(str::to_string),
        ..HostSpec::default()
    };
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 2,
        host_specs: vec![host(1, None), host(2, Some("collude"))],
        ..MeshOptions::default()
    })
    .await;
    let network = mesh.network_id();
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    let (own, liar) = (mesh.hosts[0].device, mesh.hosts[1].device);
    let requester = mesh.owners[1].clone();
    let corpus = reference(101);
    // Rounds until some of the liar's results were selected (each is, at 50%), at most 30.
    let mut jobs = Vec::new();
    for round in 0..30 {
        jobs.extend(run_round(&mesh, &requester, workload, &[liar], &corpus, round).await);
        if round >= 4 && selected_of(&mesh, &jobs, liar).await >= 2 {
            break;
        }
    }
    let checks = settled_checks(&mesh, &jobs).await;
    let devices = mesh.admin.devices(&network).await.unwrap();
    let summary = trust_summary(devices.iter());
    let mut caught = 0;
    for check in &checks {
        eprintln!(
            "check {} of {} (rate {}): {:?} verifier {:?}: {:?}",
            check.job,
            check.executor,
            check.selection.rate_ppm,
            check.state,
            check.verifier,
            check.detail
        );
        if check.executor == own {
            assert_eq!(check.state, CheckState::NotSelected);
        } else if check.selection.selected {
            // Settled at once by the requester's own device, not left open for half an hour.
            assert_eq!(check.verifier, Some(own));
            assert_eq!(check.state, CheckState::Inconclusive, "{:?}", check.detail);
            caught += 1;
        }
    }
    assert!(caught >= 1, "no check of the liar's results\n{summary}");
    // The liar's pay for each disputed job went back to the network; the requester got
    // nothing back and nobody was paid for checking.
    assert_eq!(
        entries(&mesh.owners[2], &network, "job_forfeit").await,
        caught
    );
    for owner in [&requester, &mesh.owners[2]] {
        for kind in ["job_clawback", "verify_pay", "job_refund"] {
            assert_eq!(entries(owner, &network, kind).await, 0, "{kind}");
        }
    }
    for d in &devices {
        assert_eq!(d.checks.failed, 0, "{} failed a check\n{summary}", d.name);
    }
    let d = devices.iter().find(|d| d.id == liar).unwrap();
    assert_eq!(d.checks.consecutive_passed, 0, "{summary}");
    assert!(d.trust <= 0.5, "{summary}");
}

/// Lies of other shapes: zero vectors, a replayed answer to another input, and wrong answers
/// half of the time; each cheater has its own owner. All are quarantined, nobody else is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_replayed_and_random_lies_are_caught() {
    let host = |owner: usize, backend: &str, fault: Option<&str>| HostSpec {
        owner,
        backend: Some(backend.into()),
        fault: fault.map(str::to_string),
        ..HostSpec::default()
    };
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 6,
        host_specs: vec![
            host(1, "onnxruntime", None),
            host(2, "openvino", None),
            host(3, "onnxruntime", None),
            host(4, "onnxruntime", Some("zero")),
            host(5, "openvino", Some("replay")),
            host(6, "onnxruntime", Some("wrong:0.5")),
        ],
        ..MeshOptions::default()
    })
    .await;
    let network = mesh.network_id();
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    let cheaters: Vec<_> = mesh.hosts[3..].iter().map(|h| h.device).collect();
    let corpus = reference(101);
    let jobs = run_until_quarantined(&mesh, workload, &cheaters, &corpus).await;
    let devices = mesh.admin.devices(&network).await.unwrap();
    let summary = trust_summary(devices.iter());
    for d in &devices {
        if cheaters.contains(&d.id) {
            assert!(
                d.quarantined_at_ms.is_some(),
                "{} not quarantined after {} jobs\n{summary}",
                d.name,
                jobs.len()
            );
        } else {
            assert_eq!(d.checks.failed, 0, "{} was penalised\n{summary}", d.name);
            assert!(d.quarantined_at_ms.is_none());
        }
    }
}

/// Lies that stay close to the truth: a host that runs the cheaper int8 model and names the
/// fp32 one in its receipts, and a host that turns every embedding to cosine 0.995 (above the
/// workload's declared 0.99). Results of the same precision are held to honest variance, so
/// both are caught; honest hosts on three backends never are. (Honest mixed precisions are
/// held to the declared bound, with no false positive: `host/tests/embeddings.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cheaper_model_and_small_noise_are_caught() {
    let host = |owner: usize, backend: &str, variant: &str, fault: Option<&str>| HostSpec {
        owner,
        backend: Some(backend.into()),
        model_variant: Some(variant.into()),
        fault: fault.map(str::to_string),
        ..HostSpec::default()
    };
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 5,
        host_specs: vec![
            host(1, "onnxruntime", "fp32", None),
            host(2, "openvino", "fp32", None),
            host(3, "tract", "fp32", None),
            host(4, "onnxruntime", "int8", Some("claim:fp32")),
            host(5, "openvino", "fp32", Some("noise:0.995")),
        ],
        ..MeshOptions::default()
    })
    .await;
    let network = mesh.network_id();
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    let cheaters: Vec<_> = mesh.hosts[3..].iter().map(|h| h.device).collect();
    let corpus = reference(101);
    let jobs = run_until_quarantined(&mesh, workload, &cheaters, &corpus).await;
    let checks = settled_checks(&mesh, &jobs).await;
    let devices = mesh.admin.devices(&network).await.unwrap();
    let summary = trust_summary(devices.iter());
    for d in &devices {
        if cheaters.contains(&d.id) {
            assert!(
                d.quarantined_at_ms.is_some(),
                "{} not quarantined after {} jobs\n{summary}",
                d.name,
                jobs.len()
            );
        } else {
            assert_eq!(d.checks.failed, 0, "{} was penalised\n{summary}", d.name);
            assert!(d.quarantined_at_ms.is_none());
        }
    }
    // Each lie was caught by re-execution, not only by ringers.
    for cheater in &cheaters {
        let caught = checks
            .iter()
            .filter(|c| c.executor == *cheater && c.state == CheckState::Failed)
            .count();
        assert!(caught >= 1, "no failed check of {cheater}\n{summary}");
    }
}

/// One line per device: name, trust, check record, quarantine (for failure messages).
fn trust_summary<'a>(devices: impl Iterator<Item = &'a mesh_proto::api::DeviceInfo>) -> String {
    devices
        .map(|d| {
            format!(
                "{} trust {:.2} {:?} quarantined {}",
                d.name,
                d.trust,
                d.checks,
                d.quarantined_at_ms.is_some()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Generated text is checked by re-scoring, not by generating again (two honest engines
/// need not agree byte for byte): the judge runs the chat workload with the executor's answer
/// as `score` and answers a verdict. Honest hosts' answers, greedy and seeded, pass every
/// check; a host that answers each question with its previous answer (fluent text, another
/// question's) is caught by re-execution, clawed back and quarantined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_answers_are_checked_by_rescoring_and_a_replaying_host_is_caught() {
    let host = |owner: usize, fault: Option<&str>| HostSpec {
        owner,
        fault: fault.map(str::to_string),
        ..HostSpec::default()
    };
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 4,
        host_specs: vec![
            host(1, None),
            host(2, None),
            host(3, None),
            host(4, Some("replay")),
        ],
        ..MeshOptions::default()
    })
    .await;
    let network = mesh.network_id();
    let workload = mesh.publish(mesh_test_artifacts::CHAT).await;
    let cheater = mesh.hosts[3].device;
    let places = [
        "France", "Japan", "Italy", "Spain", "Egypt", "Canada", "Kenya", "Peru", "Norway", "India",
        "Chile", "Greece", "Brazil", "Poland", "Ghana", "Iran",
    ];
    let mut jobs = Vec::new();
    for round in 0..25 {
        let mut running = Vec::new();
        for k in 0..mesh.hosts.len() {
            let i = round * mesh.hosts.len() + k;
            let question = format!("What is the capital of {}?", places[i % places.len()]);
            let mut input = serde_json::json!({
                "messages": [{"role": "user", "content": question}],
                "max_tokens": 12,
                "temperature": 0,
            });
            if i % 2 == 1 {
                input["temperature"] = serde_json::json!(0.8);
                input["seed"] = serde_json::json!(i);
            }
            let admin = mesh.admin.clone();
            running.push(tokio::spawn(async move {
                admin
                    .run_job(
                        &network,
                        &RunJobRequest {
                            workload,
                            input,
                            idempotency_key: None,
                        },
                    )
                    .await
            }));
        }
        for task in running {
            let result = task
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{e}\n{}", mesh.logs()));
            // (What the liar returns is whatever it answered last: text, or a verdict it gave
            // as a judge.)
            if result.executor != cheater {
                assert!(result.output["text"].is_string(), "{}", result.output);
            }
            jobs.push((result.job.id, result.executor));
        }
        let devices = mesh.admin.devices(&network).await.unwrap();
        if round >= 3
            && devices
                .iter()
                .any(|d| d.id == cheater && d.quarantined_at_ms.is_some())
        {
            break;
        }
    }
    let checks = settled_checks(&mesh, &jobs).await;
    let devices = mesh.admin.devices(&network).await.unwrap();
    let summary = trust_summary(devices.iter());
    for d in &devices {
        if d.id == cheater {
            assert!(
                d.quarantined_at_ms.is_some(),
                "the replaying host was not quarantined after {} jobs\n{summary}",
                jobs.len()
            );
        } else {
            assert_eq!(d.checks.failed, 0, "{} was penalised\n{summary}", d.name);
            assert!(d.quarantined_at_ms.is_none(), "{summary}");
        }
    }
    let passed = checks
        .iter()
        .filter(|c| c.executor != cheater && c.state == CheckState::Passed)
        .count();
    assert!(
        passed >= 2,
        "honest answers were checked and passed: {passed}\n{summary}"
    );
    let caught: Vec<_> = checks
        .iter()
        .filter(|c| c.executor == cheater && c.state == CheckState::Failed)
        .collect();
    assert!(
        !caught.is_empty(),
        "no failed check of the replaying host\n{summary}"
    );
    for check in caught {
        assert!(
            check.detail.as_deref().is_some_and(|d| !d.is_empty()),
            "{check:?}"
        );
    }
    // The judges re-scored the lie, they did not generate answers of their own.
    let logs = mesh.logs();
    assert!(
        logs.contains("the judge re-scored the generation"),
        "no dispute says why\n{summary}"
    );
}

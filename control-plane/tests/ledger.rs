//! Credits are never created from nothing, whatever the calls: random sequences of submits,
//! reports, failures, requester reassignments, failed checks (clawbacks), grants (fresh and
//! retried, some with reused keys) and pauses in which the sweeper expires leases and refunds,
//! over HTTP on SQLite and PostgreSQL. After every step the ledger must balance: every
//! transfer sums to zero, every cached balance is the sum of its entries, the network sums to
//! zero, only grants, verifier pay and forfeits touch the issuer (so credits enter only as
//! grants), each job is reserved once and settled or refunded at most once, a clawback only
//! follows a settlement, and no call answers 5xx. Sequences are seeded: a failure names its
//! seed and step.

mod common;

use common::*;
use mesh_client::{Client, ClientError};
use mesh_proto::api::*;
use mesh_proto::device::DeviceLoad;
use mesh_proto::{Blake3Hash, DeviceId};
use sqlx::Row;
use std::collections::HashMap;
use std::time::Duration;

/// splitmix64: reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A refusal is fine (the call was not allowed in that state); a server error or an
/// unreachable server is not.
fn refused_at_most<T>(result: Result<T, ClientError>, context: &str) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(ClientError::Api { status, .. }) if status.is_client_error() => None,
        Err(e) => panic!("{context}: {e}"),
    }
}

async fn check_invariants(plane: &TestPlane, network: &NetworkInfo, context: &str) {
    let pool = &plane.server.state().db.pool;
    let net = network.id.to_string();
    let unbalanced: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT t.id FROM ledger_transfers t JOIN ledger_entries e ON e.transfer_id = t.id \
         WHERE t.network_id = $1 GROUP BY t.id HAVING SUM(e.amount) <> 0) unbalanced",
    )
    .bind(&net)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(unbalanced, 0, "{context}: a transfer does not sum to zero");
    let drifted: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM accounts a WHERE a.network_id = $1 AND a.balance <> \
         COALESCE((SELECT SUM(e.amount) FROM ledger_entries e WHERE e.account_id = a.id), 0)",
    )
    .bind(&net)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        drifted, 0,
        "{context}: a cached balance is not its entries' sum"
    );
    let total: Option<i64> = sqlx::query_scalar(
        "SELECT CAST(SUM(balance) AS BIGINT) FROM accounts WHERE network_id = $1",
    )
    .bind(&net)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        total.unwrap_or(0),
        0,
        "{context}: the network does not sum to zero"
    );
    let issuer_kinds: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT t.kind FROM ledger_entries e JOIN accounts a ON a.id = e.account_id \
         JOIN ledger_transfers t ON t.id = e.transfer_id WHERE a.network_id = $1 AND a.kind = 'issuer'",
    )
    .bind(&net)
    .fetch_all(pool)
    .await
    .unwrap();
    for kind in &issuer_kinds {
        assert!(
            ["grant", "verify_pay", "job_forfeit"].contains(&kind.as_str()),
            "{context}: the issuer took part in a {kind}"
        );
    }
    let rows = sqlx::query(
        "SELECT job_id, kind, COUNT(*) AS n FROM ledger_transfers WHERE network_id = $1 \
         AND job_id IS NOT NULL GROUP BY job_id, kind",
    )
    .bind(&net)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut per_job: HashMap<String, HashMap<String, i64>> = HashMap::new();
    for row in rows {
        let job: String = row.try_get("job_id").unwrap();
        let kind: String = row.try_get("kind").unwrap();
        let n: i64 = row.try_get("n").unwrap();
        per_job.entry(job).or_default().insert(kind, n);
    }
    for (job, kinds) in &per_job {
        let n = |k: &str| kinds.get(k).copied().unwrap_or(0);
        assert!(n("job_reserve") <= 1, "{context}: {job} reserved twice");
        assert!(
            n("job_settle") + n("job_refund") <= n("job_reserve"),
            "{context}: {job} paid out more than it reserved: {kinds:?}"
        );
        assert!(
            n("job_clawback") <= n("job_settle"),
            "{context}: {job} clawed back without being settled"
        );
    }
}

/// Run one seeded sequence; returns how many transfers of each kind it made.
async fn run_sequence(store: Store, seed: u64, steps: usize) -> HashMap<String, i64> {
    let plane = TestPlane::spawn_with(store, |c| {
        c.job_lease = Duration::from_millis(300);
        c.sweep_interval = Duration::from_millis(50);
    })
    .await;
    let network = plane
        .network(NetworkPolicy {
            require_device_approval: false,
            initial_grant: 20,
            job_price: 3,
            admins_grant_themselves: true,
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
        .unwrap()
        .hash;
    let me = plane.admin.me().await.unwrap().person.id;
    let (second, second_id) = plane.person(&network.id, Role::Admin, "second").await;
    let (member, member_id) = plane.person(&network.id, Role::Member, "member").await;
    let mut devices = HashMap::new();
    for (i, owner) in [&plane.admin, &second].into_iter().enumerate() {
        let mut device =
            register_device(owner, &network.id, 60 + i as u8, embedding_capabilities()).await;
        device
            .heartbeat(DeviceLoad {
                running: 0,
                queued: 0,
                slots: 8,
                others_busy_percent: None,
            })
            .await;
        devices.insert(device.id, device);
    }
    let requesters: [(&Client, mesh_proto::PersonId); 3] = [
        (&plane.admin, me),
        (&second, second_id),
        (&member, member_id),
    ];
    let mut rng = Rng(seed);
    let mut jobs: Vec<(JobInfo, usize)> = Vec::new();
    for step in 0..steps {
        let context = format!("{store:?} seed {seed} step {step}");
        match rng.below(9) {
            0 | 1 => {
                let who = rng.below(requesters.len());
                let input = format!("{seed}-{step}").into_bytes();
                let submitted = requesters[who]
                    .0
                    .submit_job(
                        &network.id,
                        &SubmitJobRequest {
                            workload,
                            input: Blake3Hash::of(&input),
                            input_size: input.len() as u64,
                            idempotency_key: None,
                        },
                    )
                    .await;
                if let Some(assignment) = refused_at_most(submitted, &context) {
                    jobs.push((assignment.job, who));
                }
            }
            2 | 3 if !jobs.is_empty() => {
                let (job, _) = &jobs[rng.below(jobs.len())];
                let current = plane.admin.job(&network.id, &job.id).await.unwrap().job;
                if let Some(device) = current.executor.and_then(|d| devices.get(&d)) {
                    let output = format!("out {}", job.id);
                    let receipt =
                        signed_receipt(&device.key, &network.id, &current, output.as_bytes());
                    refused_at_most(
                        device
                            .client
                            .complete_job(&job.id, &CompleteJobRequest { receipt })
                            .await,
                        &context,
                    );
                }
            }
            4 if !jobs.is_empty() => {
                let (job, _) = &jobs[rng.below(jobs.len())];
                let current = plane.admin.job(&network.id, &job.id).await.unwrap().job;
                if let Some(device) = current.executor.and_then(|d| devices.get(&d)) {
                    let retryable = rng.below(2) == 0;
                    refused_at_most(
                        device
                            .client
                            .fail_job(
                                &job.id,
                                &FailJobRequest {
                                    reason: "random failure".into(),
                                    retryable,
                                    executor_peer: None,
                                },
                            )
                            .await,
                        &context,
                    );
                }
            }
            5 if !jobs.is_empty() => {
                let (job, who) = &jobs[rng.below(jobs.len())];
                let retryable = rng.below(2) == 0;
                refused_at_most(
                    requesters[*who]
                        .0
                        .reassign_job(
                            &network.id,
                            &job.id,
                            &FailJobRequest {
                                reason: "random complaint".into(),
                                retryable,
                                executor_peer: None,
                            },
                        )
                        .await,
                    &context,
                );
            }
            6 => {
                // A small pool of keys: some grants are retries, some reuse a key for
                // another amount or person (409).
                let to = requesters[rng.below(requesters.len())].1;
                let granter = [&plane.admin, &second][rng.below(2)];
                refused_at_most(
                    granter
                        .grant(
                            &network.id,
                            &GrantRequest {
                                person: to,
                                amount: 1 + rng.below(40) as i64,
                                idempotency_key: format!("key-{}", rng.below(6)),
                                memo: None,
                            },
                        )
                        .await,
                    &context,
                );
            }
            7 if !jobs.is_empty() => {
                // A failed check of a settled job: its executor's owner pays it back, once.
                let (job, _) = &jobs[rng.below(jobs.len())];
                let current = plane.admin.job(&network.id, &job.id).await.unwrap().job;
                if let (JobState::Done, Some(executor)) = (current.state, current.executor) {
                    mesh_control_plane::domain::checks::record_verdict(
                        plane.server.state(),
                        &current,
                        &executor,
                        false,
                        "random failed check",
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{context}: {e}"));
                }
            }
            _ => {
                // Leases run out; the sweeper requeues or refunds.
                tokio::time::sleep(Duration::from_millis(150)).await;
                for device in devices.values_mut() {
                    device
                        .heartbeat(DeviceLoad {
                            running: 0,
                            queued: 0,
                            slots: 8,
                            others_busy_percent: None,
                        })
                        .await;
                }
            }
        }
        check_invariants(&plane, &network, &context).await;
    }
    let _: &HashMap<DeviceId, TestDevice> = &devices;
    let rows = sqlx::query(
        "SELECT kind, COUNT(*) AS n FROM ledger_transfers WHERE network_id = $1 GROUP BY kind",
    )
    .bind(network.id.to_string())
    .fetch_all(&plane.server.state().db.pool)
    .await
    .unwrap();
    rows.iter()
        .map(|r| (r.try_get("kind").unwrap(), r.try_get("n").unwrap()))
        .collect()
}

#[tokio::test]
async fn no_sequence_of_calls_creates_credits_from_nothing() {
    let seeds: u64 = std::env::var("MESH_LEDGER_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let mut made: HashMap<String, i64> = HashMap::new();
    for store in stores() {
        for seed in 0..seeds {
            for (kind, n) in run_sequence(store, 0x5eed_0000 + seed, 80).await {
                *made.entry(kind).or_default() += n;
            }
        }
    }
    eprintln!("transfers made: {made:?}");
    // The sequences reach every path that moves credits.
    for kind in [
        "grant",
        "job_reserve",
        "job_settle",
        "job_refund",
        "job_clawback",
    ] {
        assert!(
            made.get(kind).copied().unwrap_or(0) > 0,
            "no {kind}: {made:?}"
        );
    }
}

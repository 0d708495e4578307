//! Choosing devices for jobs, and the job state machine's background half.
//!
//! States: queued → assigned → running → done | failed. An assignment is a conditional update
//! (`... WHERE state = 'queued'`), so two control-plane processes can never assign one job
//! twice. An assigned or running job holds a lease; when it expires the job goes back to the
//! queue (or fails after `max_job_attempts`), and its reserved credits are refunded exactly
//! once (idempotency keys per job).

use crate::auth::parse;
use crate::error::{ApiError, ApiResult};
use crate::ledger::{self, Account};
use crate::state::AppState;
use crate::store::Tx;
use crate::store::jobs::{self, Holder, JobRecord};
use crate::store::now_ms;
use mesh_proto::api::{JobInfo, JobTicket};
use mesh_proto::device::Capabilities;
use mesh_proto::{DeviceId, JobId, NetworkId, PersonId, SignDomain, Signed};
use sqlx::Row;
use std::sync::atomic::Ordering;

/// Devices with a trust score below this are never chosen.
pub const MIN_TRUST: f64 = 0.1;

/// A device that could run a job, with what the choice is based on.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The device.
    pub device: DeviceId,
    /// Its peer id.
    pub peer_id: String,
    /// Jobs it holds or reported, per slot.
    pub load: f64,
    /// Its trust score.
    pub trust: f64,
    /// Its owner.
    pub owner: PersonId,
}

/// Devices of `network` able to run a workload needing `models`: approved, online, with an
/// inference backend and every model, trusted enough, not quarantined; least loaded first,
/// then most trusted.
pub async fn candidates(
    state: &AppState,
    network: &NetworkId,
    models: &[String],
) -> ApiResult<Vec<Candidate>> {
    let rows = sqlx::query(
        "SELECT id, owner_id, peer_id, capabilities, load_running, load_queued, load_slots, trust FROM devices \
         WHERE network_id = $1 AND status = 'approved' AND online = 1 AND quarantined_at IS NULL",
    )
    .bind(network.to_string())
    .fetch_all(&state.db.pool)
    .await?;
    let held = jobs::held_per_executor(&state.db.pool, network).await?;
    let mut out = Vec::new();
    for row in rows {
        let id: DeviceId = parse(row.try_get("id")?)?;
        let capabilities: Capabilities =
            serde_json::from_str(&row.try_get::<String, _>("capabilities")?)
                .map_err(ApiError::internal)?;
        let trust: f64 = row.try_get("trust")?;
        if capabilities.backends.is_empty()
            || trust < MIN_TRUST
            || !models.iter().all(|m| capabilities.models.contains(m))
        {
            continue;
        }
        let slots = row.try_get::<i64, _>("load_slots")?.max(1) as f64;
        let reported = row.try_get::<i64, _>("load_queued")? as f64;
        let holding = *held.get(&id).unwrap_or(&0) as f64;
        out.push(Candidate {
            device: id,
            peer_id: row.try_get("peer_id")?,
            load: (holding.max(row.try_get::<i64, _>("load_running")? as f64) + reported) / slots,
            trust,
            owner: parse(row.try_get("owner_id")?)?,
        });
    }
    // Equal load and trust: a random order, so idle devices share the work.
    let mut tiebreak = vec![0u8; out.len()];
    getrandom::fill(&mut tiebreak).expect("the OS random number generator works");
    let mut keyed: Vec<(u8, Candidate)> = tiebreak.into_iter().zip(out).collect();
    keyed.sort_by(|(ra, a), (rb, b)| {
        a.load
            .total_cmp(&b.load)
            .then(b.trust.total_cmp(&a.trust))
            .then(ra.cmp(rb))
    });
    let out: Vec<Candidate> = keyed.into_iter().map(|(_, c)| c).collect();
    Ok(out)
}

/// The libp2p peer id of the control plane itself (its signing key is its libp2p identity),
/// which presents the tickets of jobs it dispatches as gateway.
pub fn gateway_peer(state: &AppState) -> String {
    state.key.public_key().peer_id()
}

/// Sign a ticket letting `executor` (with libp2p peer id `executor_peer`) run `job`.
pub fn ticket(
    state: &AppState,
    record: &JobRecord,
    executor: &DeviceId,
    executor_peer: &str,
) -> ApiResult<Signed<JobTicket>> {
    let job = &record.info;
    let ticket = JobTicket {
        job: job.id,
        network: job.network,
        requester: job.requester,
        executor: *executor,
        executor_peer: executor_peer.to_string(),
        requester_peer: record
            .requester_peer
            .clone()
            .unwrap_or_else(|| gateway_peer(state)),
        workload: job.workload,
        input: job.input,
        price: job.price,
        expires_at_ms: now_ms() + state.config.job_lease.as_millis() as i64,
    };
    Signed::sign(&ticket, &state.key, SignDomain::JobTicket, &job.network)
        .map_err(ApiError::internal)
}

/// Read a job (404 when there is none).
pub async fn job_record(state: &AppState, job: &JobId) -> ApiResult<JobRecord> {
    jobs::get(&state.db.pool, job)
        .await?
        .ok_or_else(|| ApiError::not_found("job"))
}

/// Try to assign a queued job to the best candidate. Returns the executor and its peer id, or
/// `None` when no device can take it now (the job stays queued).
pub async fn try_assign(state: &AppState, job: &JobId) -> ApiResult<Option<(DeviceId, String)>> {
    let record = job_record(state, job).await?;
    let row = &record.info;
    let models: Option<String> =
        sqlx::query_scalar("SELECT metadata FROM workloads WHERE network_id = $1 AND hash = $2")
            .bind(row.network.to_string())
            .bind(row.workload.to_string())
            .fetch_optional(&state.db.pool)
            .await?;
    let models: Vec<String> = match models {
        Some(m) => {
            serde_json::from_str::<mesh_proto::WorkloadMetadata>(&m)
                .map_err(ApiError::internal)?
                .models
        }
        None => return Ok(None),
    };
    // Devices that already had a go come last: a busy or unreachable device is retried only
    // when nobody else can take the job.
    // A device never runs its own request (it would have to dial itself).
    let mut candidates: Vec<Candidate> = candidates(state, &row.network, &models)
        .await?
        .into_iter()
        .filter(|c| record.requester_peer.as_deref() != Some(c.peer_id.as_str()))
        .collect();
    // A re-execution goes to another owner's device, the most trusted first.
    if let Some(verifies) = &row.verifies {
        let excluded = jobs::owners_who_ran(&state.db.pool, verifies).await?;
        candidates.retain(|c| !excluded.contains(&c.owner));
        candidates.sort_by(|a, b| b.trust.total_cmp(&a.trust));
    }
    let tried = jobs::tried_devices(&state.db.pool, job).await?;
    candidates.sort_by_key(|c| tried.contains(&c.device));
    let Some(candidate) = candidates.into_iter().next() else {
        return Ok(None);
    };
    let now = now_ms();
    let lease_until = now + state.config.job_lease.as_millis() as i64;
    if jobs::assign(&state.db.pool, job, &candidate.device, lease_until, now).await? {
        state.metrics.assignments.fetch_add(1, Ordering::Relaxed);
        return Ok(Some((candidate.device, candidate.peer_id)));
    }
    // Someone else assigned it meanwhile.
    Ok(None)
}

/// Refund a job's reservation to its requester (once per job).
pub async fn refund(tx: &mut Tx, job: &JobInfo) -> ApiResult<()> {
    if job.price == 0 {
        return Ok(());
    }
    ledger::transfer(
        tx,
        &ledger::Transfer {
            network: job.network,
            idempotency_key: &format!("job:{}:refund", job.id),
            kind: "job_refund",
            memo: "job failed: reservation returned",
            job: Some(job.id),
            from: Account::Escrow,
            to: Account::Person(job.requester),
            amount: job.price,
        },
    )
    .await?;
    Ok(())
}

/// Put a job back in the queue, or fail it (and refund) when it used up its attempts.
/// `expected` lists the states it may be in; returns whether this call changed it.
pub async fn requeue_or_fail(
    state: &AppState,
    job: &JobId,
    expected_executor: Option<&DeviceId>,
    reason: &str,
    retryable: bool,
) -> ApiResult<bool> {
    let row = job_record(state, job).await?.info;
    let now = now_ms();
    let give_up = !retryable || row.attempts >= state.config.max_job_attempts;
    let holder = match expected_executor {
        Some(device) => Holder::Executor(device),
        None => Holder::LeaseExpiredBefore(now),
    };
    let mut tx = state.db.pool.begin().await?;
    let changed = if give_up {
        jobs::fail_held(&mut tx, job, holder, reason, now).await?
    } else {
        jobs::requeue(&mut tx, job, holder, reason, now).await?
    };
    if changed && give_up {
        refund(&mut tx, &row).await?;
    }
    tx.commit().await?;
    Ok(changed)
}

/// Fail a job still waiting in the queue and refund its reservation (the gateway gives up
/// when no device can take it). Returns whether this call failed it.
pub async fn fail_queued(state: &AppState, job: &JobId, reason: &str) -> ApiResult<bool> {
    let row = job_record(state, job).await?.info;
    let mut tx = state.db.pool.begin().await?;
    let changed = jobs::fail_queued(&mut tx, job, reason, now_ms()).await?;
    if changed {
        refund(&mut tx, &row).await?;
    }
    tx.commit().await?;
    Ok(changed)
}

/// One sweep: mark silent devices offline, expire leases, assign queued jobs.
pub async fn sweep(state: &AppState) -> ApiResult<()> {
    let now = now_ms();
    sqlx::query("UPDATE devices SET online = 0 WHERE online = 1 AND (last_seen_at IS NULL OR last_seen_at < $1)")
        .bind(now - state.config.offline_after.as_millis() as i64)
        .execute(&state.db.pool)
        .await?;
    for job in jobs::expired_leases(&state.db.pool, now, 100).await? {
        if requeue_or_fail(state, &job, None, "the executor's lease expired", true).await? {
            state.metrics.expired_leases.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%job, "lease expired");
        }
    }
    for job in jobs::queued(&state.db.pool, 100).await? {
        try_assign(state, &job).await?;
    }
    Ok(())
}

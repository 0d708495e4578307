//! Choosing devices for jobs, and the job state machine's background half.
//!
//! States: queued → assigned → running → done | failed. An assignment is a conditional update
//! (`... WHERE state = 'queued'`), so two control-plane processes can never assign one job
//! twice. An assigned or running job holds a lease; when it expires the job goes back to the
//! queue (or fails after `max_job_attempts`), and its reserved credits are refunded exactly
//! once (idempotency keys per job).

use crate::auth::parse;
use crate::db::now_ms;
use crate::error::{ApiError, ApiResult};
use crate::ledger::{self, Account};
use crate::state::AppState;
use mesh_proto::api::JobTicket;
use mesh_proto::device::Capabilities;
use mesh_proto::{Blake3Hash, DeviceId, JobId, NetworkId, PersonId, SignDomain, Signed};
use sqlx::Row;
use std::collections::HashMap;
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
    pub owner: String,
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
    let held: Vec<(String, i64)> = sqlx::query_as(
        "SELECT executor_id, COUNT(*) FROM jobs WHERE network_id = $1 AND state IN ('assigned', 'running') \
         AND executor_id IS NOT NULL GROUP BY executor_id",
    )
    .bind(network.to_string())
    .fetch_all(&state.db.pool)
    .await?;
    let held: HashMap<String, i64> = held.into_iter().collect();
    let mut out = Vec::new();
    for row in rows {
        let id: String = row.try_get("id")?;
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
            device: parse(id)?,
            peer_id: row.try_get("peer_id")?,
            load: (holding.max(row.try_get::<i64, _>("load_running")? as f64) + reported) / slots,
            trust,
            owner: row.try_get("owner_id")?,
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
    job: &JobRow,
    executor: &DeviceId,
    executor_peer: &str,
) -> ApiResult<Signed<JobTicket>> {
    let ticket = JobTicket {
        job: job.id,
        network: job.network,
        requester: job.requester,
        executor: *executor,
        executor_peer: executor_peer.to_string(),
        requester_peer: job
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

/// The fields of a job the scheduler needs.
#[derive(Debug, Clone)]
pub struct JobRow {
    /// Job id.
    pub id: JobId,
    /// Network.
    pub network: NetworkId,
    /// Requester.
    pub requester: PersonId,
    /// Workload hash.
    pub workload: Blake3Hash,
    /// Input hash.
    pub input: Blake3Hash,
    /// Price.
    pub price: i64,
    /// Attempts so far.
    pub attempts: i64,
    /// The peer that may present the ticket (`None`: the control plane as gateway).
    pub requester_peer: Option<String>,
    /// Devices that already had a go, in order.
    pub tried_devices: Vec<String>,
    /// `job`, or `check` / `tiebreak` for the control plane's re-executions.
    pub purpose: String,
    /// For re-executions: the job re-executed.
    pub verifies: Option<JobId>,
}

/// Read a job's scheduling fields.
pub async fn job_row(state: &AppState, job: &JobId) -> ApiResult<JobRow> {
    let row = sqlx::query(
        "SELECT network_id, requester_id, workload_hash, input_hash, price, attempts, requester_peer, tried_devices, \
         purpose, verifies \
         FROM jobs WHERE id = $1",
    )
        .bind(job.to_string())
        .fetch_one(&state.db.pool)
        .await?;
    Ok(JobRow {
        id: *job,
        network: parse(row.try_get("network_id")?)?,
        requester: parse(row.try_get("requester_id")?)?,
        workload: parse(row.try_get("workload_hash")?)?,
        input: parse(row.try_get("input_hash")?)?,
        price: row.try_get("price")?,
        attempts: row.try_get("attempts")?,
        requester_peer: row.try_get("requester_peer")?,
        tried_devices: row
            .try_get::<String, _>("tried_devices")?
            .split(',')
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect(),
        purpose: row.try_get("purpose")?,
        verifies: row
            .try_get::<Option<String>, _>("verifies")?
            .map(parse)
            .transpose()?,
    })
}

/// Try to assign a queued job to the best candidate. Returns the executor and its peer id, or
/// `None` when no device can take it now (the job stays queued).
pub async fn try_assign(state: &AppState, job: &JobId) -> ApiResult<Option<(DeviceId, String)>> {
    let row = job_row(state, job).await?;
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
        .filter(|c| row.requester_peer.as_deref() != Some(c.peer_id.as_str()))
        .collect();
    // A re-execution goes to another owner's device, the most trusted first.
    if let Some(verifies) = &row.verifies {
        let excluded = crate::checks::excluded_owners(state, verifies).await?;
        candidates.retain(|c| !excluded.contains(&c.owner));
        candidates.sort_by(|a, b| b.trust.total_cmp(&a.trust));
    }
    candidates.sort_by_key(|c| row.tried_devices.contains(&c.device.to_string()));
    let Some(candidate) = candidates.into_iter().next() else {
        return Ok(None);
    };
    {
        let now = now_ms();
        let assigned = sqlx::query(
            "UPDATE jobs SET state = 'assigned', executor_id = $1, lease_expires_at = $2, attempts = attempts + 1, \
             updated_at = $3 WHERE id = $4 AND state = 'queued'",
        )
        .bind(candidate.device.to_string())
        .bind(now + state.config.job_lease.as_millis() as i64)
        .bind(now)
        .bind(job.to_string())
        .execute(&state.db.pool)
        .await?
        .rows_affected();
        if assigned == 1 {
            state.metrics.assignments.fetch_add(1, Ordering::Relaxed);
            return Ok(Some((candidate.device, candidate.peer_id)));
        }
    }
    // Someone else assigned it meanwhile.
    Ok(None)
}

/// Refund a job's reservation to its requester (once per job).
pub async fn refund(tx: &mut sqlx::Transaction<'static, sqlx::Any>, job: &JobRow) -> ApiResult<()> {
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
    let row = job_row(state, job).await?;
    let now = now_ms();
    let give_up = !retryable || row.attempts >= i64::from(state.config.max_job_attempts);
    let executor_clause = match expected_executor {
        Some(_) => "AND executor_id = $4",
        None => "AND lease_expires_at < $4",
    };
    let mut tx = state.db.pool.begin().await?;
    let sql = if give_up {
        format!(
            "UPDATE jobs SET state = 'failed', error = $1, lease_expires_at = NULL, updated_at = $2 \
             WHERE id = $3 AND state IN ('assigned', 'running') {executor_clause}"
        )
    } else {
        format!(
            "UPDATE jobs SET state = 'queued', tried_devices = tried_devices || COALESCE(executor_id, '') || ',', \
             executor_id = NULL, error = $1, lease_expires_at = NULL, updated_at = $2 \
             WHERE id = $3 AND state IN ('assigned', 'running') {executor_clause}"
        )
    };
    let query = sqlx::query(&sql)
        .bind(reason)
        .bind(now)
        .bind(job.to_string());
    let query = match expected_executor {
        Some(device) => query.bind(device.to_string()),
        None => query.bind(now),
    };
    let changed = query.execute(&mut *tx).await?.rows_affected() == 1;
    if changed && give_up {
        refund(&mut tx, &row).await?;
    }
    tx.commit().await?;
    Ok(changed)
}

/// Fail a job still waiting in the queue and refund its reservation (the gateway gives up
/// when no device can take it). Returns whether this call failed it.
pub async fn fail_queued(state: &AppState, job: &JobId, reason: &str) -> ApiResult<bool> {
    let row = job_row(state, job).await?;
    let mut tx = state.db.pool.begin().await?;
    let changed = sqlx::query(
        "UPDATE jobs SET state = 'failed', error = $1, updated_at = $2 WHERE id = $3 AND state = 'queued'",
    )
    .bind(reason)
    .bind(now_ms())
    .bind(job.to_string())
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
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
    let expired: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE state IN ('assigned', 'running') AND lease_expires_at < $1 ORDER BY lease_expires_at LIMIT 100",
    )
    .bind(now)
    .fetch_all(&state.db.pool)
    .await?;
    for id in expired {
        let job: JobId = parse(id)?;
        if requeue_or_fail(state, &job, None, "the executor's lease expired", true).await? {
            state.metrics.expired_leases.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%job, "lease expired");
        }
    }
    let queued: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at LIMIT 100",
    )
    .fetch_all(&state.db.pool)
    .await?;
    for id in queued {
        try_assign(state, &parse(id)?).await?;
    }
    Ok(())
}

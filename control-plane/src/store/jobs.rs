//! The `jobs` table and its child `job_tries`: the only code that reads or writes them.
//!
//! Every state change is one conditional update (`… WHERE state IN (…)`), so two processes
//! sharing the database never move one job twice; each returns whether it changed the row.
//! States and purposes are typed ([`JobState`], [`JobPurpose`]); their text form is theirs.

use super::{StoreError, Tx, parse_all, parse_column};
use mesh_proto::api::{JobInfo, JobPurpose, JobState};
use mesh_proto::{Blake3Hash, DeviceId, JobId, NetworkId, PersonId, RunReceipt};
use sqlx::Row;
use sqlx::any::AnyRow;
use std::collections::HashMap;

/// Columns of a [`JobRecord`], in the order [`record`] reads them.
const COLUMNS: &str = "id, network_id, requester_id, workload_hash, input_hash, input_size, price, state, \
     executor_id, attempts, lease_expires_at, receipt, error, created_at, updated_at, purpose, verifies, \
     requester_peer, idempotency_key, only_device";

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    /// What the API shows of it.
    pub info: JobInfo,
    /// The libp2p peer that may present its ticket (`None`: the control plane as gateway).
    pub requester_peer: Option<String>,
    /// The requester's idempotency key.
    pub idempotency_key: String,
    /// The only device that may run it (a batch's run, sized for that device).
    pub only_device: Option<DeviceId>,
}

/// A job to create, queued.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    /// Its id.
    pub id: JobId,
    /// Its network.
    pub network: NetworkId,
    /// Who pays for it.
    pub requester: PersonId,
    /// The workload's component hash.
    pub workload: Blake3Hash,
    /// The input's hash.
    pub input: Blake3Hash,
    /// The input's size in bytes.
    pub input_size: u64,
    /// Credits it costs.
    pub price: i64,
    /// The requester's idempotency key (unique per network and requester).
    pub idempotency_key: &'a str,
    /// The peer that may present its ticket (`None`: the control plane as gateway).
    pub requester_peer: Option<&'a str>,
    /// A requester's job, or a re-execution.
    pub purpose: JobPurpose,
    /// For a re-execution: the job it re-executes.
    pub verifies: Option<JobId>,
    /// Devices to try only when nobody else can take it, as if they had had a go.
    pub avoid: &'a [DeviceId],
    /// The only device that may run it.
    pub only_device: Option<DeviceId>,
}

/// Which holder a change of an assigned or running job expects.
#[derive(Debug, Clone, Copy)]
pub enum Holder<'a> {
    /// The job's executor must be this device.
    Executor(&'a DeviceId),
    /// The job's lease must have expired before this time (ms).
    LeaseExpiredBefore(i64),
}

fn record(row: &AnyRow) -> Result<JobRecord, StoreError> {
    let text = |column: &'static str| -> Result<String, StoreError> { Ok(row.try_get(column)?) };
    let opt =
        |column: &'static str| -> Result<Option<String>, StoreError> { Ok(row.try_get(column)?) };
    let state = text("state")?;
    let purpose = text("purpose")?;
    let receipt = opt("receipt")?
        .map(|r| {
            serde_json::from_str::<RunReceipt>(&r).map_err(|_| StoreError::Corrupt {
                column: "jobs.receipt",
                value: r.chars().take(100).collect(),
            })
        })
        .transpose()?;
    let info = JobInfo {
        id: parse_column("jobs.id", &text("id")?)?,
        purpose: JobPurpose::parse(&purpose).ok_or(StoreError::Corrupt {
            column: "jobs.purpose",
            value: purpose,
        })?,
        verifies: opt("verifies")?
            .map(|v| parse_column("jobs.verifies", &v))
            .transpose()?,
        network: parse_column("jobs.network_id", &text("network_id")?)?,
        requester: parse_column("jobs.requester_id", &text("requester_id")?)?,
        workload: parse_column("jobs.workload_hash", &text("workload_hash")?)?,
        input: parse_column("jobs.input_hash", &text("input_hash")?)?,
        input_size: row.try_get::<i64, _>("input_size")?.max(0) as u64,
        price: row.try_get("price")?,
        state: JobState::parse(&state).ok_or(StoreError::Corrupt {
            column: "jobs.state",
            value: state,
        })?,
        executor: opt("executor_id")?
            .map(|e| parse_column("jobs.executor_id", &e))
            .transpose()?,
        attempts: row.try_get::<i64, _>("attempts")?.max(0) as u32,
        lease_expires_at_ms: row.try_get("lease_expires_at")?,
        receipt,
        error: opt("error")?,
        created_at_ms: row.try_get("created_at")?,
        updated_at_ms: row.try_get("updated_at")?,
    };
    Ok(JobRecord {
        info,
        requester_peer: opt("requester_peer")?,
        idempotency_key: text("idempotency_key")?,
        only_device: opt("only_device")?
            .map(|d| parse_column("jobs.only_device", &d))
            .transpose()?,
    })
}

/// Create a queued job (and its avoided devices as tries). A second job with the same
/// network, requester and idempotency key is [`StoreError::Duplicate`].
pub async fn insert(tx: &mut Tx, job: &NewJob<'_>, now: i64) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO jobs (id, network_id, requester_id, workload_hash, input_hash, input_size, price, state, \
         idempotency_key, requester_peer, purpose, verifies, only_device, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14)",
    )
    .bind(job.id.to_string())
    .bind(job.network.to_string())
    .bind(job.requester.to_string())
    .bind(job.workload.to_string())
    .bind(job.input.to_string())
    .bind(job.input_size as i64)
    .bind(job.price)
    .bind(JobState::Queued.as_str())
    .bind(job.idempotency_key)
    .bind(job.requester_peer)
    .bind(job.purpose.as_str())
    .bind(job.verifies.map(|v| v.to_string()))
    .bind(job.only_device.map(|d| d.to_string()))
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Duplicate("a job with this idempotency key")
        }
        _ => StoreError::Database(e),
    })?;
    for device in job.avoid {
        add_try(&mut **tx, &job.id, device, now).await?;
    }
    Ok(())
}

async fn add_try(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    job: &JobId,
    device: &DeviceId,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO job_tries (job_id, device_id, tried_at) VALUES ($1, $2, $3) \
         ON CONFLICT (job_id, device_id) DO NOTHING",
    )
    .bind(job.to_string())
    .bind(device.to_string())
    .bind(now)
    .execute(db)
    .await?;
    Ok(())
}

/// The job with this id.
pub async fn get(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    job: &JobId,
) -> Result<Option<JobRecord>, StoreError> {
    sqlx::query(&format!("SELECT {COLUMNS} FROM jobs WHERE id = $1"))
        .bind(job.to_string())
        .fetch_optional(db)
        .await?
        .as_ref()
        .map(record)
        .transpose()
}

/// The job `requester` created in `network` with idempotency key `key`.
pub async fn find_by_key(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    network: &NetworkId,
    requester: &PersonId,
    key: &str,
) -> Result<Option<JobId>, StoreError> {
    let id: Option<String> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE network_id = $1 AND requester_id = $2 AND idempotency_key = $3",
    )
    .bind(network.to_string())
    .bind(requester.to_string())
    .bind(key)
    .fetch_optional(db)
    .await?;
    id.map(|id| parse_column("jobs.id", &id)).transpose()
}

/// The newest `limit` jobs of `network`.
pub async fn list(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    network: &NetworkId,
    limit: i64,
) -> Result<Vec<JobRecord>, StoreError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM jobs WHERE network_id = $1 ORDER BY created_at DESC, id LIMIT $2"
    ))
    .bind(network.to_string())
    .bind(limit)
    .fetch_all(db)
    .await?
    .iter()
    .map(record)
    .collect()
}

/// Devices that already had a go at `job` (or were to be avoided from the start).
pub async fn tried_devices(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    job: &JobId,
) -> Result<Vec<DeviceId>, StoreError> {
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT device_id FROM job_tries WHERE job_id = $1 ORDER BY tried_at")
            .bind(job.to_string())
            .fetch_all(db)
            .await?;
    ids.iter()
        .map(|d| parse_column("job_tries.device_id", d))
        .collect()
}

/// Queued → assigned to `executor` until `lease_until`, counting an attempt.
pub async fn assign(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    job: &JobId,
    executor: &DeviceId,
    lease_until: i64,
    now: i64,
) -> Result<bool, StoreError> {
    let changed = sqlx::query(
        "UPDATE jobs SET state = 'assigned', executor_id = $1, lease_expires_at = $2, attempts = attempts + 1, \
         updated_at = $3 WHERE id = $4 AND state = 'queued'",
    )
    .bind(executor.to_string())
    .bind(lease_until)
    .bind(now)
    .bind(job.to_string())
    .execute(db)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// Assigned or running → running, its lease renewed to `lease_until`, when `executor` holds it.
pub async fn mark_running(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    job: &JobId,
    executor: &DeviceId,
    lease_until: i64,
    now: i64,
) -> Result<bool, StoreError> {
    let changed = sqlx::query(
        "UPDATE jobs SET state = 'running', lease_expires_at = $1, updated_at = $2 \
         WHERE id = $3 AND executor_id = $4 AND state IN ('assigned', 'running')",
    )
    .bind(lease_until)
    .bind(now)
    .bind(job.to_string())
    .bind(executor.to_string())
    .execute(db)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// Assigned or running → done with `receipt`, when `executor` holds it.
pub async fn settle(
    tx: &mut Tx,
    job: &JobId,
    executor: &DeviceId,
    receipt: &RunReceipt,
    now: i64,
) -> Result<bool, StoreError> {
    let stored = serde_json::to_string(receipt).expect("a receipt serialises");
    let changed = sqlx::query(
        "UPDATE jobs SET state = 'done', receipt = $1, lease_expires_at = NULL, error = NULL, updated_at = $2 \
         WHERE id = $3 AND executor_id = $4 AND state IN ('assigned', 'running')",
    )
    .bind(&stored)
    .bind(now)
    .bind(job.to_string())
    .bind(executor.to_string())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// Assigned or running → queued again (its executor recorded as tried), when `holder` holds
/// it.
pub async fn requeue(
    tx: &mut Tx,
    job: &JobId,
    holder: Holder<'_>,
    reason: &str,
    now: i64,
) -> Result<bool, StoreError> {
    // The try is recorded under the same condition first: the update clears the executor.
    // (Should another process move the job in between, the try still names a device that
    // held it, which is all a try says.)
    let sql = format!(
        "INSERT INTO job_tries (job_id, device_id, tried_at)          SELECT id, executor_id, $2 FROM jobs WHERE id = $1 AND executor_id IS NOT NULL          AND state IN ('assigned', 'running') {} ON CONFLICT (job_id, device_id) DO NOTHING",
        holder_clause(holder, 3)
    );
    let record_try = sqlx::query(&sql).bind(job.to_string()).bind(now);
    bind_holder(record_try, holder).execute(&mut **tx).await?;
    let sql = format!(
        "UPDATE jobs SET state = 'queued', executor_id = NULL, error = $1, lease_expires_at = NULL, \
         updated_at = $2 WHERE id = $3 AND state IN ('assigned', 'running') {}",
        holder_clause(holder, 4)
    );
    let update = sqlx::query(&sql)
        .bind(reason)
        .bind(now)
        .bind(job.to_string());
    let changed = bind_holder(update, holder)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    Ok(changed == 1)
}

/// Assigned or running → failed with `reason`, when `holder` holds it.
pub async fn fail_held(
    tx: &mut Tx,
    job: &JobId,
    holder: Holder<'_>,
    reason: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let sql = format!(
        "UPDATE jobs SET state = 'failed', error = $1, lease_expires_at = NULL, updated_at = $2 \
         WHERE id = $3 AND state IN ('assigned', 'running') {}",
        holder_clause(holder, 4)
    );
    let update = sqlx::query(&sql)
        .bind(reason)
        .bind(now)
        .bind(job.to_string());
    let changed = bind_holder(update, holder)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    Ok(changed == 1)
}

/// The condition `holder` puts on a job, as parameter `$n`.
fn holder_clause(holder: Holder<'_>, n: usize) -> String {
    match holder {
        Holder::Executor(_) => format!("AND executor_id = ${n}"),
        Holder::LeaseExpiredBefore(_) => format!("AND lease_expires_at < ${n}"),
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Bind the value of [`holder_clause`]'s parameter, typed as its column is.
fn bind_holder<'q>(query: AnyQuery<'q>, holder: Holder<'_>) -> AnyQuery<'q> {
    match holder {
        Holder::Executor(device) => query.bind(device.to_string()),
        Holder::LeaseExpiredBefore(t) => query.bind(t),
    }
}

/// An assigned or running job gets no further attempt: when its lease expires without a
/// receipt it fails (the sweeper's rule for a job that used up its attempts). Returns whether
/// the job was assigned or running.
pub async fn no_more_attempts(
    db: &sqlx::AnyPool,
    job: &JobId,
    max_attempts: u32,
    now: i64,
) -> Result<bool, StoreError> {
    let changed = sqlx::query(
        "UPDATE jobs SET attempts = CASE WHEN attempts < $1 THEN $1 ELSE attempts END, updated_at = $2 \
         WHERE id = $3 AND state IN ('assigned', 'running')",
    )
    .bind(i64::from(max_attempts))
    .bind(now)
    .bind(job.to_string())
    .execute(db)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// Queued → failed with `reason` (nobody could take it).
pub async fn fail_queued(
    tx: &mut Tx,
    job: &JobId,
    reason: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let changed = sqlx::query(
        "UPDATE jobs SET state = 'failed', error = $1, updated_at = $2 WHERE id = $3 AND state = 'queued'",
    )
    .bind(reason)
    .bind(now)
    .bind(job.to_string())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// Failed → queued afresh (attempts reset): a re-execution that found no device is retried.
pub async fn restart_failed(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    job: &JobId,
    now: i64,
) -> Result<bool, StoreError> {
    let changed = sqlx::query(
        "UPDATE jobs SET state = 'queued', executor_id = NULL, attempts = 0, error = NULL, updated_at = $1 \
         WHERE id = $2 AND state = 'failed'",
    )
    .bind(now)
    .bind(job.to_string())
    .execute(db)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// The gateway mixed ringers into an assigned job's input: its input hash and size change
/// before the executor sees it.
pub async fn replace_input(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    job: &JobId,
    executor: &DeviceId,
    input: &Blake3Hash,
    input_size: u64,
) -> Result<bool, StoreError> {
    let changed = sqlx::query(
        "UPDATE jobs SET input_hash = $1, input_size = $2 WHERE id = $3 AND state = 'assigned' AND executor_id = $4",
    )
    .bind(input.to_string())
    .bind(input_size as i64)
    .bind(job.to_string())
    .bind(executor.to_string())
    .execute(db)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// Assigned or running jobs whose lease expired before `now`, oldest first.
pub async fn expired_leases(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    now: i64,
    limit: i64,
) -> Result<Vec<JobId>, StoreError> {
    ids(sqlx::query_scalar(
        "SELECT id FROM jobs WHERE state IN ('assigned', 'running') AND lease_expires_at < $1 \
         ORDER BY lease_expires_at LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// Queued jobs, oldest first.
pub async fn queued(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    limit: i64,
) -> Result<Vec<JobId>, StoreError> {
    ids(sqlx::query_scalar(
        "SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db)
    .await?)
}

fn ids(rows: Vec<String>) -> Result<Vec<JobId>, StoreError> {
    parse_all("jobs.id", &rows)
}

/// How many assigned or running jobs each device of `network` holds.
pub async fn held_per_executor(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    network: &NetworkId,
) -> Result<HashMap<DeviceId, i64>, StoreError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT executor_id, COUNT(*) FROM jobs WHERE network_id = $1 AND state IN ('assigned', 'running') \
         AND executor_id IS NOT NULL GROUP BY executor_id",
    )
    .bind(network.to_string())
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|(d, n)| Ok((parse_column("jobs.executor_id", &d)?, n)))
        .collect()
}

/// The people who may not judge `job`: its requester (who would gain a clawback) and the
/// owners of the devices that ran it or finished a re-execution of it.
pub async fn may_not_judge(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    job: &JobId,
) -> Result<Vec<PersonId>, StoreError> {
    let owners: Vec<String> = sqlx::query_scalar(
        "SELECT d.owner_id FROM jobs j JOIN devices d ON d.id = j.executor_id \
         WHERE (j.id = $1 OR (j.verifies = $1 AND j.state = 'done')) \
         UNION SELECT requester_id FROM jobs WHERE id = $1",
    )
    .bind(job.to_string())
    .fetch_all(db)
    .await?;
    owners
        .iter()
        .map(|o| parse_column("devices.owner_id", o))
        .collect()
}

/// Jobs by state, for `/metrics`.
pub async fn count_by_state(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
) -> Result<Vec<(JobState, i64)>, StoreError> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, COUNT(*) FROM jobs GROUP BY state")
            .fetch_all(db)
            .await?;
    rows.into_iter()
        .map(|(state, n)| {
            JobState::parse(&state)
                .map(|s| (s, n))
                .ok_or(StoreError::Corrupt {
                    column: "jobs.state",
                    value: state,
                })
        })
        .collect()
}

//! `checks` (the VRF decision of every settled job and where its re-execution stands),
//! `check_verdicts` (one per job and device) and `job_payloads` (inputs and outputs of checked
//! jobs, by job and BLAKE3): the only code that reads or writes them.
//!
//! A check moves `selected → running → passed | failed | disputed`, `disputed → running →
//! passed | failed | inconclusive`, or to `unverifiable` when it cannot conclude in time; each
//! move is one conditional update on the state it expects.

use super::{StoreError, Tx, parse_all, parse_column};
use mesh_proto::api::{CheckReason, CheckState};
use mesh_proto::verification::Selection;
use mesh_proto::{Blake3Hash, DeviceId, JobId, NetworkId};
use sqlx::Row;

/// A check as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCheck {
    /// The job checked.
    pub job: JobId,
    /// Its network.
    pub network: NetworkId,
    /// The device whose result is checked.
    pub executor: DeviceId,
    /// The VRF decision with its proof.
    pub selection: Selection,
    /// Where it stands.
    pub state: CheckState,
    /// Why it is checked.
    pub reason: CheckReason,
    /// The first re-execution.
    pub check_job: Option<JobId>,
    /// Its output, once it disagreed.
    pub check_output: Option<Blake3Hash>,
    /// The tie-break.
    pub tiebreak_job: Option<JobId>,
    /// The verified output, when the executor's was wrong.
    pub verified_output: Option<Blake3Hash>,
    /// What happened, in words.
    pub detail: Option<String>,
}

fn corrupt(column: &'static str, value: String) -> StoreError {
    StoreError::Corrupt { column, value }
}

/// Record the VRF decision for `job` (once: a later call keeps the first).
pub async fn insert_decision(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    job: &JobId,
    network: &NetworkId,
    executor: &DeviceId,
    selection: &Selection,
    now: i64,
) -> Result<(), StoreError> {
    let state = if selection.selected {
        CheckState::Selected
    } else {
        CheckState::NotSelected
    };
    sqlx::query(
        "INSERT INTO checks (job_id, network_id, executor_id, rate_ppm, receipt_hash, proof, vrf_output, selected, \
         state, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) \
         ON CONFLICT (job_id) DO NOTHING",
    )
    .bind(job.to_string())
    .bind(network.to_string())
    .bind(executor.to_string())
    .bind(i64::from(selection.rate_ppm))
    .bind(selection.receipt_hash.to_string())
    .bind(selection.proof.to_string())
    .bind(selection.output.to_string())
    .bind(i64::from(selection.selected))
    .bind(state.as_str())
    .bind(now)
    .execute(db)
    .await?;
    Ok(())
}

/// The check of `job`, if it settled.
pub async fn get(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    job: &JobId,
) -> Result<Option<StoredCheck>, StoreError> {
    let row = sqlx::query(
        "SELECT job_id, network_id, executor_id, rate_ppm, receipt_hash, proof, vrf_output, selected, state, \
         reason, check_job, check_output, tiebreak_job, verified_output, detail FROM checks WHERE job_id = $1",
    )
    .bind(job.to_string())
    .fetch_optional(db)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let text = |column: &'static str| -> Result<String, StoreError> { Ok(row.try_get(column)?) };
    let opt =
        |column: &'static str| -> Result<Option<String>, StoreError> { Ok(row.try_get(column)?) };
    let state = text("state")?;
    let reason = text("reason")?;
    let proof = text("proof")?;
    let output = text("vrf_output")?;
    Ok(Some(StoredCheck {
        job: parse_column("checks.job_id", &text("job_id")?)?,
        network: parse_column("checks.network_id", &text("network_id")?)?,
        executor: parse_column("checks.executor_id", &text("executor_id")?)?,
        selection: Selection {
            rate_ppm: row
                .try_get::<i64, _>("rate_ppm")?
                .clamp(0, i64::from(u32::MAX)) as u32,
            receipt_hash: parse_column("checks.receipt_hash", &text("receipt_hash")?)?,
            proof: proof.parse().map_err(|_| corrupt("checks.proof", proof))?,
            output: output
                .parse()
                .map_err(|_| corrupt("checks.vrf_output", output))?,
            selected: row.try_get::<i64, _>("selected")? == 1,
        },
        state: CheckState::parse(&state).ok_or_else(|| corrupt("checks.state", state))?,
        reason: CheckReason::parse(&reason).ok_or_else(|| corrupt("checks.reason", reason))?,
        check_job: opt("check_job")?
            .map(|j| parse_column("checks.check_job", &j))
            .transpose()?,
        check_output: opt("check_output")?
            .map(|h| parse_column("checks.check_output", &h))
            .transpose()?,
        tiebreak_job: opt("tiebreak_job")?
            .map(|j| parse_column("checks.tiebreak_job", &j))
            .transpose()?,
        verified_output: opt("verified_output")?
            .map(|h| parse_column("checks.verified_output", &h))
            .transpose()?,
        detail: opt("detail")?,
    }))
}

/// Store a payload of `job` (a no-op when it is there); returns its hash.
pub async fn insert_payload(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    job: &JobId,
    bytes: &[u8],
    now: i64,
) -> Result<Blake3Hash, StoreError> {
    let hash = Blake3Hash::of(bytes);
    sqlx::query(
        "INSERT INTO job_payloads (job_id, hash, bytes, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (job_id, hash) DO NOTHING",
    )
    .bind(job.to_string())
    .bind(hash.to_string())
    .bind(bytes)
    .bind(now)
    .execute(db)
    .await?;
    Ok(hash)
}

/// The payload of `job` with this hash: only what was stored for that job.
pub async fn payload(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    job: &JobId,
    hash: &Blake3Hash,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT bytes FROM job_payloads WHERE job_id = $1 AND hash = $2")
            .bind(job.to_string())
            .bind(hash.to_string())
            .fetch_optional(db)
            .await?,
    )
}

/// Whether `job` has a payload with this hash.
pub async fn has_payload(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    job: &JobId,
    hash: &Blake3Hash,
) -> Result<bool, StoreError> {
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM job_payloads WHERE job_id = $1 AND hash = $2")
            .bind(job.to_string())
            .bind(hash.to_string())
            .fetch_one(db)
            .await?;
    Ok(n > 0)
}

/// Bytes of payload stored for the jobs of `network`.
pub async fn payload_bytes_in(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    network: &NetworkId,
) -> Result<u64, StoreError> {
    let n: Option<i64> = sqlx::query_scalar(
        "SELECT CAST(SUM(LENGTH(p.bytes)) AS BIGINT) FROM job_payloads p JOIN jobs j ON j.id = p.job_id \
         WHERE j.network_id = $1",
    )
    .bind(network.to_string())
    .fetch_one(db)
    .await?;
    Ok(n.unwrap_or(0).max(0) as u64)
}

/// Delete the payloads of jobs whose check concluded before `before`; returns how many.
pub async fn delete_concluded_payloads(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    before: i64,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "DELETE FROM job_payloads WHERE job_id IN (SELECT job_id FROM checks \
         WHERE state NOT IN ('selected', 'running', 'disputed') AND updated_at < $1)",
    )
    .bind(before)
    .execute(db)
    .await?
    .rows_affected())
}

/// Record that `device` passed or failed the check of `job`; returns whether this is the first
/// verdict on it for that job.
pub async fn insert_verdict(
    tx: &mut Tx,
    job: &JobId,
    device: &DeviceId,
    passed: bool,
    reason: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO check_verdicts (job_id, device_id, passed, reason, created_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (job_id, device_id) DO NOTHING",
    )
    .bind(job.to_string())
    .bind(device.to_string())
    .bind(i64::from(passed))
    .bind(reason)
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// A ringer in `job` came back wrong: its check failed for that reason.
pub async fn fail_by_ringer(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    job: &JobId,
    detail: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE checks SET state = $1, reason = $2, detail = $3, updated_at = $4 WHERE job_id = $5",
    )
    .bind(CheckState::Failed.as_str())
    .bind(CheckReason::Ringer.as_str())
    .bind(detail)
    .bind(now)
    .bind(job.to_string())
    .execute(db)
    .await?;
    Ok(())
}

/// Running checks (the worker stopped in the middle) go back to where they were taken from.
pub async fn resume_running(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE checks SET state = CASE WHEN check_output IS NULL THEN 'selected' ELSE 'disputed' END \
         WHERE state = 'running'",
    )
    .execute(db)
    .await?
    .rows_affected())
}

/// Checks selected before `before` whose job input never arrived.
pub async fn waiting_for_payload_since(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    before: i64,
) -> Result<Vec<JobId>, StoreError> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT job_id FROM checks WHERE state = 'selected' AND created_at < $1 AND NOT EXISTS \
         (SELECT 1 FROM job_payloads p, jobs j WHERE j.id = checks.job_id AND p.job_id = j.id \
         AND p.hash = j.input_hash)",
    )
    .bind(before)
    .fetch_all(db)
    .await?;
    parse_all("checks.job_id", &ids)
}

/// Checks created before `before` that are still waiting to run.
pub async fn waiting_since(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    before: i64,
) -> Result<Vec<JobId>, StoreError> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT job_id FROM checks WHERE state IN ('selected', 'disputed') AND created_at < $1",
    )
    .bind(before)
    .fetch_all(db)
    .await?;
    parse_all("checks.job_id", &ids)
}

/// Up to `limit` selected or disputed checks due at `now`, the longest waiting first.
pub async fn due(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    now: i64,
    limit: i64,
) -> Result<Vec<JobId>, StoreError> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT job_id FROM checks WHERE state IN ('selected', 'disputed') AND next_attempt_at <= $1 \
         ORDER BY next_attempt_at LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(db)
    .await?;
    parse_all("checks.job_id", &ids)
}

/// How often the check of `job` was postponed.
pub async fn attempts(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    job: &JobId,
) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT attempts FROM checks WHERE job_id = $1")
            .bind(job.to_string())
            .fetch_one(db)
            .await?,
    )
}

/// Put the check of `job` off until `next_at` (back where it was taken from when running),
/// saying why.
pub async fn postpone(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    job: &JobId,
    next_at: i64,
    detail: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE checks SET state = CASE WHEN state = 'running' THEN \
         (CASE WHEN check_output IS NULL THEN 'selected' ELSE 'disputed' END) ELSE state END, \
         attempts = attempts + 1, next_attempt_at = $1, detail = $2, updated_at = $3 \
         WHERE job_id = $4 AND state IN ('running', 'selected', 'disputed')",
    )
    .bind(next_at)
    .bind(detail)
    .bind(now)
    .bind(job.to_string())
    .execute(db)
    .await?;
    Ok(())
}

/// `from` → running: this worker takes the check of `job`. Returns whether it got it.
pub async fn take(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    job: &JobId,
    from: CheckState,
    now: i64,
) -> Result<bool, StoreError> {
    let changed = sqlx::query(
        "UPDATE checks SET state = 'running', updated_at = $1 WHERE job_id = $2 AND state = $3",
    )
    .bind(now)
    .bind(job.to_string())
    .bind(from.as_str())
    .execute(db)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// Which re-execution of a check a job is.
#[derive(Debug, Clone, Copy)]
pub enum Reexecution {
    /// The first re-execution.
    Check,
    /// The tie-break.
    Tiebreak,
}

/// Record the job that re-executes `job` in `round`.
pub async fn set_round_job(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    job: &JobId,
    round: Reexecution,
    reexecution: &JobId,
) -> Result<(), StoreError> {
    let column = match round {
        Reexecution::Check => "check_job",
        Reexecution::Tiebreak => "tiebreak_job",
    };
    sqlx::query(&format!(
        "UPDATE checks SET {column} = $1 WHERE job_id = $2"
    ))
    .bind(reexecution.to_string())
    .bind(job.to_string())
    .execute(db)
    .await?;
    Ok(())
}

/// Running → disputed: the first re-execution disagreed with output `check_output`.
pub async fn dispute(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    job: &JobId,
    check_output: &Blake3Hash,
    detail: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let changed = sqlx::query(
        "UPDATE checks SET state = 'disputed', check_output = $1, detail = $2, updated_at = $3 \
         WHERE job_id = $4 AND state = 'running'",
    )
    .bind(check_output.to_string())
    .bind(detail)
    .bind(now)
    .bind(job.to_string())
    .execute(db)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// The check of `job`, when in one of the states `from`, ends in `outcome`. Returns whether
/// it did.
pub async fn finish(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    job: &JobId,
    from: &[CheckState],
    outcome: CheckState,
    verified_output: Option<&Blake3Hash>,
    detail: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let states = from
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    let changed = sqlx::query(&format!(
        "UPDATE checks SET state = $1, verified_output = $2, detail = $3, updated_at = $4 \
         WHERE job_id = $5 AND state IN ({states})"
    ))
    .bind(outcome.as_str())
    .bind(verified_output.map(|h| h.to_string()))
    .bind(detail)
    .bind(now)
    .bind(job.to_string())
    .execute(db)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

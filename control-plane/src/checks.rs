//! Verification by VRF-chosen re-execution: selection, re-execution, comparison, trust,
//! quarantine, clawbacks and the verifiers' pay.
//!
//! When a job settles, [`select`] evaluates the control plane's VRF on the receipt and
//! records the decision and its proof (`checks` table), so anyone can re-check it
//! ([`mesh_proto::verification::Selection::verify`]). A selected job waits for its payload (the
//! gateway stores input and output itself; a device requester uploads them by hash), then the
//! worker ([`run`]) re-executes it as a `check` job on a device of another owner, preferring
//! high trust, and compares the outputs by the workload's declared rule. When they disagree a
//! third device (a third owner) runs a `tiebreak` job and the majority decides.
//!
//! Every verdict is recorded once per (job, device) ([`record_verdict`]): a pass raises the
//! device's trust, a failure resets it, claws the job's credits back from the executor's owner
//! to the requester (a ledger transfer, never an edit) and, after
//! [`CheckPolicy::quarantine_after`](mesh_proto::verification::CheckPolicy) failures,
//! quarantines the device (no more jobs; audit log entry for the admins). Verifiers are paid
//! the job's price from the network's issuer account. Every state change is a conditional
//! update and every transfer has an idempotency key, so the worker may crash and restart
//! anywhere.

use crate::api::jobs::find_job;
use crate::auth::parse;
use crate::error::{ApiError, ApiResult};
use crate::ledger::{self, Account};
use crate::state::AppState;
use crate::store::jobs::{self, NewJob};
use crate::store::{now_ms, random_id};
use mesh_proto::api::{CheckInfo, CheckReason, CheckState, JobInfo, JobPurpose};
use mesh_proto::verification::{
    CheckRecord, Selection, is_selected, receipt_hash, selection_input,
};
use mesh_proto::{Blake3Hash, Comparison, DeviceId, JobId, NetworkId, PersonId, RunReceipt};
use sqlx::Row;
use std::time::Duration;

/// How long a selected job waits for its payload before it is given up as unverifiable.
const PAYLOAD_WAIT: Duration = Duration::from_secs(600);
/// How long a check may take in all (waiting for a device of another owner included) before
/// it is given up as unverifiable.
const CHECK_DEADLINE: Duration = Duration::from_secs(1800);
/// Longest pause between two attempts at a check.
const MAX_BACKOFF_MS: i64 = 60_000;

/// The check record of `device`.
pub async fn device_record(state: &AppState, device: &DeviceId) -> ApiResult<CheckRecord> {
    let row = sqlx::query(
        "SELECT checks_passed, checks_failed, consecutive_passed FROM devices WHERE id = $1",
    )
    .bind(device.to_string())
    .fetch_one(&state.db.pool)
    .await?;
    Ok(CheckRecord {
        passed: row.try_get::<i64, _>("checks_passed")? as u32,
        failed: row.try_get::<i64, _>("checks_failed")? as u32,
        consecutive_passed: row.try_get::<i64, _>("consecutive_passed")? as u32,
    })
}

/// Decide by VRF whether the just-settled job `info`, run by `executor` with `receipt`, is
/// re-executed, and record the decision with its proof. Runs once per job (later calls
/// return the recorded decision); jobs that are themselves checks are never selected.
pub async fn select(
    state: &AppState,
    info: &JobInfo,
    executor: &DeviceId,
    receipt: &RunReceipt,
) -> ApiResult<()> {
    if info.purpose != JobPurpose::Job {
        return Ok(());
    }
    let record = device_record(state, executor).await?;
    let rate_ppm = state.config.check_policy.rate_ppm(&record);
    let hash = receipt_hash(receipt);
    let proof = state
        .vrf
        .prove(&selection_input(&info.network, &info.id, &hash));
    let output = proof.to_hash().map_err(ApiError::internal)?;
    let selected = is_selected(&output, rate_ppm);
    let now = now_ms();
    sqlx::query(
        "INSERT INTO checks (job_id, network_id, executor_id, rate_ppm, receipt_hash, proof, vrf_output, selected, \
         state, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) \
         ON CONFLICT (job_id) DO NOTHING",
    )
    .bind(info.id.to_string())
    .bind(info.network.to_string())
    .bind(executor.to_string())
    .bind(i64::from(rate_ppm))
    .bind(hash.to_string())
    .bind(proof.to_string())
    .bind(output.to_string())
    .bind(i64::from(selected))
    .bind(if selected { "selected" } else { "not_selected" })
    .bind(now)
    .execute(&state.db.pool)
    .await?;
    if selected {
        tracing::info!(job = %info.id, %executor, rate_ppm, "selected for re-execution");
    }
    Ok(())
}

/// The check of `job`, if it settled.
pub async fn check_info(state: &AppState, job: &JobId) -> ApiResult<Option<CheckInfo>> {
    let row = sqlx::query("SELECT * FROM checks WHERE job_id = $1")
        .bind(job.to_string())
        .fetch_optional(&state.db.pool)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let opt = |name: &str| -> ApiResult<Option<String>> { Ok(row.try_get(name)?) };
    let state_text: String = row.try_get("state")?;
    let check_job: Option<JobId> = opt("check_job")?.map(parse).transpose()?;
    let tiebreak_job: Option<JobId> = opt("tiebreak_job")?.map(parse).transpose()?;
    let executor_of = async |job: Option<JobId>| -> ApiResult<Option<DeviceId>> {
        Ok(match job {
            Some(job) => jobs::get(&state.db.pool, &job)
                .await?
                .and_then(|j| j.info.executor),
            None => None,
        })
    };
    let verifier = executor_of(check_job).await?;
    let tiebreaker = executor_of(tiebreak_job).await?;
    Ok(Some(CheckInfo {
        job: *job,
        executor: parse(row.try_get("executor_id")?)?,
        selection: Selection {
            rate_ppm: row.try_get::<i64, _>("rate_ppm")? as u32,
            receipt_hash: parse(row.try_get("receipt_hash")?)?,
            proof: row
                .try_get::<String, _>("proof")?
                .parse()
                .map_err(ApiError::internal)?,
            output: row
                .try_get::<String, _>("vrf_output")?
                .parse()
                .map_err(ApiError::internal)?,
            selected: row.try_get::<i64, _>("selected")? == 1,
        },
        state: CheckState::parse(&state_text)
            .ok_or_else(|| ApiError::internal("bad check state"))?,
        reason: {
            let reason: String = row.try_get("reason")?;
            CheckReason::parse(&reason)
                .ok_or_else(|| ApiError::internal(format!("bad check reason {reason:?}")))?
        },
        check_job,
        tiebreak_job,
        verifier,
        tiebreaker,
        verified_output: opt("verified_output")?.map(parse).transpose()?,
        detail: opt("detail")?,
    }))
}

/// Store a payload (an input or output of a checked job) by hash; idempotent.
pub async fn store_payload(state: &AppState, bytes: &[u8]) -> ApiResult<Blake3Hash> {
    let hash = Blake3Hash::of(bytes);
    sqlx::query(
        "INSERT INTO payloads (hash, bytes, created_at) VALUES ($1, $2, $3) ON CONFLICT (hash) DO NOTHING",
    )
    .bind(hash.to_string())
    .bind(bytes)
    .bind(now_ms())
    .execute(&state.db.pool)
    .await?;
    Ok(hash)
}

/// A stored payload.
pub async fn payload(state: &AppState, hash: &Blake3Hash) -> ApiResult<Option<Vec<u8>>> {
    Ok(
        sqlx::query_scalar("SELECT bytes FROM payloads WHERE hash = $1")
            .bind(hash.to_string())
            .fetch_optional(&state.db.pool)
            .await?,
    )
}

/// Record that `device` passed or failed the check of `job`, once. A failure resets its
/// trust, claws the job's price back from its owner to the requester, and quarantines it after
/// the policy's number of failures. Returns whether this call recorded it.
pub async fn record_verdict(
    state: &AppState,
    job: &JobInfo,
    device: &DeviceId,
    passed: bool,
    reason: &str,
) -> ApiResult<bool> {
    let mut tx = state.db.pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO check_verdicts (job_id, device_id, passed, reason, created_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (job_id, device_id) DO NOTHING",
    )
    .bind(job.id.to_string())
    .bind(device.to_string())
    .bind(i64::from(passed))
    .bind(reason)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !inserted {
        return Ok(false);
    }
    let row = sqlx::query(
        "SELECT owner_id, checks_passed, checks_failed, consecutive_passed, quarantined_at FROM devices WHERE id = $1",
    )
    .bind(device.to_string())
    .fetch_one(&mut *tx)
    .await?;
    let owner: PersonId = parse(row.try_get("owner_id")?)?;
    let before = CheckRecord {
        passed: row.try_get::<i64, _>("checks_passed")? as u32,
        failed: row.try_get::<i64, _>("checks_failed")? as u32,
        consecutive_passed: row.try_get::<i64, _>("consecutive_passed")? as u32,
    };
    let after = if passed { before.pass() } else { before.fail() };
    let was_quarantined = row.try_get::<Option<i64>, _>("quarantined_at")?.is_some();
    let quarantine = !was_quarantined && state.config.check_policy.quarantined(&after);
    sqlx::query(
        "UPDATE devices SET checks_passed = $1, checks_failed = $2, consecutive_passed = $3, trust = $4, \
         quarantined_at = CASE WHEN $5 = 1 THEN $6 ELSE quarantined_at END WHERE id = $7",
    )
    .bind(i64::from(after.passed))
    .bind(i64::from(after.failed))
    .bind(i64::from(after.consecutive_passed))
    .bind(after.trust())
    .bind(i64::from(quarantine))
    .bind(now_ms())
    .bind(device.to_string())
    .execute(&mut *tx)
    .await?;
    if !passed {
        crate::api::audit(
            &mut tx,
            Some(&job.network),
            &device.to_string(),
            "check_failed",
            &format!("job {}: {reason}", job.id),
        )
        .await?;
        // Only the executor of the job itself was paid for it.
        if job.executor == Some(*device) && job.price > 0 {
            ledger::transfer(
                &mut tx,
                &ledger::Transfer {
                    network: job.network,
                    idempotency_key: &format!("job:{}:clawback", job.id),
                    kind: ledger::CLAWBACK,
                    memo: &format!("failed check: {reason}"),
                    job: Some(job.id),
                    from: Account::Person(owner),
                    to: Account::Person(job.requester),
                    amount: job.price,
                },
            )
            .await?;
        }
    }
    if quarantine {
        crate::api::audit(
            &mut tx,
            Some(&job.network),
            &device.to_string(),
            "device_quarantined",
            &format!(
                "{device} failed {} checks (latest: job {}); it gets no more jobs",
                after.failed, job.id
            ),
        )
        .await?;
        tracing::warn!(%device, failed = after.failed, "device quarantined");
    }
    tx.commit().await?;
    Ok(true)
}

/// The executor of `job` got a ringer wrong: a failed check (recorded once), and the job's
/// check is marked failed with the reason.
pub async fn ringer_failed(
    state: &AppState,
    job: &JobInfo,
    executor: &DeviceId,
    reason: &str,
) -> ApiResult<()> {
    record_verdict(state, job, executor, false, reason).await?;
    sqlx::query(
        "UPDATE checks SET state = 'failed', reason = 'ringer', detail = $1, updated_at = $2 WHERE job_id = $3",
    )
    .bind(reason)
    .bind(now_ms())
    .bind(job.id.to_string())
    .execute(&state.db.pool)
    .await?;
    Ok(())
}

/// Pay the owner of `verifier` for re-executing `job` (once per job and round).
async fn pay_verifier(
    state: &AppState,
    job: &JobInfo,
    verifier: &DeviceId,
    round: &str,
) -> ApiResult<()> {
    if job.price <= 0 {
        return Ok(());
    }
    let owner: PersonId = parse(
        sqlx::query_scalar::<_, String>("SELECT owner_id FROM devices WHERE id = $1")
            .bind(verifier.to_string())
            .fetch_one(&state.db.pool)
            .await?,
    )?;
    let mut tx = state.db.pool.begin().await?;
    ledger::transfer(
        &mut tx,
        &ledger::Transfer {
            network: job.network,
            idempotency_key: &format!("job:{}:{round}", job.id),
            kind: "verify_pay",
            memo: &format!("re-executed job {} ({round})", job.id),
            job: Some(job.id),
            from: Account::Issuer,
            to: Account::Person(owner),
            amount: job.price,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The metadata of `workload` in `network`.
async fn metadata(
    state: &AppState,
    network: &NetworkId,
    workload: &Blake3Hash,
) -> ApiResult<mesh_proto::WorkloadMetadata> {
    let metadata: String =
        sqlx::query_scalar("SELECT metadata FROM workloads WHERE network_id = $1 AND hash = $2")
            .bind(network.to_string())
            .bind(workload.to_string())
            .fetch_one(&state.db.pool)
            .await?;
    serde_json::from_str(&metadata).map_err(ApiError::internal)
}

/// The comparison rule of `workload` in `network`.
pub async fn comparison(
    state: &AppState,
    network: &NetworkId,
    workload: &Blake3Hash,
) -> ApiResult<Comparison> {
    Ok(metadata(state, network, workload).await?.comparison)
}

/// Whether a device of an owner who has not run or checked `job` could re-execute it now.
async fn verifier_available(state: &AppState, job: &JobInfo) -> ApiResult<bool> {
    let models = metadata(state, &job.network, &job.workload).await?.models;
    let excluded = crate::store::jobs::owners_who_ran(&state.db.pool, &job.id).await?;
    Ok(crate::scheduler::candidates(state, &job.network, &models)
        .await?
        .iter()
        .any(|c| !excluded.contains(&c.owner)))
}

/// Run the check worker until the process stops: every second it picks up selected and
/// disputed checks whose payload is stored and re-executes them. Needs the gateway's node.
pub async fn run(state: AppState) {
    let Some(node) = state.gateway.clone() else {
        return;
    };
    // A check that was running when the control plane stopped is taken up again.
    if let Err(e) = sqlx::query(
        "UPDATE checks SET state = CASE WHEN check_output IS NULL THEN 'selected' ELSE 'disputed' END \
         WHERE state = 'running'",
    )
    .execute(&state.db.pool)
    .await
    {
        tracing::warn!("resuming checks: {e}");
    }
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(e) = work(&state, &node).await {
            tracing::warn!("check worker: {e}");
        }
    }
}

async fn work(state: &AppState, node: &mesh_net::Node) -> ApiResult<()> {
    let now = now_ms();
    // Selected jobs whose payload never came, and checks that could not conclude in time (no
    // device of another owner): nobody is at fault.
    sqlx::query(
        "UPDATE checks SET state = 'unverifiable', detail = 'the job input and output were not provided in time', \
         updated_at = $1 WHERE state = 'selected' AND created_at < $2 AND NOT EXISTS \
         (SELECT 1 FROM payloads p, jobs j WHERE j.id = checks.job_id AND p.hash = j.input_hash)",
    )
    .bind(now)
    .bind(now - PAYLOAD_WAIT.as_millis() as i64)
    .execute(&state.db.pool)
    .await?;
    sqlx::query(
        "UPDATE checks SET state = 'unverifiable', updated_at = $1 \
         WHERE state IN ('selected', 'disputed') AND created_at < $2",
    )
    .bind(now)
    .bind(now - CHECK_DEADLINE.as_millis() as i64)
    .execute(&state.db.pool)
    .await?;
    let due: Vec<String> = sqlx::query_scalar(
        "SELECT job_id FROM checks WHERE state IN ('selected', 'disputed') AND next_attempt_at <= $1 \
         ORDER BY next_attempt_at LIMIT 8",
    )
    .bind(now)
    .fetch_all(&state.db.pool)
    .await?;
    for job in due {
        let job: JobId = parse(job)?;
        if let Err(e) = advance(state, node, &job).await {
            tracing::debug!(%job, "check postponed: {e}");
            // Back off: 1 s, 2 s, 4 s … up to a minute between attempts.
            let attempts: i64 = sqlx::query_scalar("SELECT attempts FROM checks WHERE job_id = $1")
                .bind(job.to_string())
                .fetch_one(&state.db.pool)
                .await?;
            let pause = (1000i64 << attempts.clamp(0, 16)).min(MAX_BACKOFF_MS);
            sqlx::query(
                "UPDATE checks SET state = CASE WHEN state = 'running' THEN \
                 (CASE WHEN check_output IS NULL THEN 'selected' ELSE 'disputed' END) ELSE state END, \
                 attempts = attempts + 1, next_attempt_at = $1, detail = $2, updated_at = $3 \
                 WHERE job_id = $4 AND state IN ('running', 'selected', 'disputed')",
            )
            .bind(now_ms() + pause)
            .bind(e.to_string())
            .bind(now_ms())
            .bind(job.to_string())
            .execute(&state.db.pool)
            .await?;
        }
    }
    Ok(())
}

/// The original output of `job`, from its receipt and the payload store.
async fn original(
    state: &AppState,
    job: &JobInfo,
) -> ApiResult<Option<(Vec<u8>, Vec<u8>, RunReceipt)>> {
    let receipt = job
        .receipt
        .clone()
        .ok_or_else(|| ApiError::internal("a settled job without receipt"))?;
    let (Some(input), Some(output)) = (
        payload(state, &receipt.input).await?,
        payload(state, &receipt.output).await?,
    ) else {
        return Ok(None);
    };
    Ok(Some((input, output, receipt)))
}

/// Take one step of the check of `job`: run the first re-execution, or the tie-break.
async fn advance(state: &AppState, node: &mesh_net::Node, job_id: &JobId) -> ApiResult<()> {
    let job = find_job(state, None, job_id).await?;
    let Some((input, output, _)) = original(state, &job).await? else {
        return Err(ApiError::conflict(
            "no_payload",
            "waiting for the job's input and output",
        ));
    };
    if !verifier_available(state, &job).await? {
        return Err(ApiError::unavailable(
            "no_verifier",
            "no device of another owner can re-execute it now",
        ));
    }
    let row = sqlx::query(
        "SELECT state, check_job, check_output, executor_id FROM checks WHERE job_id = $1",
    )
    .bind(job_id.to_string())
    .fetch_one(&state.db.pool)
    .await?;
    let round: String = row.try_get("state")?;
    let executor: DeviceId = parse(row.try_get("executor_id")?)?;
    let taken = sqlx::query(
        "UPDATE checks SET state = 'running', updated_at = $1 WHERE job_id = $2 AND state = $3",
    )
    .bind(now_ms())
    .bind(job_id.to_string())
    .bind(&round)
    .execute(&state.db.pool)
    .await?
    .rows_affected()
        == 1;
    if !taken {
        return Ok(());
    }
    let rule = comparison(state, &job.network, &job.workload).await?;
    if round == "selected" {
        let (check_job, verifier, check_output) =
            reexecute(state, node, &job, JobPurpose::Check, &input).await?;
        let check_hash = store_payload(state, &check_output).await?;
        sqlx::query("UPDATE checks SET check_job = $1 WHERE job_id = $2")
            .bind(check_job.to_string())
            .bind(job_id.to_string())
            .execute(&state.db.pool)
            .await?;
        match rule.compare(&output, &check_output) {
            Ok(()) => {
                record_verdict(state, &job, &executor, true, "re-execution agreed").await?;
                pay_verifier(state, &job, &verifier, "verify").await?;
                crate::ringers::harvest(state, &job, &input, &output, &[executor, verifier])
                    .await?;
                finish(
                    state,
                    job_id,
                    "passed",
                    None,
                    "re-execution on another device agreed",
                )
                .await
            }
            Err(mismatch) => {
                tracing::warn!(job = %job_id, %executor, %verifier, "re-execution disagrees: {mismatch}");
                sqlx::query(
                    "UPDATE checks SET state = 'disputed', check_output = $1, detail = $2, updated_at = $3 \
                     WHERE job_id = $4 AND state = 'running'",
                )
                .bind(check_hash.to_string())
                .bind(format!("{verifier} disagrees: {mismatch}; a third device breaks the tie"))
                .bind(now_ms())
                .bind(job_id.to_string())
                .execute(&state.db.pool)
                .await?;
                Ok(())
            }
        }
    } else {
        let check_output_hash: Blake3Hash = parse(row.try_get("check_output")?)?;
        let check_job: JobId = parse(row.try_get("check_job")?)?;
        let verifier = find_job(state, None, &check_job)
            .await?
            .executor
            .ok_or_else(|| ApiError::internal("a check job without executor"))?;
        let check_output = payload(state, &check_output_hash)
            .await?
            .ok_or_else(|| ApiError::internal("the check output is gone"))?;
        let (tiebreak_job, tiebreaker, third) =
            reexecute(state, node, &job, JobPurpose::Tiebreak, &input).await?;
        sqlx::query("UPDATE checks SET tiebreak_job = $1 WHERE job_id = $2")
            .bind(tiebreak_job.to_string())
            .bind(job_id.to_string())
            .execute(&state.db.pool)
            .await?;
        let with_executor = rule.compare(&output, &third).is_ok();
        let with_verifier = rule.compare(&check_output, &third).is_ok();
        pay_verifier(state, &job, &tiebreaker, "tiebreak").await?;
        match (with_executor, with_verifier) {
            (true, false) => {
                record_verdict(
                    state,
                    &job,
                    &executor,
                    true,
                    "the tie-break agreed with the executor",
                )
                .await?;
                record_verdict(
                    state,
                    &job,
                    &verifier,
                    false,
                    "its re-execution disagreed with the executor and the tie-break",
                )
                .await?;
                finish(
                    state,
                    job_id,
                    "passed",
                    None,
                    "the tie-break agreed with the executor",
                )
                .await
            }
            (false, true) => {
                record_verdict(
                    state,
                    &job,
                    &executor,
                    false,
                    "its result disagreed with two re-executions on other owners' devices",
                )
                .await?;
                pay_verifier(state, &job, &verifier, "verify").await?;
                finish(
                    state,
                    job_id,
                    "failed",
                    Some(&check_output_hash),
                    "two re-executions on other owners' devices agree against the executor",
                )
                .await
            }
            _ => {
                pay_verifier(state, &job, &verifier, "verify").await?;
                let mut tx = state.db.pool.begin().await?;
                crate::api::audit(
                    &mut tx,
                    Some(&job.network),
                    "control-plane",
                    "check_inconclusive",
                    &format!("job {job_id}: executor {executor}, verifier {verifier} and tie-breaker {tiebreaker} do not form a majority"),
                )
                .await?;
                tx.commit().await?;
                finish(
                    state,
                    job_id,
                    "inconclusive",
                    None,
                    "no two of three results agree",
                )
                .await
            }
        }
    }
}

async fn finish(
    state: &AppState,
    job: &JobId,
    outcome: &str,
    verified_output: Option<&Blake3Hash>,
    detail: &str,
) -> ApiResult<()> {
    sqlx::query(
        "UPDATE checks SET state = $1, verified_output = $2, detail = $3, updated_at = $4 WHERE job_id = $5",
    )
    .bind(outcome)
    .bind(verified_output.map(|h| h.to_string()))
    .bind(detail)
    .bind(now_ms())
    .bind(job.to_string())
    .execute(&state.db.pool)
    .await?;
    tracing::info!(%job, outcome, "check finished");
    Ok(())
}

/// Run `job` again as a `purpose` job (price 0, the control plane as requester) on a device
/// whose owner has not run or checked it yet; returns the new job, its executor and output.
async fn reexecute(
    state: &AppState,
    node: &mesh_net::Node,
    job: &JobInfo,
    purpose: JobPurpose,
    input: &[u8],
) -> ApiResult<(JobId, DeviceId, Vec<u8>)> {
    let key = format!("{purpose}:{}", job.id);
    let existing = jobs::find_by_key(&state.db.pool, &job.network, &job.requester, &key).await?;
    let check_job: JobId = match existing {
        Some(id) => {
            let current = find_job(state, None, &id).await?;
            // A re-execution that failed before (no device, refused) is started afresh.
            if current.state == mesh_proto::api::JobState::Failed {
                jobs::restart_failed(&state.db.pool, &id, now_ms()).await?;
            }
            id
        }
        None => {
            let id: JobId = random_id(JobId::from_bytes);
            let new = NewJob {
                id,
                network: job.network,
                requester: job.requester,
                workload: job.workload,
                input: job.input,
                input_size: input.len() as u64,
                price: 0,
                idempotency_key: &key,
                requester_peer: None,
                purpose,
                verifies: Some(job.id),
                avoid: &[],
            };
            let mut tx = state.db.pool.begin().await?;
            jobs::insert(&mut tx, &new, now_ms()).await?;
            tx.commit().await?;
            id
        }
    };
    let current = find_job(state, None, &check_job).await?;
    if current.state == mesh_proto::api::JobState::Done {
        let receipt = current
            .receipt
            .ok_or_else(|| ApiError::internal("a done job without receipt"))?;
        let output = payload(state, &receipt.output)
            .await?
            .ok_or_else(|| ApiError::internal("a finished re-execution lost its output"))?;
        let executor = current
            .executor
            .ok_or_else(|| ApiError::internal("a done job without executor"))?;
        return Ok((check_job, executor, output));
    }
    crate::scheduler::try_assign(state, &check_job).await?;
    let completed = crate::gateway::dispatch_submitted(state, node, check_job, input).await?;
    let claims = completed.ticket.peek().map_err(ApiError::internal)?;
    store_payload(state, &completed.output).await?;
    let info = find_job(state, None, &check_job).await?;
    if let Err(e) =
        crate::api::jobs::settle_receipt(state, &info, &claims.executor, &completed.receipt).await
    {
        tracing::debug!(job = %check_job, "settling the re-execution: {e}");
    }
    Ok((check_job, claims.executor, completed.output))
}

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
use crate::domain::verification::{
    Decision, Outcome, PaidRound, Party, Round, Unavailable, decide,
};
use crate::error::{ApiError, ApiResult};
use crate::ledger::{self, Account};
use crate::state::AppState;
use crate::store::Tx;
use crate::store::checks::{self, Reexecution};
use crate::store::devices;
use crate::store::jobs::{self, NewJob};
use crate::store::{now_ms, random_id};
use mesh_proto::api::{CheckInfo, CheckState, JobInfo, JobPurpose};
use mesh_proto::verification::{Selection, is_selected, receipt_hash, selection_input};
use mesh_proto::{Blake3Hash, Comparison, DeviceId, JobId, NetworkId, RunReceipt};
use std::time::Duration;

/// How long a selected job waits for its payload before it is given up as unverifiable.
const PAYLOAD_WAIT: Duration = Duration::from_secs(600);
/// How long a check may take in all (waiting for a device of another owner included) before
/// it is given up as unverifiable.
const CHECK_DEADLINE: Duration = Duration::from_secs(1800);
/// Longest pause between two attempts at a check.
const MAX_BACKOFF_MS: i64 = 60_000;

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
    let record = crate::scheduler::device(state, executor).await?.checks;
    let rate_ppm = state.config.check_policy.rate_ppm(&record);
    let hash = receipt_hash(receipt);
    let proof = state
        .vrf
        .prove(&selection_input(&info.network, &info.id, &hash));
    let output = proof.to_hash().map_err(ApiError::internal)?;
    let selected = is_selected(&output, rate_ppm);
    let selection = Selection {
        rate_ppm,
        receipt_hash: hash,
        proof,
        output,
        selected,
    };
    let now = now_ms();
    checks::insert_decision(
        &state.db.pool,
        &info.id,
        &info.network,
        executor,
        &selection,
        now,
    )
    .await?;
    if selected {
        tracing::info!(job = %info.id, %executor, rate_ppm, "selected for re-execution");
    }
    Ok(())
}

/// The check of `job`, if it settled.
pub async fn check_info(state: &AppState, job: &JobId) -> ApiResult<Option<CheckInfo>> {
    let Some(check) = checks::get(&state.db.pool, job).await? else {
        return Ok(None);
    };
    let executor_of = async |job: Option<JobId>| -> ApiResult<Option<DeviceId>> {
        Ok(match job {
            Some(job) => jobs::get(&state.db.pool, &job)
                .await?
                .and_then(|j| j.info.executor),
            None => None,
        })
    };
    Ok(Some(CheckInfo {
        job: check.job,
        executor: check.executor,
        selection: check.selection,
        state: check.state,
        reason: check.reason,
        check_job: check.check_job,
        tiebreak_job: check.tiebreak_job,
        verifier: executor_of(check.check_job).await?,
        tiebreaker: executor_of(check.tiebreak_job).await?,
        verified_output: check.verified_output,
        detail: check.detail,
    }))
}

/// Store a payload (an input or output of a checked job) by hash; idempotent.
pub async fn store_payload(state: &AppState, bytes: &[u8]) -> ApiResult<Blake3Hash> {
    Ok(checks::insert_payload(&state.db.pool, bytes, now_ms()).await?)
}

/// A stored payload.
pub async fn payload(state: &AppState, hash: &Blake3Hash) -> ApiResult<Option<Vec<u8>>> {
    Ok(checks::payload(&state.db.pool, hash).await?)
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
    let recorded = record_verdict_in(state, &mut tx, job, device, passed, reason).await?;
    tx.commit().await?;
    Ok(recorded)
}

/// [`record_verdict`] inside `tx`.
async fn record_verdict_in(
    state: &AppState,
    tx: &mut Tx,
    job: &JobInfo,
    device: &DeviceId,
    passed: bool,
    reason: &str,
) -> ApiResult<bool> {
    if !checks::insert_verdict(tx, &job.id, device, passed, reason, now_ms()).await? {
        return Ok(false);
    }
    let (before, owner, quarantined_at) = devices::verification_state(&mut **tx, device)
        .await?
        .ok_or_else(|| ApiError::not_found("device"))?;
    let after = if passed { before.pass() } else { before.fail() };
    let quarantine = quarantined_at.is_none() && state.config.check_policy.quarantined(&after);
    devices::record_check(tx, device, &after, quarantine, now_ms()).await?;
    if !passed {
        crate::store::audit::append(
            tx,
            Some(&job.network),
            &device.to_string(),
            "check_failed",
            &format!("job {}: {reason}", job.id),
            crate::store::now_ms(),
        )
        .await?;
        // Only the executor of the job itself was paid for it.
        if job.executor == Some(*device) && job.price > 0 {
            ledger::transfer(
                tx,
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
        crate::store::audit::append(
            tx,
            Some(&job.network),
            &device.to_string(),
            "device_quarantined",
            &format!(
                "{device} failed {} checks (latest: job {}); it gets no more jobs",
                after.failed, job.id
            ),
            crate::store::now_ms(),
        )
        .await?;
        tracing::warn!(%device, failed = after.failed, "device quarantined");
    }
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
    checks::fail_by_ringer(&state.db.pool, &job.id, reason, now_ms()).await?;
    Ok(())
}

/// Pay the owner of `device` for re-executing `job` in `round` (once per job and round), inside
/// `tx`.
async fn pay_in(tx: &mut Tx, job: &JobInfo, device: &DeviceId, round: PaidRound) -> ApiResult<()> {
    if job.price <= 0 {
        return Ok(());
    }
    let owner = devices::get(&mut **tx, device)
        .await?
        .ok_or_else(|| ApiError::not_found("device"))?
        .owner;
    let round = round.key();
    ledger::transfer(
        tx,
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
    Ok(())
}

/// The metadata of `workload` in `network`.
async fn metadata(
    state: &AppState,
    network: &NetworkId,
    workload: &Blake3Hash,
) -> ApiResult<mesh_proto::WorkloadMetadata> {
    crate::store::workloads::metadata_of(&state.db.pool, network, workload)
        .await?
        .ok_or_else(|| ApiError::not_found("workload"))
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
    if let Err(e) = checks::resume_running(&state.db.pool).await {
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
    let db = &state.db.pool;
    // Nobody is at fault for these: the payload never came, or no device of another owner
    // could take the check before its deadline.
    for job in checks::waiting_for_payload_since(db, now - PAYLOAD_WAIT.as_millis() as i64).await? {
        give_up(state, &job, Unavailable::NoPayload).await?;
    }
    for job in checks::waiting_since(db, now - CHECK_DEADLINE.as_millis() as i64).await? {
        give_up(state, &job, Unavailable::NoVerifier).await?;
    }
    for job in checks::due(db, now, 8).await? {
        if let Err(e) = advance(state, node, &job).await {
            tracing::debug!(%job, "check postponed: {e}");
            // Back off: 1 s, 2 s, 4 s … up to a minute between attempts.
            let attempts = checks::attempts(db, &job).await?;
            let pause = (1000i64 << attempts.clamp(0, 16)).min(MAX_BACKOFF_MS);
            checks::postpone(db, &job, now_ms() + pause, &e.to_string(), now_ms()).await?;
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
    let check = checks::get(&state.db.pool, job_id)
        .await?
        .ok_or_else(|| ApiError::not_found("check"))?;
    let round = check.state;
    let executor = check.executor;
    if !checks::take(&state.db.pool, job_id, round, now_ms()).await? {
        return Ok(());
    }
    let rule = comparison(state, &job.network, &job.workload).await?;
    if round == CheckState::Selected {
        let (check_job, verifier, check_output) =
            reexecute(state, node, &job, JobPurpose::Check, &input).await?;
        let check_hash = store_payload(state, &check_output).await?;
        checks::set_round_job(&state.db.pool, job_id, Reexecution::Check, &check_job).await?;
        let decision = decide(
            Round::First {
                original: &output,
                check: &check_output,
            },
            &rule,
        );
        let parties = Parties {
            executor,
            verifier,
            tiebreaker: None,
        };
        apply(state, &job, &parties, &check_hash, &decision).await?;
        if decision.outcome == Outcome::Passed {
            crate::ringers::harvest(state, &job, &input, &output, &[executor, verifier]).await?;
        }
        Ok(())
    } else {
        let check_output_hash = check
            .check_output
            .ok_or_else(|| ApiError::internal("a disputed check without its output"))?;
        let check_job = check
            .check_job
            .ok_or_else(|| ApiError::internal("a disputed check without its re-execution"))?;
        let verifier = find_job(state, None, &check_job)
            .await?
            .executor
            .ok_or_else(|| ApiError::internal("a check job without executor"))?;
        let check_output = payload(state, &check_output_hash)
            .await?
            .ok_or_else(|| ApiError::internal("the check output is gone"))?;
        let (tiebreak_job, tiebreaker, third) =
            reexecute(state, node, &job, JobPurpose::Tiebreak, &input).await?;
        checks::set_round_job(&state.db.pool, job_id, Reexecution::Tiebreak, &tiebreak_job).await?;
        let decision = decide(
            Round::Tiebreak {
                original: &output,
                check: &check_output,
                third: &third,
            },
            &rule,
        );
        let parties = Parties {
            executor,
            verifier,
            tiebreaker: Some(tiebreaker),
        };
        apply(state, &job, &parties, &check_output_hash, &decision).await
    }
}

/// End a check that cannot run (see [`Unavailable`]): nobody is judged or paid.
async fn give_up(state: &AppState, job: &JobId, why: Unavailable) -> ApiResult<()> {
    let decision = decide(Round::Unavailable(why), &Comparison::Exact);
    debug_assert!(decision.verdicts.is_empty() && decision.payments.is_empty());
    let waiting = &[CheckState::Selected, CheckState::Disputed];
    let outcome = decision.outcome.state();
    if checks::finish(
        &state.db.pool,
        job,
        waiting,
        outcome,
        None,
        decision.detail,
        now_ms(),
    )
    .await?
    {
        tracing::info!(%job, "check unverifiable: {}", decision.detail);
    }
    Ok(())
}

/// The devices that took part in a check.
struct Parties {
    executor: DeviceId,
    verifier: DeviceId,
    tiebreaker: Option<DeviceId>,
}

impl Parties {
    fn device(&self, party: Party) -> ApiResult<DeviceId> {
        match party {
            Party::Executor => Ok(self.executor),
            Party::Verifier => Ok(self.verifier),
            Party::Tiebreaker => self
                .tiebreaker
                .ok_or_else(|| ApiError::internal("a tie-break decision without a tie-breaker")),
        }
    }
}

/// Write `decision` on the check of `job` in one transaction: verdicts (with their clawbacks
/// and quarantines), payments, the audit entry, and the check's new state.
/// `check_output` is the verifier's output, the verified one when the executor failed.
async fn apply(
    state: &AppState,
    job: &JobInfo,
    parties: &Parties,
    check_output: &Blake3Hash,
    decision: &Decision,
) -> ApiResult<()> {
    let mut tx = state.db.pool.begin().await?;
    for verdict in &decision.verdicts {
        let device = parties.device(verdict.party)?;
        record_verdict_in(state, &mut tx, job, &device, verdict.passed, verdict.reason).await?;
    }
    for payment in &decision.payments {
        pay_in(&mut tx, job, &parties.device(payment.to)?, payment.round).await?;
    }
    if decision.audit {
        let tiebreaker = parties
            .tiebreaker
            .map_or_else(|| "none".to_string(), |t| t.to_string());
        crate::store::audit::append(
            &mut tx,
            Some(&job.network),
            "control-plane",
            "check_inconclusive",
            &format!(
                "job {}: executor {}, verifier {} and tie-breaker {tiebreaker} do not form a majority",
                job.id, parties.executor, parties.verifier
            ),
            now_ms(),
        )
        .await?;
    }
    let now = now_ms();
    match &decision.outcome {
        Outcome::Disputed { mismatch } => {
            tracing::warn!(job = %job.id, executor = %parties.executor, verifier = %parties.verifier,
                "re-execution disagrees: {mismatch}");
            let detail = format!(
                "{} disagrees: {mismatch}; a third device breaks the tie",
                parties.verifier
            );
            checks::dispute(&mut *tx, &job.id, check_output, &detail, now).await?;
        }
        outcome => {
            let verified = (*outcome == Outcome::Failed).then_some(check_output);
            let running = &[CheckState::Running];
            let state = outcome.state();
            checks::finish(
                &mut *tx,
                &job.id,
                running,
                state,
                verified,
                decision.detail,
                now,
            )
            .await?;
            tracing::info!(job = %job.id, outcome = outcome.state().as_str(), "check finished");
        }
    }
    tx.commit().await?;
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

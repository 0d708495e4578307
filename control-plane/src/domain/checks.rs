//! Verification by VRF-chosen re-execution: selection, re-execution, comparison, trust,
//! quarantine, clawbacks and the verifiers' pay.
//!
//! When a job settles, [`select`] evaluates the control plane's VRF on the receipt and
//! records the decision and its proof (`checks` table), so anyone can re-check it
//! ([`mesh_proto::verification::Selection::verify`]). A selected job waits for its payload (the
//! gateway stores input and output itself; a device requester uploads them by hash), then the
//! worker (`workers::checker`) re-executes it as a `check` job on a device of someone who may
//! judge it ([`Judges`]; the rule is in [`crate::domain::verification`]), and compares the
//! outputs by the workload's declared rule. When they disagree a second judge runs a
//! `tiebreak` job; [`apply`] writes what [`crate::domain::verification::decide`] makes of each
//! round.
//!
//! Every verdict is recorded once per (job, device) ([`record_verdict`]): a pass raises the
//! device's trust, a failure resets it, claws the job's credits back from the executor's owner
//! to the requester (a ledger transfer, never an edit) and, after
//! [`CheckPolicy::quarantine_after`](mesh_proto::verification::CheckPolicy) failures,
//! quarantines the device (no more jobs; audit log entry for the admins). Verifiers are paid
//! the job's price from the network's issuer account. Every state change is a conditional
//! update and every transfer has an idempotency key, so the worker may crash and restart
//! anywhere.

use crate::domain::audit::AuditAction;
use crate::domain::ledger::{self, Account};
use crate::domain::verification::{Decision, Outcome, PaidRound, Party};
use crate::domain::{DomainError, DomainResult};
use crate::state::AppState;
use crate::store::Tx;
use crate::store::checks;
use crate::store::devices;
use crate::store::jobs;
use crate::store::now_ms;
use mesh_proto::api::{CheckInfo, CheckState, JobInfo, JobPurpose};
use mesh_proto::verification::{Selection, is_selected, receipt_hash, selection_input};
use mesh_proto::{Blake3Hash, Comparison, DeviceId, JobId, NetworkId, RunReceipt};

/// Decide by VRF whether the just-settled job `info`, run by `executor` with `receipt`, is
/// re-executed, and record the decision with its proof. Runs once per job (later calls
/// return the recorded decision); jobs that are themselves checks are never selected.
pub async fn select(
    state: &AppState,
    info: &JobInfo,
    executor: &DeviceId,
    receipt: &RunReceipt,
) -> DomainResult<()> {
    if info.purpose != JobPurpose::Job {
        return Ok(());
    }
    let device = crate::domain::scheduling::device(state, executor).await?;
    // The requester's own device: nobody else has a stake (see `domain::verification`).
    let rate_ppm = if device.owner == info.requester {
        0
    } else {
        state.config.check_policy.rate_ppm(&device.checks)
    };
    let hash = receipt_hash(receipt);
    let proof = state
        .vrf
        .prove(&selection_input(&info.network, &info.id, &hash));
    let output = proof.to_hash().map_err(DomainError::internal)?;
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
pub async fn check_info(state: &AppState, job: &JobId) -> DomainResult<Option<CheckInfo>> {
    let Some(check) = checks::get(&state.db.pool, job).await? else {
        return Ok(None);
    };
    let executor_of = async |job: Option<JobId>| -> DomainResult<Option<DeviceId>> {
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
        selection_check: None,
    }))
}

/// The control plane's own check of `selection`, the published draw for `job`, against its
/// VRF key and the job's receipt (`None` while the job has none): for clients that cannot run
/// the VRF themselves.
pub fn selection_check(
    state: &AppState,
    job: &JobInfo,
    selection: &Selection,
) -> Option<mesh_proto::api::SelectionCheck> {
    let receipt = job.receipt.as_ref()?;
    let verdict = selection.verify(&state.vrf.public_key(), &job.network, &job.id, receipt);
    Some(mesh_proto::api::SelectionCheck {
        holds: verdict.is_ok(),
        detail: verdict.err().map(|e| e.to_string()).unwrap_or_default(),
    })
}

/// Store a payload of `job` (its input or output, or a re-execution's output) by hash;
/// idempotent.
pub async fn store_payload(
    state: &AppState,
    job: &JobId,
    bytes: &[u8],
) -> DomainResult<Blake3Hash> {
    Ok(checks::insert_payload(&state.db.pool, job, bytes, now_ms()).await?)
}

/// A payload stored for `job`: payloads are bound to the job they were stored for, never
/// found by hash alone.
pub async fn payload(
    state: &AppState,
    job: &JobId,
    hash: &Blake3Hash,
) -> DomainResult<Option<Vec<u8>>> {
    Ok(checks::payload(&state.db.pool, job, hash).await?)
}

/// The requester of `job` hands over its input or output for re-execution. Accepted only for
/// a job whose check is selected and not yet concluded, only for the two hashes its receipt
/// names, only bytes that hash to them, and within the network's payload quota.
pub async fn upload_payload(
    state: &AppState,
    job: &JobInfo,
    hash: &Blake3Hash,
    bytes: &[u8],
) -> DomainResult<()> {
    let receipt = job
        .receipt
        .as_ref()
        .ok_or_else(|| DomainError::conflict("not_settled", "the job has not settled yet"))?;
    if *hash != receipt.input && *hash != receipt.output {
        return Err(DomainError::bad_request(
            "the hash is neither the input nor the output of the job's receipt",
        ));
    }
    if Blake3Hash::of(bytes) != *hash {
        return Err(DomainError::bad_request(
            "the body does not hash to the given BLAKE3",
        ));
    }
    let check = checks::get(&state.db.pool, &job.id).await?;
    let waiting = check.as_ref().is_some_and(|c| {
        matches!(
            c.state,
            CheckState::Selected | CheckState::Running | CheckState::Disputed
        )
    });
    if !waiting {
        return Err(DomainError::conflict(
            "not_selected",
            "the job is not waiting for re-execution: its payloads are not wanted",
        ));
    }
    if checks::has_payload(&state.db.pool, &job.id, hash).await? {
        return Ok(());
    }
    let used = checks::payload_bytes_in(&state.db.pool, &job.network).await?;
    if used.saturating_add(bytes.len() as u64) > state.config.payload_quota {
        return Err(DomainError::conflict(
            "payload_quota",
            format!(
                "the network's stored payloads would exceed its quota of {} bytes",
                state.config.payload_quota
            ),
        ));
    }
    store_payload(state, &job.id, bytes).await?;
    Ok(())
}

/// A payload of `job` its requester may read: the input or output its receipt names, or the
/// verified result of a failed check, when stored for this job.
pub async fn requester_payload(
    state: &AppState,
    job: &JobInfo,
    hash: &Blake3Hash,
) -> DomainResult<Vec<u8>> {
    let verified = checks::get(&state.db.pool, &job.id)
        .await?
        .and_then(|c| c.verified_output);
    let named = job
        .receipt
        .as_ref()
        .is_some_and(|r| r.input == *hash || r.output == *hash)
        || verified == Some(*hash);
    if !named {
        return Err(DomainError::not_found("payload"));
    }
    payload(state, &job.id, hash)
        .await?
        .ok_or_else(|| DomainError::not_found("payload"))
}

/// Forget the payloads of checks that concluded longer than the retention ago; returns how
/// many were deleted.
pub async fn expire_payloads(state: &AppState) -> DomainResult<u64> {
    let before = now_ms() - state.config.payload_retention.as_millis() as i64;
    Ok(checks::delete_concluded_payloads(&state.db.pool, before).await?)
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
) -> DomainResult<bool> {
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
) -> DomainResult<bool> {
    if !checks::insert_verdict(tx, &job.id, device, passed, reason, now_ms()).await? {
        return Ok(false);
    }
    let (before, owner, quarantined_at) = devices::verification_state(&mut **tx, device)
        .await?
        .ok_or_else(|| DomainError::not_found("device"))?;
    let after = if passed { before.pass() } else { before.fail() };
    let quarantine = quarantined_at.is_none() && state.config.check_policy.quarantined(&after);
    devices::record_check(tx, device, &after, quarantine, now_ms()).await?;
    if !passed {
        crate::domain::audit::record(
            tx,
            Some(&job.network),
            &device.to_string(),
            AuditAction::CheckFailed,
            &format!("job {}: {reason}", job.id),
        )
        .await?;
        // Only the executor of the job itself was paid for it: its price, or (a batch's
        // run) what the batch paid for the pieces it won, which are open again while the
        // batch runs.
        let (paid, back_to) = match job.executor == Some(*device) {
            true => {
                let requester = Account::Person(job.requester);
                match crate::domain::batches::result_rejected(tx, job, reason, requester).await? {
                    Some(rejected) => rejected,
                    None => (job.price, requester),
                }
            }
            false => (0, Account::Person(job.requester)),
        };
        if paid > 0 {
            ledger::transfer(
                tx,
                &ledger::Transfer {
                    network: job.network,
                    idempotency_key: &format!("job:{}:clawback", job.id),
                    kind: ledger::CLAWBACK,
                    memo: &format!("failed check: {reason}"),
                    job: Some(job.id),
                    from: Account::Person(owner),
                    to: back_to,
                    amount: paid,
                },
            )
            .await?;
        }
    }
    if !passed {
        crate::domain::batches::distrust(tx, &job.network, device, owner, &job.id).await?;
    }
    if quarantine {
        crate::domain::audit::record(
            tx,
            Some(&job.network),
            &device.to_string(),
            AuditAction::DeviceQuarantine,
            &format!(
                "{device} failed {} checks (latest: job {}); it gets no more jobs",
                after.failed, job.id
            ),
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
) -> DomainResult<()> {
    record_verdict(state, job, executor, false, reason).await?;
    checks::fail_by_ringer(&state.db.pool, &job.id, reason, now_ms()).await?;
    Ok(())
}

/// Pay the owner of `device` for re-executing `job` in `round` (once per job and round), inside
/// `tx`.
async fn pay_in(
    tx: &mut Tx,
    job: &JobInfo,
    device: &DeviceId,
    round: PaidRound,
) -> DomainResult<()> {
    if job.price <= 0 {
        return Ok(());
    }
    let owner = devices::get(&mut **tx, device)
        .await?
        .ok_or_else(|| DomainError::not_found("device"))?
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
) -> DomainResult<mesh_proto::WorkloadMetadata> {
    crate::store::workloads::metadata_of(&state.db.pool, network, workload)
        .await?
        .ok_or_else(|| DomainError::not_found("workload"))
}

/// The comparison rule of `workload` in `network`.
pub async fn comparison(
    state: &AppState,
    network: &NetworkId,
    workload: &Blake3Hash,
) -> DomainResult<Comparison> {
    Ok(metadata(state, network, workload).await?.comparison)
}

/// Whether someone who may judge `job` (see [`crate::domain::verification`]) can re-execute
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judges {
    /// A device of such an owner is online and can run it now.
    Available,
    /// Such owners have devices in the network, but none can run it now.
    Away,
    /// The network has no device of such an owner: waiting will not help.
    Nobody,
}

/// Who could re-execute `job` as its next (`purpose`) judge.
pub async fn judges(state: &AppState, job: &JobInfo, purpose: JobPurpose) -> DomainResult<Judges> {
    let models = metadata(state, &job.network, &job.workload).await?.models;
    let excluded = crate::domain::scheduling::excluded_judges(state, job, purpose).await?;
    let facts =
        crate::domain::scheduling::job_facts(state, &job.network, &job.workload, &job.requester)
            .await?;
    let online =
        crate::domain::scheduling::candidates(state, &job.network, &models, &facts).await?;
    if online.iter().any(|c| !excluded.contains(&c.owner)) {
        return Ok(Judges::Available);
    }
    let owners = devices::owners_with_devices(&state.db.pool, &job.network).await?;
    Ok(if owners.iter().any(|o| !excluded.contains(o)) {
        Judges::Away
    } else {
        Judges::Nobody
    })
}

/// The devices that took part in a check.
pub struct Parties {
    /// The device whose result is checked.
    pub executor: DeviceId,
    /// The device of the first re-execution.
    pub verifier: DeviceId,
    /// The device of the tie-break, once there is one.
    pub tiebreaker: Option<DeviceId>,
}

impl Parties {
    fn device(&self, party: Party) -> DomainResult<DeviceId> {
        match party {
            Party::Executor => Ok(self.executor),
            Party::Verifier => Ok(self.verifier),
            Party::Tiebreaker => self
                .tiebreaker
                .ok_or_else(|| DomainError::internal("a tie-break decision without a tie-breaker")),
        }
    }
}

/// Write `decision` on the check of `job` in one transaction: verdicts (with their clawbacks
/// and quarantines), payments, the audit entry, and the check's new state.
/// `check_output` is the verifier's output, the verified one when the executor failed.
pub async fn apply(
    state: &AppState,
    job: &JobInfo,
    parties: &Parties,
    check_output: &Blake3Hash,
    decision: &Decision,
) -> DomainResult<()> {
    let mut tx = state.db.pool.begin().await?;
    for verdict in &decision.verdicts {
        let device = parties.device(verdict.party)?;
        record_verdict_in(state, &mut tx, job, &device, verdict.passed, verdict.reason).await?;
    }
    for payment in &decision.payments {
        pay_in(&mut tx, job, &parties.device(payment.to)?, payment.round).await?;
    }
    // An unconfirmed result's pay goes to the network (a batch's run: its pieces run again
    // while the batch runs, and the pay returns to its escrow).
    let (forfeit, forfeit_to) = if decision.forfeit {
        match crate::domain::batches::result_rejected(
            &mut tx,
            job,
            decision.detail,
            Account::Issuer,
        )
        .await?
        {
            Some(rejected) => rejected,
            None => (job.price, Account::Issuer),
        }
    } else {
        (0, Account::Issuer)
    };
    if forfeit > 0 {
        let owner = devices::get(&mut *tx, &parties.executor)
            .await?
            .ok_or_else(|| DomainError::not_found("device"))?
            .owner;
        ledger::transfer(
            &mut tx,
            &ledger::Transfer {
                network: job.network,
                idempotency_key: &format!("job:{}:forfeit", job.id),
                kind: ledger::FORFEIT,
                memo: &format!("unconfirmed result: {}", decision.detail),
                job: Some(job.id),
                from: Account::Person(owner),
                to: forfeit_to,
                amount: forfeit,
            },
        )
        .await?;
    }
    for suspect in &decision.suspects {
        let device = parties.device(*suspect)?;
        let (before, _, _) = devices::verification_state(&mut *tx, &device)
            .await?
            .ok_or_else(|| DomainError::not_found("device"))?;
        devices::record_check(&mut tx, &device, &before.suspect(), false, now_ms()).await?;
    }
    if decision.audit {
        let tiebreaker = parties
            .tiebreaker
            .map_or_else(|| "none".to_string(), |t| t.to_string());
        crate::domain::audit::record(
            &mut tx,
            Some(&job.network),
            "control-plane",
            AuditAction::CheckInconclusive,
            &format!(
                "job {}: executor {}, verifier {}, tie-breaker {tiebreaker}: {}",
                job.id, parties.executor, parties.verifier, decision.detail
            ),
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
            let finished = checks::finish(
                &mut *tx,
                &job.id,
                running,
                state,
                verified,
                decision.detail,
                now,
            )
            .await?;
            if !finished {
                // Someone else concluded it meanwhile: write nothing (the transaction rolls
                // back when dropped).
                return Ok(());
            }
            tracing::info!(job = %job.id, outcome = outcome.state().as_str(), "check finished");
        }
    }
    tx.commit().await?;
    Ok(())
}

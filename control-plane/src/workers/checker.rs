//! The check worker: every second it picks up selected and disputed checks whose payload is
//! stored, re-executes them through the gateway on devices of other owners, and applies what
//! [`crate::domain::verification::decide`] makes of the outputs. Checks that cannot start in
//! time end unverifiable, disputes nobody may break inconclusive. Every step is a conditional update, so the worker may stop and
//! restart anywhere.

use crate::domain::checks::{Judges, Parties, apply, comparison, judges, payload, store_payload};
use crate::domain::jobs::find_job;
use crate::domain::verification::{Outcome, Output, Round, Unavailable, decide};
use crate::domain::{DomainError, DomainResult};
use crate::state::AppState;
use crate::store::checks::{self, Reexecution};
use crate::store::jobs::{self, NewJob};
use crate::store::{now_ms, random_id};
use mesh_proto::api::{CheckState, JobInfo, JobPurpose};
use mesh_proto::{Comparison, DeviceId, JobId, ModelBinding, RunReceipt};
use std::time::Duration;

/// How long a selected job waits for its payload before it is given up as unverifiable.
const PAYLOAD_WAIT: Duration = Duration::from_secs(600);
/// How long a check may take in all (waiting for a device of another owner included) before
/// it is given up as unverifiable.
const CHECK_DEADLINE: Duration = Duration::from_secs(1800);
/// Devices a re-execution is offered to at most, per try of the check.
const MAX_CHECK_ATTEMPTS: u32 = 4;
/// Longest pause between two attempts at a check.
const MAX_BACKOFF_MS: i64 = 60_000;

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

async fn work(state: &AppState, node: &mesh_net::Node) -> DomainResult<()> {
    let now = now_ms();
    let db = &state.db.pool;
    // Nobody is at fault for these: the payload never came, or no judge could take the check
    // before its deadline (a dispute still open then is inconclusive).
    for job in checks::waiting_for_payload_since(db, now - PAYLOAD_WAIT.as_millis() as i64).await? {
        give_up(state, &job, Unavailable::NoPayload).await?;
    }
    for job in checks::waiting_since(db, now - CHECK_DEADLINE.as_millis() as i64).await? {
        no_judge(state, &job).await?;
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
) -> DomainResult<Option<(Vec<u8>, Vec<u8>, RunReceipt)>> {
    let receipt = job
        .receipt
        .clone()
        .ok_or_else(|| DomainError::internal("a settled job without receipt"))?;
    let (Some(input), Some(output)) = (
        payload(state, &job.id, &receipt.input).await?,
        payload(state, &job.id, &receipt.output).await?,
    ) else {
        return Ok(None);
    };
    Ok(Some((input, output, receipt)))
}

/// Take one step of the check of `job`: run the first re-execution, or the tie-break.
async fn advance(state: &AppState, node: &mesh_net::Node, job_id: &JobId) -> DomainResult<()> {
    let job = find_job(state, None, job_id).await?;
    let Some((input, output, receipt)) = original(state, &job).await? else {
        return Err(DomainError::conflict(
            "no_payload",
            "waiting for the job's input and output",
        ));
    };
    let check = checks::get(&state.db.pool, job_id)
        .await?
        .ok_or_else(|| DomainError::not_found("check"))?;
    let round = check.state;
    let purpose = if round == CheckState::Selected {
        JobPurpose::Check
    } else {
        JobPurpose::Tiebreak
    };
    match judges(state, &job, purpose).await? {
        Judges::Available => {}
        Judges::Away => {
            return Err(DomainError::unavailable(
                "no_verifier",
                "no device of an owner who may judge it can re-execute it now",
            ));
        }
        // Waiting will not help: end it now.
        Judges::Nobody => return no_judge(state, job_id).await,
    }
    let executor = check.executor;
    if !checks::take(&state.db.pool, job_id, round, now_ms()).await? {
        return Ok(());
    }
    let rule = comparison(state, &job.network, &job.workload).await?;
    // A generation is judged by re-scoring the executor's tokens, not by generating again.
    let judged_input = match rule {
        Comparison::Generation(_) => match mesh_proto::compare::score_input(&input, &output) {
            Ok(scoring) => scoring,
            Err(e) => {
                return Err(DomainError::internal(format!(
                    "the input of a generation is not a document: {e}"
                )));
            }
        },
        _ => input.clone(),
    };
    if round == CheckState::Selected {
        let again = reexecute(state, node, &job, JobPurpose::Check, &judged_input).await?;
        let verifier = again.executor;
        let check_hash = store_payload(state, &job.id, &again.output).await?;
        checks::set_round_job(&state.db.pool, job_id, Reexecution::Check, &again.job).await?;
        let own = crate::domain::scheduling::device(state, &verifier)
            .await?
            .owner
            == job.requester;
        let original = Output::new(&output, &receipt.models);
        let check = Output::new(&again.output, &again.models);
        let decision = decide(
            if own {
                Round::OwnCheck { original, check }
            } else {
                Round::First { original, check }
            },
            &rule,
        );
        let parties = Parties {
            executor,
            verifier,
            tiebreaker: None,
        };
        apply(state, &job, &parties, &check_hash, &decision).await?;
        if decision.outcome == Outcome::Passed && !own && !matches!(rule, Comparison::Generation(_))
        {
            crate::domain::ringers::harvest(state, &job, &input, &output, &[executor, verifier])
                .await?;
        }
        Ok(())
    } else {
        let check_output_hash = check
            .check_output
            .ok_or_else(|| DomainError::internal("a disputed check without its output"))?;
        let check_job = check
            .check_job
            .ok_or_else(|| DomainError::internal("a disputed check without its re-execution"))?;
        let check_info = find_job(state, None, &check_job).await?;
        let verifier = check_info
            .executor
            .ok_or_else(|| DomainError::internal("a check job without executor"))?;
        let check_models = check_info.receipt.map(|r| r.models).unwrap_or_default();
        let check_output = payload(state, &job.id, &check_output_hash)
            .await?
            .ok_or_else(|| DomainError::internal("the check output is gone"))?;
        let third = reexecute(state, node, &job, JobPurpose::Tiebreak, &judged_input).await?;
        checks::set_round_job(&state.db.pool, job_id, Reexecution::Tiebreak, &third.job).await?;
        let decision = decide(
            Round::Tiebreak {
                original: Output::new(&output, &receipt.models),
                check: Output::new(&check_output, &check_models),
                third: Output::new(&third.output, &third.models),
            },
            &rule,
        );
        let parties = Parties {
            executor,
            verifier,
            tiebreaker: Some(third.executor),
        };
        apply(state, &job, &parties, &check_output_hash, &decision).await
    }
}

/// End a check for which no judge is (or will be) there: a selected one is unverifiable, a
/// disputed one inconclusive ([`Round::Unresolved`]).
async fn no_judge(state: &AppState, job_id: &JobId) -> DomainResult<()> {
    let Some(check) = checks::get(&state.db.pool, job_id).await? else {
        return Ok(());
    };
    if check.state != CheckState::Disputed {
        return give_up(state, job_id, Unavailable::NoVerifier).await;
    }
    let check_job = check
        .check_job
        .ok_or_else(|| DomainError::internal("a disputed check without its re-execution"))?;
    let check_output = check
        .check_output
        .ok_or_else(|| DomainError::internal("a disputed check without its output"))?;
    let verifier = find_job(state, None, &check_job)
        .await?
        .executor
        .ok_or_else(|| DomainError::internal("a check job without executor"))?;
    if !checks::take(&state.db.pool, job_id, CheckState::Disputed, now_ms()).await? {
        return Ok(());
    }
    let job = find_job(state, None, job_id).await?;
    let parties = Parties {
        executor: check.executor,
        verifier,
        tiebreaker: None,
    };
    let decision = decide(Round::Unresolved, &Comparison::Exact);
    tracing::warn!(job = %job_id, executor = %check.executor, %verifier,
        "dispute nobody may break: inconclusive");
    apply(state, &job, &parties, &check_output, &decision).await
}

/// End a check that cannot start (see [`Unavailable`]): nobody is judged or paid.
async fn give_up(state: &AppState, job: &JobId, why: Unavailable) -> DomainResult<()> {
    let decision = decide(Round::Unavailable(why), &Comparison::Exact);
    debug_assert!(decision.verdicts.is_empty() && decision.payments.is_empty());
    let waiting = &[CheckState::Selected];
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

/// A finished re-execution.
struct Reexecuted {
    /// The `check` or `tiebreak` job.
    job: JobId,
    /// The judge's device that ran it.
    executor: DeviceId,
    /// What it returned.
    output: Vec<u8>,
    /// The models its receipt names.
    models: Vec<ModelBinding>,
}

/// Run `job` again as a `purpose` job (price 0, the control plane as requester) on a judge's
/// device, on `input`: the job's own, or for a generation the scoring input that asks the
/// judge for its verdict on the executor's output.
async fn reexecute(
    state: &AppState,
    node: &mesh_net::Node,
    job: &JobInfo,
    purpose: JobPurpose,
    input: &[u8],
) -> DomainResult<Reexecuted> {
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
                input: mesh_proto::Blake3Hash::of(input),
                input_size: input.len() as u64,
                price: 0,
                idempotency_key: &key,
                requester_peer: None,
                purpose,
                verifies: Some(job.id),
                avoid: &[],
                only_device: None,
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
            .ok_or_else(|| DomainError::internal("a done job without receipt"))?;
        let output = payload(state, &job.id, &receipt.output)
            .await?
            .ok_or_else(|| DomainError::internal("a finished re-execution lost its output"))?;
        let executor = current
            .executor
            .ok_or_else(|| DomainError::internal("a done job without executor"))?;
        return Ok(Reexecuted {
            job: check_job,
            executor,
            output,
            models: receipt.models,
        });
    }
    crate::domain::scheduling::try_assign(state, &check_job).await?;
    let completed = crate::workers::gateway::dispatch_submitted(
        state,
        node,
        check_job,
        input,
        MAX_CHECK_ATTEMPTS,
        None,
    )
    .await?;
    let claims = completed.ticket.peek().map_err(DomainError::internal)?;
    store_payload(state, &job.id, &completed.output).await?;
    let info = find_job(state, None, &check_job).await?;
    if let Err(e) =
        crate::domain::jobs::settle_receipt(state, &info, &claims.executor, &completed.receipt)
            .await
    {
        tracing::debug!(job = %check_job, "settling the re-execution: {e}");
    }
    Ok(Reexecuted {
        job: check_job,
        executor: claims.executor,
        output: completed.output,
        models: completed.receipt.models,
    })
}

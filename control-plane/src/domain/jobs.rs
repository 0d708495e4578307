//! Jobs: submission (idempotent per requester and key, the price reserved), reassignment,
//! and settlement with a checked receipt, exactly once.

use crate::domain::audit::AuditAction;
use crate::domain::ledger::{self, Account};
use crate::domain::scheduling::{self, job_record};
use crate::domain::{DomainError, DomainResult};
use crate::state::AppState;
use crate::store::jobs::{self, NewJob};
use crate::store::{StoreError, now_ms, random_id};
use mesh_proto::api::{JobAssignment, JobInfo, JobPurpose, JobState, SubmitJobRequest};
use mesh_proto::{DeviceId, JobId, NetworkId, RunReceipt};

/// Whether a submission made a new job or found the one its idempotency key made before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// A new job.
    Created,
    /// The earlier job with the same key.
    Existing,
}

/// Read a job of `network` (404 if it belongs elsewhere).
pub async fn find_job(
    state: &AppState,
    network: Option<&NetworkId>,
    job: &JobId,
) -> DomainResult<JobInfo> {
    let info = job_record(state, job).await?.info;
    if network.is_some_and(|n| *n != info.network) {
        return Err(DomainError::not_found("job"));
    }
    Ok(info)
}

/// The job with its ticket when it is assigned.
pub async fn assignment(state: &AppState, job: &JobId) -> DomainResult<JobAssignment> {
    let record = job_record(state, job).await?;
    let info = record.info.clone();
    let (ticket, executor_peer_id) = match (info.state, info.executor) {
        (JobState::Assigned | JobState::Running, Some(executor)) => {
            let peer = scheduling::device(state, &executor).await?.peer_id;
            (
                Some(scheduling::ticket(state, &record, &executor, &peer).await?),
                Some(peer),
            )
        }
        _ => (None, None),
    };
    let waiting = match info.state {
        JobState::Queued => Some(scheduling::why_unplaced(state, job).await?),
        _ => None,
    };
    Ok(JobAssignment {
        job: info,
        ticket,
        executor_peer_id,
        waiting,
    })
}

/// Where a job may run and what it costs, when not the network's defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct Placement<'a> {
    /// Devices to try only when nobody else can take it.
    pub avoid: &'a [DeviceId],
    /// The only device that may run it (it waits for that one).
    pub only: Option<DeviceId>,
    /// Its price instead of the network's job price (a batch's runs cost 0: the batch pays
    /// for the pieces they win).
    pub price: Option<i64>,
}

/// Create (or find, by idempotency key) a job of `requester`, reserve its price and try to
/// assign it (devices in `avoid` only when nobody else can). Shared by the REST submit and the
/// gateway.
pub async fn submit_job(
    state: &AppState,
    network: &NetworkId,
    requester: mesh_proto::PersonId,
    requester_peer: Option<String>,
    request: &SubmitJobRequest,
    placement: Placement<'_>,
) -> DomainResult<(Submitted, JobAssignment)> {
    let (state, network) = (state.clone(), *network);
    let workload = crate::store::workloads::get(&state.db.pool, &network, &request.workload)
        .await?
        .ok_or_else(|| DomainError::not_found("workload"))?;
    if workload.yanked {
        return Err(DomainError::conflict("yanked", "this workload was yanked"));
    }
    let key = request
        .idempotency_key
        .clone()
        .unwrap_or_else(crate::store::random_secret);
    if key.is_empty() || key.len() > 200 {
        return Err(DomainError::bad_request(
            "idempotency_key must be 1-200 characters",
        ));
    }
    if let Some(id) = jobs::find_by_key(&state.db.pool, &network, &requester, &key).await? {
        // Keys are per person, and a person's devices submit as that person: a retry must
        // come from the same requester (the person, or the same device) and ask for the same
        // job, or it would be handed another requester's ticket, or the old job for a new
        // input.
        let existing = job_record(&state, &id).await?;
        if existing.requester_peer != requester_peer {
            return Err(DomainError::conflict(
                "idempotency_key_in_use",
                "this idempotency key is in use by another requester of the same owner",
            ));
        }
        let old = &existing.info;
        if old.workload != request.workload
            || old.input != request.input
            || old.input_size != request.input_size
        {
            return Err(DomainError::conflict(
                "idempotency_key_reused",
                "this idempotency key was already used for a job of another workload or input",
            ));
        }
        return Ok((Submitted::Existing, assignment(&state, &id).await?));
    }
    let price = match placement.price {
        Some(price) => price,
        None => {
            crate::store::networks::policy(&state.db.pool, &network)
                .await?
                .ok_or_else(|| DomainError::not_found("network"))?
                .job_price
        }
    };
    let job: JobId = random_id(JobId::from_bytes);
    let now = now_ms();
    let mut tx = state.db.pool.begin().await?;
    let new = NewJob {
        id: job,
        network,
        requester,
        workload: request.workload,
        input: request.input,
        input_size: request.input_size,
        price,
        idempotency_key: &key,
        requester_peer: requester_peer.as_deref(),
        purpose: JobPurpose::Job,
        verifies: None,
        avoid: placement.avoid,
        only_device: placement.only,
    };
    jobs::insert(&mut tx, &new, now)
        .await
        .map_err(|e| match e {
            StoreError::Duplicate(_) => DomainError::conflict(
                "concurrent_submit",
                "a job with this idempotency key is being submitted; retry",
            ),
            e => DomainError::from(e),
        })?;
    if price > 0 {
        ledger::transfer(
            &mut tx,
            &ledger::Transfer {
                network,
                idempotency_key: &format!("job:{job}:reserve"),
                kind: "job_reserve",
                memo: &format!("reserved for {}", workload.name),
                job: Some(job),
                from: Account::Person(requester),
                to: Account::Escrow,
                amount: price,
            },
        )
        .await?;
    }
    tx.commit().await?;
    scheduling::try_assign(&state, &job).await?;
    Ok((Submitted::Created, assignment(&state, &job).await?))
}

/// Requeue `info` away from its current executor (or fail it when it may not be retried)
/// and try to assign it again. When `failed_peer` names an executor the job has already left
/// (its lease expired and the sweeper moved it), the current assignment stands.
pub async fn reassign_job(
    state: &AppState,
    info: &JobInfo,
    complainant: Complainant,
    failed_peer: Option<&str>,
    reason: &str,
    retryable: bool,
) -> DomainResult<JobAssignment> {
    if complainant == Complainant::Requester
        && !retryable
        && matches!(info.state, JobState::Assigned | JobState::Running)
    {
        // The requester gives up. It may hold the result already (an executor signs its
        // receipt before it answers), so its word alone refunds nothing: the job stays with
        // its executor, which is paid if it reports a receipt in time; otherwise its lease
        // expires and the job fails with a refund, without another attempt.
        jobs::no_more_attempts(
            &state.db.pool,
            &info.id,
            state.config.max_job_attempts,
            now_ms(),
        )
        .await?;
        tracing::info!(job = %info.id, "the requester gave up: {reason}");
        return assignment(state, &info.id).await;
    }
    if complainant == Complainant::Requester && !retryable && info.state == JobState::Queued {
        // Nobody holds it: giving up fails it and refunds the reservation (unless a device
        // took it meanwhile, which the conditional update sees).
        scheduling::fail_queued(state, &info.id, reason).await?;
        return assignment(state, &info.id).await;
    }
    if let (Some(failed), Some(current), JobState::Assigned | JobState::Running) =
        (failed_peer, info.executor, info.state)
    {
        let peer = scheduling::device(state, &current).await?.peer_id;
        if peer != failed && retryable {
            return assignment(state, &info.id).await;
        }
    }
    match (info.state, info.executor) {
        (JobState::Assigned | JobState::Running, Some(executor)) => {
            scheduling::requeue_or_fail(state, &info.id, Some(&executor), reason, retryable)
                .await?;
        }
        (JobState::Queued, _) => {}
        (other, _) => {
            return Err(DomainError::conflict(
                "wrong_state",
                format!("job is {}", other.as_str()),
            ));
        }
    }
    scheduling::try_assign(state, &info.id).await?;
    assignment(state, &info.id).await
}

/// Who asks for a job to be moved to another device or given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Complainant {
    /// The control plane's own gateway, which checked the executor's answer itself.
    Gateway,
    /// The job's requester (a person or a device), whose word alone cannot refund a job its
    /// executor may have done.
    Requester,
}

/// Settle `info` with a receipt already verified as `executor`'s: mark it done and pay the
/// executor's owner from the reservation. Reporting the same receipt again (executor and
/// requester both report) is a no-op; a different receipt for a settled job is a conflict
/// and goes to the audit log.
pub async fn settle_receipt(
    state: &AppState,
    info: &JobInfo,
    executor: &DeviceId,
    receipt: &RunReceipt,
) -> DomainResult<JobInfo> {
    if receipt.job != Some(info.id) {
        return Err(DomainError::bad_request("the receipt is for another job"));
    }
    if receipt.component != info.workload || receipt.input != info.input {
        return Err(DomainError::bad_request(
            "the receipt does not match the job's workload and input",
        ));
    }
    let owner = scheduling::device(state, executor).await?.owner;
    let mut tx = state.db.pool.begin().await?;
    if !jobs::settle(&mut tx, &info.id, executor, receipt, now_ms()).await? {
        drop(tx);
        let current = find_job(state, None, &info.id).await?;
        if current.state == JobState::Done && current.executor == Some(*executor) {
            if current.receipt.as_ref() == Some(receipt) {
                // Select here too, in case the first report stopped between settling and
                // selecting (selection happens once).
                crate::domain::checks::select(state, &current, executor, receipt).await?;
                return Ok(current);
            }
            let mut tx = state.db.pool.begin().await?;
            // Once per job: an executor reporting other receipts again and again cannot push
            // older entries out of sight.
            crate::domain::audit::record_once(
                &mut tx,
                &info.id.to_string(),
                Some(&info.network),
                &executor.to_string(),
                AuditAction::ConflictingReceipt,
                &format!("job {}: a second, different receipt was reported", info.id),
            )
            .await?;
            tx.commit().await?;
            return Err(DomainError::conflict(
                "conflicting_receipt",
                "the job settled with a different receipt",
            ));
        }
        return Err(DomainError::conflict(
            "wrong_state",
            format!("job is {}", current.state.as_str()),
        ));
    }
    if info.price > 0 {
        ledger::transfer(
            &mut tx,
            &ledger::Transfer {
                network: info.network,
                idempotency_key: &format!("job:{}:settle", info.id),
                kind: "job_settle",
                memo: &format!("ran on {executor}"),
                job: Some(info.id),
                from: Account::Escrow,
                to: Account::Person(owner),
                amount: info.price,
            },
        )
        .await?;
    }
    tx.commit().await?;
    let settled = find_job(state, None, &info.id).await?;
    crate::domain::checks::select(state, &settled, executor, receipt).await?;
    Ok(settled)
}

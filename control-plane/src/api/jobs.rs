//! Jobs: submit (reserve credits, schedule), inspect, and the executor's start / complete /
//! fail reports, which settle credits exactly once.

use crate::api::networks::network_id;
use crate::api::workloads::find_workload;
use crate::auth::{Auth, require_reader, require_role};
use crate::error::{ApiError, ApiJson, ApiResult, ErrorBody};
use crate::ledger::{self, Account};
use crate::scheduler::{self, job_record};
use crate::state::AppState;
use crate::store::StoreError;
use crate::store::jobs::{self, NewJob};
use crate::store::{now_ms, random_id};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mesh_proto::api::{
    CompleteJobRequest, FailJobRequest, JobAssignment, JobInfo, JobPurpose, JobState, Role,
    SubmitJobRequest,
};
use mesh_proto::{DeviceId, JobId, NetworkId, RunReceipt, SignDomain};

fn job_id(text: &str) -> ApiResult<JobId> {
    text.parse().map_err(|_| ApiError::not_found("job"))
}

/// Read a job of `network` (404 if it belongs elsewhere).
pub async fn find_job(
    state: &AppState,
    network: Option<&NetworkId>,
    job: &JobId,
) -> ApiResult<JobInfo> {
    let info = job_record(state, job).await?.info;
    if network.is_some_and(|n| *n != info.network) {
        return Err(ApiError::not_found("job"));
    }
    Ok(info)
}

/// The job with its ticket when it is assigned.
pub async fn assignment(state: &AppState, job: &JobId) -> ApiResult<JobAssignment> {
    let record = job_record(state, job).await?;
    let info = record.info.clone();
    let (ticket, executor_peer_id) = match (info.state, info.executor) {
        (JobState::Assigned | JobState::Running, Some(executor)) => {
            let peer = scheduler::device(state, &executor).await?.peer_id;
            (
                Some(scheduler::ticket(state, &record, &executor, &peer)?),
                Some(peer),
            )
        }
        _ => (None, None),
    };
    Ok(JobAssignment {
        job: info,
        ticket,
        executor_peer_id,
    })
}

/// Submit a job (a member, or a device of the network on its owner's behalf): reserves the
/// network's job price from the requester's credits and assigns a device when one is
/// available (otherwise the job waits in the queue). The ticket may be presented only by the
/// submitting device, or for a person's job by the control plane as gateway.
#[utoipa::path(post, path = "/v1/networks/{network}/jobs", tag = "jobs", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id")),
    request_body = SubmitJobRequest,
    responses((status = 201, body = JobAssignment), (status = 200, body = JobAssignment, description = "Same idempotency key"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 402, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn submit(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(network): Path<String>,
    ApiJson(request): ApiJson<SubmitJobRequest>,
) -> ApiResult<(StatusCode, Json<JobAssignment>)> {
    let network = network_id(&network)?;
    let (requester, requester_peer) = match principal {
        crate::auth::Principal::Device {
            network: own,
            owner,
            key,
            ..
        } if own == network => (owner, Some(key.peer_id())),
        crate::auth::Principal::Device { .. } => return Err(ApiError::not_found("network")),
        crate::auth::Principal::Person { person, .. } => {
            require_role(&state, &principal, &network, Role::Member).await?;
            (person, None)
        }
    };
    submit_job(&state, &network, requester, requester_peer, &request, &[]).await
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
    avoid: &[DeviceId],
) -> ApiResult<(StatusCode, Json<JobAssignment>)> {
    let (state, network) = (state.clone(), *network);
    let workload = find_workload(&state, &network, &request.workload).await?;
    if workload.yanked {
        return Err(ApiError::conflict("yanked", "this workload was yanked"));
    }
    let key = request
        .idempotency_key
        .clone()
        .unwrap_or_else(crate::store::random_secret);
    if key.is_empty() || key.len() > 200 {
        return Err(ApiError::bad_request(
            "idempotency_key must be 1-200 characters",
        ));
    }
    if let Some(id) = jobs::find_by_key(&state.db.pool, &network, &requester, &key).await? {
        return Ok((StatusCode::OK, Json(assignment(&state, &id).await?)));
    }
    let price = crate::store::networks::policy(&state.db.pool, &network)
        .await?
        .ok_or_else(|| ApiError::not_found("network"))?
        .job_price;
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
        avoid,
    };
    jobs::insert(&mut tx, &new, now)
        .await
        .map_err(|e| match e {
            StoreError::Duplicate(_) => ApiError::conflict(
                "concurrent_submit",
                "a job with this idempotency key is being submitted; retry",
            ),
            e => ApiError::from(e),
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
    scheduler::try_assign(&state, &job).await?;
    Ok((StatusCode::CREATED, Json(assignment(&state, &job).await?)))
}

/// The requester reports that its executor refused the job as busy or could not be reached:
/// the job goes back to the queue (that device is tried last) and, when another device can
/// take it, comes back with a new ticket.
#[utoipa::path(post, path = "/v1/networks/{network}/jobs/{job}/reassign", tag = "jobs", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("job" = String, Path, description = "Job id")),
    request_body = FailJobRequest,
    responses((status = 200, body = JobAssignment), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn reassign(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path((network, job)): Path<(String, String)>,
    ApiJson(request): ApiJson<FailJobRequest>,
) -> ApiResult<Json<JobAssignment>> {
    let network = network_id(&network)?;
    let job = job_id(&job)?;
    let info = requester_job(&state, &principal, &network, &job).await?;
    let reason: String = request.reason.chars().take(1000).collect();
    reassign_job(
        &state,
        &info,
        request.executor_peer.as_deref(),
        &reason,
        request.retryable,
    )
    .await
    .map(Json)
}

/// Requeue `info` away from its current executor (or fail it when it may not be retried)
/// and try to assign it again. When `failed_peer` names an executor the job has already left
/// (its lease expired and the sweeper moved it), the current assignment stands.
pub async fn reassign_job(
    state: &AppState,
    info: &JobInfo,
    failed_peer: Option<&str>,
    reason: &str,
    retryable: bool,
) -> ApiResult<JobAssignment> {
    if let (Some(failed), Some(current), JobState::Assigned | JobState::Running) =
        (failed_peer, info.executor, info.state)
    {
        let peer = scheduler::device(state, &current).await?.peer_id;
        if peer != failed && retryable {
            return assignment(state, &info.id).await;
        }
    }
    match (info.state, info.executor) {
        (JobState::Assigned | JobState::Running, Some(executor)) => {
            scheduler::requeue_or_fail(state, &info.id, Some(&executor), reason, retryable).await?;
        }
        (JobState::Queued, _) => {}
        (other, _) => {
            return Err(ApiError::conflict(
                "wrong_state",
                format!("job is {}", other.as_str()),
            ));
        }
    }
    scheduler::try_assign(state, &info.id).await?;
    assignment(state, &info.id).await
}

/// Recent jobs of a network (at most 200, newest first).
#[utoipa::path(get, path = "/v1/networks/{network}/jobs", tag = "jobs", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id")),
    responses((status = 200, body = Vec<JobInfo>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(network): Path<String>,
) -> ApiResult<Json<Vec<JobInfo>>> {
    let network = network_id(&network)?;
    require_reader(&state, &principal, &network).await?;
    let jobs = jobs::list(&state.db.pool, &network, 200).await?;
    Ok(Json(jobs.into_iter().map(|j| j.info).collect()))
}

/// One job, with its ticket when the caller is its requester and it is assigned.
#[utoipa::path(get, path = "/v1/networks/{network}/jobs/{job}", tag = "jobs", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("job" = String, Path, description = "Job id")),
    responses((status = 200, body = JobAssignment), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path((network, job)): Path<(String, String)>,
) -> ApiResult<Json<JobAssignment>> {
    let network = network_id(&network)?;
    require_reader(&state, &principal, &network).await?;
    let job = job_id(&job)?;
    let record = job_record(&state, &job).await?;
    if record.info.network != network {
        return Err(ApiError::not_found("job"));
    }
    let requester = match principal {
        crate::auth::Principal::Person { person, .. } => person == record.info.requester,
        crate::auth::Principal::Device { key, .. } => record.requester_peer == Some(key.peer_id()),
    };
    let info = record.info;
    if requester {
        return Ok(Json(assignment(&state, &job).await?));
    }
    Ok(Json(JobAssignment {
        job: info,
        ticket: None,
        executor_peer_id: None,
    }))
}

/// The job as seen by its executor, which must be the calling device.
async fn executor_job(
    state: &AppState,
    principal: &crate::auth::Principal,
    job: &str,
) -> ApiResult<(JobInfo, DeviceId)> {
    let (device, network) = principal.device()?;
    let job = job_id(job)?;
    let info = find_job(state, Some(&network), &job).await?;
    if info.executor != Some(device) {
        return Err(ApiError::forbidden(
            "this job is not assigned to this device",
        ));
    }
    Ok((info, device))
}

/// The executor starts the job; its lease is renewed.
#[utoipa::path(post, path = "/v1/jobs/{job}/start", tag = "jobs", security(("bearer" = [])),
    params(("job" = String, Path, description = "Job id")),
    responses((status = 200, body = JobInfo), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn start(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(job): Path<String>,
) -> ApiResult<Json<JobInfo>> {
    let (info, device) = executor_job(&state, &principal, &job).await?;
    let now = now_ms();
    let lease_until = now + state.config.job_lease.as_millis() as i64;
    if !jobs::mark_running(&state.db.pool, &info.id, &device, lease_until, now).await? {
        return Err(ApiError::conflict(
            "wrong_state",
            format!("job is {}", info.state.as_str()),
        ));
    }
    Ok(Json(find_job(&state, None, &info.id).await?))
}

/// The executor reports success with its signed receipt; the executor's owner is paid from
/// the job's reservation, once.
#[utoipa::path(post, path = "/v1/jobs/{job}/complete", tag = "jobs", security(("bearer" = [])),
    params(("job" = String, Path, description = "Job id")),
    request_body = CompleteJobRequest,
    responses((status = 200, body = JobInfo), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn complete(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(job): Path<String>,
    ApiJson(request): ApiJson<CompleteJobRequest>,
) -> ApiResult<Json<JobInfo>> {
    let (info, device) = executor_job(&state, &principal, &job).await?;
    // The device's key came with its token (see `auth::resolve`).
    let crate::auth::Principal::Device { key, .. } = principal else {
        return Err(ApiError::forbidden("this call is for devices"));
    };
    let receipt: RunReceipt = request
        .receipt
        .verify(&key, SignDomain::Receipt, &info.network)
        .map_err(|_| {
            ApiError::new_unauthenticated("bad_signature", "the receipt signature does not verify")
        })?;
    settle_receipt(&state, &info, &device, &receipt)
        .await
        .map(Json)
}

/// The requester reports the receipt its executor returned (signed by that executor); the
/// job settles exactly as if the executor had reported it, once.
#[utoipa::path(post, path = "/v1/networks/{network}/jobs/{job}/receipt", tag = "jobs", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("job" = String, Path, description = "Job id")),
    request_body = CompleteJobRequest,
    responses((status = 200, body = JobInfo), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn report_receipt(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path((network, job)): Path<(String, String)>,
    ApiJson(request): ApiJson<CompleteJobRequest>,
) -> ApiResult<Json<JobInfo>> {
    let network = network_id(&network)?;
    let job = job_id(&job)?;
    let info = requester_job(&state, &principal, &network, &job).await?;
    let executor = info
        .executor
        .ok_or_else(|| ApiError::conflict("wrong_state", "the job has no executor"))?;
    let key = scheduler::device(&state, &executor).await?.public_key;
    let receipt: RunReceipt = request
        .receipt
        .verify(&key, SignDomain::Receipt, &info.network)
        .map_err(|_| {
            ApiError::new_unauthenticated(
                "bad_signature",
                "the receipt is not signed by the job's executor",
            )
        })?;
    settle_receipt(&state, &info, &executor, &receipt)
        .await
        .map(Json)
}

/// The job `job` of `network` as its requester sees it: the requesting person, or the
/// device whose peer may present its ticket.
pub(crate) async fn requester_job(
    state: &AppState,
    principal: &crate::auth::Principal,
    network: &NetworkId,
    job: &JobId,
) -> ApiResult<JobInfo> {
    match *principal {
        crate::auth::Principal::Device {
            network: own, key, ..
        } if own == *network => {
            let record = job_record(state, job).await?;
            if record.info.network != *network {
                return Err(ApiError::not_found("job"));
            }
            if record.requester_peer != Some(key.peer_id()) {
                return Err(ApiError::forbidden(
                    "only the requesting device may do this",
                ));
            }
            Ok(record.info)
        }
        crate::auth::Principal::Device { .. } => Err(ApiError::not_found("network")),
        crate::auth::Principal::Person { person, .. } => {
            require_reader(state, principal, network).await?;
            let info = find_job(state, Some(network), job).await?;
            if info.requester != person {
                return Err(ApiError::forbidden("only the requester may do this"));
            }
            Ok(info)
        }
    }
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
) -> ApiResult<JobInfo> {
    if receipt.job != Some(info.id) {
        return Err(ApiError::bad_request("the receipt is for another job"));
    }
    if receipt.component != info.workload || receipt.input != info.input {
        return Err(ApiError::bad_request(
            "the receipt does not match the job's workload and input",
        ));
    }
    let owner = scheduler::device(state, executor).await?.owner;
    let mut tx = state.db.pool.begin().await?;
    if !jobs::settle(&mut tx, &info.id, executor, receipt, now_ms()).await? {
        drop(tx);
        let current = find_job(state, None, &info.id).await?;
        if current.state == JobState::Done && current.executor == Some(*executor) {
            if current.receipt.as_ref() == Some(receipt) {
                // Select here too, in case the first report stopped between settling and
                // selecting (selection happens once).
                crate::checks::select(state, &current, executor, receipt).await?;
                return Ok(current);
            }
            let mut tx = state.db.pool.begin().await?;
            crate::store::audit::append(
                &mut tx,
                Some(&info.network),
                &executor.to_string(),
                "conflicting_receipt",
                &format!("job {}: a second, different receipt was reported", info.id),
                crate::store::now_ms(),
            )
            .await?;
            tx.commit().await?;
            return Err(ApiError::conflict(
                "conflicting_receipt",
                "the job settled with a different receipt",
            ));
        }
        return Err(ApiError::conflict(
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
    crate::checks::select(state, &settled, executor, receipt).await?;
    Ok(settled)
}

/// The executor reports failure: the job is requeued (retryable, attempts left) or fails and
/// its reservation is refunded.
#[utoipa::path(post, path = "/v1/jobs/{job}/fail", tag = "jobs", security(("bearer" = [])),
    params(("job" = String, Path, description = "Job id")),
    request_body = FailJobRequest,
    responses((status = 200, body = JobInfo), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn fail(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(job): Path<String>,
    ApiJson(request): ApiJson<FailJobRequest>,
) -> ApiResult<Json<JobInfo>> {
    let (info, device) = executor_job(&state, &principal, &job).await?;
    let reason: String = request.reason.chars().take(1000).collect();
    if !scheduler::requeue_or_fail(&state, &info.id, Some(&device), &reason, request.retryable)
        .await?
    {
        return Err(ApiError::conflict(
            "wrong_state",
            format!("job is {}", info.state.as_str()),
        ));
    }
    Ok(Json(find_job(&state, None, &info.id).await?))
}

//! Jobs: submit (reserve credits, schedule), inspect, and the executor's start / complete /
//! fail reports, which settle credits exactly once.

use crate::domain::jobs::{
    Complainant, Submitted, assignment, find_job, reassign_job, settle_receipt, submit_job,
};
use crate::domain::scheduling::{self, job_record};
use crate::http::auth::{Auth, InNetwork, Reader, require_reader, require_role};
use crate::http::error::responses::{BadRequest, Conflict, Managing, PaymentRequired, Reading};
use crate::http::error::{ApiError, ApiJson, ApiResult};
use crate::state::AppState;
use crate::store::jobs;
use crate::store::now_ms;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mesh_proto::api::{
    CompleteJobRequest, FailJobRequest, JobAssignment, JobInfo, Role, SubmitJobRequest,
};
use mesh_proto::{DeviceId, JobId, NetworkId, RunReceipt, SignDomain};

fn job_id(text: &str) -> ApiResult<JobId> {
    text.parse().map_err(|_| ApiError::not_found("job"))
}

/// Submit a job (a member, or a device of the network on its owner's behalf): reserves the
/// network's job price from the requester's credits and assigns a device when one is
/// available (otherwise the job waits in the queue). The ticket may be presented only by the
/// submitting device, or for a person's job by the control plane as gateway.
#[utoipa::path(post, path = "/v1/networks/{network}/jobs", tag = "jobs", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id")),
    request_body = SubmitJobRequest,
    responses((status = 201, body = JobAssignment), (status = 200, body = JobAssignment, description = "Same idempotency key"), Managing, BadRequest, PaymentRequired, Conflict))]
pub async fn submit(
    State(state): State<AppState>,
    InNetwork { principal, network }: InNetwork,
    ApiJson(request): ApiJson<SubmitJobRequest>,
) -> ApiResult<(StatusCode, Json<JobAssignment>)> {
    let (requester, requester_peer) = match principal {
        crate::http::auth::Principal::Device {
            network: own,
            owner,
            key,
            ..
        } if own == network => (owner, Some(key.peer_id())),
        crate::http::auth::Principal::Device { .. } => return Err(ApiError::not_found("network")),
        crate::http::auth::Principal::Person { person, .. } => {
            require_role(&state, &principal, &network, Role::Member).await?;
            (person, None)
        }
    };
    let (submitted, assignment) = submit_job(
        &state,
        &network,
        requester,
        requester_peer,
        &request,
        Default::default(),
    )
    .await?;
    let status = match submitted {
        Submitted::Created => StatusCode::CREATED,
        Submitted::Existing => StatusCode::OK,
    };
    Ok((status, Json(assignment)))
}

/// The requester reports that its executor refused the job as busy or could not be reached:
/// the job goes back to the queue (that device is tried last) and, when another device can
/// take it, comes back with a new ticket.
#[utoipa::path(post, path = "/v1/networks/{network}/jobs/{job}/reassign", tag = "jobs", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("job" = String, Path, description = "Job id")),
    request_body = FailJobRequest,
    responses((status = 200, body = JobAssignment), Managing, Conflict))]
pub async fn reassign(
    State(state): State<AppState>,
    InNetwork { principal, network }: InNetwork,
    Path((_network, job)): Path<(String, String)>,
    ApiJson(request): ApiJson<FailJobRequest>,
) -> ApiResult<Json<JobAssignment>> {
    let job = job_id(&job)?;
    let info = requester_job(&state, &principal, &network, &job).await?;
    let reason: String = request.reason.chars().take(1000).collect();
    let assignment = reassign_job(
        &state,
        &info,
        Complainant::Requester,
        request.executor_peer.as_deref(),
        &reason,
        request.retryable,
    )
    .await?;
    Ok(Json(assignment))
}

/// Recent jobs of a network (at most 200, newest first).
#[utoipa::path(get, path = "/v1/networks/{network}/jobs", tag = "jobs", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id")),
    responses((status = 200, body = Vec<JobInfo>), Reading))]
pub async fn list(
    State(state): State<AppState>,
    Reader {
        principal: _,
        network,
    }: Reader,
) -> ApiResult<Json<Vec<JobInfo>>> {
    let jobs = jobs::list(&state.db.pool, &network, 200).await?;
    Ok(Json(jobs.into_iter().map(|j| j.info).collect()))
}

/// One job, with its ticket when the caller is its requester and it is assigned.
#[utoipa::path(get, path = "/v1/networks/{network}/jobs/{job}", tag = "jobs", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("job" = String, Path, description = "Job id")),
    responses((status = 200, body = JobAssignment), Reading))]
pub async fn show(
    State(state): State<AppState>,
    Reader { principal, network }: Reader,
    Path((_network, job)): Path<(String, String)>,
) -> ApiResult<Json<JobAssignment>> {
    let job = job_id(&job)?;
    let record = job_record(&state, &job).await?;
    if record.info.network != network {
        return Err(ApiError::not_found("job"));
    }
    let requester = match principal {
        crate::http::auth::Principal::Person { person, .. } => person == record.info.requester,
        crate::http::auth::Principal::Device { key, .. } => {
            record.requester_peer == Some(key.peer_id())
        }
    };
    let info = record.info;
    if requester {
        return Ok(Json(assignment(&state, &job).await?));
    }
    Ok(Json(JobAssignment {
        job: info,
        ticket: None,
        executor_peer_id: None,
        waiting: None,
    }))
}

/// The job as seen by its executor, which must be the calling device.
async fn executor_job(
    state: &AppState,
    principal: &crate::http::auth::Principal,
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
    responses((status = 200, body = JobInfo), Managing, Conflict))]
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
    responses((status = 200, body = JobInfo), Managing, BadRequest, Conflict))]
pub async fn complete(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(job): Path<String>,
    ApiJson(request): ApiJson<CompleteJobRequest>,
) -> ApiResult<Json<JobInfo>> {
    let (info, device) = executor_job(&state, &principal, &job).await?;
    // The device's key came with its token (see `auth::resolve`).
    let crate::http::auth::Principal::Device { key, .. } = principal else {
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
        .map_err(ApiError::from)
}

/// The requester reports the receipt its executor returned (signed by that executor); the
/// job settles exactly as if the executor had reported it, once.
#[utoipa::path(post, path = "/v1/networks/{network}/jobs/{job}/receipt", tag = "jobs", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("job" = String, Path, description = "Job id")),
    request_body = CompleteJobRequest,
    responses((status = 200, body = JobInfo), Managing, BadRequest, Conflict))]
pub async fn report_receipt(
    State(state): State<AppState>,
    InNetwork { principal, network }: InNetwork,
    Path((_network, job)): Path<(String, String)>,
    ApiJson(request): ApiJson<CompleteJobRequest>,
) -> ApiResult<Json<JobInfo>> {
    let job = job_id(&job)?;
    let info = requester_job(&state, &principal, &network, &job).await?;
    let executor = info
        .executor
        .ok_or_else(|| ApiError::conflict("wrong_state", "the job has no executor"))?;
    let key = scheduling::device(&state, &executor).await?.public_key;
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
        .map_err(ApiError::from)
}

/// The job `job` of `network` as its requester sees it: the requesting person, or the
/// device whose peer may present its ticket.
pub(crate) async fn requester_job(
    state: &AppState,
    principal: &crate::http::auth::Principal,
    network: &NetworkId,
    job: &JobId,
) -> ApiResult<JobInfo> {
    match *principal {
        crate::http::auth::Principal::Device {
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
        crate::http::auth::Principal::Device { .. } => Err(ApiError::not_found("network")),
        crate::http::auth::Principal::Person { person, .. } => {
            require_reader(state, principal, network).await?;
            let info = find_job(state, Some(network), job).await?;
            if info.requester != person {
                return Err(ApiError::forbidden("only the requester may do this"));
            }
            Ok(info)
        }
    }
}

/// The executor reports failure: the job is requeued (retryable, attempts left) or fails and
/// its reservation is refunded.
#[utoipa::path(post, path = "/v1/jobs/{job}/fail", tag = "jobs", security(("bearer" = [])),
    params(("job" = String, Path, description = "Job id")),
    request_body = FailJobRequest,
    responses((status = 200, body = JobInfo), Managing, Conflict))]
pub async fn fail(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(job): Path<String>,
    ApiJson(request): ApiJson<FailJobRequest>,
) -> ApiResult<Json<JobInfo>> {
    let (info, device) = executor_job(&state, &principal, &job).await?;
    let reason: String = request.reason.chars().take(1000).collect();
    if !scheduling::requeue_or_fail(&state, &info.id, Some(&device), &reason, request.retryable)
        .await?
    {
        return Err(ApiError::conflict(
            "wrong_state",
            format!("job is {}", info.state.as_str()),
        ));
    }
    Ok(Json(find_job(&state, None, &info.id).await?))
}

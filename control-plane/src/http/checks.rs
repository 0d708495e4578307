//! Verification: the VRF key, each job's check (selection proof and outcome), and the
//! payloads a device requester uploads so a selected job can be re-executed.

use crate::domain::jobs::find_job;
use crate::http::auth::{InNetwork, Reader};
use crate::http::error::responses::{BadRequest, Conflict, Managing, Reading};
use crate::http::error::{ApiError, ApiResult};
use crate::http::jobs::requester_job;
use crate::state::AppState;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use mesh_proto::api::{CheckInfo, VrfKeyInfo};
use mesh_proto::{Blake3Hash, JobId};

fn job_id(text: &str) -> ApiResult<JobId> {
    text.parse().map_err(|_| ApiError::not_found("job"))
}

fn payload_hash(text: &str) -> ApiResult<Blake3Hash> {
    text.parse().map_err(|_| ApiError::not_found("payload"))
}

/// The control plane's VRF public key and check policy, to verify selections offline.
#[utoipa::path(get, path = "/v1/vrf", tag = "checks",
    responses((status = 200, body = VrfKeyInfo)))]
pub async fn vrf_key(State(state): State<AppState>) -> Json<VrfKeyInfo> {
    Json(VrfKeyInfo {
        suite: mesh_proto::vrf::SUITE.into(),
        public_key: state.vrf.public_key(),
        policy: state.config.check_policy,
        ringers: state.config.ringers,
    })
}

/// A settled job's check: the VRF selection with its proof, and its outcome.
#[utoipa::path(get, path = "/v1/networks/{network}/jobs/{job}/check", tag = "checks", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("job" = String, Path, description = "Job id")),
    responses((status = 200, body = CheckInfo), Reading))]
pub async fn show_check(
    State(state): State<AppState>,
    Reader {
        principal: _,
        network,
    }: Reader,
    Path((_network, job)): Path<(String, String)>,
) -> ApiResult<Json<CheckInfo>> {
    let job = find_job(&state, Some(&network), &job_id(&job)?).await?;
    let mut info = crate::domain::checks::check_info(&state, &job.id)
        .await?
        .ok_or_else(|| ApiError::not_found_with("not_settled", "the job has not settled yet"))?;
    info.selection_check = crate::domain::checks::selection_check(&state, &job, &info.selection);
    Ok(Json(info))
}

/// The requester uploads its job's input or output (by BLAKE3, as the receipt names them) so
/// the control plane can re-execute a selected job.
#[utoipa::path(put, path = "/v1/networks/{network}/jobs/{job}/payloads/{hash}", tag = "checks", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("job" = String, Path, description = "Job id"),
           ("hash" = String, Path, description = "BLAKE3 of the payload")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204), Managing, BadRequest, Conflict))]
pub async fn upload_payload(
    State(state): State<AppState>,
    InNetwork { principal, network }: InNetwork,
    Path((_network, job, hash)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let job = requester_job(&state, &principal, &network, &job_id(&job)?).await?;
    crate::domain::checks::upload_payload(&state, &job, &payload_hash(&hash)?, &body).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The requester downloads a stored payload of its job: its input, output, or the verified
/// result of a failed check.
#[utoipa::path(get, path = "/v1/networks/{network}/jobs/{job}/payloads/{hash}", tag = "checks", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("job" = String, Path, description = "Job id"),
           ("hash" = String, Path, description = "BLAKE3 of the payload")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), Managing))]
pub async fn download_payload(
    State(state): State<AppState>,
    InNetwork { principal, network }: InNetwork,
    Path((_network, job, hash)): Path<(String, String, String)>,
) -> ApiResult<impl IntoResponse> {
    let job = requester_job(&state, &principal, &network, &job_id(&job)?).await?;
    let bytes =
        crate::domain::checks::requester_payload(&state, &job, &payload_hash(&hash)?).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes))
}

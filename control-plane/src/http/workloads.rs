//! The workload registry: publish (validated, content-addressed, idempotent), list, show,
//! download by hash, yank.

use crate::domain::workloads::{self, Published};
use crate::http::auth::{Admin, Reader};
use crate::http::error::responses::{Conflict, Managing, Reading, TooLarge, Unprocessable};
use crate::http::error::{ApiBytes, ApiError, ApiResult};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use mesh_proto::Blake3Hash;
use mesh_proto::api::WorkloadInfo;

/// Parse a component hash from a path; malformed hashes are simply not found.
fn hash_param(text: &str) -> ApiResult<Blake3Hash> {
    text.parse().map_err(|_| ApiError::not_found("workload"))
}

/// Publish a component (admin). The body is the component (`application/wasm`); the server
/// checks it is a component of the Mesh world and reads its name, version, models and
/// comparison rule from its `metadata` export. Publishing the same bytes again is a no-op.
#[utoipa::path(post, path = "/v1/networks/{network}/workloads", tag = "workloads", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id")),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "The component"),
    responses((status = 201, body = WorkloadInfo, description = "Published"), (status = 200, body = WorkloadInfo, description = "Already published"), Managing, Conflict, TooLarge, Unprocessable))]
pub async fn publish(
    State(state): State<AppState>,
    Admin {
        principal, network, ..
    }: Admin,
    ApiBytes(body): ApiBytes,
) -> ApiResult<(StatusCode, Json<WorkloadInfo>)> {
    let person = principal.person()?;
    let (published, info) =
        workloads::publish(&state, &network, &person, &principal.label(), &body).await?;
    let status = match published {
        Published::New => StatusCode::CREATED,
        Published::Again => StatusCode::OK,
    };
    Ok((status, Json(info)))
}

/// Workloads of a network.
#[utoipa::path(get, path = "/v1/networks/{network}/workloads", tag = "workloads", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id")),
    responses((status = 200, body = Vec<WorkloadInfo>), Reading))]
pub async fn list(
    State(state): State<AppState>,
    Reader {
        principal: _,
        network,
    }: Reader,
) -> ApiResult<Json<Vec<WorkloadInfo>>> {
    Ok(Json(workloads::list(&state, &network).await?))
}

/// One workload.
#[utoipa::path(get, path = "/v1/networks/{network}/workloads/{hash}", tag = "workloads", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("hash" = String, Path, description = "Component hash (b3:…)")),
    responses((status = 200, body = WorkloadInfo), Reading))]
pub async fn show(
    State(state): State<AppState>,
    Reader {
        principal: _,
        network,
    }: Reader,
    Path((_network, hash)): Path<(String, String)>,
) -> ApiResult<Json<WorkloadInfo>> {
    Ok(Json(
        workloads::find(&state, &network, &hash_param(&hash)?).await?,
    ))
}

/// Download a workload's component bytes.
#[utoipa::path(get, path = "/v1/networks/{network}/workloads/{hash}/component", tag = "workloads", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("hash" = String, Path, description = "Component hash")),
    responses((status = 200, content_type = "application/wasm", body = Vec<u8>), Reading))]
pub async fn download(
    State(state): State<AppState>,
    Reader {
        principal: _,
        network,
    }: Reader,
    Path((_network, hash)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let hash = hash_param(&hash)?;
    workloads::find(&state, &network, &hash).await?;
    let bytes = crate::store::workloads::component(&state.db.pool, &hash)
        .await?
        .ok_or_else(|| ApiError::internal(format!("the component {hash} is missing")))?;
    Ok(([(header::CONTENT_TYPE, "application/wasm")], bytes))
}

/// Yank a workload (admin): no new jobs; running ones finish.
#[utoipa::path(post, path = "/v1/networks/{network}/workloads/{hash}/yank", tag = "workloads", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("hash" = String, Path, description = "Component hash")),
    responses((status = 200, body = WorkloadInfo), Managing))]
pub async fn yank(
    State(state): State<AppState>,
    Admin {
        principal, network, ..
    }: Admin,
    Path((_network, hash)): Path<(String, String)>,
) -> ApiResult<Json<WorkloadInfo>> {
    let hash = hash_param(&hash)?;
    Ok(Json(
        workloads::yank(&state, &network, &principal.label(), &hash).await?,
    ))
}

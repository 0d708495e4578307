//! The workload registry: publish (validated, content-addressed, idempotent), list, show,
//! download by hash, yank.

use crate::http::auth::{Admin, Reader};
use crate::http::error::responses::{Conflict, Managing, Reading, TooLarge, Unprocessable};
use crate::http::error::{ApiBytes, ApiError, ApiResult};
use crate::state::{AppState, MAX_COMPONENT_BYTES};
use crate::store::{StoreError, now_ms, workloads};
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

/// Look up a workload of a network.
pub async fn find_workload(
    state: &AppState,
    network: &mesh_proto::NetworkId,
    hash: &Blake3Hash,
) -> ApiResult<WorkloadInfo> {
    workloads::get(&state.db.pool, network, hash)
        .await?
        .ok_or_else(|| ApiError::not_found("workload"))
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
    if body.is_empty() || body.len() > MAX_COMPONENT_BYTES {
        return Err(ApiError::bad_request(format!(
            "the body must be a component of 1..={MAX_COMPONENT_BYTES} bytes"
        )));
    }
    let hash = Blake3Hash::of(&body);
    if let Ok(existing) = find_workload(&state, &network, &hash).await {
        return Ok((StatusCode::OK, Json(existing)));
    }
    let validator = state.validator.clone();
    let bytes = body.clone();
    let metadata = tokio::task::spawn_blocking({
        let span = tracing::Span::current();
        move || span.in_scope(|| validator.inspect(&bytes))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| ApiError::unprocessable("invalid_component", e.to_string()))?;

    let mut tx = state.db.pool.begin().await?;
    let inserted = workloads::publish(&mut tx, &network, &person, &body, &metadata, now_ms())
        .await
        .map_err(|e| match e {
            StoreError::Duplicate(_) => ApiError::conflict(
                "version_exists",
                format!(
                    "{}@{} is already published with different bytes",
                    metadata.name, metadata.version
                ),
            ),
            e => ApiError::from(e),
        })?;
    crate::store::audit::append(
        &mut tx,
        Some(&network),
        &principal.label(),
        "workload.publish",
        &format!("{}@{} {hash}", metadata.name, metadata.version),
        crate::store::now_ms(),
    )
    .await?;
    tx.commit().await?;
    let status = if inserted {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(find_workload(&state, &network, &hash).await?)))
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
    all_workloads(&state, &network).await.map(Json)
}

/// Every workload of `network`, by name then publication time.
pub async fn all_workloads(
    state: &AppState,
    network: &mesh_proto::NetworkId,
) -> ApiResult<Vec<WorkloadInfo>> {
    Ok(workloads::list(&state.db.pool, network).await?)
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
        find_workload(&state, &network, &hash_param(&hash)?).await?,
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
    find_workload(&state, &network, &hash).await?;
    let bytes = workloads::component(&state.db.pool, &hash)
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
    let mut tx = state.db.pool.begin().await?;
    if workloads::yank(&mut tx, &network, &hash, now_ms()).await? {
        crate::store::audit::append(
            &mut tx,
            Some(&network),
            &principal.label(),
            "workload.yank",
            &hash.to_string(),
            crate::store::now_ms(),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Json(find_workload(&state, &network, &hash).await?))
}

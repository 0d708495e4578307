//! The workload registry: publish (validated, content-addressed, idempotent), list, show,
//! download by hash, yank.

use crate::api::networks::network_id;
use crate::auth::{Auth, parse, require_reader, require_role};
use crate::error::{ApiBytes, ApiError, ApiResult, ErrorBody};
use crate::state::{AppState, MAX_COMPONENT_BYTES};
use crate::store::now_ms;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use mesh_proto::api::{Role, WorkloadInfo};
use mesh_proto::{Blake3Hash, WorkloadMetadata};
use sqlx::Row;

/// Parse a component hash from a path; malformed hashes are simply not found.
fn hash_param(text: &str) -> ApiResult<Blake3Hash> {
    text.parse().map_err(|_| ApiError::not_found("workload"))
}

fn workload_from_row(row: &sqlx::any::AnyRow) -> ApiResult<WorkloadInfo> {
    let metadata: String = row.try_get("metadata")?;
    let metadata: WorkloadMetadata = serde_json::from_str(&metadata).map_err(ApiError::internal)?;
    Ok(WorkloadInfo {
        network: parse(row.try_get("network_id")?)?,
        hash: parse(row.try_get("hash")?)?,
        name: metadata.name,
        version: metadata.version,
        models: metadata.models,
        comparison: metadata.comparison,
        publisher: parse(row.try_get("publisher_id")?)?,
        size: row.try_get::<i64, _>("size")? as u64,
        published_at_ms: row.try_get("published_at")?,
        yanked: row.try_get::<Option<i64>, _>("yanked_at")?.is_some(),
    })
}

const WORKLOAD_COLUMNS: &str =
    "network_id, hash, metadata, publisher_id, size, published_at, yanked_at";

/// Look up a workload of a network.
pub async fn find_workload(
    state: &AppState,
    network: &mesh_proto::NetworkId,
    hash: &Blake3Hash,
) -> ApiResult<WorkloadInfo> {
    let row = sqlx::query(&format!(
        "SELECT {WORKLOAD_COLUMNS} FROM workloads WHERE network_id = $1 AND hash = $2"
    ))
    .bind(network.to_string())
    .bind(hash.to_string())
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("workload"))?;
    workload_from_row(&row)
}

/// Publish a component (admin). The body is the component (`application/wasm`); the server
/// checks it is a component of the Mesh world and reads its name, version, models and
/// comparison rule from its `metadata` export. Publishing the same bytes again is a no-op.
#[utoipa::path(post, path = "/v1/networks/{network}/workloads", tag = "workloads", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id")),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "The component"),
    responses((status = 201, body = WorkloadInfo, description = "Published"), (status = 200, body = WorkloadInfo, description = "Already published"),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn publish(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(network): Path<String>,
    ApiBytes(body): ApiBytes,
) -> ApiResult<(StatusCode, Json<WorkloadInfo>)> {
    let network = network_id(&network)?;
    require_role(&state, &principal, &network, Role::Admin).await?;
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
    let metadata = tokio::task::spawn_blocking(move || validator.inspect(&bytes))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::unprocessable("invalid_component", e.to_string()))?;

    let mut tx = state.db.pool.begin().await?;
    sqlx::query("INSERT INTO components (hash, size, bytes) VALUES ($1, $2, $3) ON CONFLICT (hash) DO NOTHING")
        .bind(hash.to_string())
        .bind(body.len() as i64)
        .bind(body.to_vec())
        .execute(&mut *tx)
        .await?;
    let inserted = sqlx::query(
        "INSERT INTO workloads (network_id, hash, name, version, metadata, publisher_id, size, published_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (network_id, hash) DO NOTHING",
    )
    .bind(network.to_string())
    .bind(hash.to_string())
    .bind(&metadata.name)
    .bind(&metadata.version)
    .bind(serde_json::to_string(&metadata).map_err(ApiError::internal)?)
    .bind(person.to_string())
    .bind(body.len() as i64)
    .bind(now_ms())
    .execute(&mut *tx)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => ApiError::conflict(
            "version_exists",
            format!("{}@{} is already published with different bytes", metadata.name, metadata.version),
        ),
        _ => ApiError::from(e),
    })?
    .rows_affected();
    crate::api::audit(
        &mut tx,
        Some(&network),
        &principal.label(),
        "workload.publish",
        &format!("{}@{} {hash}", metadata.name, metadata.version),
    )
    .await?;
    tx.commit().await?;
    let status = if inserted == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(find_workload(&state, &network, &hash).await?)))
}

/// Workloads of a network.
#[utoipa::path(get, path = "/v1/networks/{network}/workloads", tag = "workloads", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id")),
    responses((status = 200, body = Vec<WorkloadInfo>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(network): Path<String>,
) -> ApiResult<Json<Vec<WorkloadInfo>>> {
    let network = network_id(&network)?;
    require_reader(&state, &principal, &network).await?;
    all_workloads(&state, &network).await.map(Json)
}

/// Every workload of `network`, by name then publication time.
pub async fn all_workloads(
    state: &AppState,
    network: &mesh_proto::NetworkId,
) -> ApiResult<Vec<WorkloadInfo>> {
    let rows = sqlx::query(&format!(
        "SELECT {WORKLOAD_COLUMNS} FROM workloads WHERE network_id = $1 ORDER BY name, published_at"
    ))
    .bind(network.to_string())
    .fetch_all(&state.db.pool)
    .await?;
    rows.iter().map(workload_from_row).collect()
}

/// One workload.
#[utoipa::path(get, path = "/v1/networks/{network}/workloads/{hash}", tag = "workloads", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("hash" = String, Path, description = "Component hash (b3:…)")),
    responses((status = 200, body = WorkloadInfo), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path((network, hash)): Path<(String, String)>,
) -> ApiResult<Json<WorkloadInfo>> {
    let network = network_id(&network)?;
    require_reader(&state, &principal, &network).await?;
    Ok(Json(
        find_workload(&state, &network, &hash_param(&hash)?).await?,
    ))
}

/// Download a workload's component bytes.
#[utoipa::path(get, path = "/v1/networks/{network}/workloads/{hash}/component", tag = "workloads", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("hash" = String, Path, description = "Component hash")),
    responses((status = 200, content_type = "application/wasm", body = Vec<u8>), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn download(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path((network, hash)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let network = network_id(&network)?;
    require_reader(&state, &principal, &network).await?;
    let hash = hash_param(&hash)?;
    find_workload(&state, &network, &hash).await?;
    let bytes: Vec<u8> = sqlx::query_scalar("SELECT bytes FROM components WHERE hash = $1")
        .bind(hash.to_string())
        .fetch_one(&state.db.pool)
        .await?;
    if Blake3Hash::of(&bytes) != hash {
        return Err(ApiError::internal(format!(
            "stored component {hash} is corrupt"
        )));
    }
    Ok(([(header::CONTENT_TYPE, "application/wasm")], bytes))
}

/// Yank a workload (admin): no new jobs; running ones finish.
#[utoipa::path(post, path = "/v1/networks/{network}/workloads/{hash}/yank", tag = "workloads", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("hash" = String, Path, description = "Component hash")),
    responses((status = 200, body = WorkloadInfo), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn yank(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path((network, hash)): Path<(String, String)>,
) -> ApiResult<Json<WorkloadInfo>> {
    let network = network_id(&network)?;
    require_role(&state, &principal, &network, Role::Admin).await?;
    let hash = hash_param(&hash)?;
    let mut tx = state.db.pool.begin().await?;
    let updated = sqlx::query("UPDATE workloads SET yanked_at = $1 WHERE network_id = $2 AND hash = $3 AND yanked_at IS NULL")
        .bind(now_ms())
        .bind(network.to_string())
        .bind(hash.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if updated == 1 {
        crate::api::audit(
            &mut tx,
            Some(&network),
            &principal.label(),
            "workload.yank",
            &hash.to_string(),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Json(find_workload(&state, &network, &hash).await?))
}

//! Health, metrics, the OpenAPI document and the control plane's public key.

use crate::http::error::responses::{Reading, Unavailable};
use crate::http::error::{ApiError, ApiResult};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use mesh_proto::api::{ControlPlaneKey, Health};

/// Liveness and readiness: answers once the database does.
#[utoipa::path(get, path = "/healthz", tag = "system",
    responses((status = 200, body = Health), Unavailable))]
pub async fn healthz(State(state): State<AppState>) -> ApiResult<Json<Health>> {
    state
        .db
        .ping()
        .await
        .map_err(|e| ApiError::unavailable("database_unavailable", e.to_string()))?;
    Ok(Json(Health {
        status: "ok".into(),
        database: match state.db.backend {
            crate::store::Backend::Sqlite => "sqlite".into(),
            crate::store::Backend::Postgres => "postgres".into(),
        },
        protocol_version: mesh_proto::PROTOCOL_VERSION,
    }))
}

/// Prometheus metrics in the text exposition format, for a scraper presenting the configured
/// metrics token (they count every network's jobs and devices); 404 when none is configured.
#[utoipa::path(get, path = "/metrics", tag = "system", security(("bearer" = [])),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"), Reading))]
pub async fn metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> ApiResult<impl IntoResponse> {
    let Some(token) = state.config.metrics_token.as_deref() else {
        return Err(ApiError::no_route());
    };
    if !crate::http::relay::has_secret(&headers, token) {
        return Err(ApiError::new_unauthenticated(
            "unauthenticated",
            "metrics scrapers authenticate with the metrics token",
        ));
    }
    let text = state.metrics.render(&state.db).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

/// The OpenAPI 3.1 document describing every route.
#[utoipa::path(get, path = "/openapi.json", tag = "system",
    responses((status = 200, description = "OpenAPI document", content_type = "application/json")))]
pub async fn openapi(State(state): State<AppState>) -> impl IntoResponse {
    let _ = state;
    let doc = crate::http::openapi_document();
    Json(doc)
}

/// The control plane's public key, to check certificates and job tickets offline.
#[utoipa::path(get, path = "/v1/control-plane/key", tag = "system",
    responses((status = 200, body = ControlPlaneKey)))]
pub async fn control_plane_key(State(state): State<AppState>) -> Json<ControlPlaneKey> {
    Json(ControlPlaneKey {
        public_key: state.key.public_key(),
        peer_id: crate::domain::scheduling::gateway_peer(&state),
        relays: state.config.relays.clone(),
    })
}

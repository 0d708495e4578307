//! The relay feed: relays poll a fresh certificate of every approved device and serve only
//! those peers (they check each certificate's signature themselves).

use crate::domain::membership::issue_certificate;
use crate::http::error::responses::Reading;
use crate::http::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::now_ms;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use mesh_proto::api::RelayAllowList;

/// Whether `headers` carry `Authorization: Bearer <secret>`, compared in constant time.
pub fn has_secret(headers: &HeaderMap, secret: &str) -> bool {
    let Some(presented) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    // Compare hashes so timing reveals nothing about the secret.
    blake3::hash(presented.as_bytes()) == blake3::hash(secret.as_bytes())
}

/// Certificates of every approved device (relays only, by the configured relay secret).
#[utoipa::path(get, path = "/v1/relay/allow-list", tag = "relay", security(("bearer" = [])),
    responses((status = 200, body = RelayAllowList), Reading))]
pub async fn allow_list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<RelayAllowList>> {
    let Some(secret) = state.config.relay_secret.as_deref() else {
        return Err(ApiError::no_route());
    };
    if !has_secret(&headers, secret) {
        return Err(ApiError::new_unauthenticated(
            "unauthenticated",
            "relays authenticate with the relay secret",
        ));
    }
    let devices = crate::store::devices::approved(&state.db.pool).await?;
    let mut certificates = Vec::with_capacity(devices.len());
    for d in devices {
        certificates.push(issue_certificate(
            &state,
            &d.id,
            &d.network,
            &d.owner,
            &d.public_key,
        )?);
    }
    Ok(Json(RelayAllowList {
        issued_at_ms: now_ms(),
        gateway_peer: crate::domain::scheduling::gateway_peer(&state),
        certificates,
    }))
}

//! Devices: registration with proof of key possession, approval, revocation, certificates and
//! signed heartbeats.

use crate::domain::membership::issue_certificate;
use crate::http::auth::{Admin, DeviceAuth, Member, Reader};
use crate::http::error::responses::{
    BadRequest, Conflict, Forbidden, Gone, Managing, NotFound, Reading, Unauthenticated,
};
use crate::http::error::{ApiError, ApiJson, ApiResult};
use crate::state::AppState;
use crate::store::{devices, invites};
use crate::store::{now_ms, random_secret};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mesh_proto::api::{
    CertificateResponse, Challenge, ChallengeRequest, DeviceInfo, DeviceStatus, HeartbeatResponse,
    InviteKind, NetworkPeers, RegisterDeviceRequest, RegisteredDevice, SetTermsRequest,
};
use mesh_proto::device::Heartbeat;
use mesh_proto::{DeviceId, SignDomain, Signed};
use std::sync::atomic::Ordering;

/// Parse a device id from a path; malformed ids are simply not found.
fn device_id(text: &str) -> ApiResult<DeviceId> {
    text.parse().map_err(|_| ApiError::not_found("device"))
}

/// Start registering a device: check the invite and issue a one-time challenge.
#[utoipa::path(post, path = "/v1/devices/challenge", tag = "devices",
    request_body = ChallengeRequest,
    responses((status = 200, body = Challenge), BadRequest, NotFound, Gone))]
pub async fn challenge(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ChallengeRequest>,
) -> ApiResult<Json<Challenge>> {
    let invite = invites::by_code(&state.db.pool, &request.invite)
        .await?
        .ok_or_else(|| ApiError::not_found("invite"))?;
    if invite.kind != InviteKind::Device {
        return Err(ApiError::bad_request("this is not a device invite"));
    }
    let now = now_ms();
    if invite.used_at_ms.is_some() || invite.expires_at_ms <= now {
        return Err(ApiError::gone(
            "invite_unusable",
            "this invite was used or has expired",
        ));
    }
    let challenge = random_secret();
    let expires_at_ms = now + state.config.challenge_lifetime.as_millis() as i64;
    invites::insert_challenge(&state.db, &challenge, expires_at_ms, now).await?;
    Ok(Json(Challenge {
        challenge,
        network: invite.network,
        expires_at_ms,
    }))
}

/// Register a device with a device invite and a signature over the challenge.
#[utoipa::path(post, path = "/v1/devices/register", tag = "devices",
    request_body = RegisterDeviceRequest,
    responses((status = 201, body = RegisteredDevice), Reading, BadRequest, Conflict, Gone))]
pub async fn register(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RegisterDeviceRequest>,
) -> ApiResult<(StatusCode, Json<RegisteredDevice>)> {
    let registered = crate::domain::devices::register(&state, &request).await?;
    Ok((StatusCode::CREATED, Json(registered)))
}

/// Devices of a network.
#[utoipa::path(get, path = "/v1/networks/{network}/devices", tag = "devices", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id")),
    responses((status = 200, body = Vec<DeviceInfo>), Reading))]
pub async fn list_devices(
    State(state): State<AppState>,
    Reader {
        principal: _,
        network,
    }: Reader,
) -> ApiResult<Json<Vec<DeviceInfo>>> {
    Ok(Json(devices::list(&state.db.pool, &network).await?))
}

/// Peer ids of the network's approved devices and of the gateway: whom its hosts let connect.
#[utoipa::path(get, path = "/v1/networks/{network}/peers", tag = "devices", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id")),
    responses((status = 200, body = NetworkPeers), Reading))]
pub async fn network_peers(
    State(state): State<AppState>,
    Reader {
        principal: _,
        network,
    }: Reader,
) -> ApiResult<Json<NetworkPeers>> {
    Ok(Json(
        crate::domain::devices::network_peers(&state, &network).await?,
    ))
}

async fn set_status(
    state: &AppState,
    admin: &Admin,
    device: &str,
    from: &[DeviceStatus],
    to: DeviceStatus,
) -> ApiResult<DeviceInfo> {
    let device = device_id(device)?;
    let actor = admin.principal.label();
    Ok(crate::domain::devices::change_status(
        state,
        &admin.network,
        &actor,
        admin.role,
        &device,
        from,
        to,
    )
    .await?)
}

/// Approve a pending device (admin).
#[utoipa::path(post, path = "/v1/networks/{network}/devices/{device}/approve", tag = "devices", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("device" = String, Path, description = "Device id")),
    responses((status = 200, body = DeviceInfo), Managing, Conflict))]
pub async fn approve_device(
    State(state): State<AppState>,
    admin: Admin,
    Path((_network, device)): Path<(String, String)>,
) -> ApiResult<Json<DeviceInfo>> {
    set_status(
        &state,
        &admin,
        &device,
        &[DeviceStatus::Pending],
        DeviceStatus::Approved,
    )
    .await
    .map(Json)
}

/// Lift a device's quarantine (admin, not the device's owner): it gets jobs again, on
/// probation, so its next failed check quarantines it again.
#[utoipa::path(post, path = "/v1/networks/{network}/devices/{device}/release", tag = "devices", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("device" = String, Path, description = "Device id")),
    responses((status = 200, body = DeviceInfo), Managing, Conflict))]
pub async fn release_device(
    State(state): State<AppState>,
    admin: Admin,
    Path((_network, device)): Path<(String, String)>,
) -> ApiResult<Json<DeviceInfo>> {
    let device = device_id(&device)?;
    Ok(Json(
        crate::domain::devices::release(&state, &admin.network, &admin.person, &device).await?,
    ))
}

/// Revoke a device (admin): its token, certificate renewals and heartbeats stop at once.
#[utoipa::path(post, path = "/v1/networks/{network}/devices/{device}/revoke", tag = "devices", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("device" = String, Path, description = "Device id")),
    responses((status = 200, body = DeviceInfo), Managing, Conflict))]
pub async fn revoke_device(
    State(state): State<AppState>,
    admin: Admin,
    Path((_network, device)): Path<(String, String)>,
) -> ApiResult<Json<DeviceInfo>> {
    set_status(
        &state,
        &admin,
        &device,
        &[DeviceStatus::Pending, DeviceStatus::Approved],
        DeviceStatus::Revoked,
    )
    .await
    .map(Json)
}

/// Set one layer of a device's terms in the network: the owner's (the device's owner) or the
/// admins' (admins). A job must pass these and the terms in the device's own config.
#[utoipa::path(put, path = "/v1/networks/{network}/devices/{device}/terms", tag = "devices", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("device" = String, Path, description = "Device id")),
    request_body = SetTermsRequest,
    responses((status = 200, body = DeviceInfo), BadRequest, Managing, Conflict))]
pub async fn set_terms(
    State(state): State<AppState>,
    member: Member,
    Path((_network, device)): Path<(String, String)>,
    ApiJson(request): ApiJson<SetTermsRequest>,
) -> ApiResult<Json<DeviceInfo>> {
    let device = device_id(&device)?;
    Ok(Json(
        crate::domain::devices::set_terms(
            &state,
            &member.network,
            &member.person,
            member.role,
            &device,
            request.layer,
            &request.terms,
        )
        .await?,
    ))
}

/// A fresh certificate for the calling device (approved devices only).
#[utoipa::path(get, path = "/v1/devices/{device}/certificate", tag = "devices", security(("bearer" = [])),
    params(("device" = String, Path, description = "Device id")),
    responses((status = 200, body = CertificateResponse), Unauthenticated, Forbidden, Conflict))]
pub async fn certificate(
    State(state): State<AppState>,
    DeviceAuth(principal): DeviceAuth,
    Path(device): Path<String>,
) -> ApiResult<Json<CertificateResponse>> {
    let (caller, network) = principal.device()?;
    if device_id(&device).ok() != Some(caller) {
        return Err(ApiError::forbidden(
            "a device can only fetch its own certificate",
        ));
    }
    let device = devices::get(&state.db.pool, &caller)
        .await?
        .ok_or_else(|| ApiError::not_found("device"))?;
    if device.status != DeviceStatus::Approved {
        return Err(ApiError::conflict(
            "not_approved",
            "the device is not approved",
        ));
    }
    Ok(Json(CertificateResponse {
        certificate: issue_certificate(
            &state,
            &caller,
            &network,
            &device.owner,
            &device.public_key,
        )?,
        control_plane_key: state.key.public_key(),
    }))
}

/// A signed heartbeat from the device itself; timestamps must increase (no replays).
#[utoipa::path(post, path = "/v1/devices/{device}/heartbeat", tag = "devices", security(("bearer" = [])),
    params(("device" = String, Path, description = "Device id")),
    request_body(content = Object, description = "Signed<Heartbeat> (domain heartbeat)"),
    responses((status = 200, body = HeartbeatResponse), BadRequest, Unauthenticated, Forbidden, Conflict))]
pub async fn heartbeat(
    State(state): State<AppState>,
    DeviceAuth(principal): DeviceAuth,
    Path(device): Path<String>,
    ApiJson(signed): ApiJson<Signed<Heartbeat>>,
) -> ApiResult<Json<HeartbeatResponse>> {
    let crate::http::auth::Principal::Device {
        device: caller,
        network,
        key,
        ..
    } = principal
    else {
        return Err(ApiError::forbidden("this call is for devices"));
    };
    if device_id(&device).ok() != Some(caller) {
        return Err(ApiError::forbidden("a device can only heartbeat as itself"));
    }
    let claimed = signed
        .peek()
        .map_err(|e| ApiError::bad_request(format!("malformed heartbeat: {e}")))?;
    if claimed.device != caller || claimed.network != network {
        return Err(ApiError::forbidden("a device can only heartbeat as itself"));
    }
    let heartbeat = signed
        .verify(&key, SignDomain::Heartbeat, &network)
        .map_err(|_| {
            ApiError::new_unauthenticated(
                "bad_signature",
                "the heartbeat signature does not verify",
            )
        })?;
    heartbeat
        .terms
        .check()
        .map_err(|e| ApiError::bad_request(format!("heartbeat terms: {e}")))?;
    let now = now_ms();
    let sent = i64::try_from(heartbeat.sent_at_ms).unwrap_or(i64::MAX);
    if (sent - now).abs() > state.config.max_clock_skew.as_millis() as i64 {
        return Err(ApiError::bad_request(
            "heartbeat timestamp is too far from the server's clock",
        ));
    }
    // Written with concurrent heartbeats in one statement (group commit); the timestamp
    // condition in it is the replay protection.
    let recorded = state
        .presence
        .record(crate::store::presence::PresenceUpdate {
            device: caller,
            seen_at_ms: now,
            sent_at_ms: sent,
            load: heartbeat.load,
            host_terms: serde_json::to_string(&heartbeat.terms).map_err(ApiError::internal)?,
        })
        .await
        .map_err(ApiError::internal)?;
    let Some(recorded) = recorded else {
        return Err(ApiError::conflict(
            "replayed_heartbeat",
            "heartbeat is not newer than the last one",
        ));
    };
    state.metrics.heartbeats.fetch_add(1, Ordering::Relaxed);
    Ok(Json(HeartbeatResponse {
        // The token resolved, so the device is pending or approved; only approved ones are online.
        status: if recorded.online {
            DeviceStatus::Approved
        } else {
            DeviceStatus::Pending
        },
        interval_s: state.config.heartbeat_interval.as_secs().max(1),
        terms: recorded.terms,
    }))
}

//! Devices: registration with proof of key possession, approval, revocation, certificates and
//! signed heartbeats.

use crate::api::networks::network_id;
use crate::api::people::{check_name, use_invite};
use crate::auth::{Auth, new_token_secret, parse, require_reader, require_role};
use crate::error::{ApiError, ApiJson, ApiResult, ErrorBody};
use crate::state::AppState;
use crate::store::{now_ms, random_id, random_secret, secret_hash};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mesh_proto::api::{
    CertificateResponse, Challenge, ChallengeRequest, DeviceInfo, DeviceStatus, HeartbeatResponse,
    RegisterDeviceRequest, RegisteredDevice, Role,
};
use mesh_proto::device::{Capabilities, DeviceCert, DeviceLoad, Heartbeat, RegistrationProof};
use mesh_proto::{DeviceId, NetworkId, PersonId, PublicKey, SignDomain, Signed, TokenId};
use sqlx::Row;
use std::sync::atomic::Ordering;

/// Largest capability lists accepted (backends, models).
const MAX_CAPABILITY_ENTRIES: usize = 64;

/// Parse a device id from a path; malformed ids are simply not found.
fn device_id(text: &str) -> ApiResult<DeviceId> {
    text.parse().map_err(|_| ApiError::not_found("device"))
}

/// Sign a fresh certificate for an approved device.
pub fn issue_certificate(
    state: &AppState,
    device: &DeviceId,
    network: &NetworkId,
    owner: &PersonId,
    public_key: &PublicKey,
) -> ApiResult<Signed<DeviceCert>> {
    let now = now_ms();
    let cert = DeviceCert {
        version: 1,
        device: *device,
        network: *network,
        owner: *owner,
        public_key: *public_key,
        peer_id: public_key.peer_id(),
        issued_at_ms: now as u64,
        expires_at_ms: (now + state.config.certificate_lifetime.as_millis() as i64) as u64,
    };
    Signed::sign(&cert, &state.key, SignDomain::DeviceCert, network).map_err(ApiError::internal)
}

/// Start registering a device: check the invite and issue a one-time challenge.
#[utoipa::path(post, path = "/v1/devices/challenge", tag = "devices",
    request_body = ChallengeRequest,
    responses((status = 200, body = Challenge), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 410, body = ErrorBody)))]
pub async fn challenge(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ChallengeRequest>,
) -> ApiResult<Json<Challenge>> {
    let row = sqlx::query(
        "SELECT network_id, kind, expires_at, used_at FROM invites WHERE code_hash = $1",
    )
    .bind(secret_hash(&request.invite))
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("invite"))?;
    if row.try_get::<String, _>("kind")? != "device" {
        return Err(ApiError::bad_request("this is not a device invite"));
    }
    let now = now_ms();
    if row.try_get::<Option<i64>, _>("used_at")?.is_some()
        || row.try_get::<i64, _>("expires_at")? <= now
    {
        return Err(ApiError::gone(
            "invite_unusable",
            "this invite was used or has expired",
        ));
    }
    let challenge = random_secret();
    let expires_at_ms = now + state.config.challenge_lifetime.as_millis() as i64;
    sqlx::query("DELETE FROM challenges WHERE expires_at <= $1")
        .bind(now)
        .execute(&state.db.pool)
        .await?;
    sqlx::query("INSERT INTO challenges (challenge, expires_at) VALUES ($1, $2)")
        .bind(&challenge)
        .bind(expires_at_ms)
        .execute(&state.db.pool)
        .await?;
    Ok(Json(Challenge {
        challenge,
        network: parse(row.try_get("network_id")?)?,
        expires_at_ms,
    }))
}

/// Register a device with a device invite and a signature over the challenge.
#[utoipa::path(post, path = "/v1/devices/register", tag = "devices",
    request_body = RegisterDeviceRequest,
    responses((status = 201, body = RegisteredDevice), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 410, body = ErrorBody)))]
pub async fn register(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RegisterDeviceRequest>,
) -> ApiResult<(StatusCode, Json<RegisteredDevice>)> {
    let name = check_name(&request.name)?;
    check_capabilities(&request.capabilities)?;
    let mut tx = state.db.pool.begin().await?;
    let (network, _) = use_invite(&mut tx, &request.invite, "device").await?;
    // The challenge is single-use: deleting it is what makes a replayed registration fail.
    let fresh = sqlx::query("DELETE FROM challenges WHERE challenge = $1 AND expires_at > $2")
        .bind(&request.challenge)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if fresh != 1 {
        return Err(ApiError::gone(
            "challenge_invalid",
            "unknown, used or expired challenge",
        ));
    }
    let proof = RegistrationProof {
        challenge: request.challenge.clone(),
        public_key: request.public_key,
    };
    let payload = mesh_proto::cbor::to_vec(&proof).map_err(ApiError::internal)?;
    request
        .public_key
        .verify(SignDomain::Registration, &network, &payload, &request.proof)
        .map_err(|_| {
            ApiError::new_unauthenticated(
                "bad_proof",
                "the proof of key possession does not verify",
            )
        })?;

    let owner: String = sqlx::query_scalar("SELECT created_by FROM invites WHERE code_hash = $1")
        .bind(secret_hash(&request.invite))
        .fetch_one(&mut *tx)
        .await?;
    let owner: PersonId = parse(owner)?;
    let require_approval: i64 =
        sqlx::query_scalar("SELECT require_device_approval FROM networks WHERE id = $1")
            .bind(network.to_string())
            .fetch_one(&mut *tx)
            .await?;
    let status = if require_approval != 0 {
        DeviceStatus::Pending
    } else {
        DeviceStatus::Approved
    };
    let device: DeviceId = random_id(DeviceId::from_bytes);
    let now = now_ms();
    sqlx::query(
        "INSERT INTO devices (id, network_id, owner_id, name, public_key, peer_id, status, capabilities, created_at, approved_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(device.to_string())
    .bind(network.to_string())
    .bind(owner.to_string())
    .bind(&name)
    .bind(request.public_key.to_string())
    .bind(request.public_key.peer_id())
    .bind(status.as_str())
    .bind(serde_json::to_string(&request.capabilities).map_err(ApiError::internal)?)
    .bind(now)
    .bind((status == DeviceStatus::Approved).then_some(now))
    .execute(&mut *tx)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            ApiError::conflict("key_in_use", "a device with this public key is already registered")
        }
        _ => ApiError::from(e),
    })?;
    let token_id: TokenId = random_id(TokenId::from_bytes);
    let token = new_token_secret();
    sqlx::query(
        "INSERT INTO api_tokens (id, secret_hash, person_id, device_id, label, created_at) VALUES ($1, $2, NULL, $3, $4, $5)",
    )
    .bind(token_id.to_string())
    .bind(secret_hash(&token))
    .bind(device.to_string())
    .bind(format!("device {name}"))
    .bind(now)
    .execute(&mut *tx)
    .await?;
    crate::api::audit(
        &mut tx,
        Some(&network),
        &device.to_string(),
        "device.register",
        &name,
    )
    .await?;
    tx.commit().await?;
    let certificate = match status {
        DeviceStatus::Approved => Some(issue_certificate(
            &state,
            &device,
            &network,
            &owner,
            &request.public_key,
        )?),
        _ => None,
    };
    Ok((
        StatusCode::CREATED,
        Json(RegisteredDevice {
            device,
            network,
            status,
            token,
            certificate,
            control_plane_key: state.key.public_key(),
        }),
    ))
}

fn check_capabilities(c: &Capabilities) -> ApiResult<()> {
    let too_long = |v: &[String]| {
        v.len() > MAX_CAPABILITY_ENTRIES || v.iter().any(|s| s.is_empty() || s.len() > 128)
    };
    if too_long(&c.backends)
        || too_long(&c.models)
        || c.tier.len() > 32
        || c.gpu.as_ref().is_some_and(|g| g.len() > 128)
    {
        return Err(ApiError::bad_request("capabilities are too large"));
    }
    Ok(())
}

/// Build the public view of a device row.
pub fn device_from_row(row: &sqlx::any::AnyRow) -> ApiResult<DeviceInfo> {
    let status: String = row.try_get("status")?;
    let capabilities: String = row.try_get("capabilities")?;
    Ok(DeviceInfo {
        id: parse(row.try_get("id")?)?,
        network: parse(row.try_get("network_id")?)?,
        owner: parse(row.try_get("owner_id")?)?,
        name: row.try_get("name")?,
        public_key: parse(row.try_get("public_key")?)?,
        peer_id: row.try_get("peer_id")?,
        status: DeviceStatus::parse(&status).ok_or_else(|| ApiError::internal("bad status"))?,
        capabilities: serde_json::from_str(&capabilities).map_err(ApiError::internal)?,
        online: row.try_get::<i64, _>("online")? != 0,
        last_seen_at_ms: row.try_get("last_seen_at")?,
        load: DeviceLoad {
            running: row.try_get::<i64, _>("load_running")? as u32,
            queued: row.try_get::<i64, _>("load_queued")? as u32,
            slots: row.try_get::<i64, _>("load_slots")? as u32,
        },
        trust: row.try_get("trust")?,
        checks: mesh_proto::verification::CheckRecord {
            passed: row.try_get::<i64, _>("checks_passed")? as u32,
            failed: row.try_get::<i64, _>("checks_failed")? as u32,
            consecutive_passed: row.try_get::<i64, _>("consecutive_passed")? as u32,
        },
        quarantined_at_ms: row.try_get("quarantined_at")?,
    })
}

/// Columns [`device_from_row`] reads.
pub const DEVICE_COLUMNS: &str = "id, network_id, owner_id, name, public_key, peer_id, status, capabilities, online, \
     last_seen_at, load_running, load_queued, load_slots, trust, checks_passed, checks_failed, consecutive_passed, \
     quarantined_at";

/// Devices of a network.
#[utoipa::path(get, path = "/v1/networks/{network}/devices", tag = "devices", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id")),
    responses((status = 200, body = Vec<DeviceInfo>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_devices(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(network): Path<String>,
) -> ApiResult<Json<Vec<DeviceInfo>>> {
    let network = network_id(&network)?;
    require_reader(&state, &principal, &network).await?;
    let rows = sqlx::query(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices WHERE network_id = $1 ORDER BY created_at"
    ))
    .bind(network.to_string())
    .fetch_all(&state.db.pool)
    .await?;
    rows.iter()
        .map(device_from_row)
        .collect::<ApiResult<Vec<_>>>()
        .map(Json)
}

async fn set_status(
    state: &AppState,
    principal: &crate::auth::Principal,
    network: &str,
    device: &str,
    from: &[&str],
    to: DeviceStatus,
) -> ApiResult<DeviceInfo> {
    let network = network_id(network)?;
    require_role(state, principal, &network, Role::Admin).await?;
    let device = device_id(device)?;
    let now = now_ms();
    let mut tx = state.db.pool.begin().await?;
    let current: Option<String> =
        sqlx::query_scalar("SELECT status FROM devices WHERE id = $1 AND network_id = $2")
            .bind(device.to_string())
            .bind(network.to_string())
            .fetch_optional(&mut *tx)
            .await?;
    let current = current.ok_or_else(|| ApiError::not_found("device"))?;
    if !from.contains(&current.as_str()) {
        return Err(ApiError::conflict(
            "wrong_status",
            format!("device is {current}"),
        ));
    }
    let (column, online) = match to {
        DeviceStatus::Approved => ("approved_at", "online"),
        _ => ("revoked_at", "0"),
    };
    sqlx::query(&format!(
        "UPDATE devices SET status = $1, {column} = $2, online = {online} WHERE id = $3 AND status = $4"
    ))
    .bind(to.as_str())
    .bind(now)
    .bind(device.to_string())
    .bind(&current)
    .execute(&mut *tx)
    .await?;
    crate::api::audit(
        &mut tx,
        Some(&network),
        &principal.label(),
        &format!("device.{}", to.as_str()),
        &device.to_string(),
    )
    .await?;
    tx.commit().await?;
    let row = sqlx::query(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"
    ))
    .bind(device.to_string())
    .fetch_one(&state.db.pool)
    .await?;
    device_from_row(&row)
}

/// Approve a pending device (admin).
#[utoipa::path(post, path = "/v1/networks/{network}/devices/{device}/approve", tag = "devices", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("device" = String, Path, description = "Device id")),
    responses((status = 200, body = DeviceInfo), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn approve_device(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path((network, device)): Path<(String, String)>,
) -> ApiResult<Json<DeviceInfo>> {
    set_status(
        &state,
        &principal,
        &network,
        &device,
        &["pending"],
        DeviceStatus::Approved,
    )
    .await
    .map(Json)
}

/// Revoke a device (admin): its token, certificate renewals and heartbeats stop at once.
#[utoipa::path(post, path = "/v1/networks/{network}/devices/{device}/revoke", tag = "devices", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("device" = String, Path, description = "Device id")),
    responses((status = 200, body = DeviceInfo), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn revoke_device(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path((network, device)): Path<(String, String)>,
) -> ApiResult<Json<DeviceInfo>> {
    set_status(
        &state,
        &principal,
        &network,
        &device,
        &["pending", "approved"],
        DeviceStatus::Revoked,
    )
    .await
    .map(Json)
}

/// A fresh certificate for the calling device (approved devices only).
#[utoipa::path(get, path = "/v1/devices/{device}/certificate", tag = "devices", security(("bearer" = [])),
    params(("device" = String, Path, description = "Device id")),
    responses((status = 200, body = CertificateResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn certificate(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(device): Path<String>,
) -> ApiResult<Json<CertificateResponse>> {
    let (caller, network) = principal.device()?;
    if device_id(&device).ok() != Some(caller) {
        return Err(ApiError::forbidden(
            "a device can only fetch its own certificate",
        ));
    }
    let row = sqlx::query("SELECT owner_id, public_key, status FROM devices WHERE id = $1")
        .bind(caller.to_string())
        .fetch_one(&state.db.pool)
        .await?;
    if row.try_get::<String, _>("status")? != "approved" {
        return Err(ApiError::conflict(
            "not_approved",
            "the device is not approved",
        ));
    }
    let owner: PersonId = parse(row.try_get("owner_id")?)?;
    let key: PublicKey = parse(row.try_get("public_key")?)?;
    Ok(Json(CertificateResponse {
        certificate: issue_certificate(&state, &caller, &network, &owner, &key)?,
        control_plane_key: state.key.public_key(),
    }))
}

/// A signed heartbeat from the device itself; timestamps must increase (no replays).
#[utoipa::path(post, path = "/v1/devices/{device}/heartbeat", tag = "devices", security(("bearer" = [])),
    params(("device" = String, Path, description = "Device id")),
    request_body(content = Object, description = "Signed<Heartbeat> (domain heartbeat)"),
    responses((status = 200, body = HeartbeatResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn heartbeat(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(device): Path<String>,
    ApiJson(signed): ApiJson<Signed<Heartbeat>>,
) -> ApiResult<Json<HeartbeatResponse>> {
    let crate::auth::Principal::Device {
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
    let now = now_ms();
    let sent = i64::try_from(heartbeat.sent_at_ms).unwrap_or(i64::MAX);
    if (sent - now).abs() > state.config.max_clock_skew.as_millis() as i64 {
        return Err(ApiError::bad_request(
            "heartbeat timestamp is too far from the server's clock",
        ));
    }
    // Written with concurrent heartbeats in one statement (group commit); the timestamp
    // condition in it is the replay protection.
    let online = state
        .presence
        .record(crate::presence::PresenceUpdate {
            device: caller,
            seen_at_ms: now,
            sent_at_ms: sent,
            load: heartbeat.load,
        })
        .await
        .map_err(ApiError::internal)?;
    let Some(online) = online else {
        return Err(ApiError::conflict(
            "replayed_heartbeat",
            "heartbeat is not newer than the last one",
        ));
    };
    state.metrics.heartbeats.fetch_add(1, Ordering::Relaxed);
    Ok(Json(HeartbeatResponse {
        // The token resolved, so the device is pending or approved; only approved ones are online.
        status: if online {
            DeviceStatus::Approved
        } else {
            DeviceStatus::Pending
        },
        interval_s: state.config.heartbeat_interval.as_secs().max(1),
    }))
}

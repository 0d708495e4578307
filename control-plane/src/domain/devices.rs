//! Devices: registration with proof of key possession, and the admin's approval and
//! revocation, each written with its audit entry in one transaction.

use crate::domain::audit::{self, AuditAction};
use crate::domain::membership::{check_name, issue_certificate, new_token_secret, use_invite};
use crate::domain::{DomainError, DomainResult};
use crate::state::AppState;
use crate::store::{StoreError, devices, invites, networks, now_ms, people, random_id};
use mesh_proto::api::{
    DeviceInfo, DeviceStatus, InviteKind, RegisterDeviceRequest, RegisteredDevice,
};
use mesh_proto::device::{Capabilities, RegistrationProof};
use mesh_proto::{DeviceId, NetworkId, SignDomain, TokenId};

/// Largest capability lists accepted (backends, models).
const MAX_CAPABILITY_ENTRIES: usize = 64;

/// Register a device with a device invite and its signature over a fresh challenge: it is
/// approved at once unless the network's policy wants an admin to approve it (then it gets no
/// certificate yet).
pub async fn register(
    state: &AppState,
    request: &RegisterDeviceRequest,
) -> DomainResult<RegisteredDevice> {
    let name = check_name(&request.name)?;
    check_capabilities(&request.capabilities)?;
    let mut tx = state.db.pool.begin().await?;
    let (network, _, owner) = use_invite(&mut tx, &request.invite, InviteKind::Device).await?;
    // The challenge is single-use: deleting it is what makes a replayed registration fail.
    if !invites::take_challenge(&mut tx, &request.challenge, now_ms()).await? {
        return Err(DomainError::gone(
            "challenge_invalid",
            "unknown, used or expired challenge",
        ));
    }
    let proof = RegistrationProof {
        challenge: request.challenge.clone(),
        public_key: request.public_key,
    };
    let payload = mesh_proto::cbor::to_vec(&proof).map_err(DomainError::internal)?;
    request
        .public_key
        .verify(SignDomain::Registration, &network, &payload, &request.proof)
        .map_err(|_| {
            DomainError::new_unauthenticated(
                "bad_proof",
                "the proof of key possession does not verify",
            )
        })?;

    let require_approval = networks::policy(&mut *tx, &network)
        .await?
        .ok_or_else(|| DomainError::not_found("network"))?
        .require_device_approval;
    let status = if require_approval {
        DeviceStatus::Pending
    } else {
        DeviceStatus::Approved
    };
    let device: DeviceId = random_id(DeviceId::from_bytes);
    let now = now_ms();
    let new = devices::NewDevice {
        id: device,
        network,
        owner,
        name: &name,
        public_key: request.public_key,
        status,
        capabilities: &request.capabilities,
    };
    devices::insert(&mut tx, &new, now)
        .await
        .map_err(|e| match e {
            StoreError::Duplicate(_) => DomainError::conflict(
                "key_in_use",
                "a device with this public key is already registered",
            ),
            e => DomainError::from(e),
        })?;
    let token_id: TokenId = random_id(TokenId::from_bytes);
    let token = new_token_secret();
    let label = format!("device {name}");
    let subject = people::TokenOwner::Device(&device);
    people::insert_token(&mut tx, &token_id, &token, subject, &label, None, now).await?;
    audit::record(
        &mut tx,
        Some(&network),
        &device.to_string(),
        AuditAction::DeviceRegister,
        &name,
    )
    .await?;
    tx.commit().await?;
    let certificate = match status {
        DeviceStatus::Approved => Some(issue_certificate(
            state,
            &device,
            &network,
            &owner,
            &request.public_key,
        )?),
        _ => None,
    };
    Ok(RegisteredDevice {
        device,
        network,
        status,
        token,
        certificate,
        control_plane_key: state.key.public_key(),
    })
}

fn check_capabilities(c: &Capabilities) -> DomainResult<()> {
    let too_long = |v: &[String]| {
        v.len() > MAX_CAPABILITY_ENTRIES || v.iter().any(|s| s.is_empty() || s.len() > 128)
    };
    if too_long(&c.backends)
        || too_long(&c.models)
        || c.tier.len() > 32
        || c.gpu.as_ref().is_some_and(|g| g.len() > 128)
    {
        return Err(DomainError::bad_request("capabilities are too large"));
    }
    Ok(())
}

/// Move `device` of `network` from one of `from` to `to` (approve or revoke), as `actor`; 409
/// when it is in another state.
pub async fn change_status(
    state: &AppState,
    network: &NetworkId,
    actor: &str,
    device: &DeviceId,
    from: &[DeviceStatus],
    to: DeviceStatus,
) -> DomainResult<DeviceInfo> {
    let action = match to {
        DeviceStatus::Approved => AuditAction::DeviceApprove,
        DeviceStatus::Revoked => AuditAction::DeviceRevoke,
        DeviceStatus::Pending => {
            return Err(DomainError::internal("devices never go back to pending"));
        }
    };
    let mut tx = state.db.pool.begin().await?;
    let current = devices::status_in(&mut *tx, device, network)
        .await?
        .ok_or_else(|| DomainError::not_found("device"))?;
    if !from.contains(&current) {
        return Err(DomainError::conflict(
            "wrong_status",
            format!("device is {}", current.as_str()),
        ));
    }
    devices::set_status(&mut tx, device, current, to, now_ms()).await?;
    audit::record(&mut tx, Some(network), actor, action, &device.to_string()).await?;
    tx.commit().await?;
    devices::get(&state.db.pool, device)
        .await?
        .ok_or_else(|| DomainError::not_found("device"))
}

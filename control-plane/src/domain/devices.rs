//! Devices: registration with proof of key possession, and the admin's approval and
//! revocation, each written with its audit entry in one transaction.

use crate::domain::audit::{self, AuditAction};
use crate::domain::membership::{
    check_name, is_deceptive, issue_certificate, new_token_secret, use_invite,
};
use crate::domain::{DomainError, DomainResult};
use crate::state::AppState;
use crate::store::{StoreError, devices, invites, networks, now_ms, people, random_id};
use mesh_proto::api::{
    DeviceInfo, DeviceStatus, InviteKind, RegisterDeviceRequest, RegisteredDevice, Role,
};
use mesh_proto::device::{Capabilities, RegistrationProof};
use mesh_proto::terms::{DeviceTerms, TermsLayer};
use mesh_proto::{DeviceId, NetworkId, PersonId, SignDomain, TokenId};

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
    let new_token = people::NewToken {
        id: &token_id,
        secret: &token,
        owner: subject,
        label: &label,
        expires_at_ms: None,
        parent: None,
    };
    people::insert_token(&mut tx, &new_token, now).await?;
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

/// Capabilities are shown to every member and compared with workloads' needs: bounded lists
/// of short strings, none of them empty or with a [deceptive](is_deceptive) character.
fn check_capabilities(c: &Capabilities) -> DomainResult<()> {
    let bad = |s: &str, max: usize| s.is_empty() || s.len() > max || s.chars().any(is_deceptive);
    let bad_list = |v: &[String]| v.len() > MAX_CAPABILITY_ENTRIES || v.iter().any(|s| bad(s, 128));
    if bad_list(&c.backends)
        || bad_list(&c.models)
        || (!c.tier.is_empty() && bad(&c.tier, 32))
        || c.gpu.as_deref().is_some_and(|g| bad(g, 128))
    {
        return Err(DomainError::bad_request(format!(
            "capabilities: at most {MAX_CAPABILITY_ENTRIES} backends and models, each 1-128 \
             printable characters (tier up to 32, gpu 1-128), without control, bidirectional or \
             zero-width characters"
        )));
    }
    Ok(())
}

/// Move `device` of `network` from one of `from` to `to` (approve or revoke), as `actor`
/// holding `actor_role`; 409 when it is in another state. Revocation is permanent, so only an
/// owner revokes an owner's device (as only owners remove owners).
pub async fn change_status(
    state: &AppState,
    network: &NetworkId,
    actor: &str,
    actor_role: Role,
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
    if to == DeviceStatus::Revoked && actor_role != Role::Owner {
        let owner = devices::get(&mut *tx, device)
            .await?
            .ok_or_else(|| DomainError::not_found("device"))?
            .owner;
        if networks::role_of(&mut *tx, network, &owner).await? == Some(Role::Owner) {
            return Err(DomainError::forbidden(
                "only owners revoke an owner's device",
            ));
        }
    }
    devices::set_status(&mut tx, device, current, to, now_ms()).await?;
    audit::record(&mut tx, Some(network), actor, action, &device.to_string()).await?;
    tx.commit().await?;
    devices::get(&state.db.pool, device)
        .await?
        .ok_or_else(|| DomainError::not_found("device"))
}

/// Lift the quarantine of `device` in `network`, as the admin `person`: it gets jobs again, on
/// probation (its failed checks still count, so its next failure quarantines it again).
/// Nobody releases a device of their own: another admin must vouch for it, as judges are
/// never the executor's owner.
pub async fn release(
    state: &AppState,
    network: &NetworkId,
    person: &PersonId,
    device: &DeviceId,
) -> DomainResult<DeviceInfo> {
    let mut tx = state.db.pool.begin().await?;
    let found = devices::get(&mut *tx, device)
        .await?
        .filter(|d| d.network == *network)
        .ok_or_else(|| DomainError::not_found("device"))?;
    if found.status != DeviceStatus::Approved || found.quarantined_at_ms.is_none() {
        return Err(DomainError::conflict(
            "not_quarantined",
            format!("device is {} and not quarantined", found.status.as_str()),
        ));
    }
    if found.owner == *person {
        return Err(DomainError::forbidden(
            "another admin must release a device of yours",
        ));
    }
    if !devices::release_quarantine(&mut tx, device).await? {
        return Err(DomainError::conflict(
            "not_quarantined",
            "device is not quarantined",
        ));
    }
    audit::record(
        &mut tx,
        Some(network),
        &person.to_string(),
        AuditAction::DeviceRelease,
        &device.to_string(),
    )
    .await?;
    tx.commit().await?;
    devices::get(&state.db.pool, device)
        .await?
        .ok_or_else(|| DomainError::not_found("device"))
}

/// Set one network layer of `device`'s terms, as `person` holding `role` in `network`. The
/// owner's layer is the device owner's alone; the admins' layer is for admins (the device's
/// owner among them, when an admin). Without a layer, the owner's for the device's owner and
/// the admins' for anyone else. Either can only narrow what the other layers allow.
pub async fn set_terms(
    state: &AppState,
    network: &NetworkId,
    person: &PersonId,
    role: Role,
    device: &DeviceId,
    layer: Option<TermsLayer>,
    terms: &DeviceTerms,
) -> DomainResult<DeviceInfo> {
    terms
        .check_network()
        .map_err(|e| DomainError::bad_request(format!("terms: {e}")))?;
    let mut tx = state.db.pool.begin().await?;
    let current = devices::get(&mut *tx, device)
        .await?
        .filter(|d| &d.network == network)
        .ok_or_else(|| DomainError::not_found("device"))?;
    if current.status == DeviceStatus::Revoked {
        return Err(DomainError::conflict(
            "wrong_status",
            "the device is revoked",
        ));
    }
    let owns = &current.owner == person;
    let layer = layer.unwrap_or(if owns {
        TermsLayer::Owner
    } else {
        TermsLayer::Admins
    });
    match layer {
        TermsLayer::Owner if !owns => {
            return Err(DomainError::forbidden(
                "only the device's owner sets the owner's terms (admins set the admins' layer)",
            ));
        }
        TermsLayer::Admins if role < Role::Admin => {
            return Err(DomainError::forbidden(
                "only admins set the admins' terms (a device's owner sets the owner's layer)",
            ));
        }
        _ => {}
    }
    devices::set_terms(&mut tx, device, layer, terms).await?;
    audit::record(
        &mut tx,
        Some(network),
        &person.to_string(),
        AuditAction::DeviceTerms,
        &format!("{device} {}: {terms}", layer.as_str()),
    )
    .await?;
    tx.commit().await?;
    devices::get(&state.db.pool, device)
        .await?
        .ok_or_else(|| DomainError::not_found("device"))
}

/// Remember how the gateway just reached `device` with a job: relayed or direct.
pub async fn record_path(state: &AppState, device: &DeviceId, relayed: bool) -> DomainResult<()> {
    Ok(devices::record_path(&state.db.pool, device, relayed, now_ms()).await?)
}

/// Peer ids of `network`'s approved devices and of the gateway: whom its hosts let connect
/// (quarantined devices stay in: they may still ask for work, they are only given none).
pub async fn network_peers(
    state: &AppState,
    network: &NetworkId,
) -> DomainResult<mesh_proto::api::NetworkPeers> {
    let peers = devices::list(&state.db.pool, network)
        .await?
        .into_iter()
        .filter(|d| d.status == DeviceStatus::Approved)
        .map(|d| d.public_key.peer_id())
        .collect();
    Ok(mesh_proto::api::NetworkPeers {
        issued_at_ms: now_ms(),
        gateway_peer: crate::domain::scheduling::gateway_peer(state),
        peers,
    })
}

/// Peer ids of the approved devices of every network: whom the gateway lets connect.
pub async fn approved_peers(state: &AppState) -> DomainResult<Vec<String>> {
    Ok(devices::approved(&state.db.pool)
        .await?
        .into_iter()
        .map(|d| d.public_key.peer_id())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capabilities() -> Capabilities {
        Capabilities {
            backends: vec!["onnxruntime".into()],
            models: vec!["all-minilm-l6-v2".into()],
            tier: "laptop".into(),
            ..Capabilities::default()
        }
    }

    #[test]
    fn capability_strings_follow_the_name_rules() {
        check_capabilities(&capabilities()).unwrap();
        let mut gpu = capabilities();
        gpu.gpu = Some("NVIDIA RTX 4090".into());
        check_capabilities(&gpu).unwrap();
        for bad in ["", "onnx\u{1b}[31mruntime", "tract\u{202E}", "x\u{200D}"] {
            let mut c = capabilities();
            c.backends.push(bad.into());
            assert!(check_capabilities(&c).is_err(), "backend {bad:?} accepted");
            let mut c = capabilities();
            c.gpu = Some(bad.into());
            assert!(check_capabilities(&c).is_err(), "gpu {bad:?} accepted");
        }
        let mut tier = capabilities();
        tier.tier = "laptop\n".into();
        assert!(check_capabilities(&tier).is_err());
        // An unknown tier is fine (a bare registration reports none).
        check_capabilities(&Capabilities::default()).unwrap();
        let mut many = capabilities();
        many.models = (0..=MAX_CAPABILITY_ENTRIES)
            .map(|i| format!("m{i}"))
            .collect();
        assert!(check_capabilities(&many).is_err());
    }
}

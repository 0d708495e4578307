//! Membership: people and their tokens, networks and their members, invites, and the
//! certificates that vouch for devices.

use crate::domain::ledger;
use crate::domain::{DomainError, DomainResult};
use crate::state::AppState;
use crate::store::{Tx, invites, networks, now_ms, people, random_id};
use mesh_proto::api::{CreatedToken, InviteKind, NetworkInfo, Role};
use mesh_proto::device::DeviceCert;
use mesh_proto::{DeviceId, NetworkId, PersonId, PublicKey, SignDomain, Signed, TokenId};

/// Prefix of every bearer secret, so leaked tokens are recognisable.
pub const TOKEN_PREFIX: &str = "mesh_";

/// A fresh bearer secret.
pub fn new_token_secret() -> String {
    format!("{TOKEN_PREFIX}{}", crate::store::random_secret())
}

/// Longest display name accepted.
const MAX_NAME_CHARS: usize = 100;

/// Validate a display name.
pub fn check_name(name: &str) -> DomainResult<String> {
    let name = name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(DomainError::bad_request(format!(
            "names must be 1-{MAX_NAME_CHARS} printable characters"
        )));
    }
    Ok(name.to_string())
}

/// Create a person (no memberships).
pub async fn create_person(tx: &mut Tx, name: &str) -> DomainResult<PersonId> {
    let person: PersonId = random_id(PersonId::from_bytes);
    people::insert_person(tx, &person, name, now_ms()).await?;
    Ok(person)
}

/// Create a token for a person; returns the secret (shown once).
pub async fn create_person_token(
    tx: &mut Tx,
    person: &PersonId,
    label: &str,
    expires_at_ms: Option<i64>,
) -> DomainResult<CreatedToken> {
    let id: TokenId = random_id(TokenId::from_bytes);
    let secret = new_token_secret();
    let owner = people::TokenOwner::Person(person);
    people::insert_token(tx, &id, &secret, owner, label, expires_at_ms, now_ms()).await?;
    Ok(CreatedToken {
        id,
        token: secret,
        expires_at_ms,
    })
}

/// Add `person` to `network` with `role`, open their account and grant the initial credits.
pub async fn add_member(
    tx: &mut Tx,
    network: &NetworkId,
    person: &PersonId,
    role: Role,
) -> DomainResult<()> {
    if !networks::add_member(tx, network, person, role, now_ms()).await? {
        return Err(DomainError::conflict(
            "already_member",
            "already a member of this network",
        ));
    }
    ledger::create_person_account(tx, network, person).await?;
    let grant = networks::policy(&mut **tx, network)
        .await?
        .ok_or_else(|| DomainError::not_found("network"))?
        .initial_grant;
    if grant > 0 {
        ledger::transfer(
            tx,
            &ledger::Transfer {
                network: *network,
                idempotency_key: &format!("initial-grant:{person}"),
                kind: "grant",
                memo: "initial grant",
                job: None,
                from: ledger::Account::Issuer,
                to: ledger::Account::Person(*person),
                amount: grant,
            },
        )
        .await?;
    }
    Ok(())
}

/// A network as `person` sees it.
pub async fn network_info(
    state: &AppState,
    network: &NetworkId,
    person: &PersonId,
) -> DomainResult<NetworkInfo> {
    networks::info_for(&state.db.pool, network, person)
        .await?
        .ok_or_else(|| DomainError::not_found("network"))
}

/// Consume a single-use invite of `kind`: 404 if unknown, 410 if used or expired. Marks it used
/// inside `tx` with a conditional update, so two concurrent uses cannot both succeed. Returns
/// its network, the role it grants and who created it.
pub async fn use_invite(
    tx: &mut Tx,
    code: &str,
    kind: InviteKind,
) -> DomainResult<(NetworkId, Role, PersonId)> {
    let invite = invites::by_code(&mut **tx, code)
        .await?
        .ok_or_else(|| DomainError::not_found("invite"))?;
    if invite.kind != kind {
        let name = |k: InviteKind| match k {
            InviteKind::Person => "person",
            InviteKind::Device => "device",
        };
        return Err(DomainError::bad_request(format!(
            "this is a {} invite, not a {} invite",
            name(invite.kind),
            name(kind)
        )));
    }
    let now = now_ms();
    if invite.used_at_ms.is_some() {
        return Err(DomainError::gone(
            "invite_used",
            "this invite was already used",
        ));
    }
    if invite.expires_at_ms <= now {
        return Err(DomainError::gone(
            "invite_expired",
            "this invite has expired",
        ));
    }
    if !invites::mark_used(tx, code, now).await? {
        return Err(DomainError::gone(
            "invite_used",
            "this invite was already used",
        ));
    }
    Ok((invite.network, invite.role, invite.created_by))
}
/// Sign a fresh certificate for an approved device.
pub fn issue_certificate(
    state: &AppState,
    device: &DeviceId,
    network: &NetworkId,
    owner: &PersonId,
    public_key: &PublicKey,
) -> DomainResult<Signed<DeviceCert>> {
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
    Signed::sign(&cert, &state.key, SignDomain::DeviceCert, network).map_err(DomainError::internal)
}

//! Membership: people and their tokens, networks and their members, invites, and the
//! certificates that vouch for devices.

use crate::domain::audit::{self, AuditAction};
use crate::domain::ledger;
use crate::domain::{DomainError, DomainResult};
use crate::state::AppState;
use crate::store::{Tx, invites, networks, now_ms, people, random_id, random_secret};
use mesh_proto::api::{
    AcceptInviteRequest, AcceptedInvite, CreateInviteRequest, CreateTokenRequest, CreatedInvite,
    CreatedToken, InviteInfo, InviteKind, MemberInfo, NetworkInfo, NetworkPolicy, Role,
};
use mesh_proto::device::DeviceCert;
use mesh_proto::{DeviceId, InviteId, NetworkId, PersonId, PublicKey, SignDomain, Signed, TokenId};

/// Prefix of every bearer secret, so leaked tokens are recognisable.
pub const TOKEN_PREFIX: &str = "mesh_";

/// A fresh bearer secret.
pub fn new_token_secret() -> String {
    format!("{TOKEN_PREFIX}{}", crate::store::random_secret())
}

/// Longest display name accepted.
const MAX_NAME_CHARS: usize = 100;

/// Whether `c` could make a string display as something it is not: a control character, a
/// bidirectional override or isolate (which reorders what follows it), or an invisible
/// zero-width character or joiner.
pub fn is_deceptive(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}'   // zero-width space, joiners, LRM/RLM
                | '\u{202A}'..='\u{202E}' // bidi embeddings and overrides
                | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
                | '\u{2066}'..='\u{2069}' // bidi isolates
                | '\u{061C}' // Arabic letter mark
                | '\u{FEFF}' // zero-width no-break space
                | '\u{00AD}' // soft hyphen
        )
}

/// Validate a display name: 1 to [`MAX_NAME_CHARS`] characters after trimming, none of them
/// [deceptive](is_deceptive), so what admins read (in the CLI, the audit log, the console) is
/// what was typed.
pub fn check_name(name: &str) -> DomainResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS || name.chars().any(is_deceptive) {
        return Err(DomainError::bad_request(format!(
            "names must be 1-{MAX_NAME_CHARS} printable characters, without control, \
             bidirectional or zero-width characters"
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

/// Create a token for a person (made with the token `parent`, if any); returns the secret
/// (shown once).
pub async fn create_person_token(
    tx: &mut Tx,
    person: &PersonId,
    label: &str,
    expires_at_ms: Option<i64>,
    parent: Option<&TokenId>,
) -> DomainResult<CreatedToken> {
    let id: TokenId = random_id(TokenId::from_bytes);
    let secret = new_token_secret();
    let token = people::NewToken {
        id: &id,
        secret: &secret,
        owner: people::TokenOwner::Person(person),
        label,
        expires_at_ms,
        parent,
    };
    people::insert_token(tx, &token, now_ms()).await?;
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
    if invite.revoked_at_ms.is_some() {
        return Err(DomainError::gone(
            "invite_revoked",
            "this invite was revoked",
        ));
    }
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
    // An invite carries its creator's authority only while the creator still has it.
    let creator_role = networks::role_of(&mut **tx, &invite.network, &invite.created_by).await?;
    if !creator_role.is_some_and(|r| may_invite(r, invite.role)) {
        return Err(DomainError::gone(
            "invite_revoked",
            "whoever made this invite may no longer grant it",
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

/// Whether a member holding `creator` may make (and keep open) an invite granting `role`:
/// admins invite members and devices, owners also admins; nobody invites owners.
pub fn may_invite(creator: Role, role: Role) -> bool {
    match role {
        Role::Member => creator >= Role::Admin,
        Role::Admin => creator == Role::Owner,
        Role::Owner => false,
    }
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

pub fn check_policy(policy: &NetworkPolicy) -> DomainResult<()> {
    if policy.initial_grant < 0 || policy.credit_limit < 0 || policy.job_price < 0 {
        return Err(DomainError::bad_request(
            "credit amounts must not be negative",
        ));
    }
    if policy.initial_grant > 1_000_000_000
        || policy.credit_limit > 1_000_000_000
        || policy.job_price > 1_000_000_000
    {
        return Err(DomainError::bad_request(
            "credit amounts must be at most 10^9",
        ));
    }
    Ok(())
}

/// Create a network named `name` with `policy`: `person` becomes its owner and gets the
/// initial grant.
pub async fn create_network(
    state: &AppState,
    person: &PersonId,
    name: &str,
    policy: &NetworkPolicy,
) -> DomainResult<NetworkInfo> {
    let name = check_name(name)?;
    check_policy(policy)?;
    let network: NetworkId = random_id(NetworkId::from_bytes);
    let mut tx = state.db.pool.begin().await?;
    networks::insert(&mut tx, &network, &name, person, policy, now_ms()).await?;
    ledger::create_network_accounts(&mut tx, &network).await?;
    add_member(&mut tx, &network, person, Role::Owner).await?;
    audit::record(
        &mut tx,
        Some(&network),
        &person.to_string(),
        AuditAction::NetworkCreate,
        &name,
    )
    .await?;
    tx.commit().await?;
    network_info(state, &network, person).await
}

/// Replace `network`'s policy, as `actor`.
pub async fn set_policy(
    state: &AppState,
    network: &NetworkId,
    actor: &str,
    policy: &NetworkPolicy,
) -> DomainResult<()> {
    check_policy(policy)?;
    let mut tx = state.db.pool.begin().await?;
    networks::set_policy(&mut tx, network, policy).await?;
    let detail = serde_json::to_string(policy).map_err(DomainError::internal)?;
    audit::record(
        &mut tx,
        Some(network),
        actor,
        AuditAction::NetworkPolicy,
        &detail,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Give `person` the role `role` in `network`, as `actor`. The last owner cannot step down.
pub async fn change_role(
    state: &AppState,
    network: &NetworkId,
    actor: &str,
    person: &PersonId,
    role: Role,
) -> DomainResult<MemberInfo> {
    let mut tx = state.db.pool.begin().await?;
    networks::lock(&mut tx, network).await?;
    let current = networks::role_of(&mut *tx, network, person)
        .await?
        .ok_or_else(|| DomainError::not_found("member"))?;
    if current == Role::Owner && role != Role::Owner {
        ensure_other_owner(&mut tx, network, person).await?;
    }
    networks::set_role(&mut tx, network, person, role).await?;
    // Open invites the member may no longer grant go with the role.
    for granted in [Role::Member, Role::Admin] {
        if may_invite(current, granted) && !may_invite(role, granted) {
            invites::revoke_made_by(&mut tx, network, person, Some(granted), now_ms()).await?;
        }
    }
    let detail = format!("{person} {}", role.as_str());
    audit::record(
        &mut tx,
        Some(network),
        actor,
        AuditAction::MemberRole,
        &detail,
    )
    .await?;
    tx.commit().await?;
    networks::members(&state.db.pool, network)
        .await?
        .into_iter()
        .find(|m| m.person == *person)
        .ok_or_else(|| DomainError::not_found("member"))
}

/// Remove `person` from `network`, as `actor` holding `actor_role` (only owners remove
/// owners, and never the last one); their devices in the network are revoked at once.
pub async fn remove_member(
    state: &AppState,
    network: &NetworkId,
    actor: &str,
    actor_role: Role,
    person: &PersonId,
) -> DomainResult<()> {
    let mut tx = state.db.pool.begin().await?;
    networks::lock(&mut tx, network).await?;
    let role = networks::role_of(&mut *tx, network, person)
        .await?
        .ok_or_else(|| DomainError::not_found("member"))?;
    if role == Role::Owner {
        if actor_role != Role::Owner {
            return Err(DomainError::forbidden("only owners can remove owners"));
        }
        ensure_other_owner(&mut tx, network, person).await?;
    }
    networks::remove_member(&mut tx, network, person).await?;
    invites::revoke_made_by(&mut tx, network, person, None, now_ms()).await?;
    crate::store::devices::revoke_owned(&mut tx, network, person, now_ms()).await?;
    audit::record(
        &mut tx,
        Some(network),
        actor,
        AuditAction::MemberRemove,
        &person.to_string(),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// 409 unless `network` has an owner besides `person`.
async fn ensure_other_owner(
    tx: &mut Tx,
    network: &NetworkId,
    person: &PersonId,
) -> DomainResult<()> {
    if networks::other_owners(tx, network, person).await? == 0 {
        return Err(DomainError::conflict(
            "last_owner",
            "a network needs at least one owner",
        ));
    }
    Ok(())
}

/// Default lifetime of an invite.
const DEFAULT_INVITE_SECONDS: u64 = 24 * 3600;
/// Longest lifetime of an invite.
const MAX_INVITE_SECONDS: u64 = 30 * 24 * 3600;

/// Make a single-use invite into `network` for a person or a device, as `actor` (person
/// `creator`, holding `creator_role`): admin invites only from owners, never owner invites.
pub async fn create_invite(
    state: &AppState,
    network: &NetworkId,
    actor: &str,
    creator: PersonId,
    creator_role: Role,
    request: &CreateInviteRequest,
) -> DomainResult<CreatedInvite> {
    let role = request.role.unwrap_or(Role::Member);
    if !may_invite(creator_role, role) {
        return Err(DomainError::forbidden(
            "invites can grant member, or admin when an owner invites",
        ));
    }
    let seconds = request.expires_in_s.unwrap_or(DEFAULT_INVITE_SECONDS);
    if seconds == 0 || seconds > MAX_INVITE_SECONDS {
        return Err(DomainError::bad_request(format!(
            "expires_in_s must be 1..={MAX_INVITE_SECONDS}"
        )));
    }
    let id: InviteId = random_id(InviteId::from_bytes);
    let code = format!("mesh-invite-{}", random_secret());
    let expires_at_ms = now_ms() + seconds as i64 * 1000;
    let kind = match request.kind {
        InviteKind::Person => "person",
        InviteKind::Device => "device",
    };
    let invite = invites::NewInvite {
        id,
        network: *network,
        code: &code,
        kind: request.kind,
        role,
        created_by: creator,
        expires_at_ms,
    };
    let mut tx = state.db.pool.begin().await?;
    invites::insert(&mut tx, &invite, now_ms()).await?;
    audit::record(
        &mut tx,
        Some(network),
        actor,
        AuditAction::InviteCreate,
        kind,
    )
    .await?;
    tx.commit().await?;
    // The code carries pins of this control plane's key (and of its certificate when no
    // authority vouches for it), so whoever uses it can tell this control plane from a
    // substitute (`mesh_proto::pin`).
    let pins = mesh_proto::pin::Pins {
        key: Some(mesh_proto::pin::Fingerprint::of_key(
            &state.key.public_key(),
        )),
        certificate: state.certificate_pin,
    };
    Ok(CreatedInvite {
        id,
        code: mesh_proto::pin::invite_code(&code, &pins),
        kind: request.kind,
        expires_at_ms,
    })
}

/// The open invites of `network`.
pub async fn list_invites(state: &AppState, network: &NetworkId) -> DomainResult<Vec<InviteInfo>> {
    Ok(invites::open_in(&state.db.pool, network, now_ms()).await?)
}

/// Revoke the open invite `id` of `network`, as `actor` holding `actor_role`: only an owner
/// revokes an invite only an owner could make (an admin invite).
pub async fn revoke_invite(
    state: &AppState,
    network: &NetworkId,
    actor: &str,
    actor_role: Role,
    id: &InviteId,
) -> DomainResult<()> {
    let mut tx = state.db.pool.begin().await?;
    let role = invites::open_role(&mut *tx, network, id, now_ms())
        .await?
        .ok_or_else(|| DomainError::not_found("invite"))?;
    if !may_invite(actor_role, role) {
        return Err(DomainError::forbidden(
            "only owners revoke invites that grant admin",
        ));
    }
    if !invites::revoke(&mut tx, network, id, now_ms()).await? {
        return Err(DomainError::not_found("invite"));
    }
    audit::record(
        &mut tx,
        Some(network),
        actor,
        AuditAction::InviteRevoke,
        &id.to_string(),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Make another API token for `person` with their token `parent` (a label, and optionally a
/// lifetime of up to ten years). The new token is `parent`'s child: it expires no later than
/// `parent` (a parent that expires cannot mint a token that outlives it) and is revoked with
/// it.
pub async fn create_token(
    state: &AppState,
    person: &PersonId,
    parent: &TokenId,
    request: &CreateTokenRequest,
) -> DomainResult<CreatedToken> {
    let label = check_name(&request.label)?;
    let expires = match request.expires_in_s {
        Some(s) if s == 0 || s > 10 * 365 * 86400 => {
            return Err(DomainError::bad_request(
                "expires_in_s must be 1..=10 years",
            ));
        }
        Some(s) => Some(now_ms() + (s as i64) * 1000),
        None => None,
    };
    let mut tx = state.db.pool.begin().await?;
    let parent_expiry = people::token_expiry(&mut *tx, parent, person)
        .await?
        .ok_or_else(|| DomainError::not_found("token"))?;
    let expires = match (expires, parent_expiry) {
        (Some(e), Some(p)) => Some(e.min(p)),
        (None, p) => p,
        (e, None) => e,
    };
    let created = create_person_token(&mut tx, person, &label, expires, Some(parent)).await?;
    tx.commit().await?;
    Ok(created)
}

/// Revoke `person`'s token `token`, and with it every token made with it (and so on).
pub async fn revoke_token(
    state: &AppState,
    person: &PersonId,
    token: &TokenId,
) -> DomainResult<()> {
    let mut tx = state.db.pool.begin().await?;
    if !people::revoke_token(&mut tx, token, person, now_ms()).await? {
        return Err(DomainError::not_found("token"));
    }
    tx.commit().await?;
    Ok(())
}

/// Accept a person invite: `person` joins with their identity, or (for `None`) a new person
/// named `request.name` is made and gets a token.
pub async fn accept_invite(
    state: &AppState,
    request: &AcceptInviteRequest,
    person: Option<PersonId>,
) -> DomainResult<AcceptedInvite> {
    let mut tx = state.db.pool.begin().await?;
    let (network, role, _) = use_invite(&mut tx, &request.code, InviteKind::Person).await?;
    let (person, token) = match person {
        Some(person) => (person, None),
        None => {
            let name = check_name(request.name.as_deref().unwrap_or(""))?;
            let person = create_person(&mut tx, &name).await?;
            let token = create_person_token(&mut tx, &person, "invite", None, None).await?;
            (person, Some(token.token))
        }
    };
    add_member(&mut tx, &network, &person, role).await?;
    invites::set_used_by(&mut tx, &request.code, &person).await?;
    audit::record(
        &mut tx,
        Some(&network),
        &person.to_string(),
        AuditAction::InviteAccept,
        "",
    )
    .await?;
    tx.commit().await?;
    Ok(AcceptedInvite {
        network,
        person,
        token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_display_as_something_else_are_refused() {
        assert_eq!(check_name("  Ada's laptop ").unwrap(), "Ada's laptop");
        assert_eq!(check_name("Zoë 東京 🚀").unwrap(), "Zoë 東京 🚀");
        for bad in [
            "",
            "   ",
            "evil\u{202E}txt.exe",
            "admin\u{200B}",
            "a\u{2066}b",
            "tab\there",
            "bell\u{7}",
            "\u{FEFF}bom",
            "soft\u{AD}hyphen",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(check_name(&"x".repeat(MAX_NAME_CHARS)).is_ok());
        assert!(check_name(&"x".repeat(MAX_NAME_CHARS + 1)).is_err());
    }
}

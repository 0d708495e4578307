//! Networks, members, roles and invites.

use crate::domain::ledger;
use crate::domain::membership::{add_member, check_name, network_info};
use crate::http::auth::{Admin, Auth, InNetwork, Owner, Reader, role_in};
use crate::http::error::responses::{BadRequest, Conflict, Forbidden, Managing, Unauthenticated};
use crate::http::error::{ApiError, ApiJson, ApiResult};
use crate::state::AppState;
use crate::store::{Tx, invites, networks, now_ms, random_id, random_secret};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mesh_proto::api::{
    AuditEntry, CreateInviteRequest, CreateNetworkRequest, CreatedInvite, InviteKind, MemberInfo,
    NetworkInfo, NetworkPolicy, Role, UpdateMemberRequest,
};
use mesh_proto::{InviteId, NetworkId, PersonId};

/// Default lifetime of an invite.
const DEFAULT_INVITE_SECONDS: u64 = 24 * 3600;
/// Longest lifetime of an invite.
const MAX_INVITE_SECONDS: u64 = 30 * 24 * 3600;

/// Parse a network id from a path; malformed ids are simply not found.
pub fn network_id(text: &str) -> ApiResult<NetworkId> {
    text.parse().map_err(|_| ApiError::not_found("network"))
}

fn check_policy(policy: &NetworkPolicy) -> ApiResult<()> {
    if policy.initial_grant < 0 || policy.credit_limit < 0 || policy.job_price < 0 {
        return Err(ApiError::bad_request("credit amounts must not be negative"));
    }
    if policy.initial_grant > 1_000_000_000
        || policy.credit_limit > 1_000_000_000
        || policy.job_price > 1_000_000_000
    {
        return Err(ApiError::bad_request("credit amounts must be at most 10^9"));
    }
    Ok(())
}

/// Create a network; the caller becomes its owner and gets the initial grant.
#[utoipa::path(post, path = "/v1/networks", tag = "networks", security(("bearer" = [])),
    request_body = CreateNetworkRequest,
    responses((status = 201, body = NetworkInfo), BadRequest, Unauthenticated, Forbidden))]
pub async fn create_network(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ApiJson(request): ApiJson<CreateNetworkRequest>,
) -> ApiResult<(StatusCode, Json<NetworkInfo>)> {
    let person = principal.person()?;
    let name = check_name(&request.name)?;
    check_policy(&request.policy)?;
    let network: NetworkId = random_id(NetworkId::from_bytes);
    let p = &request.policy;
    let mut tx = state.db.pool.begin().await?;
    networks::insert(&mut tx, &network, &name, &person, p, now_ms()).await?;
    ledger::create_network_accounts(&mut tx, &network).await?;
    add_member(&mut tx, &network, &person, Role::Owner).await?;
    crate::store::audit::append(
        &mut tx,
        Some(&network),
        &person.to_string(),
        "network.create",
        &name,
        crate::store::now_ms(),
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(network_info(&state, &network, &person).await?),
    ))
}

/// The networks you belong to.
#[utoipa::path(get, path = "/v1/networks", tag = "networks", security(("bearer" = [])),
    responses((status = 200, body = Vec<NetworkInfo>), Unauthenticated, Forbidden))]
pub async fn list_networks(
    State(state): State<AppState>,
    Auth(principal): Auth,
) -> ApiResult<Json<Vec<NetworkInfo>>> {
    let person = principal.person()?;
    let ids = networks::of_person(&state.db.pool, &person).await?;
    let mut infos = Vec::with_capacity(ids.len());
    for id in ids {
        infos.push(network_info(&state, &id, &person).await?);
    }
    Ok(Json(infos))
}

/// One network.
#[utoipa::path(get, path = "/v1/networks/{network}", tag = "networks", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id (net_…)")),
    responses((status = 200, body = NetworkInfo), Managing))]
pub async fn show_network(
    State(state): State<AppState>,
    InNetwork { principal, network }: InNetwork,
) -> ApiResult<Json<NetworkInfo>> {
    role_in(&state, &principal, &network).await?;
    Ok(Json(
        network_info(&state, &network, &principal.person()?).await?,
    ))
}

/// Change a network's policy (owner).
#[utoipa::path(put, path = "/v1/networks/{network}/policy", tag = "networks", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id")),
    request_body = NetworkPolicy,
    responses((status = 200, body = NetworkInfo), Managing, BadRequest))]
pub async fn update_policy(
    State(state): State<AppState>,
    Owner {
        principal, network, ..
    }: Owner,
    ApiJson(policy): ApiJson<NetworkPolicy>,
) -> ApiResult<Json<NetworkInfo>> {
    check_policy(&policy)?;
    let mut tx = state.db.pool.begin().await?;
    networks::set_policy(&mut tx, &network, &policy).await?;
    crate::store::audit::append(
        &mut tx,
        Some(&network),
        &principal.label(),
        "network.policy",
        &serde_json::to_string(&policy).unwrap_or_default(),
        crate::store::now_ms(),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(
        network_info(&state, &network, &principal.person()?).await?,
    ))
}

/// Members of a network.
#[utoipa::path(get, path = "/v1/networks/{network}/members", tag = "networks", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id")),
    responses((status = 200, body = Vec<MemberInfo>), Managing))]
pub async fn list_members(
    State(state): State<AppState>,
    Reader {
        principal: _,
        network,
    }: Reader,
) -> ApiResult<Json<Vec<MemberInfo>>> {
    Ok(Json(networks::members(&state.db.pool, &network).await?))
}

/// The network's audit log, newest first (admins): admin actions, failed checks, quarantines.
#[utoipa::path(get, path = "/v1/networks/{network}/audit", tag = "networks", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id")),
    responses((status = 200, body = Vec<AuditEntry>), Managing))]
pub async fn audit_log(
    State(state): State<AppState>,
    Admin {
        principal: _,
        network,
        ..
    }: Admin,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    Ok(Json(
        crate::store::audit::newest(&state.db.pool, &network, 500).await?,
    ))
}

/// Change a member's role (owner). The last owner cannot step down.
#[utoipa::path(put, path = "/v1/networks/{network}/members/{person}", tag = "networks", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("person" = String, Path, description = "Person id")),
    request_body = UpdateMemberRequest,
    responses((status = 200, body = MemberInfo), Managing, Conflict))]
pub async fn update_member(
    State(state): State<AppState>,
    Owner {
        principal, network, ..
    }: Owner,
    Path((_network, person)): Path<(String, String)>,
    ApiJson(request): ApiJson<UpdateMemberRequest>,
) -> ApiResult<Json<MemberInfo>> {
    let person: PersonId = person.parse().map_err(|_| ApiError::not_found("member"))?;
    let mut tx = state.db.pool.begin().await?;
    let current = networks::role_of(&mut *tx, &network, &person)
        .await?
        .ok_or_else(|| ApiError::not_found("member"))?;
    if current == Role::Owner && request.role != Role::Owner {
        ensure_other_owner(&mut tx, &network, &person).await?;
    }
    networks::set_role(&mut tx, &network, &person, request.role).await?;
    crate::store::audit::append(
        &mut tx,
        Some(&network),
        &principal.label(),
        "member.role",
        &format!("{person} {}", request.role.as_str()),
        crate::store::now_ms(),
    )
    .await?;
    tx.commit().await?;
    networks::members(&state.db.pool, &network)
        .await?
        .into_iter()
        .find(|m| m.person == person)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("member"))
}

async fn ensure_other_owner(tx: &mut Tx, network: &NetworkId, person: &PersonId) -> ApiResult<()> {
    if networks::other_owners(tx, network, person).await? == 0 {
        return Err(ApiError::conflict(
            "last_owner",
            "a network needs at least one owner",
        ));
    }
    Ok(())
}

/// Remove a member (admin; owners only by owners). Their devices in the network are revoked
/// at once.
#[utoipa::path(delete, path = "/v1/networks/{network}/members/{person}", tag = "networks", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("person" = String, Path, description = "Person id")),
    responses((status = 204), Managing, Conflict))]
pub async fn remove_member(
    State(state): State<AppState>,
    Admin {
        principal,
        network,
        role: caller_role,
        ..
    }: Admin,
    Path((_network, person)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let person: PersonId = person.parse().map_err(|_| ApiError::not_found("member"))?;
    let mut tx = state.db.pool.begin().await?;
    let role = networks::role_of(&mut *tx, &network, &person)
        .await?
        .ok_or_else(|| ApiError::not_found("member"))?;
    if role == Role::Owner {
        if caller_role != Role::Owner {
            return Err(ApiError::forbidden("only owners can remove owners"));
        }
        ensure_other_owner(&mut tx, &network, &person).await?;
    }
    networks::remove_member(&mut tx, &network, &person).await?;
    crate::store::devices::revoke_owned(&mut tx, &network, &person, now_ms()).await?;
    crate::store::audit::append(
        &mut tx,
        Some(&network),
        &principal.label(),
        "member.remove",
        &person.to_string(),
        crate::store::now_ms(),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Create a single-use invite for a person or a device (admin).
#[utoipa::path(post, path = "/v1/networks/{network}/invites", tag = "networks", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id")),
    request_body = CreateInviteRequest,
    responses((status = 201, body = CreatedInvite), Managing, BadRequest))]
pub async fn create_invite(
    State(state): State<AppState>,
    Admin {
        principal,
        network,
        role: caller_role,
        ..
    }: Admin,
    ApiJson(request): ApiJson<CreateInviteRequest>,
) -> ApiResult<(StatusCode, Json<CreatedInvite>)> {
    let role = request.role.unwrap_or(Role::Member);
    if role == Role::Owner || (role == Role::Admin && caller_role != Role::Owner) {
        return Err(ApiError::forbidden(
            "invites can grant member, or admin when an owner invites",
        ));
    }
    let seconds = request.expires_in_s.unwrap_or(DEFAULT_INVITE_SECONDS);
    if seconds == 0 || seconds > MAX_INVITE_SECONDS {
        return Err(ApiError::bad_request(format!(
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
        network,
        code: &code,
        kind: request.kind,
        role,
        created_by: principal.person()?,
        expires_at_ms,
    };
    let mut tx = state.db.pool.begin().await?;
    invites::insert(&mut tx, &invite, now_ms()).await?;
    crate::store::audit::append(
        &mut tx,
        Some(&network),
        &principal.label(),
        "invite.create",
        kind,
        crate::store::now_ms(),
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedInvite {
            id,
            code,
            kind: request.kind,
            expires_at_ms,
        }),
    ))
}

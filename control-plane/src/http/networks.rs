//! Networks, members, roles and invites.

use crate::domain::membership::{self, network_info};
use crate::http::auth::{Admin, Auth, InNetwork, Owner, Reader, role_in};
use crate::http::error::responses::{BadRequest, Conflict, Forbidden, Managing, Unauthenticated};
use crate::http::error::{ApiError, ApiJson, ApiResult};
use crate::state::AppState;
use crate::store::networks;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mesh_proto::api::{
    AuditEntry, AuditQuery, CreateInviteRequest, CreateNetworkRequest, CreatedInvite, InviteInfo,
    MemberInfo, NetworkInfo, NetworkPolicy, UpdateMemberRequest,
};
use mesh_proto::{InviteId, NetworkId, PersonId};

/// Parse a network id from a path; malformed ids are simply not found.
pub fn network_id(text: &str) -> ApiResult<NetworkId> {
    text.parse().map_err(|_| ApiError::not_found("network"))
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
    let info = membership::create_network(&state, &person, &request.name, &request.policy).await?;
    Ok((StatusCode::CREATED, Json(info)))
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
    membership::set_policy(&state, &network, &principal.label(), &policy).await?;
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
    params(("network" = String, Path, description = "Network id"), AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>), Managing, BadRequest))]
pub async fn audit_log(
    State(state): State<AppState>,
    Admin { network, .. }: Admin,
    axum::extract::Query(query): axum::extract::Query<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("limit must be 1..=500"));
    }
    let before = match &query.before {
        None => None,
        Some(cursor) => {
            let (at, id) = cursor
                .split_once(':')
                .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id)))
                .ok_or_else(|| ApiError::bad_request("before must be <at_ms>:<id>"))?;
            Some((at, id))
        }
    };
    Ok(Json(
        crate::store::audit::page(&state.db.pool, &network, before, i64::from(limit)).await?,
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
    let member =
        membership::change_role(&state, &network, &principal.label(), &person, request.role)
            .await?;
    Ok(Json(member))
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
    membership::remove_member(&state, &network, &principal.label(), caller_role, &person).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The network's open invites (admin): not used, expired or revoked.
#[utoipa::path(get, path = "/v1/networks/{network}/invites", tag = "networks", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id")),
    responses((status = 200, body = Vec<InviteInfo>), Managing))]
pub async fn list_invites(
    State(state): State<AppState>,
    Admin { network, .. }: Admin,
) -> ApiResult<Json<Vec<InviteInfo>>> {
    Ok(Json(membership::list_invites(&state, &network).await?))
}

/// Revoke an open invite (admin; an invite that grants admin, owner only).
#[utoipa::path(delete, path = "/v1/networks/{network}/invites/{invite}", tag = "networks", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("invite" = String, Path, description = "Invite id")),
    responses((status = 204), Managing))]
pub async fn revoke_invite(
    State(state): State<AppState>,
    Admin {
        principal,
        network,
        role,
        ..
    }: Admin,
    Path((_network, invite)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let invite: InviteId = invite.parse().map_err(|_| ApiError::not_found("invite"))?;
    membership::revoke_invite(&state, &network, &principal.label(), role, &invite).await?;
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
    let created = membership::create_invite(
        &state,
        &network,
        &principal.label(),
        principal.person()?,
        caller_role,
        &request,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

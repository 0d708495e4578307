//! Networks, members, roles and invites.

use crate::api::people::{add_member, check_name};
use crate::auth::{Auth, parse, require_reader, require_role, role_in};
use crate::error::{ApiError, ApiJson, ApiResult, ErrorBody};
use crate::ledger;
use crate::state::AppState;
use crate::store::{now_ms, random_id, random_secret, secret_hash};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mesh_proto::api::{
    AuditEntry, CreateInviteRequest, CreateNetworkRequest, CreatedInvite, InviteKind, MemberInfo,
    NetworkInfo, NetworkPolicy, Role, UpdateMemberRequest,
};
use mesh_proto::{InviteId, NetworkId, PersonId};
use sqlx::Row;

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

/// A network as `person` sees it.
pub async fn network_info(
    state: &AppState,
    network: &NetworkId,
    person: &PersonId,
) -> ApiResult<NetworkInfo> {
    let row = sqlx::query(
        "SELECT n.name, n.require_device_approval, n.initial_grant, n.allow_credit, n.credit_limit, n.job_price, \
         n.created_at, m.role FROM networks n JOIN memberships m ON m.network_id = n.id \
         WHERE n.id = $1 AND m.person_id = $2",
    )
    .bind(network.to_string())
    .bind(person.to_string())
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("network"))?;
    let role: String = row.try_get("role")?;
    Ok(NetworkInfo {
        id: *network,
        name: row.try_get("name")?,
        role: Role::parse(&role).ok_or_else(|| ApiError::internal("bad role"))?,
        policy: NetworkPolicy {
            require_device_approval: row.try_get::<i64, _>("require_device_approval")? != 0,
            initial_grant: row.try_get("initial_grant")?,
            allow_credit: row.try_get::<i64, _>("allow_credit")? != 0,
            credit_limit: row.try_get("credit_limit")?,
            job_price: row.try_get("job_price")?,
        },
        created_at_ms: row.try_get("created_at")?,
    })
}

/// Create a network; the caller becomes its owner and gets the initial grant.
#[utoipa::path(post, path = "/v1/networks", tag = "networks", security(("bearer" = [])),
    request_body = CreateNetworkRequest,
    responses((status = 201, body = NetworkInfo), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
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
    sqlx::query(
        "INSERT INTO networks (id, name, created_by, require_device_approval, initial_grant, allow_credit, credit_limit, \
         job_price, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(network.to_string())
    .bind(&name)
    .bind(person.to_string())
    .bind(i64::from(p.require_device_approval))
    .bind(p.initial_grant)
    .bind(i64::from(p.allow_credit))
    .bind(p.credit_limit)
    .bind(p.job_price)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    ledger::create_network_accounts(&mut tx, &network).await?;
    add_member(&mut tx, &network, &person, Role::Owner).await?;
    crate::api::audit(
        &mut tx,
        Some(&network),
        &person.to_string(),
        "network.create",
        &name,
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
    responses((status = 200, body = Vec<NetworkInfo>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_networks(
    State(state): State<AppState>,
    Auth(principal): Auth,
) -> ApiResult<Json<Vec<NetworkInfo>>> {
    let person = principal.person()?;
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT network_id FROM memberships WHERE person_id = $1 ORDER BY created_at",
    )
    .bind(person.to_string())
    .fetch_all(&state.db.pool)
    .await?;
    let mut networks = Vec::with_capacity(ids.len());
    for id in ids {
        networks.push(network_info(&state, &parse(id)?, &person).await?);
    }
    Ok(Json(networks))
}

/// One network.
#[utoipa::path(get, path = "/v1/networks/{network}", tag = "networks", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id (net_…)")),
    responses((status = 200, body = NetworkInfo), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn show_network(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(network): Path<String>,
) -> ApiResult<Json<NetworkInfo>> {
    let network = network_id(&network)?;
    role_in(&state, &principal, &network).await?;
    Ok(Json(
        network_info(&state, &network, &principal.person()?).await?,
    ))
}

/// Change a network's policy (owner).
#[utoipa::path(put, path = "/v1/networks/{network}/policy", tag = "networks", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id")),
    request_body = NetworkPolicy,
    responses((status = 200, body = NetworkInfo), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_policy(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(network): Path<String>,
    ApiJson(policy): ApiJson<NetworkPolicy>,
) -> ApiResult<Json<NetworkInfo>> {
    let network = network_id(&network)?;
    require_role(&state, &principal, &network, Role::Owner).await?;
    check_policy(&policy)?;
    let mut tx = state.db.pool.begin().await?;
    sqlx::query(
        "UPDATE networks SET require_device_approval = $1, initial_grant = $2, allow_credit = $3, credit_limit = $4, \
         job_price = $5 WHERE id = $6",
    )
    .bind(i64::from(policy.require_device_approval))
    .bind(policy.initial_grant)
    .bind(i64::from(policy.allow_credit))
    .bind(policy.credit_limit)
    .bind(policy.job_price)
    .bind(network.to_string())
    .execute(&mut *tx)
    .await?;
    crate::api::audit(
        &mut tx,
        Some(&network),
        &principal.label(),
        "network.policy",
        &serde_json::to_string(&policy).unwrap_or_default(),
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
    responses((status = 200, body = Vec<MemberInfo>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn list_members(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(network): Path<String>,
) -> ApiResult<Json<Vec<MemberInfo>>> {
    let network = network_id(&network)?;
    require_reader(&state, &principal, &network).await?;
    let rows = sqlx::query(
        "SELECT m.person_id, p.name, m.role, m.created_at FROM memberships m JOIN people p ON p.id = m.person_id \
         WHERE m.network_id = $1 ORDER BY m.created_at",
    )
    .bind(network.to_string())
    .fetch_all(&state.db.pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            let role: String = row.try_get("role")?;
            Ok(MemberInfo {
                person: parse(row.try_get("person_id")?)?,
                name: row.try_get("name")?,
                role: Role::parse(&role).ok_or_else(|| ApiError::internal("bad role"))?,
                joined_at_ms: row.try_get("created_at")?,
            })
        })
        .collect::<ApiResult<Vec<_>>>()
        .map(Json)
}

/// The network's audit log, newest first (admins): admin actions, failed checks, quarantines.
#[utoipa::path(get, path = "/v1/networks/{network}/audit", tag = "networks", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id")),
    responses((status = 200, body = Vec<AuditEntry>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn audit_log(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(network): Path<String>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    let network = network_id(&network)?;
    require_role(&state, &principal, &network, Role::Admin).await?;
    let rows = sqlx::query(
        "SELECT actor, action, detail, created_at FROM audit_log WHERE network_id = $1 \
         ORDER BY created_at DESC, id LIMIT 500",
    )
    .bind(network.to_string())
    .fetch_all(&state.db.pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(AuditEntry {
                actor: row.try_get("actor")?,
                action: row.try_get("action")?,
                detail: row.try_get("detail")?,
                at_ms: row.try_get("created_at")?,
            })
        })
        .collect::<ApiResult<Vec<_>>>()
        .map(Json)
}

/// Change a member's role (owner). The last owner cannot step down.
#[utoipa::path(put, path = "/v1/networks/{network}/members/{person}", tag = "networks", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("person" = String, Path, description = "Person id")),
    request_body = UpdateMemberRequest,
    responses((status = 200, body = MemberInfo), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_member(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path((network, person)): Path<(String, String)>,
    ApiJson(request): ApiJson<UpdateMemberRequest>,
) -> ApiResult<Json<MemberInfo>> {
    let network = network_id(&network)?;
    require_role(&state, &principal, &network, Role::Owner).await?;
    let person: PersonId = person.parse().map_err(|_| ApiError::not_found("member"))?;
    let mut tx = state.db.pool.begin().await?;
    let current: Option<String> =
        sqlx::query_scalar("SELECT role FROM memberships WHERE network_id = $1 AND person_id = $2")
            .bind(network.to_string())
            .bind(person.to_string())
            .fetch_optional(&mut *tx)
            .await?;
    let current = current.ok_or_else(|| ApiError::not_found("member"))?;
    if current == "owner" && request.role != Role::Owner {
        ensure_other_owner(&mut tx, &network, &person).await?;
    }
    sqlx::query("UPDATE memberships SET role = $1 WHERE network_id = $2 AND person_id = $3")
        .bind(request.role.as_str())
        .bind(network.to_string())
        .bind(person.to_string())
        .execute(&mut *tx)
        .await?;
    crate::api::audit(
        &mut tx,
        Some(&network),
        &principal.label(),
        "member.role",
        &format!("{person} {}", request.role.as_str()),
    )
    .await?;
    tx.commit().await?;
    let members = list_members(State(state), Auth(principal), Path(network.to_string()))
        .await?
        .0;
    members
        .into_iter()
        .find(|m| m.person == person)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("member"))
}

async fn ensure_other_owner(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    network: &NetworkId,
    person: &PersonId,
) -> ApiResult<()> {
    let owners: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM memberships WHERE network_id = $1 AND role = 'owner' AND person_id <> $2",
    )
    .bind(network.to_string())
    .bind(person.to_string())
    .fetch_one(&mut **tx)
    .await?;
    if owners == 0 {
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
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn remove_member(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path((network, person)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let network = network_id(&network)?;
    let caller_role = require_role(&state, &principal, &network, Role::Admin).await?;
    let person: PersonId = person.parse().map_err(|_| ApiError::not_found("member"))?;
    let mut tx = state.db.pool.begin().await?;
    let role: Option<String> =
        sqlx::query_scalar("SELECT role FROM memberships WHERE network_id = $1 AND person_id = $2")
            .bind(network.to_string())
            .bind(person.to_string())
            .fetch_optional(&mut *tx)
            .await?;
    let role = role.ok_or_else(|| ApiError::not_found("member"))?;
    if role == "owner" {
        if caller_role != Role::Owner {
            return Err(ApiError::forbidden("only owners can remove owners"));
        }
        ensure_other_owner(&mut tx, &network, &person).await?;
    }
    sqlx::query("DELETE FROM memberships WHERE network_id = $1 AND person_id = $2")
        .bind(network.to_string())
        .bind(person.to_string())
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE devices SET status = 'revoked', revoked_at = $1, online = 0 WHERE network_id = $2 AND owner_id = $3 AND status <> 'revoked'")
        .bind(now_ms())
        .bind(network.to_string())
        .bind(person.to_string())
        .execute(&mut *tx)
        .await?;
    crate::api::audit(
        &mut tx,
        Some(&network),
        &principal.label(),
        "member.remove",
        &person.to_string(),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Create a single-use invite for a person or a device (admin).
#[utoipa::path(post, path = "/v1/networks/{network}/invites", tag = "networks", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id")),
    request_body = CreateInviteRequest,
    responses((status = 201, body = CreatedInvite), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create_invite(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(network): Path<String>,
    ApiJson(request): ApiJson<CreateInviteRequest>,
) -> ApiResult<(StatusCode, Json<CreatedInvite>)> {
    let network = network_id(&network)?;
    let caller_role = require_role(&state, &principal, &network, Role::Admin).await?;
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
    let mut tx = state.db.pool.begin().await?;
    sqlx::query(
        "INSERT INTO invites (id, network_id, code_hash, kind, role, created_by, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id.to_string())
    .bind(network.to_string())
    .bind(secret_hash(&code))
    .bind(kind)
    .bind(role.as_str())
    .bind(principal.person()?.to_string())
    .bind(now_ms())
    .bind(expires_at_ms)
    .execute(&mut *tx)
    .await?;
    crate::api::audit(
        &mut tx,
        Some(&network),
        &principal.label(),
        "invite.create",
        kind,
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

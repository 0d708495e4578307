//! People: who am I, API tokens, and joining networks with invites.

use crate::api::networks::network_info;
use crate::auth::{Auth, MaybeAuth, Principal, new_token_secret, parse};
use crate::error::{ApiError, ApiJson, ApiResult, ErrorBody};
use crate::ledger;
use crate::state::AppState;
use crate::store::{now_ms, random_id, secret_hash};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mesh_proto::api::{
    AcceptInviteRequest, AcceptedInvite, CreateTokenRequest, CreatedToken, Me, PersonInfo, Role,
    TokenInfo,
};
use mesh_proto::{NetworkId, PersonId, TokenId};
use sqlx::{Any, Row, Transaction};

/// Longest display name accepted.
const MAX_NAME_CHARS: usize = 100;

/// Validate a display name.
pub fn check_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(format!(
            "names must be 1-{MAX_NAME_CHARS} printable characters"
        )));
    }
    Ok(name.to_string())
}

/// Create a person (no memberships).
pub async fn create_person(tx: &mut Transaction<'static, Any>, name: &str) -> ApiResult<PersonId> {
    let person: PersonId = random_id(PersonId::from_bytes);
    sqlx::query("INSERT INTO people (id, name, created_at) VALUES ($1, $2, $3)")
        .bind(person.to_string())
        .bind(name)
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
    Ok(person)
}

/// Create a token for a person; returns the secret (shown once).
pub async fn create_person_token(
    tx: &mut Transaction<'static, Any>,
    person: &PersonId,
    label: &str,
    expires_at_ms: Option<i64>,
) -> ApiResult<CreatedToken> {
    let id: TokenId = random_id(TokenId::from_bytes);
    let secret = new_token_secret();
    sqlx::query(
        "INSERT INTO api_tokens (id, secret_hash, person_id, device_id, label, created_at, expires_at) \
         VALUES ($1, $2, $3, NULL, $4, $5, $6)",
    )
    .bind(id.to_string())
    .bind(secret_hash(&secret))
    .bind(person.to_string())
    .bind(label)
    .bind(now_ms())
    .bind(expires_at_ms)
    .execute(&mut **tx)
    .await?;
    Ok(CreatedToken {
        id,
        token: secret,
        expires_at_ms,
    })
}

/// Add `person` to `network` with `role`, open their account and grant the initial credits.
pub async fn add_member(
    tx: &mut Transaction<'static, Any>,
    network: &NetworkId,
    person: &PersonId,
    role: Role,
) -> ApiResult<()> {
    let inserted = sqlx::query(
        "INSERT INTO memberships (network_id, person_id, role, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (network_id, person_id) DO NOTHING",
    )
    .bind(network.to_string())
    .bind(person.to_string())
    .bind(role.as_str())
    .bind(now_ms())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(ApiError::conflict(
            "already_member",
            "already a member of this network",
        ));
    }
    ledger::create_person_account(tx, network, person).await?;
    let grant: i64 = sqlx::query_scalar("SELECT initial_grant FROM networks WHERE id = $1")
        .bind(network.to_string())
        .fetch_one(&mut **tx)
        .await?;
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

/// Who the caller is and which networks they belong to.
#[utoipa::path(get, path = "/v1/me", tag = "people", security(("bearer" = [])),
    responses((status = 200, body = Me), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn me(State(state): State<AppState>, Auth(principal): Auth) -> ApiResult<Json<Me>> {
    let person = principal.person()?;
    let name: String = sqlx::query_scalar("SELECT name FROM people WHERE id = $1")
        .bind(person.to_string())
        .fetch_one(&state.db.pool)
        .await?;
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT network_id FROM memberships WHERE person_id = $1 ORDER BY created_at",
    )
    .bind(person.to_string())
    .fetch_all(&state.db.pool)
    .await?;
    let mut networks = Vec::new();
    for id in ids {
        networks.push(network_info(&state, &parse(id)?, &person).await?);
    }
    Ok(Json(Me {
        person: PersonInfo { id: person, name },
        networks,
    }))
}

/// Create another API token for yourself.
#[utoipa::path(post, path = "/v1/tokens", tag = "people", security(("bearer" = [])),
    request_body = CreateTokenRequest,
    responses((status = 201, body = CreatedToken), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_token(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ApiJson(request): ApiJson<CreateTokenRequest>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    let person = principal.person()?;
    let label = check_name(&request.label)?;
    let expires = match request.expires_in_s {
        Some(s) if s == 0 || s > 10 * 365 * 86400 => {
            return Err(ApiError::bad_request("expires_in_s must be 1..=10 years"));
        }
        Some(s) => Some(now_ms() + (s as i64) * 1000),
        None => None,
    };
    let mut tx = state.db.pool.begin().await?;
    let created = create_person_token(&mut tx, &person, &label, expires).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// List your API tokens (without secrets).
#[utoipa::path(get, path = "/v1/tokens", tag = "people", security(("bearer" = [])),
    responses((status = 200, body = Vec<TokenInfo>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_tokens(
    State(state): State<AppState>,
    Auth(principal): Auth,
) -> ApiResult<Json<Vec<TokenInfo>>> {
    let person = principal.person()?;
    let rows = sqlx::query(
        "SELECT id, label, created_at, expires_at, revoked_at FROM api_tokens WHERE person_id = $1 ORDER BY created_at",
    )
    .bind(person.to_string())
    .fetch_all(&state.db.pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(TokenInfo {
                id: parse(row.try_get("id")?)?,
                label: row.try_get("label")?,
                created_at_ms: row.try_get("created_at")?,
                expires_at_ms: row.try_get("expires_at")?,
                revoked: row.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
            })
        })
        .collect::<ApiResult<Vec<_>>>()
        .map(Json)
}

/// Revoke one of your tokens; it stops working at once.
#[utoipa::path(delete, path = "/v1/tokens/{token}", tag = "people", security(("bearer" = [])),
    params(("token" = String, Path, description = "Token id (tok_…)")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn revoke_token(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(token): Path<String>,
) -> ApiResult<StatusCode> {
    let person = principal.person()?;
    let token: TokenId = token.parse().map_err(|_| ApiError::not_found("token"))?;
    let updated = sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND person_id = $3 AND revoked_at IS NULL")
        .bind(now_ms())
        .bind(token.to_string())
        .bind(person.to_string())
        .execute(&state.db.pool)
        .await?
        .rows_affected();
    if updated == 0 {
        return Err(ApiError::not_found("token"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Accept a person invite. Authenticated callers join with their identity; otherwise a new
/// person is created and receives a token.
#[utoipa::path(post, path = "/v1/invites/accept", tag = "people",
    request_body = AcceptInviteRequest,
    responses((status = 200, body = AcceptedInvite), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 410, body = ErrorBody)))]
pub async fn accept_invite(
    State(state): State<AppState>,
    MaybeAuth(principal): MaybeAuth,
    ApiJson(request): ApiJson<AcceptInviteRequest>,
) -> ApiResult<Json<AcceptedInvite>> {
    let mut tx = state.db.pool.begin().await?;
    let (network, role) = use_invite(&mut tx, &request.code, "person").await?;
    let (person, token) = match principal {
        Some(Principal::Person { person, .. }) => (person, None),
        Some(Principal::Device { .. }) => {
            return Err(ApiError::forbidden("devices cannot accept person invites"));
        }
        None => {
            let name = check_name(request.name.as_deref().unwrap_or(""))?;
            let person = create_person(&mut tx, &name).await?;
            let token = create_person_token(&mut tx, &person, "invite", None).await?;
            (person, Some(token.token))
        }
    };
    add_member(&mut tx, &network, &person, role).await?;
    sqlx::query("UPDATE invites SET used_by = $1 WHERE code_hash = $2")
        .bind(person.to_string())
        .bind(secret_hash(&request.code))
        .execute(&mut *tx)
        .await?;
    crate::api::audit(
        &mut tx,
        Some(&network),
        &person.to_string(),
        "invite.accept",
        "",
    )
    .await?;
    tx.commit().await?;
    Ok(Json(AcceptedInvite {
        network,
        person,
        token,
    }))
}

/// Consume a single-use invite of `kind`: 404 if unknown, 410 if used or expired. Marks it used
/// inside `tx` with a conditional update, so two concurrent uses cannot both succeed.
pub async fn use_invite(
    tx: &mut Transaction<'static, Any>,
    code: &str,
    kind: &str,
) -> ApiResult<(NetworkId, Role)> {
    let row = sqlx::query(
        "SELECT network_id, kind, role, expires_at, used_at FROM invites WHERE code_hash = $1",
    )
    .bind(secret_hash(code))
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| ApiError::not_found("invite"))?;
    let invite_kind: String = row.try_get("kind")?;
    if invite_kind != kind {
        return Err(ApiError::bad_request(format!(
            "this is a {invite_kind} invite, not a {kind} invite"
        )));
    }
    let now = now_ms();
    if row.try_get::<Option<i64>, _>("used_at")?.is_some() {
        return Err(ApiError::gone(
            "invite_used",
            "this invite was already used",
        ));
    }
    if row.try_get::<i64, _>("expires_at")? <= now {
        return Err(ApiError::gone("invite_expired", "this invite has expired"));
    }
    let used =
        sqlx::query("UPDATE invites SET used_at = $1 WHERE code_hash = $2 AND used_at IS NULL")
            .bind(now)
            .bind(secret_hash(code))
            .execute(&mut **tx)
            .await?
            .rows_affected();
    if used != 1 {
        return Err(ApiError::gone(
            "invite_used",
            "this invite was already used",
        ));
    }
    let role: String = row.try_get("role")?;
    Ok((
        parse(row.try_get("network_id")?)?,
        Role::parse(&role).unwrap_or(Role::Member),
    ))
}

//! People: who am I, API tokens, and joining networks with invites.

use crate::domain::membership::{self, network_info};
use crate::http::auth::{Auth, MaybeAuth, Principal};
use crate::http::error::responses::{
    BadRequest, Conflict, Forbidden, Gone, Managing, NotFound, Unauthenticated,
};
use crate::http::error::{ApiError, ApiJson, ApiResult};
use crate::state::AppState;
use crate::store::{networks, people};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mesh_proto::TokenId;
use mesh_proto::api::{
    AcceptInviteRequest, AcceptedInvite, CreateTokenRequest, CreatedToken, Me, PersonInfo,
    TokenInfo,
};

/// Who the caller is and which networks they belong to.
#[utoipa::path(get, path = "/v1/me", tag = "people", security(("bearer" = [])),
    responses((status = 200, body = Me), Unauthenticated, Forbidden))]
pub async fn me(State(state): State<AppState>, Auth(principal): Auth) -> ApiResult<Json<Me>> {
    let person = principal.person()?;
    let name = people::name(&state.db.pool, &person)
        .await?
        .ok_or_else(|| ApiError::not_found("person"))?;
    let mut joined = Vec::new();
    for id in networks::of_person(&state.db.pool, &person).await? {
        joined.push(network_info(&state, &id, &person).await?);
    }
    Ok(Json(Me {
        person: PersonInfo { id: person, name },
        networks: joined,
    }))
}

/// Create another API token for yourself.
#[utoipa::path(post, path = "/v1/tokens", tag = "people", security(("bearer" = [])),
    request_body = CreateTokenRequest,
    responses((status = 201, body = CreatedToken), Unauthenticated, Forbidden))]
pub async fn create_token(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ApiJson(request): ApiJson<CreateTokenRequest>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    let Principal::Person { person, token } = principal else {
        return Err(ApiError::forbidden("devices cannot make tokens"));
    };
    let created = membership::create_token(&state, &person, &token, &request).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// List your API tokens (without secrets).
#[utoipa::path(get, path = "/v1/tokens", tag = "people", security(("bearer" = [])),
    responses((status = 200, body = Vec<TokenInfo>), Unauthenticated, Forbidden))]
pub async fn list_tokens(
    State(state): State<AppState>,
    Auth(principal): Auth,
) -> ApiResult<Json<Vec<TokenInfo>>> {
    let person = principal.person()?;
    Ok(Json(people::tokens_of(&state.db.pool, &person).await?))
}

/// Revoke one of your tokens; it stops working at once.
#[utoipa::path(delete, path = "/v1/tokens/{token}", tag = "people", security(("bearer" = [])),
    params(("token" = String, Path, description = "Token id (tok_…)")),
    responses((status = 204), Managing))]
pub async fn revoke_token(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(token): Path<String>,
) -> ApiResult<StatusCode> {
    let person = principal.person()?;
    let token: TokenId = token.parse().map_err(|_| ApiError::not_found("token"))?;
    membership::revoke_token(&state, &person, &token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Accept a person invite. Authenticated callers join with their identity; otherwise a new
/// person is created and receives a token.
#[utoipa::path(post, path = "/v1/invites/accept", tag = "people",
    request_body = AcceptInviteRequest,
    responses((status = 200, body = AcceptedInvite), BadRequest, Forbidden, NotFound, Conflict, Gone))]
pub async fn accept_invite(
    State(state): State<AppState>,
    MaybeAuth(principal): MaybeAuth,
    ApiJson(request): ApiJson<AcceptInviteRequest>,
) -> ApiResult<Json<AcceptedInvite>> {
    let person = match principal {
        Some(Principal::Person { person, .. }) => Some(person),
        Some(Principal::Device { .. }) => {
            return Err(ApiError::forbidden("devices cannot accept person invites"));
        }
        None => None,
    };
    Ok(Json(
        membership::accept_invite(&state, &request, person).await?,
    ))
}

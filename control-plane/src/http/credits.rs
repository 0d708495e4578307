//! Credits: balances, history and grants.

use crate::domain::ledger::{self, Account};
use crate::http::auth::{Admin, InNetwork, require_role};
use crate::http::error::responses::{BadRequest, Managing};
use crate::http::error::{ApiError, ApiJson, ApiQuery, ApiResult};
use crate::state::AppState;
use crate::store::ledger as ledger_store;
use axum::Json;
use axum::extract::State;
use mesh_proto::PersonId;
use mesh_proto::api::{Balance, GrantRequest, LedgerEntryInfo, Role, TransferInfo};
use serde::Deserialize;

/// Whose account to read; defaults to the caller. Reading others' needs the admin role.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AccountQuery {
    /// Person id (admins only, for others).
    pub person: Option<String>,
}

async fn target(
    state: &AppState,
    principal: &crate::http::auth::Principal,
    network: &mesh_proto::NetworkId,
    query: &AccountQuery,
) -> ApiResult<PersonId> {
    let me = principal.person()?;
    require_role(state, principal, network, Role::Member).await?;
    match &query.person {
        None => Ok(me),
        Some(p) => {
            let person: PersonId = p.parse().map_err(|_| ApiError::not_found("account"))?;
            if person != me {
                require_role(state, principal, network, Role::Admin).await?;
            }
            Ok(person)
        }
    }
}

/// A member's balance.
#[utoipa::path(get, path = "/v1/networks/{network}/credits/balance", tag = "credits", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), AccountQuery),
    responses((status = 200, body = Balance), Managing))]
pub async fn balance(
    State(state): State<AppState>,
    InNetwork { principal, network }: InNetwork,
    ApiQuery(query): ApiQuery<AccountQuery>,
) -> ApiResult<Json<Balance>> {
    let person = target(&state, &principal, &network, &query).await?;
    let balance =
        ledger_store::balance(&state.db.pool, &Account::Person(person).id(&network)).await?;
    Ok(Json(Balance {
        person,
        balance: balance.ok_or_else(|| ApiError::not_found("account"))?,
    }))
}

/// A member's ledger entries, newest first (at most 500).
#[utoipa::path(get, path = "/v1/networks/{network}/credits/history", tag = "credits", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), AccountQuery),
    responses((status = 200, body = Vec<LedgerEntryInfo>), Managing))]
pub async fn history(
    State(state): State<AppState>,
    InNetwork { principal, network }: InNetwork,
    ApiQuery(query): ApiQuery<AccountQuery>,
) -> ApiResult<Json<Vec<LedgerEntryInfo>>> {
    let person = target(&state, &principal, &network, &query).await?;
    let account = Account::Person(person).id(&network);
    Ok(Json(
        ledger_store::history(&state.db.pool, &account, 500).await?,
    ))
}

/// Grant credits to a member from the network's issuer account (admin). Idempotent per key.
#[utoipa::path(post, path = "/v1/networks/{network}/credits/grant", tag = "credits", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id")),
    request_body = GrantRequest,
    responses((status = 200, body = TransferInfo), Managing, BadRequest))]
pub async fn grant(
    State(state): State<AppState>,
    Admin {
        principal,
        person,
        network,
        ..
    }: Admin,
    ApiJson(request): ApiJson<GrantRequest>,
) -> ApiResult<Json<TransferInfo>> {
    Ok(Json(
        ledger::grant(&state, &network, &principal.label(), &person, &request).await?,
    ))
}

/// Sum of every account's balance in a network and of every ledger entry; both are zero in
/// a consistent ledger.
pub async fn ledger_sums(
    state: &AppState,
    network: &mesh_proto::NetworkId,
) -> ApiResult<(i64, i64)> {
    Ok(ledger_store::sums(&state.db, network).await?)
}

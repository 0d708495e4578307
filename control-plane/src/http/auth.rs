//! Who is calling: bearer tokens resolve to a person or a device, and network roles decide
//! what they may do. A caller who is not a member of a network sees its resources as absent
//! (404), so ids of other networks reveal nothing.

use crate::http::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::now_ms;
use crate::store::people::{self, TokenSubject};
use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use mesh_proto::api::{DeviceStatus, Role};
use mesh_proto::{DeviceId, NetworkId, PersonId, PublicKey, TokenId};

/// An authenticated caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// A person, by one of their tokens.
    Person {
        /// Who.
        person: PersonId,
        /// Which token.
        token: TokenId,
    },
    /// A device, by its device token.
    Device {
        /// Which device.
        device: DeviceId,
        /// Its network.
        network: NetworkId,
        /// Its owner.
        owner: PersonId,
        /// Its public key.
        key: PublicKey,
        /// Whether an admin approved it (or the network approves devices at once). A pending
        /// device passes only [`DeviceAuth`]: it may heartbeat and read its own status.
        approved: bool,
    },
}

impl Principal {
    /// The person, or 403 for a device.
    pub fn person(&self) -> ApiResult<PersonId> {
        match self {
            Principal::Person { person, .. } => Ok(*person),
            Principal::Device { .. } => {
                Err(ApiError::forbidden("this call is for people, not devices"))
            }
        }
    }

    /// The device, or 403 for a person.
    pub fn device(&self) -> ApiResult<(DeviceId, NetworkId)> {
        match self {
            Principal::Device {
                device, network, ..
            } => Ok((*device, *network)),
            Principal::Person { .. } => Err(ApiError::forbidden("this call is for devices")),
        }
    }

    /// A label for the audit log.
    pub fn label(&self) -> String {
        match self {
            Principal::Person { person, .. } => person.to_string(),
            Principal::Device { device, .. } => device.to_string(),
        }
    }
}

/// Resolve a bearer secret to its principal, if it is valid now.
pub async fn resolve(state: &AppState, secret: &str) -> ApiResult<Option<Principal>> {
    if !secret.starts_with(crate::domain::membership::TOKEN_PREFIX) || secret.len() > 256 {
        return Ok(None);
    }
    Ok(
        match people::resolve(&state.db.pool, secret, now_ms()).await? {
            Some(TokenSubject::Person { token, person }) => {
                Some(Principal::Person { person, token })
            }
            Some(TokenSubject::Device {
                device,
                network,
                owner,
                status: status @ (DeviceStatus::Pending | DeviceStatus::Approved),
                key,
            }) => Some(Principal::Device {
                device,
                network,
                owner,
                key,
                approved: status == DeviceStatus::Approved,
            }),
            Some(TokenSubject::Device { .. }) | None => None,
        },
    )
}

/// Extractor: the caller, or 401; a device that waits for approval gets 403 (see
/// [`DeviceAuth`] for the two calls it may make).
pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match MaybeAuth::from_request_parts(parts, state).await?.0 {
            Some(principal) => Ok(Auth(principal)),
            None => Err(ApiError::unauthenticated()),
        }
    }
}

/// Extractor: the caller if a valid token was given; a present but invalid token is 401, a
/// pending device's is 403.
pub struct MaybeAuth(pub Option<Principal>);

impl FromRequestParts<AppState> for MaybeAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let principal = bearer(parts, state).await?;
        if let Some(Principal::Device {
            approved: false, ..
        }) = principal
        {
            return Err(ApiError::forbidden_with(
                "device_pending",
                "this device waits for an admin's approval: until then it may only send \
                 heartbeats and read its own status",
            ));
        }
        Ok(MaybeAuth(principal))
    }
}

/// Extractor: a device, approved or still pending: for the calls a pending device may make
/// (heartbeats, which tell it its status, and its certificate, refused until approval).
/// 401 without a valid token, 403 for a person.
pub struct DeviceAuth(pub Principal);

impl FromRequestParts<AppState> for DeviceAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match bearer(parts, state).await? {
            Some(principal @ Principal::Device { .. }) => Ok(DeviceAuth(principal)),
            Some(Principal::Person { .. }) => Err(ApiError::forbidden("this call is for devices")),
            None => Err(ApiError::unauthenticated()),
        }
    }
}

/// The principal of the request's bearer token, if it has one; 401 for one that is invalid.
async fn bearer(parts: &Parts, state: &AppState) -> ApiResult<Option<Principal>> {
    let Some(header) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let secret = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(ApiError::unauthenticated)?;
    match resolve(state, secret.trim()).await? {
        Some(principal) => Ok(Some(principal)),
        None => Err(ApiError::unauthenticated()),
    }
}

/// The caller's role in `network`; 404 when they are not a member (or are a device of another
/// network). A device of the network acts with no role: see [`require_device_of`].
pub async fn role_in(
    state: &AppState,
    principal: &Principal,
    network: &NetworkId,
) -> ApiResult<Role> {
    let person = match principal {
        Principal::Person { person, .. } => *person,
        Principal::Device { network: own, .. } if own == network => {
            return Err(ApiError::forbidden("devices cannot do this"));
        }
        Principal::Device { .. } => return Err(ApiError::not_found("network")),
    };
    crate::store::networks::role_of(&state.db.pool, network, &person)
        .await?
        .ok_or_else(|| ApiError::not_found("network"))
}

/// Require at least `minimum` in `network`: 404 for outsiders, 403 for lower roles.
pub async fn require_role(
    state: &AppState,
    principal: &Principal,
    network: &NetworkId,
    minimum: Role,
) -> ApiResult<Role> {
    let role = role_in(state, principal, network).await?;
    if role < minimum {
        return Err(ApiError::forbidden(format!(
            "this needs the {} role",
            minimum.as_str()
        )));
    }
    Ok(role)
}

/// Members of `network` (any role) and devices of `network` may read it.
pub async fn require_reader(
    state: &AppState,
    principal: &Principal,
    network: &NetworkId,
) -> ApiResult<()> {
    match principal {
        Principal::Device { network: own, .. } if own == network => Ok(()),
        _ => role_in(state, principal, network).await.map(|_| ()),
    }
}

/// Extractor: the `{network}` segment of the path. A malformed id is a 404, like an unknown
/// network, so a probe learns nothing from the difference.
pub struct NetworkPath(pub NetworkId);

impl<S: Send + Sync> FromRequestParts<S> for NetworkPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::no_route())?;
        let text = params
            .iter()
            .find_map(|(name, value)| (name == "network").then_some(value))
            .ok_or_else(|| {
                ApiError::internal("a network extractor on a route without {network}")
            })?;
        text.parse()
            .map(NetworkPath)
            .map_err(|_| ApiError::not_found("network"))
    }
}

/// Extractor: the caller and the network in the path, before any role check (for calls whose
/// rule depends on the request). 401 without a valid token, then 404 for a malformed id.
pub struct InNetwork {
    /// Who calls.
    pub principal: Principal,
    /// The network of the path.
    pub network: NetworkId,
}

impl FromRequestParts<AppState> for InNetwork {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Auth(principal) = Auth::from_request_parts(parts, state).await?;
        let NetworkPath(network) = NetworkPath::from_request_parts(parts, state).await?;
        Ok(InNetwork { principal, network })
    }
}

/// Extractor: a caller who may read the network in the path: a member of any role or one of
/// the network's own devices ([`require_reader`]). Others get 404.
pub struct Reader {
    /// Who calls.
    pub principal: Principal,
    /// The network of the path.
    pub network: NetworkId,
}

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let InNetwork { principal, network } = InNetwork::from_request_parts(parts, state).await?;
        require_reader(state, &principal, &network).await?;
        Ok(Reader { principal, network })
    }
}

/// The least role a [`WithRole`] extractor accepts.
pub trait MinimumRole: Send + Sync {
    /// The role.
    const ROLE: Role;
}

/// Role markers for [`WithRole`].
pub mod roles {
    use super::{MinimumRole, Role};

    /// Any member.
    pub enum Member {}
    /// An admin or the owner.
    pub enum Admin {}
    /// The owner.
    pub enum Owner {}

    impl MinimumRole for Member {
        const ROLE: Role = Role::Member;
    }
    impl MinimumRole for Admin {
        const ROLE: Role = Role::Admin;
    }
    impl MinimumRole for Owner {
        const ROLE: Role = Role::Owner;
    }
}

/// Extractor: a person holding at least `R::ROLE` in the network of the path
/// ([`require_role`]: 404 for outsiders, 403 for devices and lower roles).
pub struct WithRole<R: MinimumRole> {
    /// Who calls.
    pub principal: Principal,
    /// The caller as a person.
    pub person: PersonId,
    /// The network of the path.
    pub network: NetworkId,
    /// The caller's role there (`R::ROLE` or higher).
    pub role: Role,
    minimum: std::marker::PhantomData<R>,
}

/// A member of any role of the path's network.
pub type Member = WithRole<roles::Member>;
/// An admin (or the owner) of the path's network.
pub type Admin = WithRole<roles::Admin>;
/// The owner of the path's network.
pub type Owner = WithRole<roles::Owner>;

impl<R: MinimumRole> FromRequestParts<AppState> for WithRole<R> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let InNetwork { principal, network } = InNetwork::from_request_parts(parts, state).await?;
        let role = require_role(state, &principal, &network, R::ROLE).await?;
        Ok(WithRole {
            person: principal.person()?,
            principal,
            network,
            role,
            minimum: std::marker::PhantomData,
        })
    }
}

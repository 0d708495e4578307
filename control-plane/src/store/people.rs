//! `people` and their `api_tokens` (device tokens too): the only code that reads or writes
//! them. Token secrets are stored as their BLAKE3 ([`super::secret_hash`]), never in clear.

use super::{StoreError, Tx, parse_column, secret_hash};
use mesh_proto::api::{DeviceStatus, TokenInfo};
use mesh_proto::{DeviceId, NetworkId, PersonId, PublicKey, TokenId};
use sqlx::Row;

/// Create a person.
pub async fn insert_person(
    tx: &mut Tx,
    person: &PersonId,
    name: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO people (id, name, created_at) VALUES ($1, $2, $3)")
        .bind(person.to_string())
        .bind(name)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The display name of `person`.
pub async fn name(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    person: &PersonId,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar("SELECT name FROM people WHERE id = $1")
        .bind(person.to_string())
        .fetch_optional(db)
        .await?)
}

/// Whom a token acts for.
#[derive(Debug, Clone, Copy)]
pub enum TokenOwner<'a> {
    /// A person.
    Person(&'a PersonId),
    /// A device.
    Device(&'a DeviceId),
}

/// A token to store.
#[derive(Debug, Clone, Copy)]
pub struct NewToken<'a> {
    /// Its id.
    pub id: &'a TokenId,
    /// Its secret (only its hash is stored).
    pub secret: &'a str,
    /// Whom it acts for.
    pub owner: TokenOwner<'a>,
    /// Its label.
    pub label: &'a str,
    /// When it stops working (ms), if ever.
    pub expires_at_ms: Option<i64>,
    /// The token it was made with.
    pub parent: Option<&'a TokenId>,
}

/// Store a token.
pub async fn insert_token(tx: &mut Tx, token: &NewToken<'_>, now: i64) -> Result<(), StoreError> {
    let NewToken {
        id,
        secret,
        owner,
        label,
        expires_at_ms,
        parent,
    } = *token;
    let (person, device) = match owner {
        TokenOwner::Person(p) => (Some(p.to_string()), None),
        TokenOwner::Device(d) => (None, Some(d.to_string())),
    };
    sqlx::query(
        "INSERT INTO api_tokens (id, secret_hash, person_id, device_id, label, created_at, expires_at, parent_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id.to_string())
    .bind(secret_hash(secret))
    .bind(person)
    .bind(device)
    .bind(label)
    .bind(now)
    .bind(expires_at_ms)
    .bind(parent.map(ToString::to_string))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Tokens of `person`, oldest first (without secrets).
pub async fn tokens_of(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    person: &PersonId,
) -> Result<Vec<TokenInfo>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, label, created_at, expires_at, revoked_at, parent_id FROM api_tokens WHERE person_id = $1 \
         ORDER BY created_at",
    )
    .bind(person.to_string())
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|row| {
            let id: String = row.try_get("id")?;
            Ok(TokenInfo {
                id: parse_column("api_tokens.id", &id)?,
                label: row.try_get("label")?,
                created_at_ms: row.try_get("created_at")?,
                expires_at_ms: row.try_get("expires_at")?,
                revoked: row.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
                parent: row
                    .try_get::<Option<String>, _>("parent_id")?
                    .map(|p| parse_column("api_tokens.parent_id", &p))
                    .transpose()?,
            })
        })
        .collect()
}

/// The expiry of `person`'s token `token`: `None` when there is no such token, `Some(None)`
/// when it never expires.
pub async fn token_expiry(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    token: &TokenId,
    person: &PersonId,
) -> Result<Option<Option<i64>>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT expires_at FROM api_tokens WHERE id = $1 AND person_id = $2")
            .bind(token.to_string())
            .bind(person.to_string())
            .fetch_optional(db)
            .await?,
    )
}

/// Revoke the token `token` of `person` and every token made with it, and with those, and so
/// on; returns whether `token` itself was revoked by this call.
pub async fn revoke_token(
    tx: &mut Tx,
    token: &TokenId,
    person: &PersonId,
    now: i64,
) -> Result<bool, StoreError> {
    let changed = sqlx::query(
        "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND person_id = $3 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(token.to_string())
    .bind(person.to_string())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    sqlx::query(
        "WITH RECURSIVE descendants(id) AS ( \
             SELECT id FROM api_tokens WHERE parent_id = $2 \
             UNION SELECT t.id FROM api_tokens t JOIN descendants d ON t.parent_id = d.id) \
         UPDATE api_tokens SET revoked_at = $1 WHERE id IN (SELECT id FROM descendants) AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(token.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(changed == 1)
}

/// What a stored token resolves to.
#[derive(Debug, Clone)]
pub enum TokenSubject {
    /// A person's token.
    Person {
        /// The token.
        token: TokenId,
        /// The person.
        person: PersonId,
    },
    /// A device's token, with the device as it stands now.
    Device {
        /// The device.
        device: DeviceId,
        /// Its network.
        network: NetworkId,
        /// Its owner.
        owner: PersonId,
        /// Its status.
        status: DeviceStatus,
        /// Its key.
        key: PublicKey,
    },
}

/// The token whose secret is `secret`, if it is neither revoked nor expired at `now`.
pub async fn resolve(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    secret: &str,
    now: i64,
) -> Result<Option<TokenSubject>, StoreError> {
    let row = sqlx::query(
        "SELECT t.id, t.person_id, t.device_id, t.expires_at, t.revoked_at, d.network_id, d.owner_id, d.status, d.public_key \
         FROM api_tokens t LEFT JOIN devices d ON d.id = t.device_id WHERE t.secret_hash = $1",
    )
    .bind(secret_hash(secret))
    .fetch_optional(db)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let revoked: Option<i64> = row.try_get("revoked_at")?;
    let expires: Option<i64> = row.try_get("expires_at")?;
    if revoked.is_some() || expires.is_some_and(|e| e <= now) {
        return Ok(None);
    }
    let text =
        |column: &'static str| -> Result<Option<String>, StoreError> { Ok(row.try_get(column)?) };
    let token: String = row.try_get("id")?;
    if let Some(person) = text("person_id")? {
        return Ok(Some(TokenSubject::Person {
            token: parse_column("api_tokens.id", &token)?,
            person: parse_column("api_tokens.person_id", &person)?,
        }));
    }
    let (Some(device), Some(network), Some(owner), Some(status), Some(key)) = (
        text("device_id")?,
        text("network_id")?,
        text("owner_id")?,
        text("status")?,
        text("public_key")?,
    ) else {
        return Ok(None);
    };
    Ok(Some(TokenSubject::Device {
        device: parse_column("api_tokens.device_id", &device)?,
        network: parse_column("devices.network_id", &network)?,
        owner: parse_column("devices.owner_id", &owner)?,
        status: DeviceStatus::parse(&status).ok_or(StoreError::Corrupt {
            column: "devices.status",
            value: status,
        })?,
        key: parse_column("devices.public_key", &key)?,
    }))
}

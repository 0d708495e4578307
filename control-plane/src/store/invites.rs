//! Single-use `invites` (stored by the BLAKE3 of their code) and the devices' registration
//! `challenges`: the only code that reads or writes them.

use super::{StoreError, Tx, parse_column, secret_hash};
use mesh_proto::api::{InviteKind, Role};
use mesh_proto::{InviteId, NetworkId, PersonId};
use sqlx::Row;

fn kind_text(kind: InviteKind) -> &'static str {
    match kind {
        InviteKind::Person => "person",
        InviteKind::Device => "device",
    }
}

/// An invite to create.
#[derive(Debug, Clone)]
pub struct NewInvite<'a> {
    /// Its id.
    pub id: InviteId,
    /// The network it joins.
    pub network: NetworkId,
    /// Its code (only its hash is stored).
    pub code: &'a str,
    /// For a person or a device.
    pub kind: InviteKind,
    /// The role a person gets.
    pub role: Role,
    /// Who created it.
    pub created_by: PersonId,
    /// When it stops working (ms).
    pub expires_at_ms: i64,
}

/// Store an invite.
pub async fn insert(tx: &mut Tx, invite: &NewInvite<'_>, now: i64) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO invites (id, network_id, code_hash, kind, role, created_by, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(invite.id.to_string())
    .bind(invite.network.to_string())
    .bind(secret_hash(invite.code))
    .bind(kind_text(invite.kind))
    .bind(invite.role.as_str())
    .bind(invite.created_by.to_string())
    .bind(now)
    .bind(invite.expires_at_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An invite as stored.
#[derive(Debug, Clone)]
pub struct InviteRecord {
    /// The network it joins.
    pub network: NetworkId,
    /// For a person or a device.
    pub kind: InviteKind,
    /// The role a person gets.
    pub role: Role,
    /// Who created it.
    pub created_by: PersonId,
    /// When it stops working (ms).
    pub expires_at_ms: i64,
    /// When it was used, if it was.
    pub used_at_ms: Option<i64>,
}

/// The invite with this code.
pub async fn by_code(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    code: &str,
) -> Result<Option<InviteRecord>, StoreError> {
    let row = sqlx::query(
        "SELECT network_id, kind, role, created_by, expires_at, used_at FROM invites WHERE code_hash = $1",
    )
    .bind(secret_hash(code))
    .fetch_optional(db)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let text = |column: &'static str| -> Result<String, StoreError> { Ok(row.try_get(column)?) };
    let kind = match text("kind")?.as_str() {
        "person" => InviteKind::Person,
        "device" => InviteKind::Device,
        other => {
            return Err(StoreError::Corrupt {
                column: "invites.kind",
                value: other.to_string(),
            });
        }
    };
    let role = text("role")?;
    Ok(Some(InviteRecord {
        network: parse_column("invites.network_id", &text("network_id")?)?,
        kind,
        role: Role::parse(&role).ok_or(StoreError::Corrupt {
            column: "invites.role",
            value: role,
        })?,
        created_by: parse_column("invites.created_by", &text("created_by")?)?,
        expires_at_ms: row.try_get("expires_at")?,
        used_at_ms: row.try_get("used_at")?,
    }))
}

/// Mark the invite with this code used at `now`, if nobody used it first.
pub async fn mark_used(tx: &mut Tx, code: &str, now: i64) -> Result<bool, StoreError> {
    let changed =
        sqlx::query("UPDATE invites SET used_at = $1 WHERE code_hash = $2 AND used_at IS NULL")
            .bind(now)
            .bind(secret_hash(code))
            .execute(&mut **tx)
            .await?
            .rows_affected();
    Ok(changed == 1)
}

/// Record who used the invite with this code.
pub async fn set_used_by(tx: &mut Tx, code: &str, person: &PersonId) -> Result<(), StoreError> {
    sqlx::query("UPDATE invites SET used_by = $1 WHERE code_hash = $2")
        .bind(person.to_string())
        .bind(secret_hash(code))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Store a fresh registration challenge (and forget expired ones).
pub async fn insert_challenge(
    db: &super::Db,
    challenge: &str,
    expires_at_ms: i64,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM challenges WHERE expires_at <= $1")
        .bind(now)
        .execute(&db.pool)
        .await?;
    sqlx::query("INSERT INTO challenges (challenge, expires_at) VALUES ($1, $2)")
        .bind(challenge)
        .bind(expires_at_ms)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Use up a challenge that has not expired at `now`: deleting it is what makes a replayed
/// registration fail. Returns whether it was there.
pub async fn take_challenge(tx: &mut Tx, challenge: &str, now: i64) -> Result<bool, StoreError> {
    let taken = sqlx::query("DELETE FROM challenges WHERE challenge = $1 AND expires_at > $2")
        .bind(challenge)
        .bind(now)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    Ok(taken == 1)
}

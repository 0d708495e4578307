//! Single-use `invites` (stored by the BLAKE3 of their code) and the devices' registration
//! `challenges`: the only code that reads or writes them.

use super::{StoreError, Tx, parse_column, secret_hash};
use mesh_proto::api::{InviteInfo, InviteKind, Role};
use mesh_proto::{InviteId, NetworkId, PersonId};
use sqlx::Row;

/// The stored hash of an invite code: of its secret part only, so the pins appended to it
/// ([`mesh_proto::pin`]) do not matter for finding it.
fn code_hash(code: &str) -> String {
    let secret = mesh_proto::pin::split_invite_code(code).map_or(code, |(secret, _)| secret);
    secret_hash(secret)
}

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
    .bind(code_hash(invite.code))
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
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<i64>,
}

fn kind_of(text: &str) -> Result<InviteKind, StoreError> {
    match text {
        "person" => Ok(InviteKind::Person),
        "device" => Ok(InviteKind::Device),
        other => Err(StoreError::Corrupt {
            column: "invites.kind",
            value: other.to_string(),
        }),
    }
}

fn role_of(text: String) -> Result<Role, StoreError> {
    Role::parse(&text).ok_or(StoreError::Corrupt {
        column: "invites.role",
        value: text,
    })
}

/// The invite with this code.
pub async fn by_code(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    code: &str,
) -> Result<Option<InviteRecord>, StoreError> {
    let row = sqlx::query(
        "SELECT network_id, kind, role, created_by, expires_at, used_at, revoked_at FROM invites \
         WHERE code_hash = $1",
    )
    .bind(code_hash(code))
    .fetch_optional(db)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let text = |column: &'static str| -> Result<String, StoreError> { Ok(row.try_get(column)?) };
    Ok(Some(InviteRecord {
        network: parse_column("invites.network_id", &text("network_id")?)?,
        kind: kind_of(&text("kind")?)?,
        role: role_of(text("role")?)?,
        created_by: parse_column("invites.created_by", &text("created_by")?)?,
        expires_at_ms: row.try_get("expires_at")?,
        used_at_ms: row.try_get("used_at")?,
        revoked_at_ms: row.try_get("revoked_at")?,
    }))
}

/// Open invites of `network` at `now` (not used, expired or revoked), newest first.
pub async fn open_in(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    network: &NetworkId,
    now: i64,
) -> Result<Vec<InviteInfo>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, kind, role, created_by, created_at, expires_at FROM invites WHERE network_id = $1 \
         AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $2 ORDER BY created_at DESC, id",
    )
    .bind(network.to_string())
    .bind(now)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|row| {
            let text =
                |column: &'static str| -> Result<String, StoreError> { Ok(row.try_get(column)?) };
            Ok(InviteInfo {
                id: parse_column("invites.id", &text("id")?)?,
                kind: kind_of(&text("kind")?)?,
                role: role_of(text("role")?)?,
                created_by: parse_column("invites.created_by", &text("created_by")?)?,
                created_at_ms: row.try_get("created_at")?,
                expires_at_ms: row.try_get("expires_at")?,
            })
        })
        .collect()
}

/// The role an open invite `id` of `network` grants, if there is such an open invite.
pub async fn open_role(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    network: &NetworkId,
    id: &InviteId,
    now: i64,
) -> Result<Option<Role>, StoreError> {
    let role: Option<String> = sqlx::query_scalar(
        "SELECT role FROM invites WHERE id = $1 AND network_id = $2 AND used_at IS NULL \
         AND revoked_at IS NULL AND expires_at > $3",
    )
    .bind(id.to_string())
    .bind(network.to_string())
    .bind(now)
    .fetch_optional(db)
    .await?;
    role.map(role_of).transpose()
}

/// Revoke the open invite `id` of `network`; returns whether it was open.
pub async fn revoke(
    tx: &mut Tx,
    network: &NetworkId,
    id: &InviteId,
    now: i64,
) -> Result<bool, StoreError> {
    let changed = sqlx::query(
        "UPDATE invites SET revoked_at = $1 WHERE id = $2 AND network_id = $3 AND used_at IS NULL \
         AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(id.to_string())
    .bind(network.to_string())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// Revoke the open invites `creator` made in `network` (only those granting `role` when
/// given); returns how many.
pub async fn revoke_made_by(
    tx: &mut Tx,
    network: &NetworkId,
    creator: &PersonId,
    role: Option<Role>,
    now: i64,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE invites SET revoked_at = $1 WHERE network_id = $2 AND created_by = $3 \
         AND used_at IS NULL AND revoked_at IS NULL AND ($4 = '' OR role = $4)",
    )
    .bind(now)
    .bind(network.to_string())
    .bind(creator.to_string())
    .bind(role.map_or("", Role::as_str))
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

/// Mark the invite with this code used at `now`, if nobody used it first.
pub async fn mark_used(tx: &mut Tx, code: &str, now: i64) -> Result<bool, StoreError> {
    let changed =
        sqlx::query("UPDATE invites SET used_at = $1 WHERE code_hash = $2 AND used_at IS NULL")
            .bind(now)
            .bind(code_hash(code))
            .execute(&mut **tx)
            .await?
            .rows_affected();
    Ok(changed == 1)
}

/// Record who used the invite with this code.
pub async fn set_used_by(tx: &mut Tx, code: &str, person: &PersonId) -> Result<(), StoreError> {
    sqlx::query("UPDATE invites SET used_by = $1 WHERE code_hash = $2")
        .bind(person.to_string())
        .bind(code_hash(code))
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

//! The `audit_log`: admin actions, failed checks and quarantines, append-only.

use super::{StoreError, Tx, random_id};
use mesh_proto::NetworkId;
use mesh_proto::api::AuditEntry;
use sqlx::Row;

/// Append an entry inside `tx`.
pub async fn append(
    tx: &mut Tx,
    network: Option<&NetworkId>,
    actor: &str,
    action: &str,
    detail: &str,
    now: i64,
) -> Result<(), StoreError> {
    let id = random_id(|b| {
        format!(
            "audit_{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        )
    });
    append_with_id(tx, &id, network, actor, action, detail, now).await
}

/// Append an entry with the id `id`, unless there is one: what a caller may provoke again
/// and again (a conflicting receipt for one job) is recorded once.
pub async fn append_with_id(
    tx: &mut Tx,
    id: &str,
    network: Option<&NetworkId>,
    actor: &str,
    action: &str,
    detail: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO audit_log (id, network_id, actor, action, detail, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (id) DO NOTHING")
        .bind(id)
        .bind(network.map(|n| n.to_string()))
        .bind(actor)
        .bind(action)
        .bind(detail)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The newest `limit` entries of `network` older than `before` (`(at_ms, id)` of an entry),
/// newest first.
pub async fn page(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    network: &NetworkId,
    before: Option<(i64, &str)>,
    limit: i64,
) -> Result<Vec<AuditEntry>, StoreError> {
    let rows =
        match before {
            None => sqlx::query(
                "SELECT id, actor, action, detail, created_at FROM audit_log WHERE network_id = $1 \
                 ORDER BY created_at DESC, id DESC LIMIT $2",
            )
            .bind(network.to_string())
            .bind(limit)
            .fetch_all(db)
            .await?,
            Some((before_ms, before_id)) => sqlx::query(
                "SELECT id, actor, action, detail, created_at FROM audit_log WHERE network_id = $1 \
                 AND (created_at < $2 OR (created_at = $2 AND id < $3)) \
                 ORDER BY created_at DESC, id DESC LIMIT $4",
            )
            .bind(network.to_string())
            .bind(before_ms)
            .bind(before_id)
            .bind(limit)
            .fetch_all(db)
            .await?,
        };
    rows.into_iter()
        .map(|row| {
            Ok(AuditEntry {
                id: row.try_get("id")?,
                actor: row.try_get("actor")?,
                action: row.try_get("action")?,
                detail: row.try_get("detail")?,
                at_ms: row.try_get("created_at")?,
            })
        })
        .collect()
}

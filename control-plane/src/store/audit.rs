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
    sqlx::query("INSERT INTO audit_log (id, network_id, actor, action, detail, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
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

/// The newest `limit` entries of `network`.
pub async fn newest(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    network: &NetworkId,
    limit: i64,
) -> Result<Vec<AuditEntry>, StoreError> {
    let rows = sqlx::query(
        "SELECT actor, action, detail, created_at FROM audit_log WHERE network_id = $1 \
         ORDER BY created_at DESC, id LIMIT $2",
    )
    .bind(network.to_string())
    .bind(limit)
    .fetch_all(db)
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
        .collect()
}

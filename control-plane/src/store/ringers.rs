//! `ringers` (known-answer items harvested from a requester's verified jobs) and `ringer_seen`
//! (which devices have seen each one): the only code that reads or writes them.

use super::StoreError;
use mesh_proto::{Blake3Hash, DeviceId, JobId, NetworkId, PersonId};
use sqlx::Row;

/// A ringer to keep.
#[derive(Debug, Clone)]
pub struct NewRinger<'a> {
    /// Its id.
    pub id: &'a str,
    /// Its network.
    pub network: &'a NetworkId,
    /// The workload it answers for.
    pub workload: &'a Blake3Hash,
    /// Whose jobs it came from (and is mixed into).
    pub requester: &'a PersonId,
    /// The item, as JSON.
    pub item: &'a str,
    /// Its verified answer, as JSON.
    pub answer: &'a str,
    /// The job it came from.
    pub source_job: &'a JobId,
}

/// Keep a ringer; returns whether it is new (the same item of the same requester is kept once).
pub async fn insert(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    r: &NewRinger<'_>,
    now: i64,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO ringers (id, network_id, workload_hash, requester_id, item, answer, source_job, uses, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8) ON CONFLICT (network_id, workload_hash, requester_id, item) DO NOTHING",
    )
    .bind(r.id)
    .bind(r.network.to_string())
    .bind(r.workload.to_string())
    .bind(r.requester.to_string())
    .bind(r.item)
    .bind(r.answer)
    .bind(r.source_job.to_string())
    .bind(now)
    .execute(db)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Record that `device` has seen ringer `ringer` (it is never shown to it again).
pub async fn mark_seen(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    ringer: &str,
    device: &DeviceId,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO ringer_seen (ringer_id, device_id) VALUES ($1, $2) ON CONFLICT (ringer_id, device_id) DO NOTHING",
    )
    .bind(ringer)
    .bind(device.to_string())
    .execute(db)
    .await?;
    Ok(())
}

/// Up to `limit` ringers of `requester` for `workload` that `device` has not seen, least used
/// first: (id, item JSON, answer JSON).
pub async fn unseen(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    network: &NetworkId,
    workload: &Blake3Hash,
    requester: &PersonId,
    device: &DeviceId,
    limit: i64,
) -> Result<Vec<(String, String, String)>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, item, answer FROM ringers r WHERE network_id = $1 AND workload_hash = $2 AND requester_id = $3 \
         AND NOT EXISTS (SELECT 1 FROM ringer_seen s WHERE s.ringer_id = r.id AND s.device_id = $4) \
         ORDER BY uses LIMIT $5",
    )
    .bind(network.to_string())
    .bind(workload.to_string())
    .bind(requester.to_string())
    .bind(device.to_string())
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok((
                row.try_get("id")?,
                row.try_get("item")?,
                row.try_get("answer")?,
            ))
        })
        .collect()
}

/// Count one more use of ringer `ringer`.
pub async fn count_use(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    ringer: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE ringers SET uses = uses + 1 WHERE id = $1")
        .bind(ringer)
        .execute(db)
        .await?;
    Ok(())
}

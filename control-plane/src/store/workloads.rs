//! The `workloads` registry and the `components` it points at (content-addressed bytes): the
//! only code that reads or writes them.

use super::{StoreError, Tx, parse_column};
use mesh_proto::api::WorkloadInfo;
use mesh_proto::{Blake3Hash, NetworkId, PersonId, WorkloadMetadata};
use sqlx::Row;
use sqlx::any::AnyRow;

/// Columns [`record`] reads.
const COLUMNS: &str = "network_id, hash, metadata, publisher_id, size, published_at, yanked_at";

fn metadata(text: &str) -> Result<WorkloadMetadata, StoreError> {
    serde_json::from_str(text).map_err(|_| StoreError::Corrupt {
        column: "workloads.metadata",
        value: text.chars().take(100).collect(),
    })
}

fn record(row: &AnyRow) -> Result<WorkloadInfo, StoreError> {
    let text = |column: &'static str| -> Result<String, StoreError> { Ok(row.try_get(column)?) };
    let metadata = metadata(&text("metadata")?)?;
    Ok(WorkloadInfo {
        network: parse_column("workloads.network_id", &text("network_id")?)?,
        hash: parse_column("workloads.hash", &text("hash")?)?,
        name: metadata.name,
        version: metadata.version,
        models: metadata.models,
        comparison: metadata.comparison,
        publisher: parse_column("workloads.publisher_id", &text("publisher_id")?)?,
        size: row.try_get::<i64, _>("size")?.max(0) as u64,
        published_at_ms: row.try_get("published_at")?,
        yanked: row.try_get::<Option<i64>, _>("yanked_at")?.is_some(),
    })
}

/// The workload `hash` of `network`.
pub async fn get(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    network: &NetworkId,
    hash: &Blake3Hash,
) -> Result<Option<WorkloadInfo>, StoreError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM workloads WHERE network_id = $1 AND hash = $2"
    ))
    .bind(network.to_string())
    .bind(hash.to_string())
    .fetch_optional(db)
    .await?
    .as_ref()
    .map(record)
    .transpose()
}

/// The full metadata the component declared, for the workload `hash` of `network`.
pub async fn metadata_of(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    network: &NetworkId,
    hash: &Blake3Hash,
) -> Result<Option<WorkloadMetadata>, StoreError> {
    let text: Option<String> =
        sqlx::query_scalar("SELECT metadata FROM workloads WHERE network_id = $1 AND hash = $2")
            .bind(network.to_string())
            .bind(hash.to_string())
            .fetch_optional(db)
            .await?;
    text.as_deref().map(metadata).transpose()
}

/// Every workload of `network`, by name then publication time.
pub async fn list(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    network: &NetworkId,
) -> Result<Vec<WorkloadInfo>, StoreError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM workloads WHERE network_id = $1 ORDER BY name, published_at"
    ))
    .bind(network.to_string())
    .fetch_all(db)
    .await?
    .iter()
    .map(record)
    .collect()
}

/// Store a component's bytes under their hash (a no-op when they are there already) and
/// publish it in `network` as `metadata` declares. Returns whether the workload is new; the
/// same name and version with other bytes is [`StoreError::Duplicate`].
pub async fn publish(
    tx: &mut Tx,
    network: &NetworkId,
    publisher: &PersonId,
    bytes: &[u8],
    metadata: &WorkloadMetadata,
    now: i64,
) -> Result<bool, StoreError> {
    let hash = Blake3Hash::of(bytes);
    sqlx::query(
        "INSERT INTO components (hash, size, bytes) VALUES ($1, $2, $3) ON CONFLICT (hash) DO NOTHING",
    )
    .bind(hash.to_string())
    .bind(bytes.len() as i64)
    .bind(bytes)
    .execute(&mut **tx)
    .await?;
    let inserted = sqlx::query(
        "INSERT INTO workloads (network_id, hash, name, version, metadata, publisher_id, size, published_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (network_id, hash) DO NOTHING",
    )
    .bind(network.to_string())
    .bind(hash.to_string())
    .bind(&metadata.name)
    .bind(&metadata.version)
    .bind(serde_json::to_string(metadata).expect("metadata serialises"))
    .bind(publisher.to_string())
    .bind(bytes.len() as i64)
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Duplicate("this name and version with other bytes")
        }
        _ => StoreError::Database(e),
    })?
    .rows_affected();
    Ok(inserted == 1)
}

/// Yank the workload `hash` of `network`; returns whether this call yanked it.
pub async fn yank(
    tx: &mut Tx,
    network: &NetworkId,
    hash: &Blake3Hash,
    now: i64,
) -> Result<bool, StoreError> {
    let changed = sqlx::query(
        "UPDATE workloads SET yanked_at = $1 WHERE network_id = $2 AND hash = $3 AND yanked_at IS NULL",
    )
    .bind(now)
    .bind(network.to_string())
    .bind(hash.to_string())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// Up to `length` bytes of the component `hash` from `offset`, and its total size: only that
/// chunk is read (whoever assembles the chunks checks the whole against the hash).
pub async fn component_chunk(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    hash: &Blake3Hash,
    offset: u64,
    length: u32,
) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
    let row: Option<(i64, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT CAST(length(bytes) AS BIGINT), substr(bytes, CAST($1 AS INTEGER), CAST($2 AS INTEGER)) \
         FROM components WHERE hash = $3",
    )
    .bind(i64::try_from(offset).unwrap_or(i64::MAX).saturating_add(1))
    .bind(i64::from(length))
    .bind(hash.to_string())
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(total, chunk)| (total.max(0) as u64, chunk.unwrap_or_default())))
}

/// A component's bytes, checked against their hash.
pub async fn component(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    hash: &Blake3Hash,
) -> Result<Option<Vec<u8>>, StoreError> {
    let bytes: Option<Vec<u8>> = sqlx::query_scalar("SELECT bytes FROM components WHERE hash = $1")
        .bind(hash.to_string())
        .fetch_optional(db)
        .await?;
    match bytes {
        Some(bytes) if Blake3Hash::of(&bytes) != *hash => Err(StoreError::Corrupt {
            column: "components.bytes",
            value: format!("{} bytes that do not hash to {hash}", bytes.len()),
        }),
        other => Ok(other),
    }
}

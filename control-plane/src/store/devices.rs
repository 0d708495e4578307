//! The `devices` table: the only code that reads or writes it (heartbeats, which are written in
//! batches, go through [`super::presence`]).

use super::{StoreError, Tx, parse_column};
use mesh_proto::api::{ConnectionPath, DeviceInfo, DeviceStatus};
use mesh_proto::device::{Capabilities, DeviceLoad};
use mesh_proto::terms::{DeviceTerms, TermsLayer, TermsLayers};
use mesh_proto::verification::CheckRecord;
use mesh_proto::{DeviceId, NetworkId, PersonId, PublicKey};
use sqlx::Row;
use sqlx::any::AnyRow;

/// Columns [`record`] reads.
const COLUMNS: &str = "id, network_id, owner_id, name, public_key, peer_id, status, capabilities, online, \
     last_seen_at, load_running, load_queued, load_slots, trust, checks_passed, checks_failed, consecutive_passed, \
     quarantined_at, load_others_busy, host_terms, owner_terms, admin_terms, path_relayed, path_at";

fn status(text: String) -> Result<DeviceStatus, StoreError> {
    DeviceStatus::parse(&text).ok_or(StoreError::Corrupt {
        column: "devices.status",
        value: text,
    })
}

fn count(row: &AnyRow, column: &str) -> Result<u32, StoreError> {
    Ok(row.try_get::<i64, _>(column)?.clamp(0, i64::from(u32::MAX)) as u32)
}

fn check_record(row: &AnyRow) -> Result<CheckRecord, StoreError> {
    Ok(CheckRecord {
        passed: count(row, "checks_passed")?,
        failed: count(row, "checks_failed")?,
        consecutive_passed: count(row, "consecutive_passed")?,
    })
}

/// Terms stored as JSON in `column`.
pub(super) fn terms(row: &AnyRow, column: &'static str) -> Result<DeviceTerms, StoreError> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|_| StoreError::Corrupt {
        column,
        value: text.chars().take(100).collect(),
    })
}

fn record(row: &AnyRow) -> Result<DeviceInfo, StoreError> {
    let text = |column: &'static str| -> Result<String, StoreError> { Ok(row.try_get(column)?) };
    let capabilities = text("capabilities")?;
    Ok(DeviceInfo {
        id: parse_column("devices.id", &text("id")?)?,
        network: parse_column("devices.network_id", &text("network_id")?)?,
        owner: parse_column("devices.owner_id", &text("owner_id")?)?,
        name: text("name")?,
        public_key: parse_column("devices.public_key", &text("public_key")?)?,
        peer_id: text("peer_id")?,
        status: status(text("status")?)?,
        capabilities: serde_json::from_str(&capabilities).map_err(|_| StoreError::Corrupt {
            column: "devices.capabilities",
            value: capabilities.chars().take(100).collect(),
        })?,
        online: row.try_get::<i64, _>("online")? != 0,
        last_seen_at_ms: row.try_get("last_seen_at")?,
        load: DeviceLoad {
            running: count(row, "load_running")?,
            queued: count(row, "load_queued")?,
            slots: count(row, "load_slots")?,
            others_busy_percent: row
                .try_get::<Option<i64>, _>("load_others_busy")?
                .map(|p| p.clamp(0, 100) as u8),
        },
        trust: row.try_get("trust")?,
        checks: check_record(row)?,
        quarantined_at_ms: row.try_get("quarantined_at")?,
        terms: TermsLayers {
            device: terms(row, "host_terms")?,
            owner: terms(row, "owner_terms")?,
            admins: terms(row, "admin_terms")?,
        },
        path: match (
            row.try_get::<Option<i64>, _>("path_relayed")?,
            row.try_get::<Option<i64>, _>("path_at")?,
        ) {
            (Some(relayed), Some(at_ms)) => Some(ConnectionPath {
                relayed: relayed != 0,
                at_ms,
            }),
            _ => None,
        },
    })
}

/// A device to register.
#[derive(Debug, Clone)]
pub struct NewDevice<'a> {
    /// Its id.
    pub id: DeviceId,
    /// Its network.
    pub network: NetworkId,
    /// The person it belongs to.
    pub owner: PersonId,
    /// Its display name (already checked).
    pub name: &'a str,
    /// Its key (its libp2p identity too).
    pub public_key: PublicKey,
    /// Pending or approved.
    pub status: DeviceStatus,
    /// What it can run (already checked).
    pub capabilities: &'a Capabilities,
}

/// Register a device. A second device with the same key is [`StoreError::Duplicate`].
pub async fn insert(tx: &mut Tx, device: &NewDevice<'_>, now: i64) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO devices (id, network_id, owner_id, name, public_key, peer_id, status, capabilities, created_at, approved_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(device.id.to_string())
    .bind(device.network.to_string())
    .bind(device.owner.to_string())
    .bind(device.name)
    .bind(device.public_key.to_string())
    .bind(device.public_key.peer_id())
    .bind(device.status.as_str())
    .bind(serde_json::to_string(device.capabilities).expect("capabilities serialise"))
    .bind(now)
    .bind((device.status == DeviceStatus::Approved).then_some(now))
    .execute(&mut **tx)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Duplicate("a device with this public key")
        }
        _ => StoreError::Database(e),
    })?;
    Ok(())
}

/// The device with this id.
pub async fn get(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    device: &DeviceId,
) -> Result<Option<DeviceInfo>, StoreError> {
    sqlx::query(&format!("SELECT {COLUMNS} FROM devices WHERE id = $1"))
        .bind(device.to_string())
        .fetch_optional(db)
        .await?
        .as_ref()
        .map(record)
        .transpose()
}

/// Devices of `network`, oldest first.
pub async fn list(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    network: &NetworkId,
) -> Result<Vec<DeviceInfo>, StoreError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM devices WHERE network_id = $1 ORDER BY created_at"
    ))
    .bind(network.to_string())
    .fetch_all(db)
    .await?
    .iter()
    .map(record)
    .collect()
}

/// Approved devices of every network (the relays' allow-list).
pub async fn approved(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
) -> Result<Vec<DeviceInfo>, StoreError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM devices WHERE status = 'approved' ORDER BY id"
    ))
    .fetch_all(db)
    .await?
    .iter()
    .map(record)
    .collect()
}

/// Approved, online, unquarantined devices of `network`: who could be given a job.
pub async fn schedulable(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    network: &NetworkId,
) -> Result<Vec<DeviceInfo>, StoreError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM devices WHERE network_id = $1 AND status = 'approved' AND online = 1 \
         AND quarantined_at IS NULL"
    ))
    .bind(network.to_string())
    .fetch_all(db)
    .await?
    .iter()
    .map(record)
    .collect()
}

/// Owners of approved, unquarantined devices of `network`, online or not: who could ever be
/// given a job there.
pub async fn owners_with_devices(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    network: &NetworkId,
) -> Result<Vec<PersonId>, StoreError> {
    let owners: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT owner_id FROM devices WHERE network_id = $1 AND status = 'approved' \
         AND quarantined_at IS NULL",
    )
    .bind(network.to_string())
    .fetch_all(db)
    .await?;
    owners
        .iter()
        .map(|o| parse_column("devices.owner_id", o))
        .collect()
}

/// The status of the device `device` of `network`.
pub async fn status_in(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    device: &DeviceId,
    network: &NetworkId,
) -> Result<Option<DeviceStatus>, StoreError> {
    let text: Option<String> =
        sqlx::query_scalar("SELECT status FROM devices WHERE id = $1 AND network_id = $2")
            .bind(device.to_string())
            .bind(network.to_string())
            .fetch_optional(db)
            .await?;
    text.map(status).transpose()
}

/// `from` → `to` (approved: stamped, stays as online as it was; revoked: stamped, offline).
pub async fn set_status(
    tx: &mut Tx,
    device: &DeviceId,
    from: DeviceStatus,
    to: DeviceStatus,
    now: i64,
) -> Result<bool, StoreError> {
    let (column, online) = match to {
        DeviceStatus::Approved => ("approved_at", "online"),
        _ => ("revoked_at", "0"),
    };
    let changed = sqlx::query(&format!(
        "UPDATE devices SET status = $1, {column} = $2, online = {online} WHERE id = $3 AND status = $4"
    ))
    .bind(to.as_str())
    .bind(now)
    .bind(device.to_string())
    .bind(from.as_str())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// Replace one network layer of `device`'s terms.
pub async fn set_terms(
    tx: &mut Tx,
    device: &DeviceId,
    layer: TermsLayer,
    terms: &DeviceTerms,
) -> Result<(), StoreError> {
    let column = match layer {
        TermsLayer::Owner => "owner_terms",
        TermsLayer::Admins => "admin_terms",
    };
    sqlx::query(&format!("UPDATE devices SET {column} = $1 WHERE id = $2"))
        .bind(serde_json::to_string(terms).expect("terms serialise"))
        .bind(device.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Lift `device`'s quarantine; answers whether it was quarantined.
pub async fn release_quarantine(tx: &mut Tx, device: &DeviceId) -> Result<bool, StoreError> {
    Ok(sqlx::query(
        "UPDATE devices SET quarantined_at = NULL WHERE id = $1 AND quarantined_at IS NOT NULL",
    )
    .bind(device.to_string())
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1)
}

/// Remember how the gateway reached `device` (through a relay or directly) at `now`.
pub async fn record_path(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    device: &DeviceId,
    relayed: bool,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE devices SET path_relayed = $1, path_at = $2 WHERE id = $3")
        .bind(i64::from(relayed))
        .bind(now)
        .bind(device.to_string())
        .execute(db)
        .await?;
    Ok(())
}

/// Revoke every device `owner` has in `network` (they left it).
pub async fn revoke_owned(
    tx: &mut Tx,
    network: &NetworkId,
    owner: &PersonId,
    now: i64,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE devices SET status = 'revoked', revoked_at = $1, online = 0 \
         WHERE network_id = $2 AND owner_id = $3 AND status <> 'revoked'",
    )
    .bind(now)
    .bind(network.to_string())
    .bind(owner.to_string())
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

/// Devices of the owner of `device` (itself included).
pub async fn same_owner(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    device: &DeviceId,
) -> Result<Vec<DeviceId>, StoreError> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM devices WHERE owner_id = (SELECT owner_id FROM devices WHERE id = $1)",
    )
    .bind(device.to_string())
    .fetch_all(db)
    .await?;
    ids.iter().map(|d| parse_column("devices.id", d)).collect()
}

/// The check record, owner and quarantine time of `device`.
pub async fn verification_state(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    device: &DeviceId,
) -> Result<Option<(CheckRecord, PersonId, Option<i64>)>, StoreError> {
    let row = sqlx::query(
        "SELECT owner_id, checks_passed, checks_failed, consecutive_passed, quarantined_at FROM devices WHERE id = $1",
    )
    .bind(device.to_string())
    .fetch_optional(db)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let owner: String = row.try_get("owner_id")?;
    Ok(Some((
        check_record(&row)?,
        parse_column("devices.owner_id", &owner)?,
        row.try_get("quarantined_at")?,
    )))
}

/// Store a device's new check record and trust, quarantining it at `now` when `quarantine`.
pub async fn record_check(
    tx: &mut Tx,
    device: &DeviceId,
    record: &CheckRecord,
    quarantine: bool,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE devices SET checks_passed = $1, checks_failed = $2, consecutive_passed = $3, trust = $4, \
         quarantined_at = CASE WHEN $5 = 1 THEN $6 ELSE quarantined_at END WHERE id = $7",
    )
    .bind(i64::from(record.passed))
    .bind(i64::from(record.failed))
    .bind(i64::from(record.consecutive_passed))
    .bind(record.trust())
    .bind(i64::from(quarantine))
    .bind(now)
    .bind(device.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Mark devices not seen since `before` offline.
pub async fn mark_silent_offline(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    before: i64,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE devices SET online = 0 WHERE online = 1 AND (last_seen_at IS NULL OR last_seen_at < $1)",
    )
    .bind(before)
    .execute(db)
    .await?
    .rows_affected())
}

/// Approved devices online now, for `/metrics`.
pub async fn count_online(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM devices WHERE online = 1 AND status = 'approved'")
            .fetch_one(db)
            .await?,
    )
}

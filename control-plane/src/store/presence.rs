//! Group commit for heartbeats: concurrent heartbeats are written together, as one
//! `UPDATE … FROM (VALUES …) … RETURNING` statement, and each request is answered once its
//! row is written. The timestamp condition in that statement is the replay protection, as it
//! would be for a single update, so batching changes cost, not meaning.

use super::Db;
use mesh_proto::DeviceId;
use mesh_proto::device::DeviceLoad;
use mesh_proto::terms::TermsLayers;
use sqlx::Row;
use std::collections::HashMap;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// Heartbeats written by one statement at most (8 parameters each; SQLite allows 32,766).
const MAX_BATCH: usize = 512;
/// Heartbeats waiting to be written before senders wait for room.
const QUEUE: usize = 16_384;

/// What one heartbeat writes.
#[derive(Debug, Clone)]
pub struct PresenceUpdate {
    /// The device.
    pub device: DeviceId,
    /// Server time of receipt.
    pub seen_at_ms: i64,
    /// The heartbeat's own timestamp (must exceed the stored one).
    pub sent_at_ms: i64,
    /// Reported load.
    pub load: DeviceLoad,
    /// The terms in the device's own config, as JSON.
    pub host_terms: String,
}

/// What a written heartbeat is answered with.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Whether the device counts as online (approved).
    pub online: bool,
    /// Its terms: the ones it reported and the network's.
    pub terms: TermsLayers,
}

type Answer = Result<Option<Recorded>, String>;

struct Pending {
    update: PresenceUpdate,
    /// `Some` when written, `None` when not newer than the stored heartbeat.
    reply: oneshot::Sender<Answer>,
}

/// Handle to the heartbeat writer task.
#[derive(Debug, Clone)]
pub struct PresenceWriter {
    queue: mpsc::Sender<Pending>,
}

impl PresenceWriter {
    /// Start the writer on `db`; it stops when every handle is dropped.
    pub fn spawn(db: Db) -> PresenceWriter {
        let (queue, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(write_batches(db, receiver).in_current_span());
        PresenceWriter { queue }
    }

    /// Record a heartbeat: `Some` once written, `None` if a newer or equal one is already
    /// stored (a replay).
    pub async fn record(&self, update: PresenceUpdate) -> Answer {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { update, reply })
            .await
            .map_err(|_| "presence writer stopped".to_string())?;
        answer
            .await
            .map_err(|_| "presence writer stopped".to_string())?
    }
}

async fn write_batches(db: Db, mut receiver: mpsc::Receiver<Pending>) {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        write(&db, batch).await;
    }
}

async fn write(db: &Db, batch: Vec<Pending>) {
    // One row per device: the newest heartbeat of the batch; older ones are replays.
    let mut newest: HashMap<DeviceId, usize> = HashMap::new();
    for (i, pending) in batch.iter().enumerate() {
        let entry = newest.entry(pending.update.device).or_insert(i);
        if batch[*entry].update.sent_at_ms < pending.update.sent_at_ms {
            *entry = i;
        }
    }
    let rows: Vec<&PresenceUpdate> = newest.values().map(|&i| &batch[i].update).collect();
    let values = (0..rows.len())
        .map(|r| {
            let p = r * 8;
            let params: Vec<String> = (1..=8).map(|i| format!("${}", p + i)).collect();
            format!("({})", params.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "UPDATE devices SET online = CASE WHEN devices.status = 'approved' THEN 1 ELSE 0 END, \
         last_seen_at = v.column2, last_heartbeat_ms = v.column3, load_running = v.column4, \
         load_queued = v.column5, load_slots = v.column6, load_others_busy = v.column7, \
         host_terms = v.column8 \
         FROM (VALUES {values}) AS v WHERE devices.id = v.column1 AND devices.last_heartbeat_ms < v.column3 \
         RETURNING devices.id, devices.online, devices.host_terms, devices.owner_terms, devices.admin_terms"
    );
    let mut query = sqlx::query(&sql);
    for row in &rows {
        query = query
            .bind(row.device.to_string())
            .bind(row.seen_at_ms)
            .bind(row.sent_at_ms)
            .bind(i64::from(row.load.running))
            .bind(i64::from(row.load.queued))
            .bind(i64::from(row.load.slots))
            .bind(row.load.others_busy_percent.map(i64::from))
            .bind(row.host_terms.clone());
    }
    let written: Result<HashMap<String, Recorded>, String> = query
        .fetch_all(&db.pool)
        .await
        .map_err(|e| e.to_string())
        .and_then(|rows| {
            rows.iter()
                .map(|r| {
                    let terms =
                        |column| super::devices::terms(r, column).map_err(|e| e.to_string());
                    Ok((
                        r.try_get::<String, _>("id").map_err(|e| e.to_string())?,
                        Recorded {
                            online: r.try_get::<i64, _>("online").map_err(|e| e.to_string())? != 0,
                            terms: TermsLayers {
                                device: terms("host_terms")?,
                                owner: terms("owner_terms")?,
                                admins: terms("admin_terms")?,
                            },
                        },
                    ))
                })
                .collect()
        });
    for (i, pending) in batch.into_iter().enumerate() {
        let answer = match &written {
            Err(e) => Err(e.clone()),
            Ok(written) if newest.get(&pending.update.device) == Some(&i) => {
                Ok(written.get(&pending.update.device.to_string()).cloned())
            }
            Ok(_) => Ok(None),
        };
        let _ = pending.reply.send(answer);
    }
}

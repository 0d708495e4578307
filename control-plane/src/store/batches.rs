//! The `batches`, `batch_pieces` and `batch_runs` tables: the only code that reads or writes
//! them.
//!
//! A piece is won once: its result is written by a conditional update (`… WHERE winner_job
//! IS NULL`) in the transaction that pays for it, so a duplicate run that finishes second
//! changes nothing and is paid nothing.

use super::{StoreError, Tx, parse_column};
use mesh_proto::batch::BatchState;
use mesh_proto::{BatchId, Blake3Hash, DeviceId, JobId, NetworkId, PersonId};
use sqlx::Row;
use sqlx::any::AnyRow;

/// Columns of a [`BatchRecord`], in the order [`record`] reads them.
const COLUMNS: &str = "id, network_id, requester_id, workload_hash, state, items, pieces, piece_price, \
     reserved, paid, tokens, dimensions, error, idempotency_key, created_at, updated_at, finished_at";

/// A batch as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRecord {
    /// Its id.
    pub id: BatchId,
    /// Its network.
    pub network: NetworkId,
    /// Who pays.
    pub requester: PersonId,
    /// The workload each piece runs.
    pub workload: Blake3Hash,
    /// Its state.
    pub state: BatchState,
    /// Items uploaded.
    pub items: u64,
    /// Pieces uploaded.
    pub pieces: u64,
    /// Credits per piece.
    pub piece_price: i64,
    /// Credits reserved.
    pub reserved: i64,
    /// Credits paid out of the reservation.
    pub paid: i64,
    /// Input tokens of the won runs, as their outputs counted them.
    pub tokens: u64,
    /// Numbers per result vector.
    pub dimensions: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
    /// The requester's idempotency key.
    pub idempotency_key: String,
    /// Created (ms).
    pub created_at_ms: i64,
    /// Last changed (ms).
    pub updated_at_ms: i64,
    /// Ended (ms).
    pub finished_at_ms: Option<i64>,
}

fn record(row: &AnyRow) -> Result<BatchRecord, StoreError> {
    let text = |column: &'static str| -> Result<String, StoreError> { Ok(row.try_get(column)?) };
    let state = text("state")?;
    Ok(BatchRecord {
        id: parse_column("batches.id", &text("id")?)?,
        network: parse_column("batches.network_id", &text("network_id")?)?,
        requester: parse_column("batches.requester_id", &text("requester_id")?)?,
        workload: parse_column("batches.workload_hash", &text("workload_hash")?)?,
        state: BatchState::parse(&state).ok_or(StoreError::Corrupt {
            column: "batches.state",
            value: state,
        })?,
        items: row.try_get::<i64, _>("items")?.max(0) as u64,
        pieces: row.try_get::<i64, _>("pieces")?.max(0) as u64,
        piece_price: row.try_get("piece_price")?,
        reserved: row.try_get("reserved")?,
        paid: row.try_get("paid")?,
        tokens: row.try_get::<i64, _>("tokens")?.max(0) as u64,
        dimensions: row
            .try_get::<Option<i64>, _>("dimensions")?
            .map(|d| d.max(0) as u64),
        error: row.try_get("error")?,
        idempotency_key: text("idempotency_key")?,
        created_at_ms: row.try_get("created_at")?,
        updated_at_ms: row.try_get("updated_at")?,
        finished_at_ms: row.try_get("finished_at")?,
    })
}

/// A batch to create, uploading.
#[derive(Debug, Clone)]
pub struct NewBatch<'a> {
    /// Its id.
    pub id: BatchId,
    /// Its network.
    pub network: NetworkId,
    /// Who pays.
    pub requester: PersonId,
    /// The workload.
    pub workload: Blake3Hash,
    /// Credits per piece.
    pub piece_price: i64,
    /// The requester's idempotency key (unique per network and requester).
    pub idempotency_key: &'a str,
}

/// Create an uploading batch; a second one with the same network, requester and key is
/// [`StoreError::Duplicate`].
pub async fn insert(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    batch: &NewBatch<'_>,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO batches (id, network_id, requester_id, workload_hash, state, piece_price, \
         idempotency_key, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
    )
    .bind(batch.id.to_string())
    .bind(batch.network.to_string())
    .bind(batch.requester.to_string())
    .bind(batch.workload.to_string())
    .bind(BatchState::Uploading.as_str())
    .bind(batch.piece_price)
    .bind(batch.idempotency_key)
    .bind(now)
    .execute(db)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Duplicate("a batch with this idempotency key")
        }
        _ => StoreError::Database(e),
    })?;
    Ok(())
}

/// The batch `id` of `network`.
pub async fn get(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    network: &NetworkId,
    id: &BatchId,
) -> Result<Option<BatchRecord>, StoreError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM batches WHERE id = $1 AND network_id = $2"
    ))
    .bind(id.to_string())
    .bind(network.to_string())
    .fetch_optional(db)
    .await?
    .as_ref()
    .map(record)
    .transpose()
}

/// The batch `id`, whatever its network (for the runner, which has only the id).
pub async fn get_any(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    id: &BatchId,
) -> Result<Option<BatchRecord>, StoreError> {
    sqlx::query(&format!("SELECT {COLUMNS} FROM batches WHERE id = $1"))
        .bind(id.to_string())
        .fetch_optional(db)
        .await?
        .as_ref()
        .map(record)
        .transpose()
}

/// The batch `requester` created in `network` with idempotency key `key`.
pub async fn find_by_key(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    network: &NetworkId,
    requester: &PersonId,
    key: &str,
) -> Result<Option<BatchRecord>, StoreError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM batches WHERE network_id = $1 AND requester_id = $2 \
         AND idempotency_key = $3"
    ))
    .bind(network.to_string())
    .bind(requester.to_string())
    .bind(key)
    .fetch_optional(db)
    .await?
    .as_ref()
    .map(record)
    .transpose()
}

/// The newest `limit` batches of `network`.
pub async fn list(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    network: &NetworkId,
    limit: i64,
) -> Result<Vec<BatchRecord>, StoreError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM batches WHERE network_id = $1 ORDER BY created_at DESC, id LIMIT $2"
    ))
    .bind(network.to_string())
    .bind(limit)
    .fetch_all(db)
    .await?
    .iter()
    .map(record)
    .collect()
}

/// Every batch in `state` (running ones, to resume them after a restart).
pub async fn in_state(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    state: BatchState,
) -> Result<Vec<BatchRecord>, StoreError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM batches WHERE state = $1 ORDER BY created_at"
    ))
    .bind(state.as_str())
    .fetch_all(db)
    .await?
    .iter()
    .map(record)
    .collect()
}

/// Add piece `piece` (its texts as a JSON array) to an uploading batch.
pub async fn insert_piece(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    batch: &BatchId,
    piece: u64,
    items: usize,
    input: &[u8],
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO batch_pieces (batch_id, piece, items, input) VALUES ($1, $2, $3, $4)")
        .bind(batch.to_string())
        .bind(piece as i64)
        .bind(items as i64)
        .bind(input)
        .execute(db)
        .await?;
    Ok(())
}

/// Uploading → running with its item and piece counts and reservation; false when it was no
/// longer uploading.
pub async fn start(
    tx: &mut Tx,
    batch: &BatchId,
    items: u64,
    pieces: u64,
    reserved: i64,
    now: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE batches SET state = $1, items = $2, pieces = $3, reserved = $4, updated_at = $5 \
         WHERE id = $6 AND state = $7",
    )
    .bind(BatchState::Running.as_str())
    .bind(items as i64)
    .bind(pieces as i64)
    .bind(reserved)
    .bind(now)
    .bind(batch.to_string())
    .bind(BatchState::Uploading.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Move a batch from one of `from` to a final `to` (with `error`); false when it was in
/// another state.
pub async fn end(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    batch: &BatchId,
    from: &[BatchState],
    to: BatchState,
    error: Option<&str>,
    now: i64,
) -> Result<bool, StoreError> {
    let from: Vec<String> = from.iter().map(|s| format!("'{}'", s.as_str())).collect();
    let done = sqlx::query(&format!(
        "UPDATE batches SET state = $1, error = $2, updated_at = $3, finished_at = $3 \
         WHERE id = $4 AND state IN ({})",
        from.join(", ")
    ))
    .bind(to.as_str())
    .bind(error)
    .bind(now)
    .bind(batch.to_string())
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Drop the pieces of a batch that never started (its upload failed).
pub async fn delete_pieces(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    batch: &BatchId,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM batch_pieces WHERE batch_id = $1")
        .bind(batch.to_string())
        .execute(db)
        .await?;
    Ok(())
}

/// A piece without a result: its number and item count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenPiece {
    /// The piece.
    pub piece: u64,
    /// Its items.
    pub items: u64,
}

/// Pieces of `batch` no run has won yet, in order.
pub async fn open_pieces(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    batch: &BatchId,
) -> Result<Vec<OpenPiece>, StoreError> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT piece, items FROM batch_pieces WHERE batch_id = $1 AND winner_job IS NULL \
         ORDER BY piece",
    )
    .bind(batch.to_string())
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(piece, items)| OpenPiece {
            piece: piece.max(0) as u64,
            items: items.max(0) as u64,
        })
        .collect())
}

/// Items of `batch` with a result.
pub async fn items_done(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    batch: &BatchId,
) -> Result<u64, StoreError> {
    let done: Option<i64> = sqlx::query_scalar(
        "SELECT CAST(SUM(items) AS BIGINT) FROM batch_pieces WHERE batch_id = $1 \
         AND winner_job IS NOT NULL",
    )
    .bind(batch.to_string())
    .fetch_one(db)
    .await?;
    Ok(done.unwrap_or(0).max(0) as u64)
}

/// The item counts of pieces `first .. first + count`, in order.
pub async fn piece_items(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    batch: &BatchId,
    first: u64,
    count: u64,
) -> Result<Vec<u64>, StoreError> {
    let items: Vec<i64> = sqlx::query_scalar(
        "SELECT items FROM batch_pieces WHERE batch_id = $1 AND piece >= $2 AND piece < $3 \
         ORDER BY piece",
    )
    .bind(batch.to_string())
    .bind(first as i64)
    .bind((first + count) as i64)
    .fetch_all(db)
    .await?;
    Ok(items.into_iter().map(|i| i.max(0) as u64).collect())
}

/// The inputs (JSON arrays of texts) of pieces `first .. first + count`, in order.
pub async fn piece_inputs(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    batch: &BatchId,
    first: u64,
    count: u64,
) -> Result<Vec<Vec<u8>>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT input FROM batch_pieces WHERE batch_id = $1 AND piece >= $2 AND piece < $3 \
         ORDER BY piece",
    )
    .bind(batch.to_string())
    .bind(first as i64)
    .bind((first + count) as i64)
    .fetch_all(db)
    .await?)
}

/// A piece's result: its number, items, and vectors when a run won it.
#[derive(Debug, Clone, PartialEq)]
pub struct PieceResult {
    /// The piece.
    pub piece: u64,
    /// Its items.
    pub items: u64,
    /// Its vectors (little-endian f32), once won.
    pub result: Option<Vec<u8>>,
}

/// Results of up to `limit` pieces from `first` on, in order.
pub async fn results(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    batch: &BatchId,
    first: u64,
    limit: u64,
) -> Result<Vec<PieceResult>, StoreError> {
    let rows: Vec<(i64, i64, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT piece, items, result FROM batch_pieces WHERE batch_id = $1 AND piece >= $2 \
         ORDER BY piece LIMIT $3",
    )
    .bind(batch.to_string())
    .bind(first as i64)
    .bind(limit as i64)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(piece, items, result)| PieceResult {
            piece: piece.max(0) as u64,
            items: items.max(0) as u64,
            result,
        })
        .collect())
}

/// A run's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Its job is in flight.
    Running,
    /// It won its pieces.
    Won,
    /// Another run won its pieces first (or the batch ended); it was stopped, unpaid.
    Lost,
    /// It failed; its pieces stay open.
    Failed,
}

impl RunState {
    /// The state's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Won => "won",
            RunState::Lost => "lost",
            RunState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(RunState::Running),
            "won" => Some(RunState::Won),
            "lost" => Some(RunState::Lost),
            "failed" => Some(RunState::Failed),
            _ => None,
        }
    }
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// Its job.
    pub job: JobId,
    /// Its batch.
    pub batch: BatchId,
    /// Its first piece.
    pub first_piece: u64,
    /// Pieces it covers.
    pub pieces: u64,
    /// Items it covers.
    pub items: u64,
    /// The device it runs on.
    pub device: DeviceId,
    /// Whether it duplicates a slower run.
    pub duplicate: bool,
    /// Its state.
    pub state: RunState,
    /// Started (ms).
    pub started_at_ms: i64,
    /// Ended (ms).
    pub finished_at_ms: Option<i64>,
    /// Its execution time from its receipt (µs), once it won.
    pub exec_us: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
}

fn run_record(row: &AnyRow) -> Result<RunRecord, StoreError> {
    let text = |column: &'static str| -> Result<String, StoreError> { Ok(row.try_get(column)?) };
    let state = text("state")?;
    Ok(RunRecord {
        job: parse_column("batch_runs.job_id", &text("job_id")?)?,
        batch: parse_column("batch_runs.batch_id", &text("batch_id")?)?,
        first_piece: row.try_get::<i64, _>("first_piece")?.max(0) as u64,
        pieces: row.try_get::<i64, _>("pieces")?.max(0) as u64,
        items: row.try_get::<i64, _>("items")?.max(0) as u64,
        device: parse_column("batch_runs.device_id", &text("device_id")?)?,
        duplicate: row.try_get::<i64, _>("duplicate")? != 0,
        state: RunState::parse(&state).ok_or(StoreError::Corrupt {
            column: "batch_runs.state",
            value: state,
        })?,
        started_at_ms: row.try_get("started_at")?,
        finished_at_ms: row.try_get("finished_at")?,
        exec_us: row
            .try_get::<Option<i64>, _>("exec_us")?
            .map(|us| us.max(0) as u64),
        error: row.try_get("error")?,
    })
}

const RUN_COLUMNS: &str = "job_id, batch_id, first_piece, pieces, items, device_id, duplicate, state, \
     started_at, finished_at, exec_us, error";

/// Record a new running run.
pub async fn insert_run(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    run: &RunRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO batch_runs (job_id, batch_id, first_piece, pieces, items, device_id, duplicate, \
         state, started_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(run.job.to_string())
    .bind(run.batch.to_string())
    .bind(run.first_piece as i64)
    .bind(run.pieces as i64)
    .bind(run.items as i64)
    .bind(run.device.to_string())
    .bind(i64::from(run.duplicate))
    .bind(RunState::Running.as_str())
    .bind(run.started_at_ms)
    .execute(db)
    .await?;
    Ok(())
}

/// Running → `to` (with `error`); false when it had already ended.
pub async fn end_run(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    job: &JobId,
    to: RunState,
    error: Option<&str>,
    now: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE batch_runs SET state = $1, error = $2, finished_at = $3 WHERE job_id = $4 \
         AND state = 'running'",
    )
    .bind(to.as_str())
    .bind(error)
    .bind(now)
    .bind(job.to_string())
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Record a run's execution time (µs, from its receipt).
pub async fn record_exec(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    job: &JobId,
    exec_us: u64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE batch_runs SET exec_us = $1 WHERE job_id = $2")
        .bind(i64::try_from(exec_us).unwrap_or(i64::MAX))
        .bind(job.to_string())
        .execute(db)
        .await?;
    Ok(())
}

/// Every run of `batch`, oldest first.
pub async fn runs(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    batch: &BatchId,
) -> Result<Vec<RunRecord>, StoreError> {
    sqlx::query(&format!(
        "SELECT {RUN_COLUMNS} FROM batch_runs WHERE batch_id = $1 ORDER BY started_at, job_id"
    ))
    .bind(batch.to_string())
    .fetch_all(db)
    .await?
    .iter()
    .map(run_record)
    .collect()
}

/// The run of job `job`, if it is one.
pub async fn run_of_job(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    job: &JobId,
) -> Result<Option<RunRecord>, StoreError> {
    sqlx::query(&format!(
        "SELECT {RUN_COLUMNS} FROM batch_runs WHERE job_id = $1"
    ))
    .bind(job.to_string())
    .fetch_optional(db)
    .await?
    .as_ref()
    .map(run_record)
    .transpose()
}

/// Mark every running run of `batch` failed with `reason` (its control plane restarted, or
/// the batch ended); returns how many.
pub async fn fail_running_runs(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    batch: &BatchId,
    to: RunState,
    reason: &str,
    now: i64,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE batch_runs SET state = $1, error = $2, finished_at = $3 WHERE batch_id = $4 \
         AND state = 'running'",
    )
    .bind(to.as_str())
    .bind(reason)
    .bind(now)
    .bind(batch.to_string())
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// What a run wins: pieces `first ..` with their `results`, for `pay` credits.
#[derive(Debug, Clone, Copy)]
pub struct Win<'a> {
    /// Its first piece.
    pub first: u64,
    /// The run's job.
    pub job: &'a JobId,
    /// The pieces' vectors, in order.
    pub results: &'a [Vec<u8>],
    /// Numbers per vector.
    pub dimensions: u64,
    /// Credits it is paid.
    pub pay: i64,
    /// Its input tokens.
    pub tokens: u64,
}

/// Give pieces `first .. first + results.len()` of the running `batch` to `job` with their
/// results (all in `win`), if no run has won any of them, and add `pay` to what the batch paid. False when
/// the batch ended or another run won first: the caller must then drop (roll back) `tx`.
/// The batch's row is updated first, so wins and the batch's end are serialised by its lock.
pub async fn win(tx: &mut Tx, batch: &BatchId, win: &Win<'_>) -> Result<bool, StoreError> {
    let Win {
        first,
        job,
        results,
        dimensions,
        pay,
        tokens,
    } = *win;
    let running = sqlx::query(
        "UPDATE batches SET paid = paid + $1, dimensions = COALESCE(dimensions, $2), \
         tokens = tokens + $3 WHERE id = $4 AND state = 'running'",
    )
    .bind(pay)
    .bind(dimensions as i64)
    .bind(i64::try_from(tokens).unwrap_or(i64::MAX))
    .bind(batch.to_string())
    .execute(&mut **tx)
    .await?;
    if running.rows_affected() != 1 {
        return Ok(false);
    }
    for (offset, result) in results.iter().enumerate() {
        let done = sqlx::query(
            "UPDATE batch_pieces SET winner_job = $1, result = $2 WHERE batch_id = $3 \
             AND piece = $4 AND winner_job IS NULL",
        )
        .bind(job.to_string())
        .bind(result.as_slice())
        .bind(batch.to_string())
        .bind((first + offset as u64) as i64)
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Take back the pieces `job` won, if its batch still runs and they are still its (its
/// result failed a check):
/// they are open again, without results, and `paid` is taken off what the batch paid (the
/// pay is clawed back into the escrow, for the pieces' next run). Returns how many pieces
/// were reopened.
pub async fn reopen(
    tx: &mut Tx,
    batch: &BatchId,
    job: &JobId,
    paid: i64,
) -> Result<u64, StoreError> {
    let running = sqlx::query(
        "UPDATE batches SET paid = paid - $1 WHERE id = $2 AND state = 'running' \
         AND EXISTS (SELECT 1 FROM batch_pieces WHERE batch_id = $2 AND winner_job = $3)",
    )
    .bind(paid)
    .bind(batch.to_string())
    .bind(job.to_string())
    .execute(&mut **tx)
    .await?;
    if running.rows_affected() != 1 {
        return Ok(0);
    }
    let done = sqlx::query(
        "UPDATE batch_pieces SET winner_job = NULL, result = NULL WHERE batch_id = $1 \
         AND winner_job = $2",
    )
    .bind(batch.to_string())
    .bind(job.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

/// Won runs of `batch` whose check is still open (selected, running or disputed): the batch
/// is done only once they are decided.
pub async fn open_checks(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    batch: &BatchId,
) -> Result<u64, StoreError> {
    let open: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM batch_runs r JOIN checks c ON c.job_id = r.job_id \
         WHERE r.batch_id = $1 AND r.state = 'won' AND c.state IN ('selected', 'running', 'disputed')",
    )
    .bind(batch.to_string())
    .fetch_one(db)
    .await?;
    Ok(open.max(0) as u64)
}

/// Won runs of `device` in running batches whose result no check confirmed.
pub async fn unconfirmed_runs_of(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    device: &DeviceId,
) -> Result<Vec<RunRecord>, StoreError> {
    let columns: Vec<String> = RUN_COLUMNS
        .split(", ")
        .map(|c| format!("r.{}", c.trim()))
        .collect();
    sqlx::query(&format!(
        "SELECT {} FROM batch_runs r JOIN batches b ON b.id = r.batch_id \
         LEFT JOIN checks c ON c.job_id = r.job_id \
         WHERE r.device_id = $1 AND r.state = 'won' AND b.state = 'running' \
         AND (c.state IS NULL OR c.state <> 'passed')",
        columns.join(", ")
    ))
    .bind(device.to_string())
    .fetch_all(db)
    .await?
    .iter()
    .map(run_record)
    .collect()
}

/// A won run whose result is no longer trusted: failed, with `reason`.
pub async fn reject_run(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    job: &JobId,
    reason: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE batch_runs SET state = 'failed', error = $1 WHERE job_id = $2 AND state = 'won'",
    )
    .bind(reason)
    .bind(job.to_string())
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

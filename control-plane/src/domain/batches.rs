//! Batches: a large input cut into pieces of [`PIECE_ITEMS`] items that run as ordinary jobs
//! across the network's devices (the runner is `workers::batches`).
//!
//! The input is read as it arrives, one piece at a time, and never held whole. A batch's
//! price (pieces × the network's job price) is reserved from its requester when its upload
//! ends; a piece is paid for once, from that reservation, to the owner of the device whose
//! run won it, and the rest is refunded when the batch ends (done, cancelled or failed).
//! Runs are jobs of price 0, so a duplicate or a failed run costs nobody anything.

use crate::domain::audit::{self, AuditAction};
use crate::domain::ledger::{self, Account};
use crate::domain::{DomainError, DomainResult};
use crate::state::AppState;
use crate::store::batches::{self as store, BatchRecord, RunState};
use crate::store::{StoreError, now_ms, random_id};
use futures::{Stream, StreamExt};
use mesh_proto::batch::{BatchDevice, BatchInfo, BatchState, InputFormat, PIECE_ITEMS};
use mesh_proto::{BatchId, Blake3Hash, NetworkId, PersonId};
use std::collections::BTreeMap;

/// Longest text of a batch, in bytes (a line may be longer by its JSON escapes).
pub const MAX_TEXT_BYTES: usize = 32 << 10;
/// Longest line of a batch's input, in bytes.
pub const MAX_LINE_BYTES: usize = 4 * MAX_TEXT_BYTES;
/// Ledger kind of the transfer reserving a batch's price.
pub const RESERVE: &str = "batch_reserve";
/// Ledger kind of the transfer paying a run's owner for the pieces it won.
pub const PAY: &str = "batch_pay";
/// Ledger kind of the transfer returning what a batch did not spend.
pub const REFUND: &str = "batch_refund";

/// Why a line of a batch's input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// Not UTF-8.
    #[error("line {line}: not UTF-8")]
    NotUtf8 {
        /// 1-based line number.
        line: u64,
    },
    /// A JSON Lines line that is neither a JSON string nor an object with a string `text`.
    #[error("line {line}: expected a JSON string or an object with a string \"text\"")]
    NotText {
        /// 1-based line number.
        line: u64,
    },
    /// A text over [`MAX_TEXT_BYTES`] (or a line over [`MAX_LINE_BYTES`]).
    #[error("line {line}: longer than {MAX_TEXT_BYTES} bytes")]
    TooLong {
        /// 1-based line number.
        line: u64,
    },
    /// More items than the control plane takes in one batch.
    #[error("more than {max} items")]
    TooMany {
        /// The cap.
        max: u64,
    },
}

/// Splits a batch's input into texts as its bytes arrive, holding at most one line.
#[derive(Debug)]
pub struct InputParser {
    format: InputFormat,
    partial: Vec<u8>,
    line: u64,
}

impl InputParser {
    /// A parser for `format`.
    pub fn new(format: InputFormat) -> Self {
        InputParser {
            format,
            partial: Vec::new(),
            line: 0,
        }
    }

    /// Feed the next bytes; the texts of every line they complete are pushed to `out`.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<String>) -> Result<(), InputError> {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            if self.partial.len() + end > MAX_LINE_BYTES {
                return Err(InputError::TooLong {
                    line: self.line + 1,
                });
            }
            self.partial.extend_from_slice(&bytes[..end]);
            bytes = &bytes[end + 1..];
            let line = std::mem::take(&mut self.partial);
            self.line(line, out)?;
        }
        if self.partial.len() + bytes.len() > MAX_LINE_BYTES {
            return Err(InputError::TooLong {
                line: self.line + 1,
            });
        }
        self.partial.extend_from_slice(bytes);
        Ok(())
    }

    /// The input ended: the last line, if it had no newline.
    pub fn finish(mut self, out: &mut Vec<String>) -> Result<(), InputError> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(line, out)?;
        }
        Ok(())
    }

    fn line(&mut self, mut bytes: Vec<u8>, out: &mut Vec<String>) -> Result<(), InputError> {
        self.line += 1;
        let line = self.line;
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        let text = String::from_utf8(bytes).map_err(|_| InputError::NotUtf8 { line })?;
        let text = match self.format {
            InputFormat::Lines => text,
            InputFormat::Jsonl => {
                if text.trim().is_empty() {
                    return Ok(());
                }
                match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(serde_json::Value::String(s)) => s,
                    Ok(serde_json::Value::Object(mut o)) => match o.remove("text") {
                        Some(serde_json::Value::String(s)) => s,
                        _ => return Err(InputError::NotText { line }),
                    },
                    _ => return Err(InputError::NotText { line }),
                }
            }
        };
        if text.len() > MAX_TEXT_BYTES {
            return Err(InputError::TooLong { line });
        }
        out.push(text);
        Ok(())
    }
}

/// What [`create`] made or found.
#[derive(Debug)]
pub enum Created {
    /// A new batch, running (or done at once).
    New(BatchInfo),
    /// The batch this idempotency key made before (its input was not read again).
    Existing(BatchInfo),
}

/// Create a batch of `workload` for `requester` from `input` (read as it arrives, one piece
/// at a time), reserve its price and leave it running. Bad input fails the batch and is
/// answered with the line at fault; nothing is charged for it.
pub async fn create<S, B, E>(
    state: &AppState,
    network: &NetworkId,
    requester: PersonId,
    workload: Blake3Hash,
    format: InputFormat,
    idempotency_key: Option<String>,
    input: S,
) -> DomainResult<Created>
where
    S: Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    if state.gateway.is_none() {
        return Err(DomainError::unavailable(
            "no_gateway",
            "this control plane has no relays configured, so it cannot dispatch jobs",
        ));
    }
    let info = crate::store::workloads::get(&state.db.pool, network, &workload)
        .await?
        .ok_or_else(|| DomainError::not_found("workload"))?;
    if info.yanked {
        return Err(DomainError::conflict("yanked", "this workload was yanked"));
    }
    let key = idempotency_key.unwrap_or_else(crate::store::random_secret);
    if key.is_empty() || key.len() > 200 {
        return Err(DomainError::bad_request(
            "idempotency_key must be 1-200 characters",
        ));
    }
    if let Some(existing) = store::find_by_key(&state.db.pool, network, &requester, &key).await? {
        if existing.workload != workload {
            return Err(DomainError::conflict(
                "idempotency_key_reused",
                "this idempotency key was already used for a batch of another workload",
            ));
        }
        return Ok(Created::Existing(batch_info(state, &existing).await?));
    }
    let piece_price = crate::store::networks::policy(&state.db.pool, network)
        .await?
        .ok_or_else(|| DomainError::not_found("network"))?
        .job_price;
    let id: BatchId = random_id(BatchId::from_bytes);
    store::insert(
        &state.db.pool,
        &store::NewBatch {
            id,
            network: *network,
            requester,
            workload,
            piece_price,
            idempotency_key: &key,
        },
        now_ms(),
    )
    .await
    .map_err(|e| match e {
        StoreError::Duplicate(_) => DomainError::conflict(
            "concurrent_submit",
            "a batch with this idempotency key is being created; retry",
        ),
        e => DomainError::from(e),
    })?;
    match upload(state, &id, format, input).await {
        Ok((items, pieces)) => {
            let price = piece_price.saturating_mul(pieces as i64);
            let mut tx = state.db.pool.begin().await?;
            if price > 0 {
                let reserved = ledger::transfer(
                    &mut tx,
                    &ledger::Transfer {
                        network: *network,
                        idempotency_key: &format!("batch:{id}:reserve"),
                        kind: RESERVE,
                        memo: &format!("reserved for batch {id} ({items} items)"),
                        job: None,
                        from: Account::Person(requester),
                        to: Account::Escrow,
                        amount: price,
                    },
                )
                .await;
                if let Err(e) = reserved {
                    drop(tx);
                    abandon(state, &id, &e.to_string()).await;
                    return Err(e);
                }
            }
            store::start(&mut tx, &id, items, pieces, price, now_ms()).await?;
            tx.commit().await?;
            tracing::info!(batch = %id, items, pieces, price, "batch started");
            let record = get(state, network, &id).await?;
            Ok(Created::New(batch_info(state, &record).await?))
        }
        Err(e) => {
            abandon(state, &id, &e.to_string()).await;
            Err(e)
        }
    }
}

/// Read `input` into pieces of `batch`; returns the item and piece counts.
async fn upload<S, B, E>(
    state: &AppState,
    batch: &BatchId,
    format: InputFormat,
    mut input: S,
) -> DomainResult<(u64, u64)>
where
    S: Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    let (max_items, max_bytes) = (state.config.max_batch_items, state.config.max_batch_bytes);
    let mut bytes_read = 0u64;
    let mut parser = InputParser::new(format);
    let mut texts: Vec<String> = Vec::with_capacity(2 * PIECE_ITEMS);
    let (mut items, mut pieces) = (0u64, 0u64);
    let bad = |e: InputError| DomainError::bad_request(format!("batch input: {e}"));
    let mut ended = false;
    while !ended {
        match input.next().await {
            Some(Ok(bytes)) => {
                let bytes = bytes.as_ref();
                bytes_read += bytes.len() as u64;
                if bytes_read > max_bytes {
                    return Err(DomainError::bad_request(format!(
                        "batch input: more than {max_bytes} bytes"
                    )));
                }
                parser.feed(bytes, &mut texts).map_err(bad)?
            }
            Some(Err(e)) => {
                return Err(DomainError::bad_request(format!(
                    "the upload broke off: {e}"
                )));
            }
            None => {
                ended = true;
                let parser = std::mem::replace(&mut parser, InputParser::new(format));
                parser.finish(&mut texts).map_err(bad)?;
            }
        }
        while texts.len() >= PIECE_ITEMS || (ended && !texts.is_empty()) {
            let take = texts.len().min(PIECE_ITEMS);
            let piece: Vec<String> = texts.drain(..take).collect();
            items += piece.len() as u64;
            if items > max_items {
                return Err(bad(InputError::TooMany { max: max_items }));
            }
            let json = serde_json::to_vec(&piece).map_err(DomainError::internal)?;
            store::insert_piece(&state.db.pool, batch, pieces, piece.len(), &json).await?;
            pieces += 1;
        }
    }
    if items == 0 {
        return Err(DomainError::bad_request("batch input: no items"));
    }
    Ok((items, pieces))
}

/// A batch whose upload failed: failed, its pieces dropped.
async fn abandon(state: &AppState, batch: &BatchId, reason: &str) {
    let ended = store::end(
        &state.db.pool,
        batch,
        &[BatchState::Uploading],
        BatchState::Failed,
        Some(reason),
        now_ms(),
    )
    .await;
    let dropped = store::delete_pieces(&state.db.pool, batch).await;
    if let Err(e) = ended.and(dropped) {
        tracing::warn!(%batch, "cleaning up a failed upload: {e}");
    }
}

/// The batch `id` of `network` (404 when there is none).
pub async fn get(state: &AppState, network: &NetworkId, id: &BatchId) -> DomainResult<BatchRecord> {
    store::get(&state.db.pool, network, id)
        .await?
        .ok_or_else(|| DomainError::not_found("batch"))
}

/// The newest batches of `network`.
pub async fn list(state: &AppState, network: &NetworkId) -> DomainResult<Vec<BatchInfo>> {
    let mut out = Vec::new();
    for record in store::list(&state.db.pool, network, 100).await? {
        out.push(batch_info(state, &record).await?);
    }
    Ok(out)
}

/// Window over which a batch's current speed is measured.
const SPEED_WINDOW_MS: i64 = 30_000;
/// Failures shown with a batch.
const FAILURES_SHOWN: usize = 5;

/// What the API shows of `record`: progress, per-device speed, ETA, failures.
pub async fn batch_info(state: &AppState, record: &BatchRecord) -> DomainResult<BatchInfo> {
    let runs = store::runs(&state.db.pool, &record.id).await?;
    let items_done = store::items_done(&state.db.pool, &record.id).await?;
    let mut devices: BTreeMap<mesh_proto::DeviceId, (u64, i64, u32, u32)> = BTreeMap::new();
    let now = now_ms();
    let mut recent_items = 0u64;
    let mut first_recent = now;
    for run in &runs {
        let entry = devices.entry(run.device).or_default();
        match run.state {
            RunState::Running => entry.2 += 1,
            RunState::Failed => entry.3 += 1,
            RunState::Won => {
                let finished = run.finished_at_ms.unwrap_or(now);
                entry.0 += run.items;
                entry.1 += (finished - run.started_at_ms).max(1);
                if finished >= now - SPEED_WINDOW_MS {
                    recent_items += run.items;
                    first_recent = first_recent.min(run.started_at_ms.max(now - SPEED_WINDOW_MS));
                }
            }
            RunState::Lost => {}
        }
    }
    let items_per_s = (recent_items > 0 && !record.state.is_final())
        .then(|| recent_items as f64 / ((now - first_recent).max(1) as f64 / 1000.0));
    let eta_s = items_per_s.map(|speed| record.items.saturating_sub(items_done) as f64 / speed);
    let mut failures: Vec<(i64, String)> = runs
        .iter()
        .filter(|r| r.state == RunState::Failed)
        .map(|r| {
            (
                r.finished_at_ms.unwrap_or(r.started_at_ms),
                format!(
                    "pieces {}..{} on {}: {}",
                    r.first_piece,
                    r.first_piece + r.pieces,
                    r.device,
                    r.error.as_deref().unwrap_or("failed")
                ),
            )
        })
        .collect();
    failures.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    Ok(BatchInfo {
        id: record.id,
        network: record.network,
        requester: record.requester,
        workload: record.workload,
        state: record.state,
        items: record.items,
        items_done,
        pieces: record.pieces,
        piece_price: record.piece_price,
        price: record.reserved,
        paid: record.paid,
        dimensions: record.dimensions,
        tokens: record.tokens,
        items_per_s,
        eta_s,
        devices: devices
            .into_iter()
            .map(|(device, (items, ms, running, failed))| BatchDevice {
                device,
                items,
                items_per_s: (items > 0).then(|| items as f64 / (ms as f64 / 1000.0)),
                running,
                failed,
            })
            .collect(),
        runs_running: runs.iter().filter(|r| r.state == RunState::Running).count() as u32,
        runs_failed: runs.iter().filter(|r| r.state == RunState::Failed).count() as u32,
        duplicates: runs.iter().filter(|r| r.duplicate).count() as u32,
        checks_open: store::open_checks(&state.db.pool, &record.id).await? as u32,
        failures: failures
            .into_iter()
            .take(FAILURES_SHOWN)
            .map(|(_, f)| f)
            .collect(),
        error: record.error.clone(),
        created_at_ms: record.created_at_ms,
        finished_at_ms: record.finished_at_ms,
    })
}

/// End a running batch as `to` (done, cancelled or failed): stop its runs' records, refund
/// what it did not spend. Returns false when it had already ended.
pub async fn finish(
    state: &AppState,
    batch: &BatchRecord,
    to: BatchState,
    error: Option<&str>,
) -> DomainResult<bool> {
    let mut tx = state.db.pool.begin().await?;
    if !store::end(
        &mut *tx,
        &batch.id,
        &[BatchState::Running],
        to,
        error,
        now_ms(),
    )
    .await?
    {
        return Ok(false);
    }
    store::fail_running_runs(
        &mut *tx,
        &batch.id,
        RunState::Lost,
        "the batch ended",
        now_ms(),
    )
    .await?;
    // What was paid is read in this transaction: no run can win a piece of an ended batch.
    let paid = store::get(&mut *tx, &batch.network, &batch.id)
        .await?
        .map_or(batch.paid, |b| b.paid);
    let unspent = batch.reserved - paid;
    if unspent > 0 {
        ledger::transfer(
            &mut tx,
            &ledger::Transfer {
                network: batch.network,
                idempotency_key: &format!("batch:{}:refund", batch.id),
                kind: REFUND,
                memo: &format!("unspent by batch {} ({})", batch.id, to.as_str()),
                job: None,
                from: Account::Escrow,
                to: Account::Person(batch.requester),
                amount: unspent,
            },
        )
        .await?;
    }
    tx.commit().await?;
    tracing::info!(batch = %batch.id, state = to.as_str(), paid, unspent, "batch ended");
    Ok(true)
}

/// Cancel a running batch (its requester, or an admin): its runs stop, what it did not spend
/// is refunded. 409 when it has ended.
pub async fn cancel(
    state: &AppState,
    network: &NetworkId,
    id: &BatchId,
    actor: &str,
) -> DomainResult<BatchInfo> {
    let record = get(state, network, id).await?;
    if !finish(state, &record, BatchState::Cancelled, Some("cancelled")).await? {
        return Err(DomainError::conflict(
            "batch_ended",
            "this batch has already ended",
        ));
    }
    let mut tx = state.db.pool.begin().await?;
    audit::record(
        &mut tx,
        Some(network),
        actor,
        AuditAction::BatchCancelled,
        &format!("batch {id}"),
    )
    .await?;
    tx.commit().await?;
    batch_info(state, &get(state, network, id).await?).await
}

/// Every vector of a done batch, in input order (little-endian f32, one after another): for
/// callers that want them at once (the OpenAI route, whose batches hold at most a few
/// thousand texts).
pub async fn vectors(state: &AppState, batch: &BatchRecord) -> DomainResult<Vec<u8>> {
    let dimensions = batch.dimensions.unwrap_or(0) as usize;
    let mut out = Vec::with_capacity(batch.items as usize * dimensions * 4);
    let mut next = 0;
    loop {
        let pieces = store::results(&state.db.pool, &batch.id, next, 64).await?;
        if pieces.is_empty() {
            break;
        }
        for piece in pieces {
            let result = piece.result.ok_or_else(|| {
                DomainError::internal(format!(
                    "piece {} of a done batch has no result",
                    piece.piece
                ))
            })?;
            out.extend_from_slice(&result);
            next = piece.piece + 1;
        }
    }
    Ok(out)
}

/// The result of `job` failed a check, or could not be confirmed. If it was a batch's run,
/// returns what the batch paid for the pieces it won and where that pay goes back: while the
/// batch runs, its pieces are open again (another run replaces their results) and the pay
/// returns to the escrow, to pay that run; once the batch has ended, `ended` is where it
/// goes. `None` for other jobs.
pub async fn result_rejected(
    tx: &mut crate::store::Tx,
    job: &mesh_proto::api::JobInfo,
    reason: &str,
    ended: Account,
) -> DomainResult<Option<(i64, Account)>> {
    let Some(run) = store::run_of_job(&mut **tx, &job.id).await? else {
        return Ok(None);
    };
    if run.state != RunState::Won {
        // It never won, or was rejected already (its pay went back then): nothing to move.
        return Ok(Some((0, ended)));
    }
    let key = format!("job:{}:batch_pay", job.id);
    let paid = crate::store::ledger::transfer_by_key(tx, &job.network, &key)
        .await?
        .map_or(0, |t| t.amount);
    if store::reopen(tx, &run.batch, &job.id, paid).await? > 0 {
        store::reject_run(&mut **tx, &job.id, reason).await?;
        tracing::warn!(batch = %run.batch, job = %job.id, "a run's result was rejected ({reason}); its pieces run again");
        return Ok(Some((paid, Account::Escrow)));
    }
    Ok(Some((paid, ended)))
}

/// `device` failed a check: no result of it that no check confirmed is kept in a running
/// batch. Its other won runs there are rejected (their pieces run again) and their pay goes
/// back from `owner` to the batches' escrow, so no piece is paid twice. (The run that failed
/// is [`result_rejected`]'s.) Returns how many runs were rejected.
pub async fn distrust(
    tx: &mut crate::store::Tx,
    network: &NetworkId,
    device: &mesh_proto::DeviceId,
    owner: PersonId,
    failed_job: &mesh_proto::JobId,
) -> DomainResult<u64> {
    let mut rejected = 0;
    for run in store::unconfirmed_runs_of(&mut **tx, device).await? {
        if &run.job == failed_job {
            continue;
        }
        let key = format!("job:{}:batch_pay", run.job);
        let paid = crate::store::ledger::transfer_by_key(tx, network, &key)
            .await?
            .map_or(0, |t| t.amount);
        if store::reopen(tx, &run.batch, &run.job, paid).await? == 0 {
            continue;
        }
        let reason = format!("its device failed the check of job {failed_job}");
        store::reject_run(&mut **tx, &run.job, &reason).await?;
        if paid > 0 {
            ledger::transfer(
                tx,
                &ledger::Transfer {
                    network: *network,
                    idempotency_key: &format!("job:{}:clawback", run.job),
                    kind: ledger::CLAWBACK,
                    memo: &format!("unconfirmed batch work: {reason}"),
                    job: Some(run.job),
                    from: Account::Person(owner),
                    to: Account::Escrow,
                    amount: paid,
                },
            )
            .await?;
        }
        rejected += 1;
    }
    if rejected > 0 {
        tracing::warn!(%device, rejected, "a device failed a check; its unconfirmed batch work runs again");
    }
    Ok(rejected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(format: InputFormat, chunks: &[&[u8]]) -> Result<Vec<String>, InputError> {
        let mut parser = InputParser::new(format);
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut out)?;
        }
        parser.finish(&mut out)?;
        Ok(out)
    }

    #[test]
    fn lines_split_anywhere_keep_their_order_and_empty_lines() {
        let text = b"first\r\nsecond\n\nfourth\xc3\xa9\nlast";
        let whole = parse(InputFormat::Lines, &[text]).unwrap();
        assert_eq!(whole, ["first", "second", "", "fourth\u{e9}", "last"]);
        // Cut at every byte, even inside the two-byte character: the same texts.
        for cut in 0..text.len() {
            let (a, b) = text.split_at(cut);
            assert_eq!(
                parse(InputFormat::Lines, &[a, b]).unwrap(),
                whole,
                "cut {cut}"
            );
        }
        // A final newline ends the last line; it adds no item.
        assert_eq!(parse(InputFormat::Lines, &[b"a\nb\n"]).unwrap(), ["a", "b"]);
    }

    #[test]
    fn jsonl_takes_strings_and_text_fields_and_names_the_bad_line() {
        let input = b"\"one\"\n{\"text\": \"two\", \"id\": 7}\n\n\"thr\\u00e9e\"\n";
        assert_eq!(
            parse(InputFormat::Jsonl, &[input]).unwrap(),
            ["one", "two", "thr\u{e9}e"]
        );
        assert_eq!(
            parse(InputFormat::Jsonl, &[b"\"ok\"\n{\"text\": 5}\n"]),
            Err(InputError::NotText { line: 2 })
        );
        assert_eq!(
            parse(InputFormat::Jsonl, &[b"\"ok\"\nnot json"]),
            Err(InputError::NotText { line: 2 })
        );
        assert_eq!(
            parse(InputFormat::Lines, &[b"ok\n\xff\xfe\n"]),
            Err(InputError::NotUtf8 { line: 2 })
        );
    }

    #[test]
    fn long_lines_are_refused_before_they_are_held() {
        let long = vec![b'x'; MAX_TEXT_BYTES + 1];
        assert_eq!(
            parse(InputFormat::Lines, &[b"short\n", &long, b"\n"]),
            Err(InputError::TooLong { line: 2 })
        );
        // A line that never ends is refused once it outgrows the line cap, whatever the
        // chunks.
        let mut parser = InputParser::new(InputFormat::Lines);
        let mut out = Vec::new();
        let chunk = vec![b'y'; 64 << 10];
        let mut refused = false;
        for _ in 0..4 {
            if parser.feed(&chunk, &mut out).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
        assert!(parser.partial.len() <= MAX_LINE_BYTES);
    }
}

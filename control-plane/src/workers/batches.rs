//! The batch runner: one task per running batch keeps every device that can take its pieces
//! busy, through the gateway, until each piece has a result.
//!
//! Each round it looks at the network's schedulable devices and gives every free slot (plus
//! one queued ahead, so a device never idles between runs) a run of the next open pieces,
//! sized so it takes [`TARGET_RUN`] on that device at the speed its won runs of this batch
//! measured (the receipts' execution time), [`FIRST_RUN_PIECES`] before it has one. A run is
//! an ordinary job pinned to that device, at price 0: ticket, receipt, ringers, VRF selection
//! and checks as for any gateway job. When no piece is left to start, idle devices duplicate
//! the oldest outstanding run; the first valid result wins its pieces (and their pay), the
//! other run is stopped at its executor and paid nothing. A failed run's pieces are simply
//! open again, and so are those of a won run whose check failed (or of any unconfirmed run
//! of a device that failed a check: `domain::batches::distrust`). The batch is done when
//! every piece has a result and no won run's check is open. State is in the database, so after a restart the runner resumes: runs that
//! were in flight are marked failed and their pieces run again.

use crate::domain::DomainResult;
use crate::domain::batches::{self, PAY};
use crate::domain::ledger::{self, Account};
use crate::state::AppState;
use crate::store::batches::{self as store, BatchRecord, OpenPiece, RunRecord, RunState};
use crate::store::now_ms;
use mesh_proto::batch::{BatchState, PIECE_ITEMS};
use mesh_proto::{BatchId, DeviceId, JobId};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// How long a run should take on its device.
pub const TARGET_RUN: Duration = Duration::from_secs(3);
/// Pieces of a device's first run of a batch, before its speed is known.
pub const FIRST_RUN_PIECES: u64 = 2;
/// Most pieces in one run (the texts a job may hold).
pub const MAX_RUN_PIECES: u64 = (2048 / PIECE_ITEMS) as u64;
/// Runs a device holds at once beyond its slots (queued on it, so it never waits for us).
const QUEUED_AHEAD: u32 = 1;
/// How long a run must have been out before an idle device duplicates it.
const DUPLICATE_AFTER: Duration = Duration::from_secs(2);
/// How often the runner looks again when nothing finished.
const TICK: Duration = Duration::from_millis(250);

/// Start the runner of `batch` unless one runs already in this process.
pub fn spawn(state: &AppState, batch: BatchId) {
    let mut runners = state.batch_runners.0.lock().expect("runners");
    if runners.contains_key(&batch) {
        return;
    }
    let task = tokio::spawn({
        let state = state.clone();
        async move {
            // A failure (the database away, say) restarts the runner after a pause; its
            // runs in flight are stopped and their pieces run again.
            let mut pause = Duration::from_secs(1);
            while let Err(e) = run(&state, batch).await {
                tracing::warn!(%batch, "batch runner failed (again in {pause:?}): {e}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RUNNER_PAUSE);
            }
            state
                .batch_runners
                .0
                .lock()
                .expect("runners")
                .remove(&batch);
        }
        .in_current_span()
    });
    runners.insert(batch, task.abort_handle());
}

/// Resume every running batch (at start; each runner fails the runs a previous process left
/// in flight, so their pieces run again).
pub async fn resume(state: &AppState) -> DomainResult<()> {
    for batch in store::in_state(&state.db.pool, BatchState::Running).await? {
        tracing::info!(batch = %batch.id, "resuming a batch");
        spawn(state, batch.id);
    }
    Ok(())
}

/// The longest pause before a failed runner starts again.
const MAX_RUNNER_PAUSE: Duration = Duration::from_secs(30);

/// The runs a runner has in flight; dropped (the runner stopped), their tasks stop too.
#[derive(Default)]
struct InFlightRuns(HashMap<JobId, InFlight>);

impl Drop for InFlightRuns {
    fn drop(&mut self) {
        for run in self.0.values() {
            run.task.abort();
        }
    }
}

/// A run this runner started and has not heard the end of.
struct InFlight {
    first: u64,
    pieces: u64,
    device: DeviceId,
    duplicate: bool,
    started: Instant,
    task: JoinHandle<()>,
}

/// How a run ended, as its task tells the runner.
struct RunEnd {
    job: JobId,
    won: bool,
    /// It failed (its device refused it, broke or lied), rather than won or lost a race.
    failed: bool,
}

/// How long a device whose run failed gets no new run of the batch (its terms may refuse
/// them for a while, or it may be going away).
const FAILED_DEVICE_PAUSE: Duration = Duration::from_secs(5);

async fn run(state: &AppState, id: BatchId) -> DomainResult<()> {
    let Some(mut batch) = first_look(state, &id).await? else {
        return Ok(());
    };
    let models =
        crate::store::workloads::metadata_of(&state.db.pool, &batch.network, &batch.workload)
            .await?
            .map(|m| m.models)
            .unwrap_or_default();
    // Runs left in flight by an earlier runner (of this process or one before a restart)
    // will never be heard of: their pieces run again.
    let failed = store::fail_running_runs(
        &state.db.pool,
        &id,
        RunState::Failed,
        "the batch runner restarted",
        now_ms(),
    )
    .await?;
    if failed > 0 {
        tracing::info!(batch = %id, failed, "runs left in flight failed");
    }
    let facts = crate::domain::scheduling::job_facts(
        state,
        &batch.network,
        &batch.workload,
        &batch.requester,
    )
    .await?;
    let (ended_tx, mut ended_rx) = mpsc::channel::<RunEnd>(64);
    let mut runs_in_flight = InFlightRuns::default();
    let in_flight = &mut runs_in_flight.0;
    let mut paused: HashMap<DeviceId, Instant> = HashMap::new();
    loop {
        batch = batches::get(state, &batch.network, &id).await?;
        if batch.state != BatchState::Running {
            stop_runs(state, in_flight, "the batch ended").await;
            return Ok(());
        }
        let open = store::open_pieces(&state.db.pool, &id).await?;
        if open.is_empty() && store::open_checks(&state.db.pool, &id).await? == 0 {
            stop_runs(state, in_flight, "another run won its pieces").await;
            batches::finish(state, &batch, BatchState::Done, None).await?;
            return Ok(());
        }
        let runs = store::runs(&state.db.pool, &id).await?;
        let speeds = speeds(&runs);
        let covered: HashSet<u64> = in_flight
            .values()
            .flat_map(|r| r.first..r.first + r.pieces)
            .collect();
        let mut pending: Vec<OpenPiece> = open
            .into_iter()
            .filter(|p| !covered.contains(&p.piece))
            .collect();
        let candidates =
            crate::domain::scheduling::candidates(state, &batch.network, &models, &facts).await?;
        paused.retain(|_, until| *until > Instant::now());
        for candidate in candidates {
            if paused.contains_key(&candidate.device) {
                continue;
            }
            // A device whose terms cap its jobs is given no more than that many (it would
            // refuse one queued ahead).
            let ahead = if candidate.capped { 0 } else { QUEUED_AHEAD };
            let mut free = (candidate.slots + ahead).saturating_sub(candidate.holding);
            while free > 0 {
                let started = if !pending.is_empty() {
                    let want = run_pieces(speeds.get(&candidate.device).copied());
                    let take = consecutive(&pending, want);
                    let (first, pieces) = (pending[0].piece, take as u64);
                    let items = pending[..take].iter().map(|p| p.items).sum();
                    pending.drain(..take);
                    start_run(
                        state,
                        &batch,
                        first,
                        pieces,
                        items,
                        candidate.device,
                        false,
                        &ended_tx,
                    )
                    .await
                } else if let Some((first, pieces, items)) =
                    to_duplicate(in_flight, &runs, &candidate.device)
                {
                    start_run(
                        state,
                        &batch,
                        first,
                        pieces,
                        items,
                        candidate.device,
                        true,
                        &ended_tx,
                    )
                    .await
                } else {
                    break;
                };
                match started {
                    Ok(Some((job, run))) => {
                        in_flight.insert(job, run);
                        free -= 1;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::info!(batch = %id, device = %candidate.device, "could not start a run: {e}");
                        break;
                    }
                }
            }
        }
        // Wait for a run to end (or a while, for devices to come and go).
        let ended = tokio::select! {
            ended = ended_rx.recv() => ended,
            _ = tokio::time::sleep(TICK) => None,
        };
        let mut ended: Vec<RunEnd> = ended.into_iter().collect();
        while let Ok(more) = ended_rx.try_recv() {
            ended.push(more);
        }
        for end in ended {
            let Some(run) = in_flight.remove(&end.job) else {
                continue;
            };
            if end.failed {
                paused.insert(run.device, Instant::now() + FAILED_DEVICE_PAUSE);
            }
            if !end.won {
                continue;
            }
            // Its pieces are won: stop the other runs of the same pieces.
            let losers: Vec<JobId> = in_flight
                .iter()
                .filter(|(_, other)| other.first == run.first && other.pieces == run.pieces)
                .map(|(job, _)| *job)
                .collect();
            for job in losers {
                if let Some(other) = in_flight.remove(&job) {
                    other.task.abort();
                    tracing::info!(batch = %id, %job, duplicate = other.duplicate, "stopping a run whose pieces were won");
                    store::end_run(
                        &state.db.pool,
                        &job,
                        RunState::Lost,
                        Some("another run won its pieces"),
                        now_ms(),
                    )
                    .await?;
                }
            }
        }
    }
}

/// Run `texts` through `workload` as a batch of `person` and wait until it ends (the OpenAI
/// route with many texts). If the caller goes away first, the batch is cancelled and what it
/// did not spend is refunded. Errors when it ends other than done.
pub async fn run_to_end(
    state: &AppState,
    network: &mesh_proto::NetworkId,
    person: mesh_proto::PersonId,
    workload: mesh_proto::Blake3Hash,
    texts: &[String],
) -> DomainResult<BatchRecord> {
    let mut input = Vec::new();
    for text in texts {
        serde_json::to_writer(&mut input, text).map_err(crate::domain::DomainError::internal)?;
        input.push(b'\n');
    }
    let chunks = futures::stream::iter([Ok::<_, std::convert::Infallible>(input)]);
    let created = batches::create(
        state,
        network,
        person,
        workload,
        mesh_proto::batch::InputFormat::Jsonl,
        None,
        chunks,
    )
    .await?;
    let batches::Created::New(info) = created else {
        return Err(crate::domain::DomainError::internal(
            "a new batch without a key found an old one",
        ));
    };
    spawn(state, info.id);
    // Cancels the batch if this future is dropped before it ended.
    struct CancelUnlessEnded(Option<(AppState, mesh_proto::NetworkId, BatchId)>);
    impl Drop for CancelUnlessEnded {
        fn drop(&mut self) {
            if let Some((state, network, batch)) = self.0.take() {
                tokio::spawn(async move {
                    tracing::info!(%batch, "the caller went away; cancelling its batch");
                    let _ = batches::cancel(&state, &network, &batch, "control-plane").await;
                });
            }
        }
    }
    let mut guard = CancelUnlessEnded(Some((state.clone(), *network, info.id)));
    loop {
        let record = batches::get(state, network, &info.id).await?;
        if record.state.is_final() {
            guard.0 = None;
            if record.state != BatchState::Done {
                return Err(crate::domain::DomainError::unavailable(
                    "batch_not_done",
                    format!(
                        "batch {} ended {}: {}",
                        record.id,
                        record.state.as_str(),
                        record.error.as_deref().unwrap_or("")
                    ),
                ));
            }
            return Ok(record);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stop every run in flight (unpaid: they lost) with `reason`.
async fn stop_runs(state: &AppState, in_flight: &mut HashMap<JobId, InFlight>, reason: &str) {
    for (job, run) in in_flight.drain() {
        run.task.abort();
        let _ = store::end_run(&state.db.pool, &job, RunState::Lost, Some(reason), now_ms()).await;
    }
}

/// The batch if it is running (else nothing to do).
async fn first_look(state: &AppState, id: &BatchId) -> DomainResult<Option<BatchRecord>> {
    Ok(store::get_any(&state.db.pool, id)
        .await?
        .filter(|b| b.state == BatchState::Running))
}

/// Each device's speed on this batch, in items per second of execution, from its won runs.
fn speeds(runs: &[RunRecord]) -> HashMap<DeviceId, f64> {
    let mut totals: HashMap<DeviceId, (u64, u64)> = HashMap::new();
    for run in runs.iter().filter(|r| r.state == RunState::Won) {
        if let Some(us) = run.exec_us.filter(|&us| us > 0) {
            let entry = totals.entry(run.device).or_default();
            entry.0 += run.items;
            entry.1 += us;
        }
    }
    totals
        .into_iter()
        .map(|(device, (items, us))| (device, items as f64 / (us as f64 / 1e6)))
        .collect()
}

/// Pieces in a run for a device of `speed` items per second (unknown: a short first run).
pub fn run_pieces(speed: Option<f64>) -> u64 {
    match speed {
        None => FIRST_RUN_PIECES,
        Some(speed) => {
            let items = speed * TARGET_RUN.as_secs_f64();
            ((items / PIECE_ITEMS as f64).round() as u64).clamp(1, MAX_RUN_PIECES)
        }
    }
}

/// How many of the first pieces of `pending` (at most `want`) are consecutive.
fn consecutive(pending: &[OpenPiece], want: u64) -> usize {
    let mut take = 1;
    while take < pending.len()
        && (take as u64) < want
        && pending[take].piece == pending[take - 1].piece + 1
    {
        take += 1;
    }
    take
}

/// The run an idle `device` should duplicate: the oldest one out for over
/// [`DUPLICATE_AFTER`], on another device, not yet duplicated.
fn to_duplicate(
    in_flight: &HashMap<JobId, InFlight>,
    runs: &[RunRecord],
    device: &DeviceId,
) -> Option<(u64, u64, u64)> {
    let duplicated: HashSet<(u64, u64)> = in_flight
        .values()
        .filter(|r| r.duplicate)
        .map(|r| (r.first, r.pieces))
        .collect();
    let oldest = in_flight
        .iter()
        .filter(|(_, r)| {
            !r.duplicate
                && &r.device != device
                && r.started.elapsed() >= DUPLICATE_AFTER
                && !duplicated.contains(&(r.first, r.pieces))
        })
        .min_by_key(|(_, r)| r.started)?;
    let items = runs
        .iter()
        .find(|r| &r.job == oldest.0)
        .map_or(0, |r| r.items);
    Some((oldest.1.first, oldest.1.pieces, items))
}

/// Submit a run of pieces `first .. first + pieces` pinned to `device` and start its task;
/// `None` when the device could not be given it.
#[allow(clippy::too_many_arguments)]
async fn start_run(
    state: &AppState,
    batch: &BatchRecord,
    first: u64,
    pieces: u64,
    items: u64,
    device: DeviceId,
    duplicate: bool,
    ended: &mpsc::Sender<RunEnd>,
) -> DomainResult<Option<(JobId, InFlight)>> {
    let inputs = store::piece_inputs(&state.db.pool, &batch.id, first, pieces).await?;
    let mut texts: Vec<String> = Vec::with_capacity(items as usize);
    for input in inputs {
        let piece: Vec<String> =
            serde_json::from_slice(&input).map_err(crate::domain::DomainError::internal)?;
        texts.extend(piece);
    }
    let input = serde_json::to_vec(&serde_json::json!({ "texts": texts }))
        .map_err(crate::domain::DomainError::internal)?;
    let nonce = crate::store::random_secret();
    let key = format!("batch:{}:{first}+{pieces}:{}", batch.id, &nonce[..12]);
    let submitted = crate::workers::gateway::submit_pinned(
        state,
        &batch.network,
        batch.requester,
        batch.workload,
        input,
        key,
        device,
    )
    .await?;
    let Some(submitted) = submitted else {
        return Ok(None);
    };
    let job = submitted.job;
    store::insert_run(
        &state.db.pool,
        &RunRecord {
            job,
            batch: batch.id,
            first_piece: first,
            pieces,
            items,
            device,
            duplicate,
            state: RunState::Running,
            started_at_ms: now_ms(),
            finished_at_ms: None,
            exec_us: None,
            error: None,
        },
    )
    .await?;
    tracing::debug!(batch = %batch.id, %job, first, pieces, %device, duplicate, "run started");
    let task = tokio::spawn({
        let (state, batch, ended) = (state.clone(), batch.clone(), ended.clone());
        async move {
            let (won, failed) = match finish_run(&state, &batch, first, pieces, submitted).await {
                Ok(won) => (won, false),
                Err(e) => {
                    tracing::info!(batch = %batch.id, %job, "run failed: {e}");
                    let _ = store::end_run(
                        &state.db.pool,
                        &job,
                        RunState::Failed,
                        Some(&e.to_string()),
                        now_ms(),
                    )
                    .await;
                    (false, true)
                }
            };
            let _ = ended.send(RunEnd { job, won, failed }).await;
        }
        .in_current_span()
    });
    Ok(Some((
        job,
        InFlight {
            first,
            pieces,
            device,
            duplicate,
            started: Instant::now(),
            task,
        },
    )))
}

/// Run a submitted run to its end: dispatch it, check it (ringers), and if it is the first
/// valid result for its pieces, store them and pay its executor's owner, in one transaction.
/// Returns whether it won.
async fn finish_run(
    state: &AppState,
    batch: &BatchRecord,
    first: u64,
    pieces: u64,
    submitted: crate::workers::gateway::Submitted,
) -> DomainResult<bool> {
    let job = submitted.job;
    let done =
        crate::workers::gateway::complete(state, &batch.network, batch.workload, submitted, 1)
            .await?;
    let response = match done {
        Ok(response) => response,
        Err((_, executor)) => {
            return Err(crate::domain::DomainError::unprocessable(
                "ringer_failed",
                format!("{executor} got a known-answer check wrong"),
            ));
        }
    };
    let exec_us = response.receipt.timings.run_us;
    let counts: Vec<u64> = store::piece_items(&state.db.pool, &batch.id, first, pieces).await?;
    let (results, dimensions) = split_vectors(&response.output, &counts)
        .map_err(|e| crate::domain::DomainError::unprocessable("bad_output", e))?;
    let owner = crate::domain::scheduling::device(state, &response.executor)
        .await?
        .owner;
    let pay = batch.piece_price.saturating_mul(pieces as i64);
    let mut tx = state.db.pool.begin().await?;
    let tokens = response.output["tokens"].as_u64().unwrap_or(0);
    let win = store::Win {
        first,
        job: &job,
        results: &results,
        dimensions,
        pay,
        tokens,
    };
    if !store::win(&mut tx, &batch.id, &win).await? {
        drop(tx);
        store::end_run(
            &state.db.pool,
            &job,
            RunState::Lost,
            Some("another run won its pieces first"),
            now_ms(),
        )
        .await?;
        return Ok(false);
    }
    if pay > 0 {
        ledger::transfer(
            &mut tx,
            &ledger::Transfer {
                network: batch.network,
                idempotency_key: &format!("job:{job}:batch_pay"),
                kind: PAY,
                memo: &format!("pieces {first}..{} of batch {}", first + pieces, batch.id),
                job: Some(job),
                from: Account::Escrow,
                to: Account::Person(owner),
                amount: pay,
            },
        )
        .await?;
    }
    store::record_exec(&mut *tx, &job, exec_us).await?;
    store::end_run(&mut *tx, &job, RunState::Won, None, now_ms()).await?;
    tx.commit().await?;
    Ok(true)
}

/// The output's `embeddings`, cut into the pieces' vectors (little-endian f32, one after
/// another) and their common length.
pub fn split_vectors(
    output: &serde_json::Value,
    counts: &[u64],
) -> Result<(Vec<Vec<u8>>, u64), String> {
    let vectors = output["embeddings"]
        .as_array()
        .ok_or("the output has no embeddings")?;
    let total: u64 = counts.iter().sum();
    if vectors.len() as u64 != total {
        return Err(format!(
            "the output has {} embeddings for {total} texts",
            vectors.len()
        ));
    }
    let dimensions = vectors
        .first()
        .and_then(|v| v.as_array())
        .map_or(0, Vec::len);
    if dimensions == 0 {
        return Err("the output's embeddings are empty".into());
    }
    let mut pieces = Vec::with_capacity(counts.len());
    let mut vectors = vectors.iter();
    for &count in counts {
        let mut bytes = Vec::with_capacity(count as usize * dimensions * 4);
        for vector in vectors.by_ref().take(count as usize) {
            let numbers = vector
                .as_array()
                .filter(|v| v.len() == dimensions)
                .ok_or("the output's embeddings differ in length")?;
            for x in numbers {
                let x = x.as_f64().ok_or("an embedding holds a non-number")? as f32;
                bytes.extend_from_slice(&x.to_le_bytes());
            }
        }
        pieces.push(bytes);
    }
    Ok((pieces, dimensions as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_take_a_few_seconds_at_the_measured_speed() {
        assert_eq!(run_pieces(None), FIRST_RUN_PIECES);
        // 100 items/s: 300 items in 3 s, about 5 pieces of 64.
        assert_eq!(run_pieces(Some(100.0)), 5);
        // Very slow and very fast devices stay within one piece and one job's texts.
        assert_eq!(run_pieces(Some(0.5)), 1);
        assert_eq!(run_pieces(Some(1e6)), MAX_RUN_PIECES);
    }

    #[test]
    fn runs_cover_consecutive_pieces_only() {
        let open = |pieces: &[u64]| -> Vec<OpenPiece> {
            pieces
                .iter()
                .map(|&piece| OpenPiece { piece, items: 64 })
                .collect()
        };
        assert_eq!(consecutive(&open(&[3, 4, 5, 9]), 8), 3);
        assert_eq!(consecutive(&open(&[3, 4, 5, 9]), 2), 2);
        assert_eq!(consecutive(&open(&[7]), 4), 1);
    }

    #[test]
    fn vectors_are_cut_per_piece_and_checked() {
        let output = serde_json::json!({"embeddings": [[1.0, 0.0], [0.5, 0.5], [0.0, -1.0]]});
        let (pieces, dims) = split_vectors(&output, &[2, 1]).unwrap();
        assert_eq!(dims, 2);
        assert_eq!(pieces[0].len(), 2 * 2 * 4);
        assert_eq!(&pieces[1][4..8], &(-1.0f32).to_le_bytes());
        assert!(
            split_vectors(&output, &[2, 2])
                .unwrap_err()
                .contains("3 embeddings for 4")
        );
        let ragged = serde_json::json!({"embeddings": [[1.0, 0.0], [0.5]]});
        assert!(split_vectors(&ragged, &[2]).is_err());
        assert!(split_vectors(&serde_json::json!({"vectors": []}), &[1]).is_err());
    }
}

//! `mesh embed --file` and `mesh batch`: large inputs as batches, run across the network's
//! devices, with progress, resumable, results written in input order.

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use mesh_client::Client;
use mesh_proto::batch::{BatchInfo, BatchState, InputFormat, ResultFormat};
use mesh_proto::{BatchId, NetworkId};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bytes read from the input file per chunk of the upload.
const UPLOAD_CHUNK: usize = 256 << 10;
/// How often progress is polled.
const POLL: Duration = Duration::from_millis(500);

/// What `mesh embed --file` remembers next to its output, so `--resume` can pick the batch
/// up again after an interruption.
#[derive(Debug, Serialize, Deserialize)]
struct ResumeState {
    network: NetworkId,
    batch: BatchId,
    input: PathBuf,
}

/// Where the resume state of `out` lives.
fn resume_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".mesh-batch");
    out.with_file_name(name)
}

/// The result format `out`'s extension asks for.
pub fn result_format(out: &Path) -> ResultFormat {
    match out.extension().and_then(|e| e.to_str()) {
        Some("npy") => ResultFormat::Npy,
        _ => ResultFormat::Jsonl,
    }
}

/// The input format `file`'s extension suggests (`.jsonl`/`.ndjson`: JSON Lines).
pub fn input_format(file: &Path) -> InputFormat {
    match file.extension().and_then(|e| e.to_str()) {
        Some("jsonl" | "ndjson") => InputFormat::Jsonl,
        _ => InputFormat::Lines,
    }
}

/// `mesh embed --file FILE --out OUT`: upload FILE as a batch (or, with `resume`, pick up the
/// batch an earlier run started), follow it to the end and write its results to OUT.
#[allow(clippy::too_many_arguments)]
pub async fn embed_file(
    client: &Client,
    network: &NetworkId,
    workload: &str,
    file: &Path,
    format: Option<InputFormat>,
    out: &Path,
    resume: bool,
    json: bool,
) -> Result<()> {
    let state_path = resume_path(out);
    let batch = if resume {
        let text = std::fs::read_to_string(&state_path).with_context(|| {
            format!(
                "no batch to resume ({} is missing): run without --resume",
                state_path.display()
            )
        })?;
        let state: ResumeState = serde_json::from_str(&text)
            .with_context(|| format!("reading {}", state_path.display()))?;
        if &state.network != network || state.input != file {
            bail!(
                "{} is for {} in {}, not this file and network",
                state_path.display(),
                state.input.display(),
                state.network
            );
        }
        let info = client.batch(network, &state.batch).await?;
        eprintln!("resuming batch {} ({})", info.id, info.state.as_str());
        info
    } else {
        let info = upload(client, network, workload, file, format).await?;
        let state = ResumeState {
            network: *network,
            batch: info.id,
            input: file.to_path_buf(),
        };
        std::fs::write(&state_path, serde_json::to_vec(&state)?)
            .with_context(|| format!("writing {}", state_path.display()))?;
        eprintln!(
            "batch {}: {} items in {} pieces, {} credits reserved",
            info.id, info.items, info.pieces, info.price
        );
        info
    };
    let done = follow(client, network, &batch.id).await?;
    if done.state != BatchState::Done {
        bail!(
            "batch {} ended {}: {}",
            done.id,
            done.state.as_str(),
            done.error.as_deref().unwrap_or("")
        );
    }
    write_results(client, network, &done, out, result_format(out)).await?;
    let _ = std::fs::remove_file(&state_path);
    if json {
        println!("{}", serde_json::to_string(&done)?);
    } else {
        println!("{}", summary(&done));
        println!("wrote {}", out.display());
    }
    Ok(())
}

/// Stream `file` to a new batch, with a progress bar of the bytes sent.
async fn upload(
    client: &Client,
    network: &NetworkId,
    workload: &str,
    file: &Path,
    format: Option<InputFormat>,
) -> Result<BatchInfo> {
    let handle = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    let len = handle.metadata().await?.len();
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "uploading {bytes}/{total_bytes} [{bar:30}] {bytes_per_sec}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let progress = bar.clone();
    let chunks = futures_util::stream::unfold(handle, |mut handle| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; UPLOAD_CHUNK];
        match handle.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), handle))
            }
            Err(e) => Some((Err(e), handle)),
        }
    })
    .map(move |chunk| {
        if let Ok(chunk) = &chunk {
            progress.inc(chunk.len() as u64);
        }
        chunk
    });
    let created = client
        .create_batch(
            network,
            workload,
            format.unwrap_or_else(|| input_format(file)),
            None,
            reqwest::Body::wrap_stream(chunks),
        )
        .await;
    bar.finish_and_clear();
    Ok(created?)
}

/// Poll the batch until it ends, with a progress bar: items, speed, ETA, devices in use.
pub async fn follow(client: &Client, network: &NetworkId, batch: &BatchId) -> Result<BatchInfo> {
    let first = client.batch(network, batch).await?;
    let bar = indicatif::ProgressBar::new(first.items);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{pos}/{len} items [{bar:30}] {percent}%  {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut info = first;
    loop {
        bar.set_position(info.items_done);
        bar.set_message(progress_message(&info));
        if info.state.is_final() {
            break;
        }
        tokio::time::sleep(POLL).await;
        info = client.batch(network, batch).await?;
    }
    bar.finish_and_clear();
    Ok(info)
}

fn progress_message(info: &BatchInfo) -> String {
    let devices = info.devices.iter().filter(|d| d.running > 0).count();
    let speed = info
        .items_per_s
        .map_or_else(|| "-".to_string(), |s| format!("{s:.0}"));
    let eta = info
        .eta_s
        .map_or_else(|| "-".to_string(), |s| format!("{}s", s.ceil() as u64));
    let checks = if info.checks_open > 0 {
        format!("  {} checks open", info.checks_open)
    } else {
        String::new()
    };
    format!("{speed} items/s  ETA {eta}  {devices} devices{checks}")
}

/// One line about a batch.
pub fn summary(info: &BatchInfo) -> String {
    let elapsed = info
        .finished_at_ms
        .map(|f| format!("  {:.1}s", (f - info.created_at_ms) as f64 / 1000.0))
        .unwrap_or_default();
    format!(
        "{}  {}  {}/{} items  {} pieces  {} devices  paid {}/{}  {} runs failed  {} duplicates{}{}",
        info.id,
        info.state.as_str(),
        info.items_done,
        info.items,
        info.pieces,
        info.devices.iter().filter(|d| d.items > 0).count(),
        info.paid,
        info.price,
        info.runs_failed,
        info.duplicates,
        elapsed,
        info.error
            .as_deref()
            .map(|e| format!("  ({e})"))
            .unwrap_or_default()
    )
}

/// Download the results to `out` (through a temporary file next to it, renamed at the end).
pub async fn write_results(
    client: &Client,
    network: &NetworkId,
    info: &BatchInfo,
    out: &Path,
    format: ResultFormat,
) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut response = client.batch_results(network, &info.id, format).await?;
    let partial = out.with_extension("partial");
    let mut file = tokio::fs::File::create(&partial)
        .await
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut written = 0u64;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| anyhow!("downloading the results: {e}"))?
    {
        file.write_all(&chunk).await?;
        written += chunk.len() as u64;
    }
    file.flush().await?;
    drop(file);
    if written == 0 {
        bail!("the results were empty");
    }
    std::fs::rename(&partial, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

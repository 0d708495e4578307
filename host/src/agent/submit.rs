//! `mesh-host submit`: this device as requester. Ask the control plane for an assignment,
//! send the job to the executor over libp2p (relayed, then direct), check the receipt,
//! report it, and hand the result back.

use super::config::HostConfig;
use crate::models::ModelStore;
use anyhow::{Context, Result, bail};
use mesh_client::Client;
use mesh_net::dispatch::{self, Assignment};
use mesh_net::{Inbound, Node, NodeConfig};
use mesh_proto::api::{CompleteJobRequest, FailJobRequest, JobAssignment, SubmitJobRequest};
use mesh_proto::p2p::{
    BlobRequest, BlobResponse, CancelResponse, JobRefusal, JobResponse, MAX_BLOB_CHUNK_BYTES,
};
use mesh_proto::{Blake3Hash, JobId, NetworkId};
use std::time::Duration;
use tracing::Instrument;

/// How long to wait for a device to take the job.
const QUEUE_WAIT: Duration = Duration::from_secs(15);

async fn wait_for_ticket(
    client: &Client,
    network: &NetworkId,
    job: &JobId,
    first: JobAssignment,
) -> Result<JobAssignment> {
    let deadline = tokio::time::Instant::now() + QUEUE_WAIT;
    let mut current = first;
    while current.ticket.is_none()
        && current.job.state == mesh_proto::api::JobState::Queued
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
        current = client.job(network, job).await?;
    }
    Ok(current)
}

/// Stop waiting for a device to take `job`: the control plane fails it and refunds its
/// reservation (a job still queued was run by nobody).
async fn give_up(client: &Client, network: &NetworkId, job: &JobId) {
    let request = FailJobRequest {
        reason: format!("no device took it within {QUEUE_WAIT:?}"),
        retryable: false,
        executor_peer: None,
    };
    if let Err(e) = client.reassign_job(network, job, &request).await {
        tracing::warn!(%job, "giving the job up: {e}");
    }
}

/// How `mesh-host submit` runs its jobs.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// Idempotency key (suffixed `-<i>` when `count` > 1).
    pub idempotency_key: Option<String>,
    /// Jobs to run, one after the other.
    pub count: usize,
    /// Pause between them.
    pub pause: Duration,
    /// Cancel a job not answered this long after it was sent.
    pub timeout: Option<Duration>,
}

/// Run `count` jobs of `workload` one after the other on the mesh (over the same network
/// node, so later ones use the direct connection once hole punching succeeded), handing each
/// job's result (`{"job", "state", "executor", "output", ...}`) to `on_result` as it comes
/// (`mesh-host submit` prints one JSON line per job).
pub async fn submit(
    config: &HostConfig,
    workload: Blake3Hash,
    input: Vec<u8>,
    options: SubmitOptions,
    mut on_result: impl FnMut(serde_json::Value) -> Result<()>,
) -> Result<()> {
    let SubmitOptions {
        idempotency_key,
        count,
        pause,
        timeout,
    } = options;
    let key = config.signing_key()?;
    let client = config.client()?;
    let cert = client
        .certificate(&config.device)
        .await
        .context("fetching this device's certificate (is it approved?)")?
        .certificate;
    let relays = match client.control_plane_key().await {
        Ok(k) if !k.relays.is_empty() => k.relays,
        _ => config.relays.clone(),
    };
    let (node, mut inbound) = Node::spawn(
        &key,
        NodeConfig {
            listen: vec![
                "/ip4/0.0.0.0/udp/0/quic-v1".parse()?,
                "/ip4/0.0.0.0/tcp/0".parse()?,
            ],
            relays: relays.iter().map(|a| a.parse()).collect::<Result<_, _>>()?,
            reserve: false,
            ..NodeConfig::default()
        },
    )
    .await?;
    // Serve the component, and the models it needs, to the executor from this device's
    // stores when it has them.
    let store = crate::components::ComponentStore::open(&config.data_dir().join("components"))?;
    let models = ModelStore::open(
        &config
            .model_dir
            .clone()
            .unwrap_or_else(ModelStore::default_dir),
    )
    .ok();
    tokio::spawn(
        async move {
            while let Some(request) = inbound.recv().await {
                match request {
                    Inbound::Blob { request, reply, .. } => {
                        let models = models.clone();
                        let store = store.clone();
                        let span = tracing::Span::current();
                        tokio::task::spawn_blocking(move || {
                            span.in_scope(|| {
                                let _ = reply.send(serve_blob(&store, models.as_ref(), &request));
                            })
                        });
                    }
                    Inbound::Job { reply, .. } => {
                        let _ = reply.send(JobResponse::Refused(JobRefusal::ShuttingDown));
                    }
                    Inbound::Cancel { reply, .. } => {
                        let _ = reply.send(CancelResponse::Unknown);
                    }
                }
            }
        }
        .in_current_span(),
    );
    for i in 0..count.max(1) {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        let key = idempotency_key.as_ref().map(|k| {
            if count > 1 {
                format!("{k}-{i}")
            } else {
                k.clone()
            }
        });
        let job = JobSpec {
            network: config.network,
            workload,
            input: &input,
            idempotency_key: key,
            timeout,
        };
        on_result(run_one(&client, &node, &cert, job).await?)?;
    }
    Ok(())
}

/// A piece of this device's copy of the job's component, or of a model, for its executor.
fn serve_blob(
    components: &crate::components::ComponentStore,
    models: Option<&ModelStore>,
    request: &BlobRequest,
) -> BlobResponse {
    let ticket = match request.ticket.peek() {
        Ok(t) => t,
        Err(_) => return BlobResponse::Refused("unreadable ticket".into()),
    };
    if ticket.workload == request.hash {
        if !components.contains(&request.hash) {
            return BlobResponse::NotFound;
        }
        return match components.get(&request.hash) {
            Ok(bytes) => mesh_net::blob_chunk(&bytes, request.offset, request.length),
            Err(e) => BlobResponse::Refused(e.to_string()),
        };
    }
    let Some(entry) = models
        .and_then(|m| m.by_hash(&request.hash))
        .filter(|e| models.is_some_and(|m| m.has_file(e)))
    else {
        return BlobResponse::NotFound;
    };
    let length = (request.length as usize).min(MAX_BLOB_CHUNK_BYTES);
    match models
        .expect("found in the store")
        .read_range(entry, request.offset, length)
    {
        Ok((total, data)) => BlobResponse::Chunk {
            total,
            offset: request.offset,
            data,
        },
        Err(e) => BlobResponse::Refused(e.to_string()),
    }
}

/// One job to run.
struct JobSpec<'a> {
    network: NetworkId,
    workload: Blake3Hash,
    input: &'a [u8],
    idempotency_key: Option<String>,
    timeout: Option<Duration>,
}

async fn run_one(
    client: &Client,
    node: &Node,
    cert: &mesh_proto::Signed<mesh_proto::device::DeviceCert>,
    spec: JobSpec<'_>,
) -> Result<serde_json::Value> {
    let JobSpec {
        network,
        workload,
        input,
        idempotency_key,
        timeout,
    } = spec;
    let submitted = client
        .submit_job(
            &network,
            &SubmitJobRequest {
                workload,
                input: Blake3Hash::of(input),
                input_size: input.len() as u64,
                idempotency_key,
            },
        )
        .await
        .context("submitting the job")?;
    let job = submitted.job.id;
    let first = wait_for_ticket(client, &network, &job, submitted).await?;
    let Some(ticket) = first.ticket else {
        give_up(client, &network, &job).await;
        bail!(
            "no device took job {job} within {QUEUE_WAIT:?} (state {}){}",
            first.job.state.as_str(),
            first.waiting.map(|w| format!(": {w}")).unwrap_or_default()
        );
    };
    let first = Assignment::from_ticket(ticket)?;
    let reassign = |failed: mesh_net::PeerId, reason: String, retryable: bool| {
        let client = client.clone();
        async move {
            let request = FailJobRequest {
                reason,
                retryable,
                executor_peer: Some(failed.to_string()),
            };
            let next = client
                .reassign_job(&network, &job, &request)
                .await
                .map_err(|e| e.to_string())?;
            if !retryable {
                return Ok(None);
            }
            let next = wait_for_ticket(&client, &network, &job, next)
                .await
                .map_err(|e| e.to_string())?;
            if next.ticket.is_none() {
                give_up(&client, &network, &job).await;
            }
            Ok(next.ticket.and_then(|t| Assignment::from_ticket(t).ok()))
        }
    };
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let completed = dispatch::dispatch(
        node,
        first,
        input,
        Some(cert.clone()),
        4,
        deadline,
        None,
        reassign,
    )
    .await?;
    let claims = completed.ticket.peek()?;
    let settled = client
        .report_receipt(
            &network,
            &job,
            &CompleteJobRequest {
                receipt: completed.signed_receipt.clone(),
            },
        )
        .await
        .context("reporting the receipt")?;
    // A job the control plane's VRF selected for re-execution needs its input and output
    // (the control plane never saw them): hand them over by hash.
    let check = client.job_check(&network, &job).await.ok();
    let selected = check.as_ref().is_some_and(|c| c.selection.selected);
    if selected {
        client
            .upload_payload(&network, &job, input.to_vec())
            .await
            .context("uploading the input of a job selected for re-execution")?;
        client
            .upload_payload(&network, &job, completed.output.clone())
            .await
            .context("uploading the output of a job selected for re-execution")?;
    }
    let output = mesh_proto::document::parse(&completed.output).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&completed.output).into())
    });
    Ok(serde_json::json!({
        "job": job,
        "state": settled.state,
        "price": settled.price,
        "executor": claims.executor,
        "executor_peer": claims.executor_peer,
        "relayed": completed.relayed,
        "attempts": completed.attempts,
        "selected_for_check": selected,
        "output": output,
        "receipt": completed.receipt,
    }))
}

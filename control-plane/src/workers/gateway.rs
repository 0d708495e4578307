//! The gateway: clients that are not devices (REST, the CLI, OpenAI client libraries) run
//! jobs through the control plane, which schedules them and sends them to the executor over
//! libp2p like any requester, through the relays. The control plane's signing key is its
//! libp2p identity, so executors recognise the tickets it presents; executors fetch
//! components from it over `/mesh/blob/1`.

use crate::domain::jobs::{self, assignment, find_job, settle_receipt, submit_job};
use crate::domain::scheduling;
use crate::domain::{DomainError, DomainResult};
use crate::state::AppState;
use mesh_net::dispatch::{self, Assignment, DispatchError};
use mesh_net::{Inbound, Node, NodeConfig};
use mesh_proto::api::{JobAssignment, JobState, RunJobResponse, SubmitJobRequest};
use mesh_proto::p2p::{BlobRequest, BlobResponse, JobRefusal, JobResponse};
use mesh_proto::{Blake3Hash, DeviceId, JobId, NetworkId, PersonId};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::Instrument;

/// How long a job may wait in the queue for a device before the gateway gives up.
const QUEUE_WAIT: Duration = Duration::from_secs(15);
/// Runs of a gateway job whose executors get a ringer wrong, before the gateway gives up.
const RINGER_RUNS: usize = 3;
/// Executors a gateway job is offered to at most.
const MAX_ATTEMPTS: u32 = 4;

/// Start the gateway's libp2p node (when relays are configured) and serve blob requests.
pub async fn spawn(state: &AppState) -> anyhow::Result<Option<Node>> {
    if state.config.relays.is_empty() {
        return Ok(None);
    }
    let config = NodeConfig {
        listen: state
            .config
            .p2p_listen
            .iter()
            .map(|a| a.parse())
            .collect::<Result<_, _>>()?,
        relays: state
            .config
            .relays
            .iter()
            .map(|a| a.parse())
            .collect::<Result<_, _>>()?,
        reserve: false,
        job_timeout: state.config.gateway_timeout,
        // Approved devices only, as on the relays.
        gate: mesh_net::Gate::only([]),
        ..NodeConfig::default()
    };
    let gate = config.gate.clone();
    if let Err(e) = admit_devices(state, &gate).await {
        tracing::warn!("listing the approved devices for the gateway's gate: {e}");
    }
    let (node, inbound) = Node::spawn(&state.key, config).await?;
    tracing::info!(peer = %node.peer_id(), "gateway node started");
    tokio::spawn(serve_inbound(state.clone(), inbound).in_current_span());
    tokio::spawn(keep_gate(state.clone(), gate).in_current_span());
    Ok(Some(node))
}

/// How often the gateway's gate is brought up to date with the approved devices (and at
/// once, at most every [`GATE_MIN_REFRESH`], after an unknown peer was refused).
const GATE_REFRESH: Duration = Duration::from_secs(10);
/// The shortest time between two refreshes of the gate.
const GATE_MIN_REFRESH: Duration = Duration::from_secs(1);

async fn keep_gate(state: AppState, gate: mesh_net::Gate) {
    loop {
        let _ = tokio::time::timeout(GATE_REFRESH, gate.denied()).await;
        if let Err(e) = admit_devices(&state, &gate).await {
            tracing::warn!("refreshing the gateway's gate (keeping the last list): {e}");
        }
        tokio::time::sleep(GATE_MIN_REFRESH).await;
    }
}

/// Let every approved device of every network connect to the gateway, and nobody else.
async fn admit_devices(state: &AppState, gate: &mesh_net::Gate) -> DomainResult<()> {
    let peers = crate::domain::devices::approved_peers(state).await?;
    gate.allow_only(peers.iter().filter_map(|p| p.parse().ok()));
    Ok(())
}

async fn serve_inbound(state: AppState, mut inbound: tokio::sync::mpsc::Receiver<Inbound>) {
    while let Some(request) = inbound.recv().await {
        match request {
            Inbound::Job { reply, .. } => {
                let _ = reply.send(JobResponse::Refused(JobRefusal::NotAuthorized(
                    "the control plane runs no jobs".into(),
                )));
            }
            Inbound::Cancel { reply, .. } => {
                let _ = reply.send(mesh_proto::p2p::CancelResponse::Unknown);
            }
            Inbound::Blob {
                peer,
                request,
                reply,
            } => {
                let state = state.clone();
                tokio::spawn(
                    async move {
                        let answer = serve_blob(&state, &peer, &request).await;
                        let _ = reply.send(answer);
                    }
                    .in_current_span(),
                );
            }
        }
    }
}

/// A piece of a component, for the executor a ticket of ours names.
async fn serve_blob(
    state: &AppState,
    peer: &mesh_net::PeerId,
    request: &BlobRequest,
) -> BlobResponse {
    let claims = match request.ticket.peek() {
        Ok(c) => c,
        Err(_) => return BlobResponse::Refused("unreadable ticket".into()),
    };
    let ticket = match mesh_net::verify::job_ticket(
        &request.ticket,
        &state.key.public_key(),
        &claims.network,
        peer,
        &claims.requester_peer.parse().unwrap_or(*peer),
        mesh_net::verify::now_ms(),
    ) {
        Ok(t) => t,
        Err(e) => return BlobResponse::Refused(format!("invalid ticket: {e}")),
    };
    if ticket.workload != request.hash {
        return BlobResponse::Refused("the ticket does not cover this blob".into());
    }
    // Only the chunk asked for is read, never the whole component per chunk.
    let length = request
        .length
        .min(mesh_proto::p2p::MAX_BLOB_CHUNK_BYTES as u32);
    let chunk = crate::store::workloads::component_chunk(
        &state.db.pool,
        &request.hash,
        request.offset,
        length,
    )
    .await;
    match chunk {
        Err(e) => BlobResponse::Refused(format!("storage error: {e}")),
        Ok(None) => BlobResponse::NotFound,
        Ok(Some((total, _))) if request.offset > total => BlobResponse::Refused(format!(
            "offset {} is past the end ({total} bytes)",
            request.offset
        )),
        Ok(Some((total, data))) => BlobResponse::Chunk {
            total,
            offset: request.offset,
            data,
        },
    }
}

/// Wait until the job has a ticket (or is no longer queued), up to [`QUEUE_WAIT`].
async fn wait_for_ticket(state: &AppState, job: &JobId) -> DomainResult<JobAssignment> {
    let deadline = tokio::time::Instant::now() + QUEUE_WAIT;
    loop {
        let current = assignment(state, job).await?;
        if current.ticket.is_some() || current.job.state != JobState::Queued {
            return Ok(current);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(current);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        scheduling::try_assign(state, job).await?;
    }
}

fn to_dispatch(a: &JobAssignment) -> Option<Assignment> {
    a.ticket
        .clone()
        .and_then(|t| Assignment::from_ticket(t).ok())
}

/// Run a job of `person` in `network` through the gateway and wait for its checked result.
///
/// A batched job carries ringers ([`crate::domain::ringers`]); when the executor gets one wrong, that
/// is a failed check and the job runs again away from that owner's devices (up to
/// [`RINGER_RUNS`] runs), and the first answer that passes is returned.
/// When the VRF selects the job for re-execution, its input and output are kept for the check.
pub async fn run_job(
    state: &AppState,
    network: &NetworkId,
    person: PersonId,
    workload: Blake3Hash,
    input: Vec<u8>,
    idempotency_key: Option<String>,
) -> DomainResult<RunJobResponse> {
    let mut avoid: Vec<DeviceId> = Vec::new();
    let mut failed: Vec<JobId> = Vec::new();
    for attempt in 0..RINGER_RUNS {
        let key = match failed.first() {
            None => idempotency_key.clone(),
            Some(first) => Some(format!("{first}:rerun{attempt}")),
        };
        match run_once(state, network, person, workload, &input, key, &avoid).await? {
            Ok(response) => return Ok(response),
            Err((job, cheater)) => {
                failed.push(job);
                // Run it again away from every device of the cheater's owner.
                avoid.extend(crate::store::devices::same_owner(&state.db.pool, &cheater).await?);
            }
        }
    }
    let failed: Vec<String> = failed.iter().map(JobId::to_string).collect();
    Err(DomainError::unavailable(
        "verification_failed",
        format!(
            "jobs {} all failed their known-answer checks",
            failed.join(", ")
        ),
    ))
}

/// Submit a gateway job whose output its caller wants as it comes ([`complete_streaming`]
/// runs it). No ringers are mixed in: their answers would stream too.
pub async fn submit_streaming(
    state: &AppState,
    network: &NetworkId,
    person: PersonId,
    workload: Blake3Hash,
    input: Vec<u8>,
) -> DomainResult<Submitted> {
    let placement = jobs::Placement::default();
    submit(
        state, network, person, workload, input, None, placement, false,
    )
    .await
}

/// Run a job from [`submit_streaming`]: the executor streams what the workload emits to
/// `pieces` while it runs, and the result (with its checked receipt, settled and kept for
/// its check like every gateway job's) ends the stream. Once a piece went out, the job is
/// not sent to another device.
pub async fn complete_streaming(
    state: &AppState,
    network: &NetworkId,
    workload: Blake3Hash,
    submitted: Submitted,
    pieces: mpsc::UnboundedSender<Vec<u8>>,
) -> DomainResult<RunJobResponse> {
    let job = submitted.job;
    match complete_with(
        state,
        network,
        workload,
        submitted,
        MAX_ATTEMPTS,
        Some(&pieces),
    )
    .await?
    {
        Ok(response) => Ok(response),
        Err(_) => Err(DomainError::internal(format!(
            "job {job} carried no ringers but one failed"
        ))),
    }
}

/// One run of a gateway job. The inner error names the job and executor when a ringer failed.
async fn run_once(
    state: &AppState,
    network: &NetworkId,
    person: PersonId,
    workload: Blake3Hash,
    input: &[u8],
    idempotency_key: Option<String>,
    avoid: &[DeviceId],
) -> DomainResult<Result<RunJobResponse, (JobId, DeviceId)>> {
    let placement = jobs::Placement {
        avoid,
        ..Default::default()
    };
    let submitted = submit(
        state,
        network,
        person,
        workload,
        input.to_vec(),
        idempotency_key,
        placement,
        true,
    )
    .await?;
    complete(state, network, workload, submitted, MAX_ATTEMPTS).await
}

/// A gateway job, submitted, with the input it will be sent (ringers mixed in when it was
/// assigned at once).
pub struct Submitted {
    /// The job.
    pub job: JobId,
    /// Its state when submitted.
    pub state: JobState,
    input: Vec<u8>,
    planted: Vec<crate::domain::ringers::Planted>,
}

/// Submit a gateway job of `person` and, with `ringers`, mix ringers into its input.
#[allow(clippy::too_many_arguments)]
async fn submit(
    state: &AppState,
    network: &NetworkId,
    person: PersonId,
    workload: Blake3Hash,
    input: Vec<u8>,
    idempotency_key: Option<String>,
    placement: jobs::Placement<'_>,
    ringers: bool,
) -> DomainResult<Submitted> {
    if state.gateway.is_none() {
        return Err(DomainError::unavailable(
            "no_gateway",
            "this control plane has no relays configured, so it cannot dispatch jobs",
        ));
    }
    let request = SubmitJobRequest {
        workload,
        input: Blake3Hash::of(&input),
        input_size: input.len() as u64,
        idempotency_key,
    };
    let (_, submitted) = submit_job(state, network, person, None, &request, placement).await?;
    let job = submitted.job.id;
    if submitted.job.state == JobState::Done || submitted.job.state == JobState::Failed {
        return Err(DomainError::conflict(
            "already_ran",
            format!(
                "job {job} with this idempotency key already {}",
                submitted.job.state.as_str()
            ),
        ));
    }
    // Ringers are chosen for the device the job was assigned to (never one it has seen), and
    // the job's input hash is updated before its ticket is first handed out.
    let mut input = input;
    let mut planted = Vec::new();
    if let (true, JobState::Assigned, Some(executor)) =
        (ringers, submitted.job.state, submitted.job.executor)
        && let Some((mixed, ringers)) =
            crate::domain::ringers::mix(state, network, &workload, &person, &executor, &input)
                .await?
    {
        let mixed_hash = Blake3Hash::of(&mixed);
        let size = mixed.len() as u64;
        if crate::store::jobs::replace_input(&state.db.pool, &job, &executor, &mixed_hash, size)
            .await?
        {
            tracing::debug!(%job, ringers = ringers.len(), "ringers mixed in");
            input = mixed;
            planted = ringers;
        }
    }
    Ok(Submitted {
        job,
        state: submitted.job.state,
        input,
        planted,
    })
}

/// Submit a gateway job of `person` that only `device` may run, at price 0 (a batch's run:
/// the batch pays for what it wins). `None`, and the job is failed, when the device could
/// not take it at once.
pub async fn submit_pinned(
    state: &AppState,
    network: &NetworkId,
    person: PersonId,
    workload: Blake3Hash,
    input: Vec<u8>,
    idempotency_key: String,
    device: DeviceId,
) -> DomainResult<Option<Submitted>> {
    let placement = jobs::Placement {
        only: Some(device),
        price: Some(0),
        ..Default::default()
    };
    let submitted = submit(
        state,
        network,
        person,
        workload,
        input,
        Some(idempotency_key),
        placement,
        true,
    )
    .await?;
    if submitted.state != JobState::Assigned {
        scheduling::fail_queued(state, &submitted.job, "its device could not take it").await?;
        return Ok(None);
    }
    Ok(Some(submitted))
}

/// Send a submitted gateway job to its executor (trying at most `max_attempts` devices),
/// settle it, keep its payloads when it was selected for a check and check its ringers.
/// The inner error names the job and executor when a ringer failed.
pub async fn complete(
    state: &AppState,
    network: &NetworkId,
    workload: Blake3Hash,
    submitted: Submitted,
    max_attempts: u32,
) -> DomainResult<Result<RunJobResponse, (JobId, DeviceId)>> {
    complete_with(state, network, workload, submitted, max_attempts, None).await
}

/// [`complete`], passing what the executor streams on to `pieces`.
async fn complete_with(
    state: &AppState,
    network: &NetworkId,
    workload: Blake3Hash,
    submitted: Submitted,
    max_attempts: u32,
    pieces: Option<&mpsc::UnboundedSender<Vec<u8>>>,
) -> DomainResult<Result<RunJobResponse, (JobId, DeviceId)>> {
    let Some(node) = state.gateway.clone() else {
        return Err(DomainError::unavailable(
            "no_gateway",
            "this control plane has no relays configured, so it cannot dispatch jobs",
        ));
    };
    let Submitted {
        job,
        input,
        planted,
        ..
    } = submitted;
    let completed = dispatch_submitted(state, &node, job, &input, max_attempts, pieces).await?;
    let claims = completed.ticket.peek().map_err(DomainError::internal)?;
    let info = find_job(state, None, &job).await?;
    // The executor reports too; whichever arrives first settles, the other is a no-op.
    let info = match settle_receipt(state, &info, &claims.executor, &completed.receipt).await {
        Ok(info) => info,
        Err(e) => {
            tracing::warn!(%job, "settling from the gateway: {e}");
            find_job(state, None, &job).await?
        }
    };
    if crate::domain::checks::check_info(state, &job)
        .await?
        .is_some_and(|c| c.selection.selected)
    {
        crate::domain::checks::store_payload(state, &job, &input).await?;
        crate::domain::checks::store_payload(state, &job, &completed.output).await?;
    }
    let output = if planted.is_empty() {
        mesh_proto::document::parse(&completed.output).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&completed.output).into())
        })
    } else {
        let rule = crate::domain::checks::comparison(state, network, &workload).await?;
        match crate::domain::ringers::evaluate(&rule, &completed.output, &planted) {
            Ok(output) => output,
            Err(reason) => {
                tracing::warn!(%job, executor = %claims.executor, "ringer failed: {reason}");
                crate::domain::checks::ringer_failed(state, &info, &claims.executor, &reason)
                    .await?;
                return Ok(Err((job, claims.executor)));
            }
        }
    };
    Ok(Ok(RunJobResponse {
        job: info,
        output,
        receipt: completed.receipt,
        executor: claims.executor,
        executor_peer: claims.executor_peer,
        relayed: completed.relayed,
        attempts: completed.attempts,
    }))
}

/// Send the submitted `job` with `input` to its executor, moving on to other devices when it
/// is refused or unreachable, and return the checked result. A job nobody could take fails
/// and is refunded.
pub(crate) async fn dispatch_submitted(
    state: &AppState,
    node: &Node,
    job: JobId,
    input: &[u8],
    max_attempts: u32,
    pieces: Option<&mpsc::UnboundedSender<Vec<u8>>>,
) -> DomainResult<dispatch::Completed> {
    let first = wait_for_ticket(state, &job).await?;
    let Some(first) = to_dispatch(&first) else {
        let why = scheduling::why_unplaced(state, &job).await?;
        scheduling::fail_queued(state, &job, &why).await?;
        return Err(DomainError::unavailable("no_device", why));
    };
    let reassign = |failed: mesh_net::PeerId, reason: String, retryable: bool| {
        let state = state.clone();
        async move {
            let info = find_job(&state, None, &job)
                .await
                .map_err(|e| e.to_string())?;
            let failed = failed.to_string();
            let next = jobs::reassign_job(
                &state,
                &info,
                jobs::Complainant::Gateway,
                Some(&failed),
                &reason,
                retryable,
            )
            .await
            .map_err(|e| e.to_string())?;
            if !retryable {
                return Ok(None);
            }
            let next = if next.ticket.is_none() {
                wait_for_ticket(&state, &job)
                    .await
                    .map_err(|e| e.to_string())?
            } else {
                next
            };
            Ok(to_dispatch(&next))
        }
    };
    let completed = match dispatch::dispatch(
        node,
        first,
        input,
        None,
        max_attempts,
        None,
        pieces,
        reassign,
    )
    .await
    {
        Ok(c) => {
            if let Ok(claims) = c.ticket.peek()
                && let Err(e) =
                    crate::domain::devices::record_path(state, &claims.executor, c.relayed).await
            {
                tracing::warn!(%job, "recording the path to the executor: {e}");
            }
            c
        }
        Err(e) => {
            if let DispatchError::NoExecutor(_) = e {
                let _ = scheduling::fail_queued(state, &job, &e.to_string()).await;
            }
            return Err(match e {
                DispatchError::Refused { refusal, .. } => {
                    DomainError::unprocessable("job_refused", refusal.to_string())
                }
                other => DomainError::unavailable("job_not_run", other.to_string()),
            });
        }
    };
    Ok(completed)
}

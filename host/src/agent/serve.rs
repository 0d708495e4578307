//! `mesh-host run`: the device agent. Heartbeats with the control plane, keeps its
//! certificate fresh, reserves a slot on the relays, and serves `/mesh/job/1` (bounded queue,
//! ticket and certificate checks, signed receipts), `/mesh/cancel/1` and `/mesh/blob/1`.

use super::config::HostConfig;
use crate::limits::MAX_COMPONENT_BYTES;
use crate::{CancelToken, ExecError, Executor};
use anyhow::{Context, Result};
use mesh_client::{Client, ClientError};
use mesh_net::{Gate, Inbound, Node, NodeConfig, PeerId};
use mesh_proto::api::{CompleteJobRequest, DeviceStatus, FailJobRequest, JobTicket};
use mesh_proto::device::{DeviceCert, DeviceLoad, Heartbeat};
use mesh_proto::p2p::{
    BlobRequest, BlobResponse, CancelResponse, JobRefusal, JobRequest, JobResponse,
    MAX_BLOB_CHUNK_BYTES,
};
use mesh_proto::terms::{DeviceTerms, TermsLayers, TermsQuery, TermsRefusal};
use mesh_proto::{Blake3Hash, JobId, NetworkId, PublicKey, SignDomain, Signed, SigningKey};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// How long a finished job's answer is kept for a requester that asks again.
const ANSWER_CACHE_TIME: Duration = Duration::from_secs(600);
/// Finished answers kept at most.
const ANSWER_CACHE_ENTRIES: usize = 32;
/// A job reports that it runs (and renews its lease) once it has run this long; well inside
/// any lease, and longer than most jobs, which then report only when done.
const START_REPORT_DELAY: Duration = Duration::from_millis(500);
/// How long a running job whose requester went away waits for it to ask again (over a new
/// connection) before it is cancelled.
const REASK_GRACE: Duration = Duration::from_secs(2);
/// Longest wait for running jobs at shutdown.
const DRAIN_TIME: Duration = Duration::from_secs(120);
/// Longest pause between retries of control-plane calls.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a running job's lease is renewed when the control plane did not say how long
/// it lasts.
const DEFAULT_LEASE_RENEWAL: Duration = Duration::from_secs(10);
/// How long the agent waits for a relay reservation before it announces itself anyway.
const RESERVATION_WAIT: Duration = Duration::from_secs(20);
/// Largest model fetched from a peer when the manifest records no size.
const MAX_MODEL_BYTES: u64 = 4 << 30;
/// Certificates are refreshed this often.
const CERT_REFRESH: Duration = Duration::from_secs(3600);
/// The shortest time between two fetches of the list of peers allowed to connect (it is
/// fetched once per heartbeat interval, and soon after an unknown peer was refused).
const PEERS_MIN_REFRESH: Duration = Duration::from_secs(1);
/// How long a finished job's receipt waits before it is reported, so the receipts of a burst
/// of short jobs go out after the burst (off its answers' path), one call at a time.
const REPORT_DELAY: Duration = Duration::from_millis(200);
/// Receipts waiting to be reported at most; answering waits when this many are.
const REPORT_QUEUE: usize = 1024;
/// Requesters whose checked certificate is remembered at most.
const CERT_CACHE_ENTRIES: usize = 4096;

/// A job accepted into the queue.
struct Queued {
    peer: PeerId,
    ticket: JobTicket,
    signed_ticket: Signed<JobTicket>,
    input: Vec<u8>,
    /// The requester asked for the output's pieces as they come.
    stream: bool,
    reply: oneshot::Sender<JobResponse>,
}

enum Seen {
    /// Queued or running. `requester` may cancel it through `cancel`; `waiters` are the
    /// requester's repeated asks (its first stream broke), answered with the one result.
    Running {
        requester: PeerId,
        cancel: CancelToken,
        waiters: Vec<oneshot::Sender<JobResponse>>,
    },
    Done(Box<JobResponse>, Instant),
}

/// The device agent: the state its tasks share. Started with [`Agent::spawn`].
pub struct Agent {
    executor: Arc<Executor>,
    client: Client,
    node: Node,
    key: SigningKey,
    network: NetworkId,
    control_plane: PublicKey,
    peer: PeerId,
    cert: RwLock<Option<Signed<DeviceCert>>>,
    queue: mpsc::Sender<Queued>,
    /// Receipts of finished jobs, for [`report_receipts`].
    receipts: mpsc::Sender<(JobId, Signed<mesh_proto::RunReceipt>)>,
    /// Receipts handed to [`report_receipts`] and not yet reported.
    unreported: AtomicU32,
    /// Woken after each heartbeat the control plane accepted (the peer list follows it).
    heartbeat_done: tokio::sync::Notify,
    /// The owner's terms (from the host's own config: no control plane can loosen them).
    terms: DeviceTerms,
    /// The terms set for the device in the network (its owner's and the admins' layers), as
    /// the last heartbeat's answer gave them; enforced along with `terms`, which they can
    /// only narrow.
    network_terms: RwLock<TermsLayers>,
    /// Percent of the CPU other processes used in the last sample (f64 bits; NaN: unknown).
    others_busy: AtomicU64,
    /// Woken when something the scheduler should know at once changed (the device's user got
    /// busy or idle again): the next heartbeat goes out without waiting its interval.
    load_changed: tokio::sync::Notify,
    /// Jobs handed back because the device's owner needs it: their cancellation is a
    /// retryable failure, so they run elsewhere.
    handed_back: Mutex<std::collections::HashSet<JobId>>,
    queued: AtomicU32,
    running: AtomicU32,
    slots: u32,
    seen: Mutex<HashMap<JobId, Seen>>,
    /// Requester certificates already checked, by peer: the certificate's hash and expiry.
    /// A requester presents the same certificate with every job; it is checked once.
    checked_certs: Mutex<HashMap<PeerId, (Blake3Hash, u64)>>,
    accepting: AtomicBool,
    partial_dir: PathBuf,
    /// Held while models are fetched, so two jobs never fetch one model at once.
    fetching_models: tokio::sync::Mutex<()>,
    #[cfg(feature = "fault-injection")]
    fault: Option<super::fault::Injector>,
}

/// Wait with exponential backoff between attempts.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(500))
    }
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
    }
}

/// A running device agent (see [`Agent::spawn`]). Dropping it stops the agent's tasks at once;
/// [`AgentHandle::shutdown`] lets running jobs finish first.
pub struct AgentHandle {
    agent: Arc<Agent>,
    revoked: mpsc::Receiver<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl AgentHandle {
    /// The agent's libp2p peer id.
    pub fn peer_id(&self) -> PeerId {
        self.agent.peer
    }

    /// Resolves when the control plane says this device was revoked.
    pub async fn revoked(&mut self) {
        if self.revoked.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }

    /// Stop taking jobs and wait (at most [`DRAIN_TIME`]) until the queued and running ones
    /// have finished and their receipts are reported. Returns whether everything finished.
    pub async fn drain(&self) -> bool {
        let agent = &self.agent;
        agent.accepting.store(false, Ordering::SeqCst);
        let busy = || {
            agent.queued.load(Ordering::SeqCst)
                + agent.running.load(Ordering::SeqCst)
                + agent.unreported.load(Ordering::SeqCst)
                > 0
        };
        let deadline = Instant::now() + DRAIN_TIME;
        while busy() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        !busy()
    }

    /// Drain, let the last answers leave, then stop every task of the agent.
    pub async fn shutdown(self) {
        self.drain().await;
        // Let the last answers leave before the swarm goes away.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Run the agent until `shutdown` resolves (or the device is revoked), then drain.
pub async fn run(
    config: HostConfig,
    executor: Executor,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let mut agent = Agent::spawn(config, executor).await?;
    tokio::select! {
        _ = shutdown => eprintln!("shutting down: draining jobs"),
        _ = agent.revoked() => eprintln!("this device was revoked: stopping"),
    }
    agent.shutdown().await;
    eprintln!("stopped");
    Ok(())
}

impl Agent {
    /// Start the device agent in the current runtime: its libp2p node (reserving on the
    /// relays), heartbeats once peers can reach it, certificate refresh, the receipt reporter,
    /// the job workers and the inbound request loop. Returns once the device has announced
    /// itself.
    pub async fn spawn(config: HostConfig, executor: Executor) -> Result<AgentHandle> {
        #[cfg(feature = "fault-injection")]
        let fault = super::fault::Injector::from_env()?;
        spawn_agent(
            config,
            executor,
            #[cfg(feature = "fault-injection")]
            fault,
        )
        .await
    }

    /// [`Agent::spawn`] with `fault` (a `MESH_FAULT` value) injected into every result, for
    /// adversarial tests in one process. Only with the `fault-injection` feature.
    #[cfg(feature = "fault-injection")]
    pub async fn spawn_faulty(
        config: HostConfig,
        executor: Executor,
        fault: &str,
    ) -> Result<AgentHandle> {
        let fault = super::fault::Injector::parse(fault)?;
        spawn_agent(config, executor, Some(fault)).await
    }
}

async fn spawn_agent(
    config: HostConfig,
    executor: Executor,
    #[cfg(feature = "fault-injection")] fault: Option<super::fault::Injector>,
) -> Result<AgentHandle> {
    let key = config.signing_key()?;
    let client = config.client()?;
    // The control plane's relay list wins over the one saved at join time.
    let mut relays = config.relays.clone();
    match client.control_plane_key().await {
        Ok(k) if !k.relays.is_empty() => relays = k.relays,
        Ok(_) => {}
        Err(e) => tracing::warn!("control plane unreachable at start ({e}); using saved relays"),
    }
    let node_config = NodeConfig {
        listen: config
            .listen
            .iter()
            .map(|a| a.parse().with_context(|| format!("listen address {a}")))
            .collect::<Result<_>>()?,
        relays: relays
            .iter()
            .map(|a| a.parse().with_context(|| format!("relay address {a}")))
            .collect::<Result<_>>()?,
        reserve: true,
        // Only the gateway until the network's list of devices arrives.
        gate: Gate::only(config.control_plane_key.peer_id().parse::<PeerId>().ok()),
        ..NodeConfig::default()
    };
    let gate = node_config.gate.clone();
    let (node, inbound) = Node::spawn(&key, node_config).await?;
    let slots = config.effective_slots();
    let (queue, queue_rx) = mpsc::channel(config.queue_capacity.max(1));
    let (receipts, receipts_rx) = mpsc::channel(REPORT_QUEUE);
    let agent = Arc::new(Agent {
        executor: Arc::new(executor),
        client,
        peer: node.peer_id(),
        node,
        key,
        network: config.network,
        control_plane: config.control_plane_key,
        cert: RwLock::new(None),
        queue,
        receipts,
        unreported: AtomicU32::new(0),
        heartbeat_done: tokio::sync::Notify::new(),
        terms: config.terms.clone(),
        network_terms: RwLock::new(TermsLayers::default()),
        others_busy: AtomicU64::new(f64::NAN.to_bits()),
        load_changed: tokio::sync::Notify::new(),
        handed_back: Mutex::new(Default::default()),
        queued: AtomicU32::new(0),
        running: AtomicU32::new(0),
        slots: slots as u32,
        seen: Mutex::new(HashMap::new()),
        checked_certs: Mutex::new(HashMap::new()),
        accepting: AtomicBool::new(true),
        partial_dir: config.data_dir().join("partial"),
        fetching_models: tokio::sync::Mutex::new(()),
        #[cfg(feature = "fault-injection")]
        fault,
    });
    eprintln!(
        "mesh-host {} device {} peer {} ({} slots, queue {}, backend {})",
        env!("CARGO_PKG_VERSION"),
        config.device,
        agent.peer,
        slots,
        config.queue_capacity,
        agent.executor.backend().name()
    );
    // Heartbeats make the device a candidate for jobs, so they start once peers can reach it:
    // when a relay holds a reservation (or after a while, when none does).
    if !relays.is_empty()
        && !agent
            .node
            .wait_for(RESERVATION_WAIT, |s| !s.reserved_on.is_empty())
            .await
    {
        tracing::warn!(
            "no relay reservation after {RESERVATION_WAIT:?}; announcing the device anyway"
        );
    }
    if let Err(e) = refresh_peers(&agent, &gate).await {
        tracing::info!("no list of the network's devices yet ({e}); only the gateway may connect");
    }
    let (revoked_tx, revoked_rx) = mpsc::channel::<()>(1);
    let mut tasks = vec![
        tokio::spawn(peers(agent.clone(), gate).in_current_span()),
        tokio::spawn(heartbeats(agent.clone(), config.device, revoked_tx).in_current_span()),
        tokio::spawn(watch_owner(agent.clone()).in_current_span()),
        tokio::spawn(certificates(agent.clone(), config.device).in_current_span()),
        tokio::spawn(report_receipts(agent.clone(), receipts_rx).in_current_span()),
    ];
    let queue_rx = Arc::new(tokio::sync::Mutex::new(queue_rx));
    for _ in 0..slots {
        tasks.push(tokio::spawn(
            worker(agent.clone(), queue_rx.clone()).in_current_span(),
        ));
    }
    tasks.push(tokio::spawn(
        serve_inbound(agent.clone(), inbound).in_current_span(),
    ));
    Ok(AgentHandle {
        agent,
        revoked: revoked_rx,
        tasks,
    })
}

async fn heartbeats(agent: Arc<Agent>, device: mesh_proto::DeviceId, revoked: mpsc::Sender<()>) {
    let mut backoff = Backoff::new();
    loop {
        let busy = f64::from_bits(agent.others_busy.load(Ordering::Relaxed));
        let heartbeat = Heartbeat {
            device,
            network: agent.network,
            sent_at_ms: mesh_net::verify::now_ms(),
            load: DeviceLoad {
                running: agent.running.load(Ordering::Relaxed),
                queued: agent.queued.load(Ordering::Relaxed),
                slots: agent.slots,
                others_busy_percent: (!busy.is_nan()).then(|| busy.round().clamp(0.0, 100.0) as u8),
            },
            terms: agent.terms.clone(),
        };
        let signed = match Signed::sign(
            &heartbeat,
            &agent.key,
            SignDomain::Heartbeat,
            &agent.network,
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("signing a heartbeat: {e}");
                return;
            }
        };
        match agent.client.heartbeat(&device, &signed).await {
            Ok(answer) => {
                backoff = Backoff::new();
                if answer.status == DeviceStatus::Revoked {
                    let _ = revoked.send(()).await;
                    return;
                }
                agent.set_network_terms(answer.terms);
                agent.heartbeat_done.notify_one();
                let interval = Duration::from_secs(answer.interval_s.clamp(1, 300));
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = agent.load_changed.notified() => {}
                }
            }
            // The device's token no longer works: it was revoked (or removed with its owner).
            Err(e) if e.status().map(|s| s.as_u16()) == Some(401) => {
                tracing::warn!("the control plane no longer accepts this device: {e}");
                let _ = revoked.send(()).await;
                return;
            }
            Err(e) => {
                tracing::warn!("heartbeat failed (retrying): {e}");
                backoff.wait().await;
            }
        }
    }
}

/// Keep `gate` to the network's approved devices and the gateway: fetched after every
/// heartbeat, and soon after a peer not on the list was refused (it may be a device approved
/// a moment ago).
async fn peers(agent: Arc<Agent>, gate: Gate) {
    loop {
        tokio::select! {
            _ = agent.heartbeat_done.notified() => {}
            _ = gate.denied() => {}
        }
        if let Err(e) = refresh_peers(&agent, &gate).await {
            tracing::info!("fetching the network's devices failed (keeping the last list): {e}");
        }
        tokio::time::sleep(PEERS_MIN_REFRESH).await;
    }
}

async fn refresh_peers(agent: &Agent, gate: &Gate) -> Result<()> {
    let list = agent.client.network_peers(&agent.network).await?;
    let peers: Vec<PeerId> = std::iter::once(&list.gateway_peer)
        .chain(&list.peers)
        .filter_map(|p| p.parse().ok())
        .collect();
    tracing::debug!(peers = peers.len(), "peers allowed to connect");
    gate.allow_only(peers);
    Ok(())
}

/// Sample the CPU every second: how busy the device's other processes (its own user's) keep
/// it is reported with each heartbeat, and while some terms take jobs only while the device
/// is otherwise idle and it is busier than they allow, new jobs are refused and the running
/// ones handed back (their requesters run them elsewhere); the scheduler hears of each
/// change at once. Where the CPU cannot be measured, such terms count the device as busy.
async fn watch_owner(agent: Arc<Agent>) {
    let mut last = super::idle::sample();
    // What the scheduler was last told (nothing yet: the first measurement goes out at once).
    let mut told: Option<(bool, bool)> = None;
    loop {
        tokio::time::sleep(super::idle::SAMPLE_EVERY).await;
        let now = super::idle::sample();
        let busy = match (&last, &now) {
            (Some(before), Some(after)) => super::idle::others_busy_percent(before, after),
            _ => None,
        };
        last = now;
        agent
            .others_busy
            .store(busy.unwrap_or(f64::NAN).to_bits(), Ordering::Relaxed);
        let is_busy = agent
            .terms_layers()
            .idle_threshold()
            .is_some_and(|max| busy.is_none_or(|b| b > f64::from(max)));
        if is_busy {
            agent.hand_back_all();
        }
        let state = (is_busy, busy.is_some());
        if told != Some(state) {
            if told.is_some_and(|(was, _)| was != is_busy) {
                tracing::info!(
                    busy = ?busy,
                    "the device's user {}",
                    if is_busy { "is busy: taking no jobs" } else { "is idle again: taking jobs" }
                );
            }
            agent.load_changed.notify_one();
            told = Some(state);
        }
    }
}

async fn certificates(agent: Arc<Agent>, device: mesh_proto::DeviceId) {
    let mut backoff = Backoff::new();
    let mut waiting_logged = false;
    loop {
        match agent.client.certificate(&device).await {
            Ok(answer) => {
                *agent.cert.write().expect("cert lock") = Some(answer.certificate);
                backoff = Backoff::new();
                tokio::time::sleep(CERT_REFRESH).await;
            }
            Err(e) if e.code() == Some("not_approved") => {
                if !waiting_logged {
                    eprintln!("waiting for an admin to approve this device");
                    waiting_logged = true;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => {
                tracing::warn!("fetching the certificate failed (retrying): {e}");
                backoff.wait().await;
            }
        }
    }
}

async fn serve_inbound(agent: Arc<Agent>, mut inbound: mpsc::Receiver<Inbound>) {
    while let Some(request) = inbound.recv().await {
        match request {
            Inbound::Job {
                peer,
                relayed,
                request,
                reply,
            } => {
                tracing::info!(%peer, relayed, "job request");
                if let Err((reply, refusal)) = agent.accept(peer, *request, reply) {
                    tracing::info!(%peer, "refused a job: {refusal}");
                    let _ = reply.send(JobResponse::Refused(refusal));
                }
            }
            Inbound::Blob {
                peer,
                request,
                reply,
            } => {
                let agent = agent.clone();
                tokio::task::spawn_blocking({
                    let span = tracing::Span::current();
                    move || {
                        span.in_scope(|| {
                            let _ = reply.send(agent.serve_blob(&peer, &request));
                        })
                    }
                });
            }
            Inbound::Cancel {
                peer,
                request,
                reply,
            } => {
                let _ = reply.send(agent.cancel(&peer, &request.job));
            }
        }
    }
}

type Refused = (oneshot::Sender<JobResponse>, JobRefusal);

impl Agent {
    /// Check a job request and queue it, or say why not.
    fn accept(
        &self,
        peer: PeerId,
        request: JobRequest,
        reply: oneshot::Sender<JobResponse>,
    ) -> Result<(), Refused> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Err((reply, JobRefusal::ShuttingDown));
        }
        let now = mesh_net::verify::now_ms();
        let ticket = match mesh_net::verify::job_ticket(
            &request.ticket,
            &self.control_plane,
            &self.network,
            &self.peer,
            &peer,
            now,
        ) {
            Ok(t) => t,
            Err(e) => return Err((reply, JobRefusal::InvalidTicket(e.to_string()))),
        };
        // A device requester must hold a valid certificate of this network; the control
        // plane (gateway) is vouched for by its own signature on the ticket.
        if ticket.requester_peer != self.control_plane.peer_id() {
            let Some(cert) = &request.requester_cert else {
                return Err((
                    reply,
                    JobRefusal::NotAuthorized("no device certificate".into()),
                ));
            };
            if let Err(e) = self.check_requester_cert(cert, &peer, now) {
                return Err((reply, JobRefusal::NotAuthorized(format!("certificate {e}"))));
            }
        }
        if Blake3Hash::of(&request.input) != ticket.input {
            return Err((reply, JobRefusal::InputMismatch));
        }
        {
            let mut seen = self.seen.lock().expect("seen lock");
            seen.retain(|_, s| match s {
                Seen::Running { .. } => true,
                Seen::Done(_, at) => at.elapsed() < ANSWER_CACHE_TIME,
            });
            match seen.get_mut(&ticket.job) {
                // The ticket's own requester asks again while it runs (its connection broke):
                // it gets the one answer, the job does not run twice.
                Some(Seen::Running { waiters, .. }) => {
                    waiters.push(reply);
                    return Ok(());
                }
                Some(Seen::Done(answer, _)) => {
                    // The requester asks again (its answer was lost): same answer, no rerun.
                    let _ = reply.send((**answer).clone());
                    return Ok(());
                }
                None => {}
            }
            // A new job: the owner's terms first, whatever the ticket says.
            if let Err(refusal) = self.terms_admit(&ticket, now) {
                return Err((reply, JobRefusal::Terms(refusal)));
            }
            seen.insert(
                ticket.job,
                Seen::Running {
                    requester: peer,
                    cancel: CancelToken::new(),
                    waiters: Vec::new(),
                },
            );
        }
        let job = ticket.job;
        let queued = Queued {
            peer,
            ticket,
            signed_ticket: request.ticket,
            input: request.input,
            stream: request.stream,
            reply,
        };
        self.queued.fetch_add(1, Ordering::SeqCst);
        match self.queue.try_send(queued) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                self.seen.lock().expect("seen lock").remove(&job);
                let queued = e.into_inner();
                Err((
                    queued.reply,
                    JobRefusal::Busy {
                        queued: self.queued.load(Ordering::SeqCst),
                    },
                ))
            }
        }
    }

    /// Hand every queued or running job back: cancelled, answered as a retryable failure.
    fn hand_back_all(&self) {
        let seen = self.seen.lock().expect("seen lock");
        let mut handed_back = self.handed_back.lock().expect("handed back");
        for (job, state) in seen.iter() {
            if let Seen::Running { cancel, .. } = state
                && handed_back.insert(*job)
            {
                tracing::info!(%job, "the device's owner is using it: handing the job back");
                cancel.cancel();
            }
        }
    }

    /// Every layer of terms the device works on: its own config's, and its network's.
    fn terms_layers(&self) -> TermsLayers {
        let network = self.network_terms.read().expect("terms lock");
        TermsLayers {
            device: self.terms.clone(),
            owner: network.owner.clone(),
            admins: network.admins.clone(),
        }
    }

    /// Take the terms the network set for the device (a heartbeat's answer). Its own terms
    /// stay as its config wrote them, whatever the answer says of them.
    fn set_network_terms(&self, answer: TermsLayers) {
        let mut network = self.network_terms.write().expect("terms lock");
        if network.owner != answer.owner || network.admins != answer.admins {
            tracing::info!(owner = %answer.owner, admins = %answer.admins, "the network's terms for this device");
            network.owner = answer.owner;
            network.admins = answer.admins;
            let layers = TermsLayers {
                device: self.terms.clone(),
                owner: network.owner.clone(),
                admins: network.admins.clone(),
            };
            self.executor.set_job_memory_ceiling(
                layers
                    .memory_mb()
                    .map(|mb| usize::try_from(mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX)),
            );
        }
    }

    /// Whether the terms (the device's own and its network's) let it take the job `ticket`
    /// is for, now.
    fn terms_admit(&self, ticket: &JobTicket, now_ms: u64) -> Result<(), TermsRefusal> {
        let busy = f64::from_bits(self.others_busy.load(Ordering::Relaxed));
        self.terms_layers().admits(&TermsQuery {
            workload: &ticket.workload,
            workload_name: ticket.workload_name.as_deref(),
            publisher: ticket.publisher.as_ref(),
            requester: &ticket.requester,
            requester_role: ticket.requester_role,
            now_ms: i64::try_from(now_ms).unwrap_or(i64::MAX),
            others_busy_percent: (!busy.is_nan()).then_some(busy),
            running: self.running.load(Ordering::SeqCst) + self.queued.load(Ordering::SeqCst),
        })
    }

    /// Check a requester's certificate: issued by the control plane to `peer` in this network
    /// and unexpired. The same certificate from the same peer is checked once, until it
    /// expires.
    fn check_requester_cert(
        &self,
        cert: &Signed<DeviceCert>,
        peer: &PeerId,
        now: u64,
    ) -> Result<(), mesh_net::verify::VerifyError> {
        let hash = cert.hash();
        let known = self
            .checked_certs
            .lock()
            .expect("cert cache lock")
            .get(peer)
            .copied();
        if known.is_some_and(|(h, expires)| h == hash && now < expires) {
            return Ok(());
        }
        let checked = mesh_net::verify::device_cert(
            cert,
            &self.control_plane,
            Some(&self.network),
            Some(peer),
            now,
        )?;
        let mut certs = self.checked_certs.lock().expect("cert cache lock");
        if certs.len() >= CERT_CACHE_ENTRIES {
            certs.retain(|_, (_, expires)| now < *expires);
            if certs.len() >= CERT_CACHE_ENTRIES {
                certs.clear();
            }
        }
        certs.insert(*peer, (hash, checked.expires_at_ms));
        Ok(())
    }

    /// A piece of a stored component, for the executor a valid ticket names.
    fn serve_blob(&self, peer: &PeerId, request: &BlobRequest) -> BlobResponse {
        let claims = match request.ticket.peek() {
            Ok(c) => c,
            Err(_) => return BlobResponse::Refused("unreadable ticket".into()),
        };
        let requester = claims.requester_peer.parse().unwrap_or(*peer);
        if let Err(e) = mesh_net::verify::job_ticket(
            &request.ticket,
            &self.control_plane,
            &self.network,
            peer,
            &requester,
            mesh_net::verify::now_ms(),
        ) {
            return BlobResponse::Refused(format!("invalid ticket: {e}"));
        }
        if claims.workload != request.hash {
            // Models are no secret: any executor holding a ticket may fetch one this host has.
            let models = self.executor.models();
            return match models.by_hash(&request.hash) {
                Some(entry) if models.has_file(entry) => {
                    let length = (request.length as usize).min(MAX_BLOB_CHUNK_BYTES);
                    match models.read_range(entry, request.offset, length) {
                        Ok((total, data)) => BlobResponse::Chunk {
                            total,
                            offset: request.offset,
                            data,
                        },
                        Err(e) => BlobResponse::Refused(e.to_string()),
                    }
                }
                Some(_) => BlobResponse::NotFound,
                None => BlobResponse::Refused("the ticket does not cover this blob".into()),
            };
        }
        if !self.executor.has_component(&request.hash) {
            return BlobResponse::NotFound;
        }
        match self.executor.component_bytes(&request.hash) {
            Ok(bytes) => mesh_net::blob_chunk(&bytes, request.offset, request.length),
            Err(e) => BlobResponse::Refused(e.to_string()),
        }
    }

    /// Make sure the component is stored and verified here: from the requester over
    /// `/mesh/blob/1` (resuming a partial transfer), else from the control plane.
    async fn ensure_component(&self, job: &Queued) -> Result<(), String> {
        let hash = job.ticket.workload;
        if self.executor.is_prepared(&hash) || self.executor.has_component(&hash) {
            return Ok(());
        }
        let fetched = self
            .fetch_blob(
                job.peer,
                &job.signed_ticket,
                &hash,
                MAX_COMPONENT_BYTES as u64,
            )
            .await;
        let bytes = match fetched {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::info!(%hash, "fetching from the requester failed ({e}); asking the control plane");
                self.client
                    .download_component(&self.network, &hash)
                    .await
                    .map_err(|e| format!("downloading {hash}: {e}"))?
            }
        };
        let executor = self.executor.clone();
        let stored = tokio::task::spawn_blocking({
            let span = tracing::Span::current();
            move || span.in_scope(|| executor.store_component(&bytes))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        if stored != hash {
            return Err(format!("stored component hashes to {stored}, not {hash}"));
        }
        Ok(())
    }

    /// When terms admit workloads by name, the name the ticket gives must be the one the
    /// component itself declares: the ticket is the control plane's word, the component is
    /// what runs. (Hash rules need no such check; publisher rules rest on the registry.)
    async fn check_workload_name(&self, job: &Queued) -> Result<(), TermsRefusal> {
        let by_name = self.terms_layers().each().iter().any(|(_, t)| {
            t.workloads
                .iter()
                .any(|r| matches!(r, mesh_proto::terms::WorkloadRule::Name(_)))
        });
        let Some(claimed) = job.ticket.workload_name.clone().filter(|_| by_name) else {
            return Ok(());
        };
        let executor = self.executor.clone();
        let component = job.ticket.workload;
        let declared = tokio::task::spawn_blocking(move || executor.metadata(&component))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|m| m.name);
        if declared.as_deref() == Some(claimed.as_str()) {
            Ok(())
        } else {
            tracing::warn!(
                claimed, declared = ?declared,
                "the ticket names another workload than the component declares"
            );
            Err(TermsRefusal::Workload)
        }
    }

    /// Make sure the models the job's component needs on this backend are here: the
    /// manifest pins them by hash, and missing files come from the requester over
    /// `/mesh/blob/1` (resuming a partial transfer), verified before they are stored.
    async fn ensure_models(&self, job: &Queued) -> Result<(), String> {
        if self.executor.is_prepared(&job.ticket.workload) {
            return Ok(());
        }
        let _one_at_a_time = self.fetching_models.lock().await;
        let executor = self.executor.clone();
        let component = job.ticket.workload;
        let missing = tokio::task::spawn_blocking({
            let span = tracing::Span::current();
            move || span.in_scope(|| executor.missing_models(&component))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        for entry in missing {
            let started = Instant::now();
            tracing::info!(model = %entry.hash, name = %entry.name, variant = %entry.variant, "fetching a model from the requester");
            let cap = if entry.size > 0 {
                entry.size
            } else {
                MAX_MODEL_BYTES
            };
            let bytes = self
                .fetch_blob(job.peer, &job.signed_ticket, &entry.hash, cap)
                .await
                .map_err(|e| format!("model {} ({}): {e}", entry.name, entry.hash))?;
            let size = bytes.len();
            let executor = self.executor.clone();
            let model = entry.clone();
            tokio::task::spawn_blocking({
                let span = tracing::Span::current();
                move || span.in_scope(|| executor.models().install(&model, &bytes))
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
            tracing::info!(
                model = %entry.hash,
                bytes = size,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "fetched model"
            );
        }
        Ok(())
    }

    /// A blob of at most `max_bytes` from `peer`, in chunks, resuming what an earlier
    /// attempt saved, checked against `hash`.
    async fn fetch_blob(
        &self,
        peer: PeerId,
        ticket: &Signed<JobTicket>,
        hash: &Blake3Hash,
        max_bytes: u64,
    ) -> Result<Vec<u8>, String> {
        std::fs::create_dir_all(&self.partial_dir).map_err(|e| e.to_string())?;
        let path = self.partial_dir.join(format!("{}.part", hash.to_hex()));
        let mut have = std::fs::read(&path).unwrap_or_default();
        loop {
            let answer = self
                .node
                .request_blob(
                    peer,
                    BlobRequest {
                        ticket: ticket.clone(),
                        hash: *hash,
                        offset: have.len() as u64,
                        length: MAX_BLOB_CHUNK_BYTES as u32,
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
            match answer {
                BlobResponse::Chunk {
                    total,
                    offset,
                    data,
                } => {
                    if offset != have.len() as u64
                        || total > max_bytes
                        || (data.is_empty() && offset < total)
                        || offset + data.len() as u64 > total
                    {
                        return Err(format!(
                            "bad chunk: offset {offset}, {} bytes, total {total}",
                            data.len()
                        ));
                    }
                    have.extend_from_slice(&data);
                    if let Err(e) = append(&path, &data) {
                        tracing::debug!("saving a partial transfer: {e}");
                    }
                    if have.len() as u64 == total {
                        break;
                    }
                }
                BlobResponse::NotFound => {
                    let _ = std::fs::remove_file(&path);
                    return Err("the requester does not have it".into());
                }
                BlobResponse::Refused(reason) => return Err(reason),
            }
        }
        let _ = std::fs::remove_file(&path);
        let actual = Blake3Hash::of(&have);
        if actual != *hash {
            return Err(format!("wrong blake3: expected {hash}, got {actual}"));
        }
        Ok(have)
    }

    /// Run one queued job and answer it.
    async fn process(self: &Arc<Self>, job: Queued) {
        let id = job.ticket.job;
        let Some(cancel) = self.cancel_token(&id) else {
            return;
        };
        let gone = job.reply.is_closed() && !self.has_waiters(&id);
        if cancel.is_cancelled() || gone {
            let (reason, retryable) = if cancel.is_cancelled() {
                ("cancelled by its requester before it started", false)
            } else {
                ("the requester went away before the job started", true)
            };
            tracing::info!(%id, "{reason}");
            self.seen.lock().expect("seen lock").remove(&id);
            self.report_failure(id, reason, retryable).await;
            return;
        }
        let ready = match self.ensure_component(&job).await {
            Ok(()) => self.ensure_models(&job).await,
            Err(e) => Err(e),
        };
        if let Err(reason) = ready {
            let refusal = JobRefusal::ComponentUnavailable(reason.clone());
            self.finish(id, job.reply, JobResponse::Refused(refusal));
            self.report_failure(id, &reason, true).await;
            return;
        }
        if let Err(refusal) = self.check_workload_name(&job).await {
            let reason = refusal.to_string();
            tracing::warn!(%id, "refused: {reason}");
            self.finish(
                id,
                job.reply,
                JobResponse::Refused(JobRefusal::Terms(refusal)),
            );
            self.report_failure(id, &reason, true).await;
            return;
        }
        // Tell the control plane the job runs (state `running`, lease renewed) only once it
        // has run for a while: the ticket, signed by the control plane and naming this device
        // until its lease ends, is the authorisation, settlement only pays the executor of
        // record, and a short job goes from `assigned` to `done` with one report instead of
        // two (so the control plane, and the CPU this job shares with it, do half the work).
        let executor = self.executor.clone();
        let component = job.ticket.workload;
        let input = job.input;
        let started = Instant::now();
        let renew =
            {
                let agent = self.clone();
                tokio::spawn(async move {
                tokio::time::sleep(START_REPORT_DELAY).await;
                // Renew at a third of the lease the control plane granted.
                let renewal = match agent.client.start_job(&id).await {
                    Ok(info) => info
                        .lease_expires_at_ms
                        .map_or(DEFAULT_LEASE_RENEWAL, |until| {
                            let left = until
                                .saturating_sub(mesh_net::verify::now_ms() as i64)
                                .max(0);
                            Duration::from_millis(left as u64 / 3).max(Duration::from_millis(500))
                        }),
                    Err(e) => {
                        tracing::warn!(%id, "the control plane did not take the start: {e}");
                        DEFAULT_LEASE_RENEWAL
                    }
                };
                loop {
                    tokio::time::sleep(renewal).await;
                    if let Err(e) = agent.client.start_job(&id).await {
                        tracing::debug!(%id, "renewing the lease: {e}");
                    }
                }
            }.in_current_span())
            };
        let token = cancel.clone();
        // What the workload streams goes to the requester as it comes, one piece in flight.
        let (sink, forwarder) = if job.stream {
            let (pieces, taken) = mpsc::unbounded_channel();
            let sink: crate::PieceSink = Box::new(move |piece| {
                let _ = pieces.send(piece);
            });
            let forwarder = tokio::spawn(
                forward_pieces(self.node.clone(), job.peer, id, taken).in_current_span(),
            );
            (Some(sink), Some(forwarder))
        } else {
            (None, None)
        };
        let mut run = tokio::task::spawn_blocking({
            let span = tracing::Span::current();
            move || span.in_scope(|| executor.run_streaming(&component, &input, &token, sink))
        });
        let mut reply = job.reply;
        // A requester that goes away (its connection closed, its request timed out) cancels
        // the job, unless it already asked again and waits for the same answer.
        let finished = loop {
            tokio::select! {
                finished = &mut run => break finished,
                _ = reply.closed(), if !cancel.is_cancelled() => {
                    // A requester whose connection was replaced asks again at once.
                    tokio::select! {
                        finished = &mut run => break finished,
                        _ = tokio::time::sleep(REASK_GRACE) => {}
                    }
                    if self.has_waiters(&id) {
                        break (&mut run).await;
                    }
                    tracing::info!(%id, "the requester went away: cancelling the job");
                    cancel.cancel();
                }
            }
        };
        renew.abort();
        // The answer goes after the last piece, so the requester has them all before it.
        if let Some(forwarder) = forwarder {
            let _ = forwarder.await;
        }
        self.answer(id, reply, job.signed_ticket, finished, started)
            .await;
    }

    /// The cancel flag of a queued or running job.
    fn cancel_token(&self, id: &JobId) -> Option<CancelToken> {
        match self.seen.lock().expect("seen lock").get(id) {
            Some(Seen::Running { cancel, .. }) => Some(cancel.clone()),
            _ => None,
        }
    }

    /// Whether the requester of a running job asked again and waits for its answer.
    fn has_waiters(&self, id: &JobId) -> bool {
        matches!(
            self.seen.lock().expect("seen lock").get(id),
            Some(Seen::Running { waiters, .. }) if !waiters.is_empty()
        )
    }

    /// Cancel a queued or running job at its requester's request.
    fn cancel(&self, peer: &PeerId, job: &JobId) -> CancelResponse {
        match self.seen.lock().expect("seen lock").get(job) {
            Some(Seen::Running {
                requester, cancel, ..
            }) if requester == peer => {
                tracing::info!(%job, "cancelled by its requester");
                cancel.cancel();
                CancelResponse::Cancelled
            }
            Some(Seen::Running { .. }) => CancelResponse::NotAuthorized,
            _ => CancelResponse::Unknown,
        }
    }

    /// Answer a finished run: sign the receipt, answer (and whoever asked again), report it.
    async fn answer(
        self: &Arc<Self>,
        id: JobId,
        reply: oneshot::Sender<JobResponse>,
        signed_ticket: Signed<JobTicket>,
        finished: Result<Result<crate::RunOutput, ExecError>, tokio::task::JoinError>,
        started: Instant,
    ) {
        let result = finished;
        let handed_back = self.handed_back.lock().expect("handed back").remove(&id);
        let result = match result {
            Ok(Ok(run)) => Ok(run),
            Ok(Err(ExecError::Cancelled)) if handed_back => Err((
                ("owner_busy", true),
                "handed back: this device's owner is using it".to_string(),
            )),
            Ok(Err(e)) => Err((classify(&e), e.to_string())),
            Err(e) => Err((("internal", true), format!("the executor task failed: {e}"))),
        };
        #[cfg(feature = "fault-injection")]
        if let Some(delay) = self.fault.as_ref().and_then(|f| f.delay()) {
            tokio::time::sleep(delay).await;
        }
        #[cfg(feature = "fault-injection")]
        let result = match (&self.fault, result) {
            (Some(fault), Ok(run)) => {
                Ok(fault.tamper(run, self.executor.models(), self.executor.backend()))
            }
            (_, result) => result,
        };
        match result {
            Ok(run) => {
                let mut receipt = run.receipt;
                receipt.job = Some(id);
                receipt.ticket = Some(signed_ticket.hash());
                let signed =
                    match Signed::sign(&receipt, &self.key, SignDomain::Receipt, &self.network) {
                        Ok(s) => s,
                        Err(e) => {
                            let refusal = JobRefusal::Failed {
                                kind: "internal".into(),
                                message: e.to_string(),
                                retryable: true,
                            };
                            self.finish(id, reply, JobResponse::Refused(refusal));
                            return;
                        }
                    };
                let response = JobResponse::Done {
                    output: run.output,
                    receipt: signed.clone(),
                };
                tracing::info!(%id, elapsed_ms = started.elapsed().as_millis() as u64, "job done");
                self.finish(id, reply, response);
                self.unreported.fetch_add(1, Ordering::SeqCst);
                if self.receipts.send((id, signed)).await.is_err() {
                    self.unreported.fetch_sub(1, Ordering::SeqCst);
                }
            }
            Err(((kind, retryable), message)) => {
                tracing::info!(%id, "job failed: {message}");
                let refusal = JobRefusal::Failed {
                    kind: kind.into(),
                    message: message.clone(),
                    retryable,
                };
                self.finish(id, reply, JobResponse::Refused(refusal));
                self.report_failure(id, &message, retryable).await;
            }
        }
    }

    /// Answer a job (and whoever asked again while it ran); keep a `Done` answer for a
    /// requester that asks once more.
    fn finish(&self, id: JobId, reply: oneshot::Sender<JobResponse>, response: JobResponse) {
        let waiters = {
            let mut seen = self.seen.lock().expect("seen lock");
            let waiters = match seen.remove(&id) {
                Some(Seen::Running { waiters, .. }) => waiters,
                _ => Vec::new(),
            };
            if matches!(response, JobResponse::Done { .. }) {
                seen.insert(id, Seen::Done(Box::new(response.clone()), Instant::now()));
                if seen.len() > ANSWER_CACHE_ENTRIES {
                    let oldest = seen
                        .iter()
                        .filter_map(|(k, s)| match s {
                            Seen::Done(_, at) => Some((*k, *at)),
                            Seen::Running { .. } => None,
                        })
                        .min_by_key(|(_, at)| *at)
                        .map(|(k, _)| k);
                    if let Some(k) = oldest {
                        seen.remove(&k);
                    }
                }
            }
            waiters
        };
        for waiter in waiters {
            let _ = waiter.send(response.clone());
        }
        let _ = reply.send(response);
    }

    /// Report the receipt; retried while the control plane is unreachable.
    async fn report_done(&self, id: JobId, receipt: Signed<mesh_proto::RunReceipt>) {
        let mut backoff = Backoff::new();
        for _ in 0..12 {
            match self
                .client
                .complete_job(
                    &id,
                    &CompleteJobRequest {
                        receipt: receipt.clone(),
                    },
                )
                .await
            {
                Ok(_) => return,
                // Already settled (the requester reported first) or no longer ours.
                Err(ClientError::Api { code, message, .. }) => {
                    tracing::debug!(%id, "complete: {code}: {message}");
                    return;
                }
                Err(e) => {
                    tracing::warn!(%id, "reporting the receipt failed (retrying): {e}");
                    backoff.wait().await;
                }
            }
        }
    }

    async fn report_failure(&self, id: JobId, reason: &str, retryable: bool) {
        let request = FailJobRequest {
            reason: reason.chars().take(1000).collect(),
            retryable,
            executor_peer: None,
        };
        if let Err(e) = self.client.fail_job(&id, &request).await {
            tracing::debug!(%id, "reporting the failure: {e}");
        }
    }
}

/// The refusal class of an execution error, and whether another device might succeed.
fn classify(e: &ExecError) -> (&'static str, bool) {
    match e {
        ExecError::Backend(_) | ExecError::Model(_) | ExecError::Store(_) => ("internal", true),
        ExecError::Timeout(_) | ExecError::InferenceTimeout | ExecError::ResourceLimit(_) => {
            ("limit", false)
        }
        ExecError::Cancelled => ("cancelled", false),
        ExecError::Inference(_) => ("inference", true),
        _ => ("workload", false),
    }
}

fn append(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(data)
}

/// Report receipts in the order jobs finished, one call at a time, each [`REPORT_DELAY`]
/// after the first of its batch finished. The requester reports the receipt too (the gateway
/// settles the moment it has it), so this report is the executor's own claim to payment, and
/// it need not race the next job's answer for the CPU.
async fn report_receipts(
    agent: Arc<Agent>,
    mut receipts: mpsc::Receiver<(JobId, Signed<mesh_proto::RunReceipt>)>,
) {
    while let Some(first) = receipts.recv().await {
        tokio::time::sleep(REPORT_DELAY).await;
        let mut batch = vec![first];
        while let Ok(next) = receipts.try_recv() {
            batch.push(next);
        }
        for (id, receipt) in batch {
            agent.report_done(id, receipt).await;
            agent.unreported.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Send what a job streams to its requester, in order, one piece in flight: what the job
/// emits meanwhile goes out coalesced in the next piece (up to the piece cap), so a slow
/// path gets fewer, larger pieces instead of a queue. Ends when the job's sink is dropped;
/// a requester that refuses a piece or cannot be reached gets no more (the answer still
/// carries the whole output).
async fn forward_pieces(
    node: Node,
    requester: PeerId,
    job: JobId,
    mut taken: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    use mesh_proto::p2p::{PieceRequest, PieceResponse};
    use mesh_proto::workload::MAX_PIECE_BYTES;
    let mut seq = 0;
    let mut next: Option<Vec<u8>> = None;
    loop {
        let mut bytes = match next.take() {
            Some(bytes) => bytes,
            None => match taken.recv().await {
                Some(bytes) => bytes,
                None => return,
            },
        };
        while let Ok(more) = taken.try_recv() {
            if bytes.len() + more.len() > MAX_PIECE_BYTES {
                next = Some(more);
                break;
            }
            bytes.extend_from_slice(&more);
        }
        match node
            .send_piece(requester, PieceRequest { job, seq, bytes })
            .await
        {
            Ok(PieceResponse::Taken) => seq += 1,
            other => {
                tracing::info!(%job, "the requester takes no more pieces: {other:?}");
                // Drain until the job ends, so its sink never blocks or grows unread.
                while taken.recv().await.is_some() {}
                return;
            }
        }
    }
}

async fn worker(agent: Arc<Agent>, queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Queued>>>) {
    loop {
        let next = queue.lock().await.recv().await;
        let Some(job) = next else { return };
        agent.queued.fetch_sub(1, Ordering::SeqCst);
        agent.running.fetch_add(1, Ordering::SeqCst);
        agent.process(job).await;
        agent.running.fetch_sub(1, Ordering::SeqCst);
    }
}

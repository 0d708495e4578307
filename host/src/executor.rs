//! The sandboxed workload executor.
//!
//! A job runs in a fresh component instance (pooling allocator, so instantiation is cheap)
//! created from a cached `InstancePre`. The store gets WASI with no preopened directories, no
//! environment and no network, `wasi:nn` bound to exactly the models the workload declares,
//! and every limit in [`Limits`]: an epoch deadline for wall time, a resource limiter for
//! memory and tables, a stack limit, the inference budget for time inside native inference,
//! and caps on input and output bytes.

use crate::backend::{
    self, BackendConfig, BackendKind, CancelToken, InferenceBackend, InferenceBudget,
    InferenceError, LoadedModel,
};
use crate::components::{CompiledCache, ComponentStore, StoreError};
use crate::limits::{Limits, MAX_COMPONENT_BYTES, MAX_STDERR_BYTES};
use crate::models::{ModelEntry, ModelError, ModelStore};
use mesh_proto::{Blake3Hash, ModelBinding, RunReceipt, RunTimings, WorkloadMetadata};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use wasmtime::StoreContextMut;
use wasmtime::component::{Component, InstancePre, Linker, Resource, ResourceTable, WasmList};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    Trap, UpdateDeadline,
};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_nn::wit::{WasiNnCtx, WasiNnView};
use wasmtime_wasi_nn::{Graph, GraphRegistry, Registry};

pub use mesh_world::JobError;

/// How often the epoch advances; the granularity of the wall-time deadline.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Loads measured by [`Executor::cold_start`].
const COLD_START_SAMPLES: usize = 21;
/// Time allowed for a component's `metadata` export when it is first prepared.
const METADATA_TIME: Duration = Duration::from_secs(5);

/// Why a job did not produce an output.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// The input exceeds [`Limits::input_bytes`].
    #[error("input of {size} bytes exceeds the limit of {limit} bytes")]
    InputTooLarge {
        /// Input size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The output exceeds [`Limits::output_bytes`]; it was never copied out of the guest.
    #[error("output of {size} bytes exceeds the limit of {limit} bytes")]
    OutputTooLarge {
        /// Output size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The component could not be stored or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bytes are not a valid component for this host.
    #[error("invalid component: {0}")]
    InvalidComponent(String),
    /// The component imports something the Mesh world does not offer.
    #[error("component imports {0}, which Mesh workloads may not use")]
    ForbiddenImport(String),
    /// The component lacks an export of the Mesh world.
    #[error("component is not a Mesh workload: {0}")]
    NotAWorkload(String),
    /// A model the workload declares is not available.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The inference backend failed to load a model.
    #[error(transparent)]
    Backend(#[from] backend::BackendError),
    /// The job ran past its wall-time deadline.
    #[error("job exceeded its time limit of {0:?}")]
    Timeout(Duration),
    /// Native inference ran past its bound.
    #[error("inference exceeded its time limit")]
    InferenceTimeout,
    /// The job was cancelled (its requester cancelled it or went away).
    #[error("the job was cancelled")]
    Cancelled,
    /// The host refused or failed an inference call (the workload then gave up).
    #[error(transparent)]
    Inference(InferenceError),
    /// The workload tried to grow memory or a table beyond its limit.
    #[error("workload exceeded its {0}")]
    ResourceLimit(String),
    /// The workload overflowed its stack.
    #[error("workload overflowed its stack (limit {0} bytes)")]
    StackOverflow(usize),
    /// The workload trapped.
    #[error("workload trapped: {0}")]
    Trap(String),
    /// The workload returned an error of its own.
    #[error("workload error: {0}")]
    Workload(WorkloadError),
}

/// An error the workload itself reported (its `job-error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WorkloadError {
    /// The input was malformed.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Inference failed.
    #[error("inference failed: {0}")]
    Inference(String),
    /// Anything else.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<JobError> for WorkloadError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::InvalidInput(m) => WorkloadError::InvalidInput(m),
            JobError::Inference(m) => WorkloadError::Inference(m),
            JobError::Internal(m) => WorkloadError::Internal(m),
        }
    }
}

/// A limit the resource limiter enforced; carried as the trap's error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct LimitExceeded(String);

/// Configuration of an [`Executor`].
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Resource limits of every job.
    pub limits: Limits,
    /// The inference backend; `None` picks the first available of onnxruntime, openvino, tract.
    pub backend: Option<BackendKind>,
    /// Native library locations and inference threads.
    pub backend_config: BackendConfig,
    /// Model variant to bind (`fp32` or `int8`).
    pub model_variant: String,
    /// Directory of the model store.
    pub model_dir: PathBuf,
    /// Directory for stored components and compiled artifacts.
    pub data_dir: PathBuf,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            limits: Limits::default(),
            backend: None,
            backend_config: BackendConfig::default(),
            model_variant: "fp32".into(),
            model_dir: ModelStore::default_dir(),
            data_dir: crate::cache_dir().join("host"),
        }
    }
}

/// A successful run.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// The workload's output bytes.
    pub output: Vec<u8>,
    /// What ran, pinned by hash.
    pub receipt: RunReceipt,
    /// Up to [`MAX_STDERR_BYTES`] of what the workload wrote to stderr.
    pub stderr: Vec<u8>,
}

/// Cold-start costs of a component (see [`Executor::cold_start`]).
#[derive(Debug, Clone, Copy)]
pub struct ColdStart {
    /// Compiling the component to native code.
    pub compile: Duration,
    /// Reading the cached native code and checking its MAC (median).
    pub authenticate: Duration,
    /// Deserializing the authenticated native code (median).
    pub deserialize: Duration,
}

/// A component compiled, checked and ready to instantiate.
struct Prepared {
    pre: InstancePre<JobState>,
    metadata: WorkloadMetadata,
    /// Models bound by name for this component on this device.
    models: Vec<BoundModel>,
}

/// A model a component loads by `name`, as this device prepared it.
struct BoundModel {
    name: String,
    entry: ModelEntry,
    loaded: Arc<dyn LoadedModel>,
}

/// Per-job store data.
struct JobState {
    wasi: WasiCtx,
    table: ResourceTable,
    nn: WasiNnCtx,
    limiter: JobLimiter,
    /// Zero of the job's monotonic clock.
    started: Instant,
    /// When the job's time is up: no sleep of the guest outlasts it.
    deadline: Instant,
    /// The job's cancellation, which also ends the guest's sleeps.
    cancel: CancelToken,
    /// Where the pieces the guest emits go.
    output: StreamedOutput,
}

/// Receives, in order, the pieces of partial output a running job emits
/// (`mesh:workload/output.emit`), on the thread that runs the job.
pub type PieceSink = Box<dyn FnMut(Vec<u8>) + Send>;

/// A job's streamed output: its sink (none when nobody asked to stream) and what it sent.
#[derive(Default)]
struct StreamedOutput {
    sink: Option<PieceSink>,
    bytes: usize,
}

impl StreamedOutput {
    /// Take one piece the guest emitted, within the caps.
    fn emit(&mut self, piece: Vec<u8>) -> wasmtime::Result<()> {
        use mesh_proto::p2p::MAX_STREAMED_BYTES;
        use mesh_proto::workload::MAX_PIECE_BYTES;
        if piece.len() > MAX_PIECE_BYTES {
            return Err(wasmtime::Error::new(LimitExceeded(format!(
                "a streamed piece of {} bytes is over the {MAX_PIECE_BYTES}-byte cap",
                piece.len()
            ))));
        }
        self.bytes += piece.len();
        if self.bytes > MAX_STREAMED_BYTES {
            return Err(wasmtime::Error::new(LimitExceeded(format!(
                "the job streamed over {MAX_STREAMED_BYTES} bytes"
            ))));
        }
        if let Some(sink) = &mut self.sink
            && !piece.is_empty()
        {
            sink(piece);
        }
        Ok(())
    }
}

/// Link `mesh:workload/output`: a guest's pieces go to its job's [`StreamedOutput`].
fn link_output(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    linker
        .instance(mesh_proto::workload::OUTPUT_INTERFACE)?
        .func_wrap(
            "emit",
            |mut store: StoreContextMut<'_, JobState>, (piece,): (Vec<u8>,)| {
                store.data_mut().output.emit(piece)
            },
        )?;
    Ok(())
}

/// The `wasi:clocks` monotonic clock wasmtime-wasi links (its version of WASI 0.2); the
/// executor replaces its functions, see [`bound_guest_sleeps`].
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// A guest's sleep, ending at its wake-up time, the job's deadline or its cancellation,
/// whichever comes first.
struct BoundedSleep {
    until: Instant,
    cancel: CancelToken,
}

#[async_trait::async_trait]
impl wasmtime_wasi::p2::Pollable for BoundedSleep {
    async fn ready(&mut self) {
        loop {
            let now = Instant::now();
            if self.cancel.is_cancelled() || now >= self.until {
                return;
            }
            tokio::time::sleep((self.until - now).min(backend::CANCEL_POLL)).await;
        }
    }
}

/// Replace the monotonic clock's `now` and its subscriptions with versions bound to the
/// job. A guest blocked in `wasi:io/poll` waits inside the host, where epochs cannot
/// interrupt it, so its sleeps end at the job's deadline (the epoch check then stops it) or
/// its cancellation; `now` counts from the job's start.
fn bound_guest_sleeps(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    fn sleep(
        state: &mut JobState,
        duration: Duration,
    ) -> wasmtime::Result<(Resource<DynPollable>,)> {
        let until = Instant::now()
            .checked_add(duration)
            .map_or(state.deadline, |t| t.min(state.deadline));
        let sleep = state.table.push(BoundedSleep {
            until,
            cancel: state.cancel.clone(),
        })?;
        Ok((wasmtime_wasi::p2::subscribe(&mut state.table, sleep)?,))
    }
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap("now", |store: StoreContextMut<'_, JobState>, (): ()| {
        Ok((store.data().started.elapsed().as_nanos() as u64,))
    })?;
    clock.func_wrap(
        "subscribe-duration",
        |mut store: StoreContextMut<'_, JobState>, (nanos,): (u64,)| {
            sleep(store.data_mut(), Duration::from_nanos(nanos))
        },
    )?;
    clock.func_wrap(
        "subscribe-instant",
        |mut store: StoreContextMut<'_, JobState>, (when,): (u64,)| {
            let state = store.data_mut();
            let now = state.started.elapsed().as_nanos() as u64;
            sleep(state, Duration::from_nanos(when.saturating_sub(now)))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

impl WasiView for JobState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

struct JobLimiter {
    memory_bytes: usize,
    table_elements: usize,
}

impl ResourceLimiter for JobLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            return Err(
                LimitExceeded(format!("memory limit of {} bytes", self.memory_bytes)).into(),
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            return Err(
                LimitExceeded(format!("table limit of {} elements", self.table_elements)).into(),
            );
        }
        Ok(true)
    }
}

/// `wasi:nn` graphs of one job, by the names the workload declared.
struct JobRegistry(HashMap<String, Graph>);

impl GraphRegistry for JobRegistry {
    fn get(&self, name: &str) -> Option<&Graph> {
        self.0.get(name)
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut Graph> {
        self.0.get_mut(name)
    }
}

/// A counting semaphore bounding concurrent instances.
struct Slots {
    free: Mutex<usize>,
    released: Condvar,
}

impl Slots {
    fn acquire(&self) -> SlotGuard<'_> {
        let mut free = self.free.lock().expect("slots lock");
        while *free == 0 {
            free = self.released.wait(free).expect("slots lock");
        }
        *free -= 1;
        SlotGuard(self)
    }
}

struct SlotGuard<'a>(&'a Slots);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().expect("slots lock") += 1;
        self.0.released.notify_one();
    }
}

/// Runs Mesh workload components; shareable across threads.
pub struct Executor {
    engine: Engine,
    linker: Linker<JobState>,
    limits: Limits,
    components: ComponentStore,
    compiled: CompiledCache,
    models: ModelStore,
    model_variant: String,
    backend: Arc<dyn InferenceBackend>,
    prepared: Mutex<HashMap<Blake3Hash, Arc<Prepared>>>,
    loaded_models: Mutex<HashMap<Blake3Hash, Arc<dyn LoadedModel>>>,
    slots: Slots,
    /// Memory a job may use from now on: at most `limits.memory_bytes`, lower while the
    /// device's terms in its network say so.
    job_memory_bytes: std::sync::atomic::AtomicUsize,
    /// Threads inference runs on (the language-model engine's pool).
    inference_threads: usize,
}

impl Executor {
    /// Build an executor: engine, linker, stores, and the inference backend.
    pub fn new(config: ExecutorConfig) -> Result<Self, ExecError> {
        let limits = config.limits;
        let backend = match config.backend {
            Some(kind) => backend::create(kind, &config.backend_config)?,
            None => {
                let mut errors = Vec::new();
                let found = BackendKind::ALL.into_iter().find_map(|kind| {
                    backend::create(kind, &config.backend_config)
                        .map_err(|e| errors.push(e.to_string()))
                        .ok()
                });
                found.ok_or_else(|| backend::BackendError::NoneAvailable(errors.join("; ")))?
            }
        };
        let engine = make_engine(&limits)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| ExecError::InvalidComponent(e.to_string()))?;
        bound_guest_sleeps(&mut linker)
            .map_err(|e| ExecError::InvalidComponent(format!("binding the clock: {e:#}")))?;
        wasmtime_wasi_nn::wit::add_to_linker(&mut linker, |s: &mut JobState| {
            WasiNnView::new(&mut s.table, &mut s.nn)
        })
        .map_err(|e| ExecError::InvalidComponent(e.to_string()))?;
        linker
            .instance(mesh_proto::workload::TYPES_INTERFACE)
            .map_err(|e| ExecError::InvalidComponent(e.to_string()))?;
        link_output(&mut linker)
            .map_err(|e| ExecError::InvalidComponent(format!("linking output: {e:#}")))?;
        let fingerprint = engine_fingerprint(&engine);
        let components = ComponentStore::open(&config.data_dir.join("components"))?;
        let compiled = CompiledCache::open(&config.data_dir.join("compiled"), fingerprint)?;
        let models = ModelStore::open(&config.model_dir)?;
        start_epoch_ticker(&engine);
        Ok(Executor {
            engine,
            linker,
            limits,
            components,
            compiled,
            models,
            model_variant: config.model_variant,
            backend,
            prepared: Mutex::new(HashMap::new()),
            loaded_models: Mutex::new(HashMap::new()),
            slots: Slots {
                free: Mutex::new(limits.concurrent_instances.max(1)),
                released: Condvar::new(),
            },
            job_memory_bytes: std::sync::atomic::AtomicUsize::new(limits.memory_bytes),
            inference_threads: config.backend_config.effective_threads(),
        })
    }

    /// Lower the memory jobs that start from now on may use to `ceiling` bytes (never above
    /// the executor's limit); `None` goes back to the limit.
    pub fn set_job_memory_ceiling(&self, ceiling: Option<usize>) {
        let bytes = ceiling.map_or(self.limits.memory_bytes, |c| {
            c.min(self.limits.memory_bytes)
        });
        self.job_memory_bytes
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// The memory a job that starts now may use, in bytes.
    pub fn job_memory_bytes(&self) -> usize {
        self.job_memory_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The inference backend in use.
    pub fn backend(&self) -> BackendKind {
        self.backend.kind()
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether the component is in this host's store.
    pub fn has_component(&self, hash: &Blake3Hash) -> bool {
        self.components.contains(hash)
    }

    /// A stored component's bytes, verified against its hash.
    pub fn component_bytes(&self, hash: &Blake3Hash) -> Result<Vec<u8>, ExecError> {
        Ok(self.components.get(hash)?)
    }

    /// Store a component and prepare it (validate, compile, bind models); returns its metadata.
    pub fn add_component(&self, bytes: &[u8]) -> Result<WorkloadMetadata, ExecError> {
        let hash = self.store_component(bytes)?;
        Ok(self.prepare(&hash)?.metadata.clone())
    }

    /// Store a component without preparing it (its models may still have to be fetched);
    /// returns its hash.
    pub fn store_component(&self, bytes: &[u8]) -> Result<Blake3Hash, ExecError> {
        if bytes.len() > MAX_COMPONENT_BYTES {
            return Err(ExecError::InvalidComponent(format!(
                "{} bytes exceeds the component size limit of {MAX_COMPONENT_BYTES}",
                bytes.len()
            )));
        }
        Ok(self.components.put(bytes)?)
    }

    /// Cold-start costs of a stored component, for benchmarks: compiling it from scratch
    /// (ignoring every cache), and deserializing this host's cached artifact.
    pub fn cold_start(&self, hash: &Blake3Hash) -> Result<ColdStart, ExecError> {
        let bytes = self.components.get(hash)?;
        let started = Instant::now();
        let component = Component::new(&self.engine, &bytes)
            .map_err(|e| ExecError::InvalidComponent(format!("{e:#}")))?;
        let compile = started.elapsed();
        if self.compiled.get(hash).is_none() {
            let artifact = component
                .serialize()
                .map_err(|e| ExecError::InvalidComponent(format!("{e:#}")))?;
            self.compiled.put(hash, &artifact)?;
        }
        // Median of several loads from the artifact cache (each a full read, MAC check and
        // deserialize), split into its two halves.
        let mut authenticate = Vec::new();
        let mut deserialize = Vec::new();
        for _ in 0..COLD_START_SAMPLES {
            let started = Instant::now();
            let artifact = self
                .compiled
                .get(hash)
                .ok_or_else(|| ExecError::InvalidComponent("artifact cache unusable".into()))?;
            authenticate.push(started.elapsed());
            let started = Instant::now();
            // SAFETY: authenticated as this host's own artifact, as in `load_component`.
            unsafe { Component::deserialize(&self.engine, artifact.bytes()) }
                .map_err(|e| ExecError::InvalidComponent(format!("{e:#}")))?;
            deserialize.push(started.elapsed());
        }
        authenticate.sort_unstable();
        deserialize.sort_unstable();
        Ok(ColdStart {
            compile,
            authenticate: authenticate[COLD_START_SAMPLES / 2],
            deserialize: deserialize[COLD_START_SAMPLES / 2],
        })
    }

    /// Whether a component is ready to run here (stored, compiled, its models loaded).
    pub fn is_prepared(&self, hash: &Blake3Hash) -> bool {
        self.prepared
            .lock()
            .expect("prepared lock")
            .contains_key(hash)
    }

    /// The model store.
    pub fn models(&self) -> &ModelStore {
        &self.models
    }

    /// The models a stored component needs on this host's backend whose files are not here
    /// yet: the manifest pins them by hash, and a peer can send them over `/mesh/blob/1`.
    pub fn missing_models(&self, hash: &Blake3Hash) -> Result<Vec<ModelEntry>, ExecError> {
        if self.is_prepared(hash) {
            return Ok(Vec::new());
        }
        let (_, metadata) = self.inspect(hash)?;
        let mut missing = Vec::new();
        for name in &metadata.models {
            let entry = self
                .models
                .select(name, &self.model_variant, self.backend.kind())?;
            if !self.models.has_file(entry) && !missing.contains(entry) {
                missing.push(entry.clone());
            }
        }
        Ok(missing)
    }

    /// Load, check and link a stored component, and read its metadata.
    fn inspect(
        &self,
        hash: &Blake3Hash,
    ) -> Result<(InstancePre<JobState>, WorkloadMetadata), ExecError> {
        let component = self.load_component(hash)?;
        check_imports(&self.engine, &component)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| ExecError::InvalidComponent(format!("{e:#}")))?;
        mesh_world::WorkloadIndices::new(&pre)
            .map_err(|e| ExecError::NotAWorkload(format!("{e:#}")))?;
        let metadata = self.read_metadata(&pre, hash)?;
        Ok((pre, metadata))
    }

    fn prepare(&self, hash: &Blake3Hash) -> Result<Arc<Prepared>, ExecError> {
        if let Some(prepared) = self.prepared.lock().expect("prepared lock").get(hash) {
            return Ok(prepared.clone());
        }
        let (pre, metadata) = self.inspect(hash)?;
        let mut models = Vec::new();
        for name in &metadata.models {
            let entry = self
                .models
                .select(name, &self.model_variant, self.backend.kind())?
                .clone();
            let loaded = self.load_model(&entry)?;
            models.push(BoundModel {
                name: name.clone(),
                entry,
                loaded,
            });
        }
        let prepared = Arc::new(Prepared {
            pre,
            metadata,
            models,
        });
        self.prepared
            .lock()
            .expect("prepared lock")
            .insert(*hash, prepared.clone());
        Ok(prepared)
    }

    /// The component from the compiled cache when this host compiled it before, else compiled
    /// from the verified bytes in the store (and cached).
    fn load_component(&self, hash: &Blake3Hash) -> Result<Component, ExecError> {
        if let Some(artifact) = self.compiled.get(hash) {
            // SAFETY: the artifact's MAC proves this host serialised it with an engine of the
            // same fingerprint; `deserialize` additionally checks engine compatibility.
            match unsafe { Component::deserialize(&self.engine, artifact.bytes()) } {
                Ok(component) => return Ok(component),
                Err(e) => tracing::warn!(%hash, "cached artifact unusable, recompiling: {e:#}"),
            }
        }
        let bytes = self.components.get(hash)?;
        let component = Component::new(&self.engine, &bytes)
            .map_err(|e| ExecError::InvalidComponent(format!("{e:#}")))?;
        match component.serialize() {
            Ok(artifact) => {
                if let Err(e) = self.compiled.put(hash, &artifact) {
                    tracing::warn!(%hash, "could not cache compiled artifact: {e}");
                }
            }
            Err(e) => tracing::warn!(%hash, "could not serialize component: {e:#}"),
        }
        Ok(component)
    }

    fn load_model(
        &self,
        entry: &crate::models::ModelEntry,
    ) -> Result<Arc<dyn LoadedModel>, ExecError> {
        let mut loaded = self.loaded_models.lock().expect("models lock");
        if let Some(model) = loaded.get(&entry.hash) {
            return Ok(model.clone());
        }
        let path = self.models.verified_path(entry)?;
        let model: Arc<dyn LoadedModel> = match entry.format {
            crate::models::ModelFormat::Onnx => self.backend.load_model_file(&path)?,
            crate::models::ModelFormat::Gguf => Arc::new(backend::llm::LlmModel::load(
                &path,
                self.inference_threads,
                self.limits.context_tokens,
                self.limits.memory_bytes,
            )?),
        };
        loaded.insert(entry.hash, model.clone());
        Ok(model)
    }

    fn new_store(
        &self,
        registry: JobRegistry,
        job_time: Duration,
        cancel: Option<CancelToken>,
        sink: Option<PieceSink>,
    ) -> (Store<JobState>, MemoryOutputPipe) {
        let stderr = MemoryOutputPipe::new(MAX_STDERR_BYTES);
        let mut wasi = WasiCtx::builder();
        wasi.stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let started = Instant::now();
        let deadline = started + job_time;
        let state = JobState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            nn: WasiNnCtx::new([], Registry::from(registry)),
            limiter: JobLimiter {
                memory_bytes: self.job_memory_bytes(),
                table_elements: self.limits.table_elements,
            },
            started,
            deadline,
            cancel: cancel.clone().unwrap_or_default(),
            output: StreamedOutput { sink, bytes: 0 },
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        let ticks = job_time.as_millis().div_ceil(EPOCH_TICK.as_millis()).max(1) as u64;
        match cancel {
            // Wake every tick to look at the cancel flag and the clock (ticks pass unseen
            // while the guest is inside the host, so count time, not ticks).
            Some(cancel) => {
                store.set_epoch_deadline(1);
                store.epoch_deadline_callback(move |_| {
                    if cancel.is_cancelled() {
                        return Err(wasmtime::Error::new(JobCancelled));
                    }
                    if Instant::now() >= deadline {
                        return Err(wasmtime::Error::new(Trap::Interrupt));
                    }
                    Ok(UpdateDeadline::Continue(1))
                });
            }
            None => {
                store.set_epoch_deadline(ticks);
                store.epoch_deadline_trap();
            }
        }
        (store, stderr)
    }

    fn read_metadata(
        &self,
        pre: &InstancePre<JobState>,
        hash: &Blake3Hash,
    ) -> Result<WorkloadMetadata, ExecError> {
        let (mut store, stderr) =
            self.new_store(JobRegistry(HashMap::new()), METADATA_TIME, None, None);
        let instance = pre
            .instantiate(&mut store)
            .map_err(|e| classify(e, &self.limits, METADATA_TIME, None, &stderr))?;
        let workload = mesh_world::Workload::new(&mut store, &instance)
            .map_err(|e| ExecError::NotAWorkload(format!("{e:#}")))?;
        let metadata = workload
            .call_metadata(&mut store)
            .map_err(|e| classify(e, &self.limits, METADATA_TIME, None, &stderr))?;
        Ok(mesh_world::to_metadata(metadata, *hash))
    }

    /// Metadata of a stored component (preparing it if needed).
    pub fn metadata(&self, component: &Blake3Hash) -> Result<WorkloadMetadata, ExecError> {
        Ok(self.prepare(component)?.metadata.clone())
    }

    /// Run one job of a stored component on `input`, within the limits.
    pub fn run(&self, component: &Blake3Hash, input: &[u8]) -> Result<RunOutput, ExecError> {
        self.run_cancellable(component, input, &CancelToken::new())
    }

    /// [`Executor::run`], stopping with [`ExecError::Cancelled`] once `cancel` is cancelled:
    /// within an epoch tick in wasm, at once in an ONNX Runtime call (terminated), and at the
    /// end of the current call on other engines. A job cancelled before it got a slot does
    /// not start.
    pub fn run_cancellable(
        &self,
        component: &Blake3Hash,
        input: &[u8],
        cancel: &CancelToken,
    ) -> Result<RunOutput, ExecError> {
        self.run_streaming(component, input, cancel, None)
    }

    /// [`Executor::run_cancellable`], handing the pieces of partial output the job emits to
    /// `sink` as they come (on this thread, before the run ends). Without a sink they are
    /// dropped; either way they count against the streaming caps.
    pub fn run_streaming(
        &self,
        component: &Blake3Hash,
        input: &[u8],
        cancel: &CancelToken,
        sink: Option<PieceSink>,
    ) -> Result<RunOutput, ExecError> {
        if input.len() > self.limits.input_bytes {
            return Err(ExecError::InputTooLarge {
                size: input.len(),
                limit: self.limits.input_bytes,
            });
        }
        let _slot = self.slots.acquire();
        if cancel.is_cancelled() {
            return Err(ExecError::Cancelled);
        }
        let started = Instant::now();
        let prepared = self.prepare(component)?;
        let prepare_us = started.elapsed().as_micros() as u64;

        let job_time = self.limits.job_time;
        let budget = Arc::new(
            InferenceBudget::new(
                Instant::now() + job_time,
                self.limits.inference_call_time,
                self.limits.tensor_bytes,
            )
            .with_cancel(cancel.clone()),
        );
        let registry = JobRegistry(
            prepared
                .models
                .iter()
                .map(|m| (m.name.clone(), m.loaded.clone().graph(budget.clone())))
                .collect(),
        );
        let (mut store, stderr) = self.new_store(registry, job_time, Some(cancel.clone()), sink);
        let fail = |e: wasmtime::Error| classify(e, &self.limits, job_time, Some(&budget), &stderr);

        let instantiating = Instant::now();
        let instance = prepared.pre.instantiate(&mut store).map_err(fail)?;
        let instantiate_us = instantiating.elapsed().as_micros() as u64;

        let running = Instant::now();
        let run = instance
            .get_typed_func::<(&[u8],), (Result<WasmList<u8>, JobError>,)>(&mut store, "run")
            .map_err(|e| ExecError::NotAWorkload(format!("{e:#}")))?;
        let (result,) = run.call(&mut store, (input,)).map_err(fail)?;
        if cancel.is_cancelled() {
            return Err(ExecError::Cancelled);
        }
        if budget.timed_out() {
            return Err(ExecError::InferenceTimeout);
        }
        let output = match result {
            Ok(list) => {
                if list.len() > self.limits.output_bytes {
                    return Err(ExecError::OutputTooLarge {
                        size: list.len(),
                        limit: self.limits.output_bytes,
                    });
                }
                list.as_le_slice(&store).to_vec()
            }
            Err(JobError::Inference(message)) => {
                // Report the host's typed reason when it has one, not the guest's paraphrase.
                return Err(match budget.last_error() {
                    Some(e) => ExecError::Inference(e),
                    None => ExecError::Workload(WorkloadError::Inference(message)),
                });
            }
            Err(e) => return Err(ExecError::Workload(e.into())),
        };
        let run_us = running.elapsed().as_micros() as u64;

        let receipt = RunReceipt {
            job: None,
            ticket: None,
            component: *component,
            models: prepared
                .models
                .iter()
                .map(|m| ModelBinding {
                    name: m.name.clone(),
                    hash: m.entry.hash,
                    variant: m.entry.variant.clone(),
                })
                .collect(),
            input: Blake3Hash::of(input),
            output: Blake3Hash::of(&output),
            backend: self.backend.kind().to_string(),
            timings: RunTimings {
                prepare_us,
                instantiate_us,
                run_us,
                inference_us: budget.spent().as_micros() as u64,
            },
        };
        Ok(RunOutput {
            output,
            receipt,
            stderr: stderr.contents().to_vec(),
        })
    }
}

fn make_engine(limits: &Limits) -> Result<Engine, ExecError> {
    let mut pool = PoolingAllocationConfig::default();
    let instances = limits.concurrent_instances.max(1) as u32 + 1;
    pool.total_component_instances(instances)
        .total_core_instances(instances * 16)
        .total_memories(instances * 4)
        .total_tables(instances * 8)
        .max_memories_per_component(4)
        .max_tables_per_component(8)
        .max_core_instances_per_component(16)
        .max_memory_size(limits.memory_bytes)
        .table_elements(limits.table_elements);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .max_wasm_stack(limits.wasm_stack_bytes)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
        .map_err(|e| ExecError::InvalidComponent(format!("engine configuration: {e:#}")))
}

/// A stable name for the engine's code-generation settings, so artifacts from an engine with
/// other settings (or another wasmtime) are never looked up.
fn engine_fingerprint(engine: &Engine) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    env!("CARGO_PKG_VERSION").hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// The error the epoch callback stops a cancelled job with.
#[derive(Debug, thiserror::Error)]
#[error("the job was cancelled")]
struct JobCancelled;

/// Advance the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
fn start_epoch_ticker(engine: &Engine) {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("mesh-epoch".into())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawn epoch thread");
}

/// Refuse components that import anything outside the Mesh world.
fn check_imports(engine: &Engine, component: &Component) -> Result<(), ExecError> {
    for (name, _) in component.component_type().imports(engine) {
        if !mesh_proto::workload::import_allowed(name) {
            return Err(ExecError::ForbiddenImport(name.to_string()));
        }
    }
    Ok(())
}

/// Turn a wasmtime error into the typed reason the job stopped.
fn classify(
    error: wasmtime::Error,
    limits: &Limits,
    job_time: Duration,
    budget: Option<&InferenceBudget>,
    stderr: &MemoryOutputPipe,
) -> ExecError {
    if let Some(limit) = error.downcast_ref::<LimitExceeded>() {
        return ExecError::ResourceLimit(limit.0.clone());
    }
    if error.downcast_ref::<JobCancelled>().is_some()
        || budget.is_some_and(|b| b.cancel_token().is_cancelled())
    {
        return ExecError::Cancelled;
    }
    if budget.is_some_and(InferenceBudget::timed_out) {
        return ExecError::InferenceTimeout;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => ExecError::Timeout(job_time),
        Some(Trap::StackOverflow) => ExecError::StackOverflow(limits.wasm_stack_bytes),
        Some(trap) => {
            let stderr = String::from_utf8_lossy(&stderr.contents())
                .trim()
                .to_string();
            if stderr.is_empty() {
                ExecError::Trap(trap.to_string())
            } else {
                ExecError::Trap(format!("{trap}; stderr: {stderr}"))
            }
        }
        None => ExecError::Trap(format!("{error:#}")),
    }
}

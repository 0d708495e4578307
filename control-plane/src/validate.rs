//! Checks an uploaded component before it enters the registry: it must be a valid component
//! of the Mesh world (imports within the world, the `run` and `metadata` exports), and its
//! `metadata` export, run in a tight sandbox, says what it is.

use mesh_proto::{Blake3Hash, WorkloadMetadata};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Wall time the `metadata` export may take.
const METADATA_TIME: Duration = Duration::from_secs(2);
/// Memory the component may use while describing itself.
const METADATA_MEMORY_BYTES: usize = 64 << 20;
/// Epoch ticks per second of the validator's ticker.
const TICKS_PER_SECOND: u64 = 100;
/// Elements a table may have while the component describes itself (as on hosts).
const METADATA_TABLE_ELEMENTS: usize = 100_000;
/// Instances, tables and memories a component may create while describing itself.
const METADATA_INSTANCES: usize = 64;
/// Tables, likewise.
const METADATA_TABLES: usize = 64;
/// Memories, likewise.
const METADATA_MEMORIES: usize = 16;
/// Uploads validated at once: compiling is CPU- and memory-heavy, and cannot be stopped
/// halfway, so more uploads wait (up to [`QUEUE_WAIT`]) rather than pile up.
pub const CONCURRENT_VALIDATIONS: usize = 2;
/// How long an upload waits for a validation slot before it is answered 503.
pub const QUEUE_WAIT: Duration = Duration::from_secs(10);
/// How long an upload waits for its validation before it is answered 422 (the compilation
/// finishes in the background, holding its slot).
pub const VALIDATION_TIME: Duration = Duration::from_secs(30);

/// Why a component was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidComponent {
    /// Not a valid WebAssembly component at all.
    #[error("not a valid WebAssembly component: {0}")]
    Malformed(String),
    /// It imports an interface outside the Mesh world.
    #[error("component imports {0}, which Mesh workloads may not use")]
    ForbiddenImport(String),
    /// It lacks the world's exports.
    #[error("component is not a Mesh workload: {0}")]
    NotAWorkload(String),
    /// Its `metadata` export failed.
    #[error("component's metadata export failed: {0}")]
    Metadata(String),
}

struct ValidatorState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for ValidatorState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Validation results kept, so re-publishing known bytes (to another network) is instant.
const CACHED_RESULTS: usize = 256;

/// A wasmtime engine dedicated to inspecting uploads.
pub struct ComponentValidator {
    engine: Engine,
    linker: Linker<ValidatorState>,
    verdicts: Mutex<HashMap<Blake3Hash, WorkloadMetadata>>,
    slots: std::sync::Arc<tokio::sync::Semaphore>,
}

impl ComponentValidator {
    /// An engine with epoch interruption and a ticker thread. It compiles without
    /// optimisation and on one thread: the validator only runs `metadata`, so a large
    /// component (an unused core module appended, say) costs as little as it can.
    pub fn new() -> anyhow::Result<Self> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .cranelift_opt_level(wasmtime::OptLevel::None)
            .parallel_compilation(false);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        linker.instance(mesh_proto::workload::TYPES_INTERFACE)?;
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("validator-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(Duration::from_millis(1000 / TICKS_PER_SECOND));
                }
            })?;
        Ok(ComponentValidator {
            engine,
            linker,
            verdicts: Mutex::new(HashMap::new()),
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(CONCURRENT_VALIDATIONS)),
        })
    }

    /// A validation slot, waiting up to [`QUEUE_WAIT`]; `None` when all stayed taken. Hold it
    /// for as long as the validation runs.
    pub async fn slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        tokio::time::timeout(QUEUE_WAIT, self.slots.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }

    /// Whether `bytes` were validated before (no slot needed).
    pub fn known(&self, bytes: &[u8]) -> bool {
        self.verdicts
            .lock()
            .expect("verdicts lock")
            .contains_key(&Blake3Hash::of(bytes))
    }

    /// Validate `bytes` and return what the component says about itself. CPU-heavy (it
    /// compiles the component): call it from a blocking thread.
    pub fn inspect(&self, bytes: &[u8]) -> Result<WorkloadMetadata, InvalidComponent> {
        let hash = Blake3Hash::of(bytes);
        if let Some(metadata) = self.verdicts.lock().expect("verdicts lock").get(&hash) {
            return Ok(metadata.clone());
        }
        let metadata = self.inspect_uncached(bytes)?;
        let mut verdicts = self.verdicts.lock().expect("verdicts lock");
        if verdicts.len() >= CACHED_RESULTS {
            verdicts.clear();
        }
        verdicts.insert(hash, metadata.clone());
        Ok(metadata)
    }

    fn inspect_uncached(&self, bytes: &[u8]) -> Result<WorkloadMetadata, InvalidComponent> {
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| InvalidComponent::Malformed(format!("{e:#}")))?;
        for (name, _) in component.component_type().imports(&self.engine) {
            if !mesh_proto::workload::import_allowed(name) {
                return Err(InvalidComponent::ForbiddenImport(name.to_string()));
            }
        }
        // wasi:nn is importable but not needed to describe the component: calls trap.
        let mut linker = self.linker.clone();
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| InvalidComponent::Malformed(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| InvalidComponent::Malformed(format!("{e:#}")))?;
        mesh_world::WorkloadIndices::new(&pre)
            .map_err(|e| InvalidComponent::NotAWorkload(format!("{e:#}")))?;

        let mut store = Store::new(
            &self.engine,
            ValidatorState {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
                limits: StoreLimitsBuilder::new()
                    .memory_size(METADATA_MEMORY_BYTES)
                    .table_elements(METADATA_TABLE_ELEMENTS)
                    .instances(METADATA_INSTANCES)
                    .tables(METADATA_TABLES)
                    .memories(METADATA_MEMORIES)
                    .trap_on_grow_failure(true)
                    .build(),
            },
        );
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(METADATA_TIME.as_secs() * TICKS_PER_SECOND);
        store.epoch_deadline_trap();
        let instance = pre
            .instantiate(&mut store)
            .map_err(|e| InvalidComponent::Metadata(format!("{e:#}")))?;
        let workload = mesh_world::Workload::new(&mut store, &instance)
            .map_err(|e| InvalidComponent::NotAWorkload(format!("{e:#}")))?;
        let metadata = workload
            .call_metadata(&mut store)
            .map_err(|e| InvalidComponent::Metadata(format!("{e:#}")))?;
        if metadata.name.is_empty()
            || metadata.name.len() > 128
            || metadata.version.is_empty()
            || metadata.version.len() > 64
        {
            return Err(InvalidComponent::Metadata(
                "name and version must be 1-128 and 1-64 characters".into(),
            ));
        }
        Ok(mesh_world::to_metadata(metadata, Blake3Hash::of(bytes)))
    }
}

//! Every limit the executor enforces, as a named constant saying what it stops, collected in
//! [`Limits`] so a device's configuration can override them.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Wall time one job may run, inference included. Stops infinite loops and slow-loris
/// workloads from holding an executor slot.
pub const MAX_JOB_TIME: Duration = Duration::from_secs(120);
/// Wall time one `wasi:nn` compute call may take. Epoch interruption cannot stop native
/// inference code, so the backends enforce this themselves.
pub const MAX_INFERENCE_CALL_TIME: Duration = Duration::from_secs(60);
/// Linear memory one instance may grow to. Stops `memory.grow` bombs.
pub const MAX_MEMORY_BYTES: usize = 1 << 30;
/// Elements in one table. Stops table-growth bombs.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Bytes of a single `wasi:nn` tensor (input or output), checked from the dimensions before
/// any allocation. Stops tensors that claim terabytes.
pub const MAX_TENSOR_BYTES: usize = 256 << 20;
/// Dimensions of a tensor. Real models use at most a handful.
pub const MAX_TENSOR_RANK: usize = 8;
/// Input bytes of one job. Stops a requester from making the host buffer gigabytes.
pub const MAX_INPUT_BYTES: usize = 8 << 20;
/// Output bytes of one job, checked before the output is copied out of the guest.
pub const MAX_OUTPUT_BYTES: usize = 64 << 20;
/// Component instances running at once on this host.
pub const MAX_CONCURRENT_INSTANCES: usize = 8;
/// Native stack a workload may use. Stops unbounded recursion from reaching the host's stack.
pub const MAX_WASM_STACK_BYTES: usize = 1 << 20;
/// Bytes a workload may write to stderr (kept for diagnostics); the rest is dropped.
pub const MAX_STDERR_BYTES: usize = 64 << 10;
/// Positions (prompt plus generated tokens) one generation of a language model may hold:
/// its key/value cache is sized by it, checked before it is allocated (SmolLM2-135M needs
/// 45 KiB a position, 90 MiB for 2,048).
pub const MAX_CONTEXT_TOKENS: usize = 2048;
/// Size of a component the store accepts.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;

/// The executor's limits; every field defaults to the constant of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// See [`MAX_JOB_TIME`].
    #[serde(with = "millis")]
    pub job_time: Duration,
    /// See [`MAX_INFERENCE_CALL_TIME`].
    #[serde(with = "millis")]
    pub inference_call_time: Duration,
    /// See [`MAX_MEMORY_BYTES`].
    pub memory_bytes: usize,
    /// See [`MAX_TABLE_ELEMENTS`].
    pub table_elements: usize,
    /// See [`MAX_TENSOR_BYTES`].
    pub tensor_bytes: usize,
    /// See [`MAX_INPUT_BYTES`].
    pub input_bytes: usize,
    /// See [`MAX_OUTPUT_BYTES`].
    pub output_bytes: usize,
    /// See [`MAX_CONCURRENT_INSTANCES`].
    pub concurrent_instances: usize,
    /// See [`MAX_WASM_STACK_BYTES`].
    pub wasm_stack_bytes: usize,
    /// See [`MAX_CONTEXT_TOKENS`].
    pub context_tokens: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            job_time: MAX_JOB_TIME,
            inference_call_time: MAX_INFERENCE_CALL_TIME,
            memory_bytes: MAX_MEMORY_BYTES,
            table_elements: MAX_TABLE_ELEMENTS,
            tensor_bytes: MAX_TENSOR_BYTES,
            input_bytes: MAX_INPUT_BYTES,
            output_bytes: MAX_OUTPUT_BYTES,
            concurrent_instances: MAX_CONCURRENT_INSTANCES,
            wasm_stack_bytes: MAX_WASM_STACK_BYTES,
            context_tokens: MAX_CONTEXT_TOKENS,
        }
    }
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

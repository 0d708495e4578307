//! The record of one run: what ran, on what, and what came out.

use crate::{Blake3Hash, JobId};
use serde::{Deserialize, Serialize};

/// A model the run had bound under a name, pinned by content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelBinding {
    /// The name the workload loaded it by.
    pub name: String,
    /// BLAKE3 of the model file that was executed.
    pub hash: Blake3Hash,
    /// The prepared variant it is (`fp32`, `int8`, or a backend-optimised derivative such as
    /// `fp32-ort`); empty when unknown. Verification compares two results of the same
    /// precision ([`ModelBinding::precision`]) more strictly than results of different ones.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
}

impl ModelBinding {
    /// The numeric precision of the variant: the variant without its backend-optimisation
    /// suffix (`fp32-ort` is `fp32`), or `None` when the variant is unknown.
    pub fn precision(&self) -> Option<&str> {
        let precision = self.variant.split('-').next().unwrap_or_default();
        (!precision.is_empty()).then_some(precision)
    }
}

/// Wall-clock timings of a run, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunTimings {
    /// Time to obtain the component ready to instantiate (compile or cache hit).
    pub prepare_us: u64,
    /// Time to instantiate it.
    pub instantiate_us: u64,
    /// Time spent in the workload's `run` export, inference included.
    pub run_us: u64,
    /// Part of `run_us` spent inside `wasi:nn` compute calls.
    pub inference_us: u64,
}

/// The receipt of one run: pins component, models, input and output by hash.
///
/// Two honest runs of the same job have equal receipts except for `output` (when the workload
/// compares by tolerance), `backend` and `timings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReceipt {
    /// The job this run was for (absent for local runs, e.g. `mesh-host exec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
    /// BLAKE3 of the signed ticket that authorised the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<Blake3Hash>,
    /// BLAKE3 of the component.
    pub component: Blake3Hash,
    /// Models bound for the run.
    pub models: Vec<ModelBinding>,
    /// BLAKE3 of the input bytes.
    pub input: Blake3Hash,
    /// BLAKE3 of the output bytes.
    pub output: Blake3Hash,
    /// Inference backend that ran the models (e.g. `onnxruntime`).
    pub backend: String,
    /// Timings.
    pub timings: RunTimings,
}

//! What a workload component says about itself.

use crate::{Blake3Hash, Comparison};
use serde::{Deserialize, Serialize};

/// A workload's self-description (from its `metadata` export) plus its content hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadMetadata {
    /// Workload name, e.g. `embeddings`.
    pub name: String,
    /// Workload version (semver).
    pub version: String,
    /// Names of the host models the workload loads.
    pub models: Vec<String>,
    /// How two results of the workload are compared during verification.
    pub comparison: Comparison,
    /// BLAKE3 of the component bytes.
    pub component: Blake3Hash,
}

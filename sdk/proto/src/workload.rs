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

/// The world's type-only interface (imported for `metadata` and `job-error`).
pub const TYPES_INTERFACE: &str = "mesh:workload/types@0.1.0";

/// The world's interface for streaming partial output (`emit`).
pub const OUTPUT_INTERFACE: &str = "mesh:workload/output@0.1.0";

/// Most bytes one streamed piece of output may hold (`mesh:workload/output.emit`).
pub const MAX_PIECE_BYTES: usize = 64 << 10;

/// Interfaces a workload component may import: the world's types and output, `wasi:nn`, and the parts
/// of WASI 0.2 the Rust standard library needs to start. Anything else (sockets, http, ...)
/// makes a component invalid for Mesh.
pub const ALLOWED_IMPORT_PREFIXES: &[&str] = &[
    TYPES_INTERFACE,
    OUTPUT_INTERFACE,
    "wasi:nn/",
    "wasi:cli/environment@",
    "wasi:cli/exit@",
    "wasi:cli/stdin@",
    "wasi:cli/stdout@",
    "wasi:cli/stderr@",
    "wasi:cli/terminal-",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
];

/// Whether a component may import the interface `name`.
pub fn import_allowed(name: &str) -> bool {
    ALLOWED_IMPORT_PREFIXES
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    #[test]
    fn imports_outside_the_world_are_refused() {
        assert!(super::import_allowed("wasi:nn/graph@0.2.0-rc-2024-10-28"));
        assert!(super::import_allowed("wasi:cli/environment@0.2.6"));
        assert!(super::import_allowed(super::OUTPUT_INTERFACE));
        assert!(!super::import_allowed("mesh:workload/outputs@0.1.0"));
        assert!(!super::import_allowed("wasi:sockets/tcp@0.2.6"));
        assert!(!super::import_allowed("wasi:http/outgoing-handler@0.2.6"));
        assert!(!super::import_allowed("wasi:cli/environmentx"));
    }
}

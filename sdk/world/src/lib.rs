//! Host-side bindings of the `mesh:workload` world in `wit/`, generated once here and shared by
//! the device agent (which runs workloads) and the control plane (which inspects components on
//! publish), so neither depends on the other.

use mesh_proto::{Blake3Hash, Comparison, WorkloadMetadata};

#[allow(missing_docs)]
mod generated {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "mesh:workload/workload",
    });
}

pub use generated::mesh::workload::types::{Comparison as WitComparison, JobError, Metadata};
pub use generated::{Workload, WorkloadIndices, WorkloadPre};

/// Convert the component's own description into the wire type, pinned to its hash.
pub fn to_metadata(metadata: Metadata, component: Blake3Hash) -> WorkloadMetadata {
    WorkloadMetadata {
        name: metadata.name,
        version: metadata.version,
        models: metadata.models,
        comparison: match metadata.comparison {
            WitComparison::Exact => Comparison::Exact,
            WitComparison::FloatTolerance(t) => Comparison::FloatTolerance(t),
            WitComparison::Cosine(c) => Comparison::Cosine(c),
            WitComparison::Generation(m) => Comparison::Generation(m),
        },
        component,
    }
}

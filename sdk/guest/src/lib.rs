//! Guest SDK for Mesh workloads.
//!
//! A workload is a WebAssembly component (wasm32-wasip2) of the `mesh:workload` world in `wit/`.
//! It implements [`Workload`], exports it with [`export_workload!`], and runs inference through
//! [`Model`], which loads host-owned models by name over `wasi:nn`; [`emit`] streams partial
//! output to the requester while it runs:
//!
//! ```ignore
//! struct Echo;
//! impl mesh_guest::Workload for Echo {
//!     fn metadata() -> mesh_guest::Metadata {
//!         mesh_guest::Metadata::new("echo", "0.1.0").exact()
//!     }
//!     fn run(input: Vec<u8>) -> Result<Vec<u8>, mesh_guest::JobError> {
//!         Ok(input)
//!     }
//! }
//! mesh_guest::export_workload!(Echo);
//! ```

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "mesh:workload/workload",
        pub_export_macro: true,
        export_macro_name: "__export_mesh_workload",
        default_bindings_module: "mesh_guest::bindings",
        generate_all,
    });
}

mod nn;

pub use bindings::Guest as Workload;
pub use bindings::mesh::workload::types::{Comparison, JobError, Metadata};
pub use nn::{Model, NnError, TensorOutput};

/// Stream `piece` to the requester now (a chat workload's next words). It previews the
/// output [`Workload::run`] returns, which stays the job's result; a piece is at most 64 KiB
/// and all of a job's pieces together at most its output cap, or the job stops.
pub fn emit(piece: &[u8]) {
    bindings::mesh::workload::output::emit(piece);
}

/// Export a type implementing [`Workload`] as this component's `mesh:workload` implementation.
#[macro_export]
macro_rules! export_workload {
    ($ty:ident) => {
        $crate::bindings::__export_mesh_workload!($ty);
    };
}

impl Metadata {
    /// Metadata with the given name and version, no models, and exact comparison.
    pub fn new(name: &str, version: &str) -> Self {
        Metadata {
            name: name.to_string(),
            version: version.to_string(),
            models: Vec::new(),
            comparison: Comparison::Exact,
        }
    }

    /// Declare a model this workload loads by name.
    pub fn model(mut self, name: &str) -> Self {
        self.models.push(name.to_string());
        self
    }

    /// Results must match byte for byte.
    pub fn exact(mut self) -> Self {
        self.comparison = Comparison::Exact;
        self
    }

    /// Results are JSON; numbers may differ by at most `tolerance`.
    pub fn float_tolerance(mut self, tolerance: f32) -> Self {
        self.comparison = Comparison::FloatTolerance(tolerance);
        self
    }

    /// Results are generated text, verified by re-scoring under teacher forcing: with
    /// `score` (the claimed output) in its input, the workload must answer a verdict
    /// (`{"verdict": "consistent" | "inconsistent", …}`), accepting tokens within `margin`
    /// logits of what its sampling draws.
    pub fn generation(mut self, margin: f32) -> Self {
        self.comparison = Comparison::Generation(margin);
        self
    }

    /// Results are JSON; arrays of numbers must have cosine similarity of at least `min`.
    pub fn cosine(mut self, min: f32) -> Self {
        self.comparison = Comparison::Cosine(min);
        self
    }
}

impl JobError {
    /// An [`JobError::InvalidInput`] from anything printable.
    pub fn invalid_input(message: impl std::fmt::Display) -> Self {
        JobError::InvalidInput(message.to_string())
    }

    /// An [`JobError::Inference`] from anything printable.
    pub fn inference(message: impl std::fmt::Display) -> Self {
        JobError::Inference(message.to_string())
    }

    /// An [`JobError::Internal`] from anything printable.
    pub fn internal(message: impl std::fmt::Display) -> Self {
        JobError::Internal(message.to_string())
    }
}

impl From<NnError> for JobError {
    fn from(error: NnError) -> Self {
        JobError::Inference(error.to_string())
    }
}

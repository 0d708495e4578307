//! The no-op workload: returns its input unchanged, so job overhead can be measured alone.

use mesh_guest::{JobError, Metadata, Workload};

struct Echo;

impl Workload for Echo {
    fn metadata() -> Metadata {
        Metadata::new("echo", env!("CARGO_PKG_VERSION")).exact()
    }

    fn run(input: Vec<u8>) -> Result<Vec<u8>, JobError> {
        Ok(input)
    }
}

mesh_guest::export_workload!(Echo);

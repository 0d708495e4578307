//! Paths of the Mesh workload components, built fresh from `workloads/` by this crate's build
//! script for `wasm32-wasip2`.

include!(concat!(env!("OUT_DIR"), "/components.rs"));

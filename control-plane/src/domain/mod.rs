//! The domain: what the control plane decides, as plain Rust over the store, below the HTTP
//! handlers and the workers and above the store. Nothing here knows HTTP; every operation
//! returns a [`DomainError`] when it fails. Pure decisions (a check's verdict in
//! [`verification`]) read nothing and are applied by the module that owns the state.

pub mod audit;
pub mod batches;
pub mod checks;
pub mod devices;
pub mod error;
pub mod jobs;
pub mod ledger;
pub mod membership;
pub mod ringers;
pub mod scheduling;
pub mod verification;
pub mod workloads;

pub use error::{DomainError, DomainResult, Refusal};

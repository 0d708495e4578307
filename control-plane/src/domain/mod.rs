//! The control plane's decisions as plain Rust, below the HTTP handlers and above the store.
//! What is here is pure: it reads no database and returns what should happen, which the
//! modules that own the state apply in one transaction.

pub mod verification;

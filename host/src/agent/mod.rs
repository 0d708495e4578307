//! The device agent: `join`, `run` and `submit`.

pub mod config;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod idle;
pub mod join;
pub mod serve;
pub mod submit;

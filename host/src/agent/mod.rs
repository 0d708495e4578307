//! The device agent: `join`, `run` and `submit`.

pub mod config;
pub mod join;
pub mod serve;
pub mod submit;

//! Background work: the control plane as requester ([`gateway`]), and the loops that keep the
//! job state machine moving. Workers use the domain and the store, never the HTTP layer.

pub mod batches;
pub mod checker;
pub mod gateway;
pub mod sweeper;

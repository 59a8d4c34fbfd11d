//! The esk event model, free of any runtime: appends and events, the validation that turns
//! untrusted JSON into an append, exact-text JSON handling and the record formats on the wire.
//! Clients and tools that only need the contract depend on this crate alone.

pub mod api;
pub mod event;
pub mod group;
pub mod ingest_log;
pub mod lifecycle;
#[cfg(feature = "openapi")]
mod openapi;
pub mod raw_json;
pub mod snapshot;
pub mod validate;
pub mod wire;

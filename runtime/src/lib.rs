//! The runtime the esk services share: Postgres access, Kafka clients and the records of the
//! wire formats, typed configuration, telemetry, retries, the HTTP server and the supervisor of
//! a process's tasks. The event model itself is `esk_model`, which this crate builds on.

pub mod config;
pub mod db;
pub mod http_server;
pub mod internal_event;
pub mod kafka;
pub mod pages;
pub mod partition_cursor;
pub mod records;
pub mod redact;
pub mod retry;
pub mod scavenge;
pub mod scope;
pub mod service;
pub mod supervisor;
pub mod telemetry;
pub mod tls;
pub mod tokens;

//! Shared pieces of the esk event store: the event model and its validation, the Kafka record
//! formats, Postgres schema access, typed configuration and telemetry.

pub mod config;
pub mod db;
pub mod http_server;
pub mod kafka;
pub mod model;
pub mod partition_cursor;
pub mod raw_json;
pub mod retry;
pub mod supervisor;
pub mod telemetry;
pub mod validate;
pub mod wire;

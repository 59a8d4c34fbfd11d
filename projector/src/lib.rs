//! `projector`: checkpointed, backpressure-aware projections. Each configured projection
//! replays the events table until it has caught up, hands over to the canonical topic, and
//! runs live from there with its own consumer group and bounded queue.
//!
//! [`run`] runs them all; [`admin::Admin`] lists, rebuilds and replays dead letters (the
//! `projector` binary's subcommands and `esk projection`).

pub mod admin;
mod catch_up;
mod checkpoint;
pub mod config;
mod connections;
mod dead_letters;
mod event;
mod filter;
mod group;
mod handlers;
mod internal_events;
mod live;
mod metrics;
mod projection;
mod projections_file;
mod runner;
mod sql_projections;

pub use connections::TopicError;
pub use dead_letters::DeadLetter;
pub use handlers::HandlerSetupError;
pub use projection::ProcessError;
pub use projections_file::ConfigError;
pub use runner::{run, RunError};

//! The projector's happenings that are both a log line and a metric (see
//! `esk_runtime::internal_event`).

use esk_runtime::internal_event::{InternalEvent, Reason};

use crate::dead_letters::UndecodableRecord;
use crate::event::ProjectedEvent;
use crate::metrics::ProjectorMetrics;

/// An event the handler rejected for good was dead-lettered, with the checkpoint that moves
/// past it. Emitted once that transaction committed.
#[derive(Debug)]
pub(crate) struct EventDeadLettered<'a> {
    pub(crate) metrics: &'a ProjectorMetrics,
    pub(crate) projection: &'a str,
    pub(crate) event: &'a ProjectedEvent,
    pub(crate) error: &'a dyn Reason,
}

impl InternalEvent for EventDeadLettered<'_> {
    fn emit(self) {
        tracing::error!(projection = %self.projection, event_id = %self.event.event.event_id,
            stream_id = %self.event.event.stream_id, error = %self.error, "rejected event dead-lettered");
        count_dead_letter(self.metrics, self.projection);
    }
}

/// A canonical record that does not decode was dead-lettered, with the checkpoint that moves
/// past it. Emitted once that transaction committed.
#[derive(Debug)]
pub(crate) struct UndecodableDeadLettered<'a> {
    pub(crate) metrics: &'a ProjectorMetrics,
    pub(crate) projection: &'a str,
    pub(crate) record: &'a UndecodableRecord<'a>,
}

impl InternalEvent for UndecodableDeadLettered<'_> {
    fn emit(self) {
        tracing::error!(projection = %self.projection, partition = self.record.partition,
            offset = self.record.offset, error = %self.record.error,
            "undecodable canonical record dead-lettered");
        count_dead_letter(self.metrics, self.projection);
    }
}

fn count_dead_letter(metrics: &ProjectorMetrics, projection: &str) {
    metrics.dead_letters.with_label_values(&[projection]).inc();
}

/// A delivery (or a batch, or a catch-up) failed transiently and is tried again; counted in
/// `esk_projector_retries_total`.
#[derive(Debug)]
pub(crate) struct Retrying<'a> {
    pub(crate) metrics: &'a ProjectorMetrics,
    pub(crate) projection: &'a str,
    pub(crate) error: &'a dyn Reason,
    /// Events concerned.
    pub(crate) events: usize,
    /// Attempts so far.
    pub(crate) attempt: usize,
    /// How long the projection has been stalled by transient failures, when it is.
    pub(crate) stalled_for: Option<std::time::Duration>,
    /// The log line.
    pub(crate) message: &'static str,
}

impl InternalEvent for Retrying<'_> {
    fn emit(self) {
        tracing::warn!(projection = %self.projection, error = %self.error, attempt = self.attempt,
            events = self.events, stalled_for_s = self.stalled_for.map(|d| d.as_secs_f64()),
            "{}", self.message);
        self.metrics
            .retries
            .with_label_values(&[self.projection])
            .inc();
    }
}

/// The offsets compare-and-set found partitions another projector owns: the transaction rolled
/// back and those partitions' positions are read again.
#[derive(Debug)]
pub(crate) struct ZombieRollback<'a> {
    pub(crate) metrics: &'a ProjectorMetrics,
    pub(crate) projection: &'a str,
    pub(crate) lost: &'a [i32],
}

impl InternalEvent for ZombieRollback<'_> {
    fn emit(self) {
        tracing::info!(projection = %self.projection, lost = ?self.lost,
            "partitions owned elsewhere; re-reading their positions");
        self.metrics
            .zombie_rollbacks
            .with_label_values(&[self.projection])
            .inc();
    }
}

/// The projection's queue filled: its partitions are paused (I6).
#[derive(Debug)]
pub(crate) struct Paused<'a> {
    pub(crate) metrics: &'a ProjectorMetrics,
    pub(crate) projection: &'a str,
    pub(crate) queued: usize,
}

impl InternalEvent for Paused<'_> {
    fn emit(self) {
        tracing::info!(projection = %self.projection, queued = self.queued, "queue full; partitions paused");
        self.metrics
            .paused
            .with_label_values(&[self.projection])
            .set(1);
    }
}

/// The projection's queue drained below its resume mark: its partitions are resumed.
#[derive(Debug)]
pub(crate) struct Resumed<'a> {
    pub(crate) metrics: &'a ProjectorMetrics,
    pub(crate) projection: &'a str,
}

impl InternalEvent for Resumed<'_> {
    fn emit(self) {
        tracing::info!(projection = %self.projection, "queue drained; partitions resumed");
        self.metrics
            .paused
            .with_label_values(&[self.projection])
            .set(0);
    }
}

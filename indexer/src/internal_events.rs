//! The indexer's happenings that are both a log line and a metric (see
//! `esk_runtime::internal_event`).

use esk_model::wire::IngestLogEvent;
use esk_runtime::internal_event::{InternalEvent, Reason};

use crate::metrics::IndexerMetrics;

/// A record whose append was not accepted (rolled back or rejected) was skipped: never indexed
/// (I3). Emitted once its batch committed.
#[derive(Debug)]
pub(crate) struct PhantomDropped<'a> {
    pub(crate) metrics: &'a IndexerMetrics,
    pub(crate) event: &'a IngestLogEvent,
}

impl InternalEvent for PhantomDropped<'_> {
    fn emit(self) {
        let event = self.event;
        tracing::debug!(stream_id = %event.stream_id, event_id = %event.event_id,
            append_id = %event.append_id, attempt_id = %event.attempt_id, "phantom skipped");
        self.metrics.phantoms.inc();
    }
}

/// An ingest-log record that does not decode was set aside in `dead_letters`. Emitted once its
/// batch committed.
#[derive(Debug)]
pub(crate) struct UndecodableDeadLettered<'a> {
    pub(crate) metrics: &'a IndexerMetrics,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) error: &'a str,
}

impl InternalEvent for UndecodableDeadLettered<'_> {
    fn emit(self) {
        tracing::warn!(
            partition = self.partition,
            offset = self.offset,
            error = self.error,
            "undecodable ingest-log record dead-lettered"
        );
        self.metrics.dead_letters.inc();
    }
}

/// The offsets compare-and-set found partitions another indexer owns: the transaction rolled
/// back and those partitions are re-read from their stored offsets.
#[derive(Debug)]
pub(crate) struct ZombieRollback<'a> {
    pub(crate) metrics: &'a IndexerMetrics,
    pub(crate) lost: &'a [i32],
}

impl InternalEvent for ZombieRollback<'_> {
    fn emit(self) {
        tracing::info!(lost = ?self.lost, "partitions owned elsewhere; rolled back and re-seeking");
        self.metrics.zombie_rollbacks.inc();
    }
}

/// A step failed and is tried again later (`stage`: consume, load_offset, publish,
/// ledger_maintenance); counted in `esk_indexer_errors_total{stage}`.
#[derive(Debug)]
pub(crate) struct StepFailed<'a> {
    pub(crate) metrics: &'a IndexerMetrics,
    pub(crate) stage: &'static str,
    pub(crate) error: &'a dyn Reason,
    /// The partition concerned, when there is one.
    pub(crate) partition: Option<i32>,
    /// The log line.
    pub(crate) message: &'static str,
}

impl InternalEvent for StepFailed<'_> {
    fn emit(self) {
        tracing::warn!(stage = self.stage, error = %self.error, partition = self.partition, "{}", self.message);
        self.metrics.errors.with_label_values(&[self.stage]).inc();
    }
}

/// An indexing transaction failed transiently; the batch is retried.
#[derive(Debug)]
pub(crate) struct IndexingFailed<'a> {
    pub(crate) metrics: &'a IndexerMetrics,
    pub(crate) error: &'a dyn Reason,
    pub(crate) records: usize,
    /// Failures in a row, this one included.
    pub(crate) failures: u32,
}

impl InternalEvent for IndexingFailed<'_> {
    fn emit(self) {
        tracing::warn!(error = %self.error, records = self.records, failures = self.failures,
            "indexing transaction failed; retrying");
        self.metrics.errors.with_label_values(&["commit"]).inc();
    }
}

/// An ingest-log partition halted at a record Postgres refuses (nothing dropped) until an
/// operator quarantines it.
#[derive(Debug)]
pub(crate) struct PartitionHalted<'a> {
    pub(crate) metrics: &'a IndexerMetrics,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    /// The record's event, when it decodes.
    pub(crate) event: Option<&'a IngestLogEvent>,
    pub(crate) refusal: &'a dyn Reason,
    /// Whether the refusal is an invariant's backstop (a unique violation).
    pub(crate) invariant_violation: bool,
    /// Partitions halted now, this one included.
    pub(crate) halted: usize,
}

impl InternalEvent for PartitionHalted<'_> {
    fn emit(self) {
        let (partition, offset) = (self.partition, self.offset);
        tracing::error!(
            partition,
            offset,
            append_id = self.event.map(|e| e.append_id.to_string()),
            stream_id = self.event.map(|e| e.stream_id.as_str()),
            event_id = self.event.map(|e| e.event_id.to_string()),
            error = %self.refusal,
            "ingest-log partition halted at a record Postgres refuses (nothing dropped); \
             `esk indexer quarantine --partition {partition} --offset {offset}` sets it aside"
        );
        if self.invariant_violation {
            self.metrics.invariant_violations.inc();
        }
        self.metrics.halted_partitions.set(gauge(self.halted));
    }
}

/// A quarantined record was set aside and its partition resumed.
#[derive(Debug)]
pub(crate) struct PartitionResumed<'a> {
    pub(crate) metrics: &'a IndexerMetrics,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    /// Partitions still halted.
    pub(crate) halted: usize,
}

impl InternalEvent for PartitionResumed<'_> {
    fn emit(self) {
        tracing::warn!(
            partition = self.partition,
            offset = self.offset,
            "operator quarantined the record the partition halted at; resuming"
        );
        self.metrics.halted_partitions.set(gauge(self.halted));
    }
}

fn gauge(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

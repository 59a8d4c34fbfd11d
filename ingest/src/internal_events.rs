//! Ingest's happenings that are both a log line and a metric (see
//! `esk_runtime::internal_event`).

use std::time::Duration;

use esk_runtime::internal_event::InternalEvent;

use crate::attempt::AttemptError;
use crate::metrics::IngestMetrics;

/// An attempt failed and is tried again after `retry_in`; counted in
/// `esk_ingest_attempt_failures_total{stage}`.
#[derive(Debug)]
pub(crate) struct AttemptRetried<'a> {
    pub(crate) metrics: &'a IngestMetrics,
    pub(crate) error: &'a AttemptError,
    pub(crate) appends: usize,
    pub(crate) retry_in: Duration,
}

impl InternalEvent for AttemptRetried<'_> {
    fn emit(self) {
        tracing::warn!(error = %self.error, retry_in = ?self.retry_in, appends = self.appends,
            "ingest attempt failed; retrying");
        count_failure(self.metrics, self.error);
    }
}

/// An attempt failed for the last time: its appends are answered 503 (nothing written), or
/// rejected when the broker refuses their records for good.
#[derive(Debug)]
pub(crate) struct AttemptGaveUp<'a> {
    pub(crate) metrics: &'a IngestMetrics,
    pub(crate) error: &'a AttemptError,
    pub(crate) appends: usize,
}

impl InternalEvent for AttemptGaveUp<'_> {
    fn emit(self) {
        if self.error.refused_by_broker().is_some() {
            tracing::warn!(error = %self.error, appends = self.appends,
                "the broker refuses an append's records; rejecting it");
        } else {
            tracing::error!(error = %self.error, appends = self.appends,
                "ingest attempt failed; answering 503");
        }
        count_failure(self.metrics, self.error);
    }
}

fn count_failure(metrics: &IngestMetrics, error: &AttemptError) {
    metrics
        .attempt_failures
        .with_label_values(&[error.code()])
        .inc();
}

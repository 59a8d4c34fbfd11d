//! Ingest's metrics, recorded in one place per outcome so logs and counters agree.

use std::time::Duration;

use esk_model::event::{Append, GroupAppend};
use esk_runtime::telemetry::{MetricFactory, LATENCY_BUCKETS, SIZE_BUCKETS};
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry};

use crate::outcome::{AppendOutcome, AppendReply, GroupOutcome, GroupReply, Rejection};

/// Counters, gauges and histograms of the ingest process.
#[derive(Debug)]
pub(crate) struct IngestMetrics {
    pub(crate) appends_accepted: IntCounter,
    pub(crate) events_accepted: IntCounter,
    pub(crate) appends_rejected: IntCounterVec,
    pub(crate) conflicts: IntCounter,
    pub(crate) unavailable: IntCounterVec,
    pub(crate) attempt_failures: IntCounterVec,
    pub(crate) claims_redone: IntCounter,
    pub(crate) batch_appends: Histogram,
    pub(crate) batch_events: Histogram,
    pub(crate) append_latency: Histogram,
    pub(crate) attempt_seconds: Histogram,
    pub(crate) in_flight: IntGauge,
    pub(crate) stage_seconds: HistogramVec,
}

impl IngestMetrics {
    pub(crate) fn new(registry: &Registry) -> Self {
        let metrics = Self::register(registry);
        // Known label values start at zero, so dashboards and alerts see the series at once.
        for reason in [
            "wrong_expected_version",
            "duplicate_event_id",
            "append_id_reused",
        ] {
            metrics.appends_rejected.with_label_values(&[reason]);
        }
        for code in ["overloaded", "unavailable", "commit_outcome_unknown"] {
            metrics.unavailable.with_label_values(&[code]);
        }
        for code in ["unavailable", "commit_outcome_unknown"] {
            metrics.attempt_failures.with_label_values(&[code]);
        }
        for stage in ["decide", "produce", "commit"] {
            metrics.stage_seconds.with_label_values(&[stage]);
        }
        metrics
    }

    fn register(registry: &Registry) -> Self {
        let m = MetricFactory::new(registry);
        IngestMetrics {
            appends_accepted: m.counter("ingest_appends_accepted_total", "Appends accepted"),
            events_accepted: m.counter("ingest_events_accepted_total", "Events accepted"),
            appends_rejected: m.counter_vec(
                "ingest_appends_rejected_total",
                "Appends rejected, by reason",
                &["reason"],
            ),
            conflicts: m.counter(
                "ingest_conflicts_total",
                "Appends rejected for a wrong expected version",
            ),
            unavailable: m.counter_vec(
                "ingest_unavailable_total",
                "Appends answered 503, by code",
                &["code"],
            ),
            attempt_failures: m.counter_vec(
                "ingest_attempt_failures_total",
                "Failed ingest transactions, by code",
                &["code"],
            ),
            claims_redone: m.counter(
                "ingest_claims_redone_total",
                "Attempts whose plain claims met an append or event id already held (a retry, a \
                 redelivery, a duplicate event id), redone skipping held ids",
            ),
            batch_appends: m.histogram(
                "ingest_batch_appends",
                "Appends per ingest transaction",
                SIZE_BUCKETS,
            ),
            batch_events: m.histogram(
                "ingest_batch_events",
                "Events per ingest transaction",
                SIZE_BUCKETS,
            ),
            append_latency: m.histogram(
                "ingest_append_latency_seconds",
                "Time from receipt to outcome",
                LATENCY_BUCKETS,
            ),
            attempt_seconds: m.histogram(
                "ingest_attempt_seconds",
                "Duration of an ingest transaction, retries included",
                LATENCY_BUCKETS,
            ),
            in_flight: m.gauge("ingest_in_flight_appends", "Appends queued for a worker"),
            stage_seconds: m.histogram_vec(
                "ingest_attempt_stage_seconds",
                "Time per attempt stage: decide (steps 1-4), produce (5), commit (6)",
                &["stage"],
                LATENCY_BUCKETS,
            ),
        }
    }

    /// Counts one append's reply.
    pub(crate) fn record(&self, append: &Append, reply: &AppendReply, latency: Duration) {
        self.append_latency.observe(latency.as_secs_f64());
        match reply {
            Ok(AppendOutcome::Accepted { .. }) => {
                self.appends_accepted.inc();
                self.events_accepted.inc_by(append.events.len() as u64);
            }
            Ok(AppendOutcome::Rejected(rejection)) => self.rejected(rejection.code(), rejection),
            Err(unavailable) => self
                .unavailable
                .with_label_values(&[unavailable.code])
                .inc(),
        }
    }

    /// Counts the outcome of a multi-stream append and observes its latency.
    pub(crate) fn record_group(&self, group: &GroupAppend, reply: &GroupReply, latency: Duration) {
        self.append_latency.observe(latency.as_secs_f64());
        match reply {
            Ok(GroupOutcome::Accepted(_)) => {
                self.appends_accepted.inc();
                self.events_accepted.inc_by(group.event_count() as u64);
            }
            Ok(GroupOutcome::Rejected(rejected)) => {
                self.rejected(rejected.rejection.code(), &rejected.rejection)
            }
            Err(unavailable) => self
                .unavailable
                .with_label_values(&[unavailable.code])
                .inc(),
        }
    }

    fn rejected(&self, code: &str, rejection: &Rejection) {
        self.appends_rejected.with_label_values(&[code]).inc();
        if matches!(rejection, Rejection::WrongExpectedVersion { .. }) {
            self.conflicts.inc();
        }
    }

    /// Counts an append refused before the pipeline (invalid input).
    pub(crate) fn invalid(&self, code: &str) {
        self.appends_rejected.with_label_values(&[code]).inc();
    }
}

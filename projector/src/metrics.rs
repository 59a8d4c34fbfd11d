//! The projector's metrics, labelled by projection.

use esk_runtime::telemetry::{MetricFactory, LATENCY_BUCKETS};
use prometheus::{Histogram, IntCounterVec, IntGaugeVec, Registry};

#[derive(Debug)]
pub(crate) struct ProjectorMetrics {
    pub(crate) events_applied: IntCounterVec,
    pub(crate) replayed: IntCounterVec,
    pub(crate) lag_events: IntGaugeVec,
    pub(crate) lag_seconds: IntGaugeVec,
    pub(crate) paused: IntGaugeVec,
    pub(crate) stalled: IntGaugeVec,
    pub(crate) queue_depth: IntGaugeVec,
    pub(crate) retries: IntCounterVec,
    pub(crate) dead_letters: IntCounterVec,
    pub(crate) zombie_rollbacks: IntCounterVec,
    pub(crate) event_lag: Histogram,
}

impl ProjectorMetrics {
    /// Starts every series of a projection at zero, so dashboards see it before its first event.
    pub(crate) fn init_projection(&self, name: &str) {
        let l = &[name];
        self.events_applied.with_label_values(l);
        self.replayed.with_label_values(l);
        self.lag_events.with_label_values(l);
        self.lag_seconds.with_label_values(l);
        self.paused.with_label_values(l);
        self.stalled.with_label_values(l);
        self.queue_depth.with_label_values(l);
        self.retries.with_label_values(l);
        self.dead_letters.with_label_values(l);
        self.zombie_rollbacks.with_label_values(l);
    }

    pub(crate) fn new(registry: &Registry) -> Self {
        let m = MetricFactory::new(registry);
        let p = &["projection"];
        ProjectorMetrics {
            events_applied: m.counter_vec(
                "projector_events_applied_total",
                "Events applied (live and replay)",
                p,
            ),
            replayed: m.counter_vec(
                "projector_events_replayed_total",
                "Events applied from a Postgres replay",
                p,
            ),
            lag_events: m.gauge_vec(
                "projector_lag_events",
                "Indexed events past the projection's furthest applied position",
                p,
            ),
            lag_seconds: m.gauge_vec(
                "projector_lag_seconds",
                "Age of the last applied event when it was applied",
                p,
            ),
            paused: m.gauge_vec(
                "projector_paused",
                "1 while the projection's partitions are paused (queue full)",
                p,
            ),
            stalled: m.gauge_vec(
                "projector_stalled",
                "1 while the projection waits out a transient handler or database failure",
                p,
            ),
            queue_depth: m.gauge_vec("projector_queue_depth", "Records queued for the handler", p),
            retries: m.counter_vec(
                "projector_retries_total",
                "Retries after a transient failure or a rejection",
                p,
            ),
            dead_letters: m.counter_vec("projector_dead_letters_total", "Events dead-lettered", p),
            zombie_rollbacks: m.counter_vec(
                "projector_zombie_rollbacks_total",
                "Batches dropped because another consumer owns the partition",
                p,
            ),
            event_lag: m.histogram(
                "projector_event_lag_seconds",
                "From acceptance at ingest to application by a live projection",
                LATENCY_BUCKETS,
            ),
        }
    }
}

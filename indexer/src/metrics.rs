//! The indexer's metrics.

use esk_runtime::telemetry::{MetricFactory, LATENCY_BUCKETS, SECONDS_BUCKETS, SIZE_BUCKETS};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

/// Counters, gauges and histograms of the indexer process.
#[derive(Debug)]
pub(crate) struct IndexerMetrics {
    pub(crate) events_indexed: IntCounter,
    pub(crate) batches: IntCounter,
    pub(crate) batch_events: Histogram,
    pub(crate) copy_seconds: Histogram,
    pub(crate) commit_seconds: Histogram,
    pub(crate) ack_to_indexed: Histogram,
    pub(crate) phantoms: IntCounter,
    pub(crate) dead_letters: IntCounter,
    pub(crate) zombie_rollbacks: IntCounter,
    pub(crate) halted_partitions: IntGauge,
    pub(crate) invariant_violations: IntCounter,
    pub(crate) lag_records: IntGaugeVec,
    pub(crate) lag_seconds: IntGaugeVec,
    pub(crate) published: IntCounter,
    pub(crate) publish_lag: IntGauge,
    pub(crate) publisher_leader: IntGauge,
    pub(crate) committer_leader: IntGauge,
    pub(crate) read_ahead_events: IntGauge,
    pub(crate) unindexed_appends: IntGauge,
    pub(crate) ledger_pruned: IntCounter,
    pub(crate) scavenged: IntCounter,
    pub(crate) errors: IntCounterVec,
}

impl IndexerMetrics {
    pub(crate) fn new(registry: &Registry) -> Self {
        let metrics = Self::register(registry);
        // Known label values start at zero, so dashboards and alerts see the series at once.
        for stage in [
            "consume",
            "load_offset",
            "commit",
            "publish",
            "ledger_maintenance",
            "scavenge",
        ] {
            metrics.errors.with_label_values(&[stage]);
        }
        metrics
    }

    fn register(registry: &Registry) -> Self {
        let m = MetricFactory::new(registry);
        IndexerMetrics {
            events_indexed: m.counter(
                "indexer_events_indexed_total",
                "Events written to the events table",
            ),
            batches: m.counter("indexer_batches_total", "Indexing transactions committed"),
            batch_events: m.histogram(
                "indexer_batch_events",
                "Records per indexing transaction",
                SIZE_BUCKETS,
            ),
            copy_seconds: m.histogram(
                "indexer_copy_seconds",
                "Duration of the binary COPY",
                SECONDS_BUCKETS,
            ),
            commit_seconds: m.histogram(
                "indexer_transaction_seconds",
                "Duration of an indexing transaction",
                SECONDS_BUCKETS,
            ),
            ack_to_indexed: m.histogram(
                "indexer_ack_to_indexed_seconds",
                "From ingest's produce of an event to ingest-log (just before it acknowledges the append) to the commit that indexed it",
                LATENCY_BUCKETS,
            ),
            phantoms: m.counter(
                "indexer_phantoms_dropped_total",
                "ingest-log records of uncommitted attempts, skipped",
            ),
            dead_letters: m.counter(
                "indexer_dead_letters_total",
                "Undecodable ingest-log records dead-lettered",
            ),
            zombie_rollbacks: m.counter(
                "indexer_zombie_rollbacks_total",
                "Batches rolled back because another consumer owns the partition",
            ),
            halted_partitions: m.gauge(
                "indexer_halted_partitions",
                "Ingest-log partitions halted at a record Postgres refuses (a broken invariant or data validation let through)",
            ),
            invariant_violations: m.counter(
                "indexer_invariant_violations_total",
                "Unique violations while indexing (an invariant broke)",
            ),
            lag_records: m.gauge_vec(
                "indexer_lag_records",
                "Records between the indexed offset and the partition's high watermark",
                &["partition"],
            ),
            lag_seconds: m.gauge_vec(
                "indexer_lag_seconds",
                "Age of the last indexed event when it was indexed",
                &["partition"],
            ),
            published: m.counter(
                "indexer_published_total",
                "Events published to the canonical topic",
            ),
            publish_lag: m.gauge(
                "indexer_publish_lag_events",
                "Indexed events not yet published",
            ),
            publisher_leader: m.gauge(
                "indexer_publisher_leader",
                "1 when this instance is the elected publisher",
            ),
            committer_leader: m.gauge(
                "indexer_committer_leader",
                "1 when this instance is the elected index committer (reads every ingest-log partition), 0 on standby",
            ),
            read_ahead_events: m.gauge(
                "indexer_read_ahead_events",
                "Events read ahead past the last batch (multi-stream groups not yet whole wait here)",
            ),
            unindexed_appends: m.gauge(
                "indexer_unindexed_appends",
                "Accepted appends older than the alert threshold and not indexed",
            ),
            ledger_pruned: m.counter(
                "indexer_ledger_pruned_total",
                "Ledger rows pruned after the idempotency window",
            ),
            scavenged: m.counter(
                "scavenged_events_total",
                "Hidden events (retention rules, deletes) the scavenger deleted",
            ),
            errors: m.counter_vec(
                "indexer_errors_total",
                "Transient errors, by stage",
                &["stage"],
            ),
        }
    }
}

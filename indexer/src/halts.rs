//! Partitions halted at a record Postgres refuses, and the operator's way out: a quarantine
//! request (`esk indexer quarantine`) resumes the partition, and the record is set aside in
//! the transaction that moves past it. Nothing is dropped; a halt outlives rebalances until
//! the process restarts.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use esk_model::ingest_log;
use esk_runtime::kafka::RebalanceLog;
use esk_runtime::telemetry::Health;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;

use crate::commit::CommitError;
use crate::index_batch::Pending;
use crate::internal_events::{PartitionHalted, PartitionResumed};
use crate::metrics::IndexerMetrics;
use esk_runtime::internal_event::InternalEvent;

/// The halted partitions of one consumer and the quarantined records awaiting their turn.
#[derive(Debug)]
pub(crate) struct Halts {
    topic: String,
    /// Halted partition → the offset it stands at.
    halted: HashMap<i32, i64>,
    /// Records an operator quarantined, to be set aside when they come round again.
    quarantined: HashSet<(i32, i64)>,
    health: Arc<Health>,
    metrics: Arc<IndexerMetrics>,
}

impl Halts {
    pub(crate) fn new(topic: &str, health: Arc<Health>, metrics: Arc<IndexerMetrics>) -> Self {
        Halts {
            topic: topic.to_owned(),
            halted: HashMap::new(),
            quarantined: HashSet::new(),
            health,
            metrics,
        }
    }

    /// Whether any partition is halted.
    pub(crate) fn any(&self) -> bool {
        !self.halted.is_empty()
    }

    pub(crate) fn is_halted(&self, partition: i32) -> bool {
        self.halted.contains_key(&partition)
    }

    /// Records to set aside instead of indexing, as (partition, offset).
    pub(crate) fn quarantined(&self) -> &HashSet<(i32, i64)> {
        &self.quarantined
    }

    /// Stops indexing a partition at a record Postgres refuses: nothing is dropped, the
    /// partition waits for an operator, `/health` and the metrics say where and why.
    pub(crate) fn halt(
        &mut self,
        consumer: &StreamConsumer<RebalanceLog>,
        record: &Pending,
        refusal: &CommitError,
    ) {
        let (partition, offset) = (record.partition, record.offset);
        // The whole record halts, and a quarantine sets the whole record aside: every event in
        // it (format 2: all this attempt's events for the partition), each append named here.
        let events = ingest_log::decode(&record.payload).unwrap_or_default();
        let event = events.first();
        let mut appends: Vec<String> = Vec::new();
        for e in &events {
            let id = e.append_id.to_string();
            if !appends.contains(&id) {
                appends.push(id);
            }
        }
        let append = match appends.len() {
            0 => "append unknown".to_owned(),
            1 => format!("append {}", appends[0]),
            n => format!(
                "{} events of {n} appends: {}",
                events.len(),
                appends.join(", ")
            ),
        };
        self.halted.insert(partition, offset);
        PartitionHalted {
            metrics: &self.metrics,
            partition,
            offset,
            event,
            refusal,
            invariant_violation: refusal.is_invariant_violation(),
            halted: self.halted.len(),
        }
        .emit();
        self.health.set_problem(
            &format!("partition-{partition}"),
            format!(
                "ingest-log partition {partition} halted at offset {offset} ({append}): \
                 {refusal}; after a look, `esk indexer quarantine --partition {partition} \
                 --offset {offset}` sets the record aside"
            ),
        );
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.topic, partition);
        if let Err(error) = consumer.pause(&list) {
            tracing::warn!(%error, partition, "cannot pause the halted partition");
        }
    }

    /// Resumes halted partitions whose record an operator quarantined, seeking the consumer
    /// to that record; returns them as (partition, offset). The record is set aside when it
    /// is read again, in the transaction that moves on.
    pub(crate) async fn release_quarantined(
        &mut self,
        pool: &PgPool,
        consumer: &StreamConsumer<RebalanceLog>,
    ) -> Vec<(i32, i64)> {
        let partitions: Vec<i32> = self.halted.keys().copied().collect();
        let requested: Vec<(i32, i64)> = match sqlx::query_as(
            "SELECT partition_id, kafka_offset FROM indexer_quarantine
             WHERE topic = $1 AND partition_id = ANY($2) AND quarantined_at IS NULL",
        )
        .bind(&self.topic)
        .bind(&partitions)
        .fetch_all(pool)
        .await
        {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "cannot read quarantine requests");
                return Vec::new();
            }
        };
        let mut released = Vec::new();
        for (partition, offset) in requested {
            if self.halted.get(&partition) != Some(&offset) {
                continue;
            }
            let mut list = TopicPartitionList::new();
            list.add_partition(&self.topic, partition);
            if let Err(error) = consumer.resume(&list) {
                tracing::warn!(%error, partition, "cannot resume the partition; will retry");
                continue;
            }
            if let Err(error) = consumer.seek(
                &self.topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(5),
            ) {
                tracing::warn!(%error, partition, "cannot seek to the quarantined record; will retry");
                let _ = consumer.pause(&list);
                continue;
            }
            self.quarantined.insert((partition, offset));
            self.halted.remove(&partition);
            self.health.clear_problem(&format!("partition-{partition}"));
            PartitionResumed {
                metrics: &self.metrics,
                partition,
                offset,
                halted: self.halted.len(),
            }
            .emit();
            released.push((partition, offset));
        }
        released
    }

    /// Notes quarantined records a committed batch set aside.
    pub(crate) fn set_aside(&mut self, records: &[(i32, i64)]) {
        for &(partition, offset) in records {
            tracing::warn!(
                partition,
                offset,
                "record quarantined: set aside in indexer_quarantine, not indexed"
            );
            self.quarantined.remove(&(partition, offset));
        }
    }
}

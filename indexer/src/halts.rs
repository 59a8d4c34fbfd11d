//! Partitions halted at a record Postgres refuses, and the operator's way out: a quarantine
//! request (`esk indexer quarantine`) resumes the partition, and the record is set aside in
//! the transaction that moves past it. Nothing is dropped. A record of a multi-stream append
//! halts every partition holding a part of its group (the group never commits partially), and a
//! quarantine of one part sets the whole group aside. A leader that steps down forgets its
//! halts: the next leader reads the refused record again and halts there again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use esk_model::ingest_log;
use esk_runtime::telemetry::Health;
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
    /// Halted partition → the other (partition, offset) halted with it (parts of one group).
    linked: HashMap<i32, Vec<(i32, i64)>>,
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
            linked: HashMap::new(),
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

    /// Halts every partition of `records` (one record each: the refused record, or each part
    /// of the refused group) together: a quarantine of one of them sets them all aside.
    pub(crate) fn halt_together(&mut self, records: &[&Pending], refusal: &CommitError) {
        for record in records {
            let others: Vec<(i32, i64)> = records
                .iter()
                .filter(|r| r.partition != record.partition)
                .map(|r| (r.partition, r.offset))
                .collect();
            self.linked.insert(record.partition, others);
            self.halt(record, refusal);
        }
    }

    /// Forgets every halt (the leader steps down: its consumer is gone, and the next leader
    /// finds the refused records again).
    pub(crate) fn forget_halts(&mut self) {
        for partition in self.halted.keys() {
            self.health.clear_problem(&format!("partition-{partition}"));
        }
        self.halted.clear();
        self.linked.clear();
        self.metrics.halted_partitions.set(0);
    }

    /// Stops indexing a partition at a record Postgres refuses: nothing is dropped, the
    /// partition waits for an operator, `/health` and the metrics say where and why.
    /// The caller stops reading the partition (it is left out of the assignment).
    fn halt(&mut self, record: &Pending, refusal: &CommitError) {
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
    }

    /// Resumes halted partitions whose record an operator quarantined; returns them as
    /// (partition, offset): the caller reads them again from their stored offset (the halted
    /// record), and the record is set aside in the transaction that moves on.
    pub(crate) async fn release_quarantined(&mut self, pool: &PgPool) -> Vec<(i32, i64)> {
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
        let mut requested: Vec<(i32, i64)> = requested
            .into_iter()
            .filter(|(p, o)| self.halted.get(p) == Some(o))
            .collect();
        // The other parts of a halted group are set aside with the one the operator named.
        let mut linked: Vec<(i32, i64)> = Vec::new();
        for (partition, _) in &requested {
            for &(p, o) in self.linked.get(partition).into_iter().flatten() {
                if self.halted.get(&p) == Some(&o) && !requested.contains(&(p, o)) {
                    linked.push((p, o));
                }
            }
        }
        linked.sort_unstable();
        linked.dedup();
        for &(p, o) in &linked {
            let reason = "a part of a multi-stream append whose other part was quarantined";
            if let Err(error) = sqlx::query(
                "INSERT INTO indexer_quarantine (topic, partition_id, kafka_offset, reason)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(&self.topic)
            .bind(p)
            .bind(o)
            .bind(reason)
            .execute(pool)
            .await
            {
                tracing::warn!(%error, "cannot record the quarantine of a group's part");
                return Vec::new();
            }
            requested.push((p, o));
        }
        for (partition, offset) in requested {
            self.quarantined.insert((partition, offset));
            self.halted.remove(&partition);
            self.linked.remove(&partition);
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

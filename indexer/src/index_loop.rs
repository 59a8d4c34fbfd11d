//! The consuming side: one consumer in the group on `ingest-log`, per-partition positions
//! checked against the offsets stored in Postgres, batches handed to one committer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use esk_core::kafka::RebalanceLog;
use esk_core::model::category_of;
use esk_core::telemetry::Health;
use esk_core::wire::{CanonicalEvent, IngestLogEvent};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::classify;
use crate::commit::{self, BatchWrite, CommitError, DeadLetter};
use crate::committed_tail::CommittedTail;
use crate::config::IndexerConfig;
use crate::copy_batch::EventRow;
use crate::metrics::IndexerMetrics;

/// Where a partition stands, as this consumer knows it.
#[derive(Debug, Default, Clone, Copy)]
struct PartitionState {
    /// The next offset to index, from Postgres (None: no row yet, take what comes).
    expected: Option<i64>,
    /// A seek to `expected` is under way; records past it are ignored until it lands.
    seeking: bool,
    /// Halted after an invariant violation.
    halted: bool,
}

/// A record accepted into the batch.
#[derive(Clone)]
struct Pending {
    partition: i32,
    offset: i64,
    /// The record's value (its headers and key are not needed: the value carries everything).
    payload: Vec<u8>,
}

pub(crate) struct Indexer {
    consumer: StreamConsumer<RebalanceLog>,
    pool: PgPool,
    topic: String,
    metrics: Arc<IndexerMetrics>,
    health: Arc<Health>,
    states: HashMap<i32, PartitionState>,
    max_batch: usize,
    linger: Duration,
    indexed: Arc<Notify>,
    /// Committed batches for this process's publisher.
    tail: Arc<CommittedTail>,
}

impl Indexer {
    pub(crate) fn new(
        config: &IndexerConfig,
        pool: PgPool,
        metrics: Arc<IndexerMetrics>,
        health: Arc<Health>,
        indexed: Arc<Notify>,
        tail: Arc<CommittedTail>,
    ) -> anyhow::Result<Self> {
        let mut client =
            esk_core::kafka::consumer_config(&config.common.kafka_brokers, &config.group_id);
        client
            .set("enable.auto.commit", "false")
            // Fewer, fuller fetches: every request costs the broker (on Tansu each small fetch
            // slowed ingest's produces); a batch waits at most fetch.wait.max.ms for more.
            .set("fetch.min.bytes", "65536")
            .set("fetch.wait.max.ms", "50");
        let consumer: StreamConsumer<RebalanceLog> =
            client.create_with_context(RebalanceLog::default())?;
        consumer.subscribe(&[&config.common.topics.ingest_log])?;
        Ok(Indexer {
            consumer,
            pool,
            topic: config.common.topics.ingest_log.clone(),
            metrics,
            health,
            states: HashMap::new(),
            max_batch: config.max_batch.max(1),
            linger: Duration::from_millis(config.linger_ms),
            indexed,
            tail,
        })
    }

    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => break,
                b = self.collect() => b,
            };
            if batch.is_empty() {
                continue;
            }
            self.index(batch, &shutdown).await;
        }
        tracing::info!("indexer stopped");
    }

    /// Forgets what we knew of partitions that moved, so their positions are read again.
    fn apply_rebalances(&mut self) {
        let changed = self.consumer.context().take_changed();
        for partition in changed {
            let halted = self.states.get(&partition).is_some_and(|s| s.halted);
            self.states.remove(&partition);
            if halted {
                // A halted partition stays halted in this process until it is restarted.
                self.states.insert(
                    partition,
                    PartitionState {
                        halted: true,
                        ..Default::default()
                    },
                );
            }
        }
    }

    /// Waits for one record, then gathers more until the batch is full or the linger passes.
    async fn collect(&mut self) -> Vec<Pending> {
        let mut batch = Vec::new();
        let deadline = tokio::time::Instant::now() + self.linger;
        loop {
            let next = if batch.is_empty() {
                Some(self.consumer.recv().await)
            } else {
                tokio::time::timeout_at(deadline, self.consumer.recv())
                    .await
                    .ok()
            };
            let Some(result) = next else { break };
            // Only where the record is and its value are kept; nothing else is copied.
            let result = result.map(|m| Pending {
                partition: m.partition(),
                offset: m.offset(),
                payload: m.payload().unwrap_or_default().to_vec(),
            });
            self.apply_rebalances();
            match result {
                Ok(record) => {
                    if let Some(pending) = self.admit(record).await {
                        batch.push(pending);
                    }
                }
                Err(error) => {
                    self.metrics.errors.with_label_values(&["consume"]).inc();
                    tracing::warn!(%error, "ingest-log consumer error");
                    if batch.is_empty() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    break;
                }
            }
            if batch.len() >= self.max_batch {
                break;
            }
        }
        batch
    }

    /// Decides whether a record is the next one to index for its partition.
    async fn admit(&mut self, record: Pending) -> Option<Pending> {
        let partition = record.partition;
        let offset = record.offset;
        if !self.states.contains_key(&partition) {
            let expected = self.stored_offset(partition).await;
            self.states.insert(
                partition,
                PartitionState {
                    expected,
                    ..Default::default()
                },
            );
        }
        let state = self.states.get_mut(&partition)?;
        if state.halted {
            return None;
        }
        match state.expected {
            Some(expected) if offset < expected => None,
            Some(expected) if offset > expected => {
                if !state.seeking {
                    state.seeking = true;
                    tracing::info!(
                        partition,
                        from = offset,
                        to = expected,
                        "seeking to the stored offset"
                    );
                    if let Err(error) = self.consumer.seek(
                        &self.topic,
                        partition,
                        Offset::Offset(expected),
                        Duration::from_secs(5),
                    ) {
                        tracing::warn!(%error, partition, "seek failed; will retry");
                        state.seeking = false;
                    }
                }
                None
            }
            _ => {
                state.seeking = false;
                state.expected = Some(offset + 1);
                Some(record)
            }
        }
    }

    async fn stored_offset(&self, partition: i32) -> Option<i64> {
        let mut backoff = esk_core::retry::until_stopped(Duration::from_secs(1));
        loop {
            match sqlx::query_scalar::<_, i64>(
                "SELECT next_offset FROM indexer_offsets WHERE topic = $1 AND partition_id = $2",
            )
            .bind(&self.topic)
            .bind(partition)
            .fetch_optional(&self.pool)
            .await
            {
                Ok(offset) => return offset,
                Err(error) => {
                    self.metrics
                        .errors
                        .with_label_values(&["load_offset"])
                        .inc();
                    tracing::warn!(%error, partition, "cannot read the stored offset; retrying");
                    tokio::time::sleep(backoff.next().unwrap_or(esk_core::retry::MAX_RETRY_DELAY))
                        .await;
                }
            }
        }
    }

    /// Indexes one batch: classify, then commit, retrying transient failures; partitions lost
    /// to another consumer are dropped from the batch and re-read from their stored offsets.
    async fn index(&mut self, mut batch: Vec<Pending>, shutdown: &CancellationToken) {
        let mut backoff = esk_core::retry::until_stopped(Duration::from_millis(50));
        loop {
            if batch.is_empty() || shutdown.is_cancelled() {
                return;
            }
            match self.try_index(&batch).await {
                Ok(()) => return,
                Err(CommitError::NotOwner(lost)) => {
                    self.metrics.zombie_rollbacks.inc();
                    tracing::info!(
                        ?lost,
                        "partitions owned elsewhere; rolled back and re-seeking"
                    );
                    self.forget(&lost);
                    batch.retain(|p| !lost.contains(&p.partition));
                }
                Err(CommitError::UniqueViolation(detail)) => {
                    // The split commits the healthy partitions; anything it could not commit
                    // is re-read from the stored offsets (the next batch's CAS fails and seeks).
                    let culprits = self.find_culprits(&batch).await;
                    self.halt(&culprits, &detail);
                    return;
                }
                Err(CommitError::Database(error)) => {
                    self.metrics.errors.with_label_values(&["commit"]).inc();
                    tracing::warn!(%error, records = batch.len(), "indexing transaction failed; retrying");
                    tokio::time::sleep(backoff.next().unwrap_or(esk_core::retry::MAX_RETRY_DELAY))
                        .await;
                }
            }
        }
    }

    /// Splits a batch that hit a unique violation by partition to find the offending ones.
    async fn find_culprits(&mut self, batch: &[Pending]) -> Vec<i32> {
        let partitions: Vec<i32> = batch
            .iter()
            .map(|p| p.partition)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut culprits = Vec::new();
        for partition in partitions {
            let part: Vec<&Pending> = batch.iter().filter(|p| p.partition == partition).collect();
            let owned: Vec<Pending> = part.into_iter().cloned().collect();
            if let Err(CommitError::UniqueViolation(_)) = self.try_index(&owned).await {
                culprits.push(partition);
            }
        }
        if culprits.is_empty() {
            // Not reproducible partition by partition: halt them all rather than drop anything.
            culprits = batch
                .iter()
                .map(|p| p.partition)
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
        }
        culprits
    }

    fn halt(&mut self, partitions: &[i32], detail: &str) {
        for partition in partitions {
            tracing::error!(partition, detail, "unique violation while indexing: an invariant broke; halting the partition (nothing dropped)");
            self.metrics.invariant_violations.inc();
            self.health.report_problem(format!(
                "ingest-log partition {partition} halted: unique violation ({detail})"
            ));
            self.states.insert(
                *partition,
                PartitionState {
                    halted: true,
                    ..Default::default()
                },
            );
            let mut list = TopicPartitionList::new();
            list.add_partition(&self.topic, *partition);
            if let Err(error) = self.consumer.pause(&list) {
                tracing::warn!(%error, partition, "cannot pause the halted partition");
            }
        }
        let halted = self.states.values().filter(|s| s.halted).count();
        self.metrics.halted_partitions.set(halted as i64);
    }

    fn forget(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.states.remove(partition);
        }
    }

    async fn try_index(&mut self, batch: &[Pending]) -> Result<(), CommitError> {
        let mut ranges: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
        for p in batch {
            let range = ranges
                .entry(p.partition)
                .or_insert((p.offset, p.offset + 1));
            range.1 = p.offset + 1;
        }
        let decoded: Vec<Result<IngestLogEvent, String>> = batch
            .iter()
            .map(|p| {
                serde_json::from_slice::<IngestLogEvent>(&p.payload).map_err(|e| e.to_string())
            })
            .collect();
        let pairs: HashSet<classify::AttemptPair> = decoded
            .iter()
            .filter_map(|d| d.as_ref().ok())
            .map(|e| (e.append_id, e.attempt_id))
            .collect();
        let committed = if pairs.is_empty() {
            HashSet::new()
        } else {
            classify::committed(&self.pool, &pairs).await?
        };
        let mut write = BatchWrite {
            ranges,
            ..Default::default()
        };
        let mut phantoms = 0u64;
        // decoded[row_sources[i]] is the event of write.rows[i].
        let mut row_sources: Vec<usize> = Vec::new();
        let mut newest: HashMap<i32, chrono::DateTime<Utc>> = HashMap::new();
        for (source, (pending, decoded)) in batch.iter().zip(&decoded).enumerate() {
            match decoded {
                Ok(event) if committed.contains(&(event.append_id, event.attempt_id)) => {
                    newest.insert(pending.partition, event.created_at);
                    row_sources.push(source);
                    write.rows.push(EventRow {
                        global_position: 0,
                        event_id: event.event_id,
                        stream_id: &event.stream_id,
                        category: category_of(&event.stream_id),
                        event_type: &event.event_type,
                        data: event.data.get(),
                        metadata: event.metadata.as_deref().map(|m| m.get()),
                        version: event.version,
                        created_at: event.created_at,
                        kafka_partition: pending.partition,
                        kafka_offset: pending.offset,
                    });
                }
                Ok(event) => {
                    phantoms += 1;
                    tracing::debug!(stream_id = %event.stream_id, event_id = %event.event_id,
                        append_id = %event.append_id, attempt_id = %event.attempt_id, "phantom skipped");
                }
                Err(error) => {
                    tracing::warn!(partition = pending.partition, offset = pending.offset, %error, "undecodable ingest-log record dead-lettered");
                    write.dead_letters.push(DeadLetter {
                        partition: pending.partition,
                        offset: pending.offset,
                        payload: pending.payload.clone(),
                        error: error.clone(),
                    });
                }
            }
        }
        let rows = write.rows.len() as u64;
        let dead = write.dead_letters.len() as u64;
        commit::commit(&self.pool, &self.topic, &mut write, &self.metrics).await?;
        if self.tail.is_active() {
            let committed_events = write
                .rows
                .iter()
                .zip(&row_sources)
                .filter_map(|(row, source)| {
                    let event = decoded.get(*source)?.as_ref().ok()?;
                    Some(CanonicalEvent {
                        event_id: event.event_id,
                        stream_id: event.stream_id.clone(),
                        version: event.version,
                        global_position: row.global_position,
                        event_type: event.event_type.clone(),
                        data: event.data.clone(),
                        metadata: event.metadata.clone(),
                        // As stored: Postgres keeps microseconds (so does the COPY encoding).
                        created_at: event.created_at.trunc_subsecs(6),
                    })
                })
                .collect();
            self.tail.extend(committed_events);
        }

        self.metrics.batches.inc();
        self.metrics.batch_events.observe(batch.len() as f64);
        self.metrics.events_indexed.inc_by(rows);
        self.metrics.phantoms.inc_by(phantoms);
        self.metrics.dead_letters.inc_by(dead);
        let now = Utc::now();
        for (partition, created_at) in newest {
            self.metrics
                .lag_seconds
                .with_label_values(&[&partition.to_string()])
                .set((now - created_at).num_seconds().max(0));
        }
        if rows > 0 {
            self.indexed.notify_one();
        }
        // Kafka's committed offsets are only a hint for where to start; Postgres decides.
        let mut offsets = TopicPartitionList::new();
        for (partition, (_, next)) in &write.ranges {
            let _ = offsets.add_partition_offset(&self.topic, *partition, Offset::Offset(*next));
        }
        if let Err(error) = self.consumer.commit(&offsets, CommitMode::Async) {
            tracing::debug!(%error, "kafka offset hint not committed");
        }
        Ok(())
    }
}

//! The consuming side: one consumer in the group on `ingest-log`, per-partition positions
//! checked against the offsets stored in Postgres, batches handed to one committer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use esk_model::event::category_of;
use esk_model::wire::{CanonicalEvent, IngestLogEvent};
use esk_runtime::kafka::RebalanceLog;
use esk_runtime::supervisor::Progress;
use esk_runtime::telemetry::Health;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::classify;
use crate::commit::{self, BatchWrite, CommitError, DeadLetter, Mode, Quarantined};

/// Why a record of a batch is not an event to index.
#[derive(Debug)]
enum NotIndexed {
    /// Its value does not decode: dead-lettered.
    Undecodable(String),
    /// An operator quarantined it: set aside in `indexer_quarantine`.
    Quarantined,
}
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
    /// Halted at this offset: Postgres refused the record there (nothing after it is indexed
    /// until an operator quarantines it).
    halted_at: Option<i64>,
}

impl PartitionState {
    fn halted(&self) -> bool {
        self.halted_at.is_some()
    }
}

/// How often a process with a halted partition looks for an operator's quarantine request.
const QUARANTINE_POLL: Duration = Duration::from_secs(2);
/// Failed indexing transactions in a row before `/health` says so (a blip is not a problem).
const FAILURES_BEFORE_UNHEALTHY: u32 = 3;

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
    max_batch_bytes: usize,
    linger: Duration,
    indexed: Arc<Notify>,
    /// Committed batches for this process's publisher.
    tail: Arc<CommittedTail>,
    /// Records an operator quarantined, to be set aside when they come round again.
    quarantined: HashSet<(i32, i64)>,
    /// Indexing transactions that failed in a row (transient errors).
    failures: u32,
    /// Tells the watchdog whether indexing moves.
    progress: Arc<Progress>,
}

impl Indexer {
    pub(crate) fn new(
        config: &IndexerConfig,
        pool: PgPool,
        metrics: Arc<IndexerMetrics>,
        health: Arc<Health>,
        indexed: Arc<Notify>,
        tail: Arc<CommittedTail>,
        progress: Arc<Progress>,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let mut client =
            esk_runtime::kafka::consumer_config(&config.common.kafka_brokers, &config.group_id);
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
            max_batch_bytes: config.max_batch_bytes.max(1),
            linger: Duration::from_millis(config.linger_ms),
            indexed,
            tail,
            quarantined: HashSet::new(),
            failures: 0,
            progress,
        })
    }

    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        loop {
            if self.states.values().any(PartitionState::halted) {
                self.release_quarantined().await;
            }
            let batch = tokio::select! {
                _ = shutdown.cancelled() => break,
                b = self.collect() => b,
            };
            if batch.is_empty() {
                continue;
            }
            self.progress.busy();
            self.index(batch, &shutdown).await;
            self.progress.progressed();
            self.progress.idle();
        }
        tracing::info!("indexer stopped");
    }

    /// Forgets what we knew of partitions that moved, so their positions are read again.
    fn apply_rebalances(&mut self) {
        let changed = self.consumer.context().take_changed();
        for partition in changed {
            let halted_at = self.states.get(&partition).and_then(|s| s.halted_at);
            self.states.remove(&partition);
            if halted_at.is_some() {
                // A halted partition stays halted in this process until it is restarted.
                self.states.insert(
                    partition,
                    PartitionState {
                        halted_at,
                        ..Default::default()
                    },
                );
            }
        }
    }

    /// Waits for one record, then gathers more until the batch is full or the linger passes.
    async fn collect(&mut self) -> Vec<Pending> {
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let deadline = tokio::time::Instant::now() + self.linger;
        loop {
            let next = if batch.is_empty() {
                let halted = self.states.values().any(PartitionState::halted);
                if halted {
                    // Come back now and then to look for a quarantine request.
                    match tokio::time::timeout(QUARANTINE_POLL, self.consumer.recv()).await {
                        Ok(result) => Some(result),
                        Err(_) => return batch,
                    }
                } else {
                    Some(self.consumer.recv().await)
                }
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
                        bytes += pending.payload.len();
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
            if batch.len() >= self.max_batch || bytes >= self.max_batch_bytes {
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
        if state.halted() {
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
        let mut backoff = esk_runtime::retry::until_stopped(Duration::from_secs(1));
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
                    tokio::time::sleep(
                        backoff
                            .next()
                            .unwrap_or(esk_runtime::retry::MAX_RETRY_DELAY),
                    )
                    .await;
                }
            }
        }
    }

    /// Indexes one batch: classify, then commit, retrying transient failures; partitions lost
    /// to another consumer are dropped from the batch and re-read from their stored offsets; a
    /// batch Postgres refuses is narrowed to the refused record, whose partition halts.
    async fn index(&mut self, mut batch: Vec<Pending>, shutdown: &CancellationToken) {
        let mut backoff = esk_runtime::retry::until_stopped(Duration::from_millis(50));
        loop {
            if batch.is_empty() || shutdown.is_cancelled() {
                return;
            }
            match self.try_index(&batch, Mode::Commit).await {
                Ok(()) => {
                    self.indexing_recovered();
                    return;
                }
                Err(CommitError::NotOwner(lost)) => {
                    self.metrics.zombie_rollbacks.inc();
                    tracing::info!(
                        ?lost,
                        "partitions owned elsewhere; rolled back and re-seeking"
                    );
                    self.forget(&lost);
                    batch.retain(|p| !lost.contains(&p.partition));
                }
                Err(refused @ CommitError::Refused { .. }) => {
                    self.indexing_recovered();
                    self.isolate_refused(&batch, refused).await;
                    return;
                }
                Err(CommitError::Database(error)) => {
                    self.metrics.errors.with_label_values(&["commit"]).inc();
                    self.failures += 1;
                    if self.failures >= FAILURES_BEFORE_UNHEALTHY {
                        self.health.set_problem(
                            "indexing",
                            format!(
                                "{} indexing transactions in a row failed; retrying: {error}",
                                self.failures
                            ),
                        );
                    }
                    tracing::warn!(%error, records = batch.len(), failures = self.failures,
                        "indexing transaction failed; retrying");
                    self.progress.blocked_by(&error);
                    tokio::time::sleep(
                        backoff
                            .next()
                            .unwrap_or(esk_runtime::retry::MAX_RETRY_DELAY),
                    )
                    .await;
                }
            }
        }
    }

    fn indexing_recovered(&mut self) {
        if self.failures > 0 {
            self.failures = 0;
            self.health.clear_problem("indexing");
        }
    }

    /// Commits each partition of a refused batch on its own; in a partition that is refused
    /// again, finds the first refused record, commits what comes before it and halts there.
    /// Every other partition keeps indexing; nothing is skipped.
    async fn isolate_refused(&mut self, batch: &[Pending], refused: CommitError) {
        tracing::warn!(error = %refused, records = batch.len(), "Postgres refused a batch; narrowing it down");
        let mut partitions: Vec<i32> = batch.iter().map(|p| p.partition).collect();
        partitions.sort_unstable();
        partitions.dedup();
        for partition in partitions {
            let records: Vec<Pending> = batch
                .iter()
                .filter(|p| p.partition == partition)
                .cloned()
                .collect();
            let outcome = match self.try_index(&records, Mode::Commit).await {
                Ok(()) => continue,
                Err(refused @ CommitError::Refused { .. }) => {
                    self.first_refused(&records, refused).await
                }
                Err(other) => Err(other),
            };
            match outcome {
                Ok((index, refusal)) => {
                    if index > 0 {
                        if let Err(error) = self.try_index(&records[..index], Mode::Commit).await {
                            // Re-read from the stored offset later; the halt below still holds.
                            tracing::warn!(%error, partition, "cannot commit the records before the refused one");
                        }
                    }
                    self.halt(&records[index], &refusal);
                }
                Err(error) => {
                    // Not narrowed this time (the database went away, the partition moved):
                    // re-read the partition from its stored offset and try again.
                    tracing::warn!(%error, partition, "cannot narrow the refused batch now; re-reading the partition");
                    self.forget(&[partition]);
                }
            }
        }
    }

    /// The index of the first record whose inclusion makes Postgres refuse `records` (which it
    /// refuses whole, with `refused`), found by bisecting prefixes in rolled-back transactions.
    async fn first_refused(
        &mut self,
        records: &[Pending],
        refused: CommitError,
    ) -> Result<(usize, CommitError), CommitError> {
        let (mut accepted, mut refused_at) = (0, records.len());
        let mut refusal = refused;
        while refused_at - accepted > 1 {
            let mid = accepted + (refused_at - accepted) / 2;
            match self.try_index(&records[..mid], Mode::TryOnly).await {
                Ok(()) => accepted = mid,
                Err(error @ CommitError::Refused { .. }) => {
                    refused_at = mid;
                    refusal = error;
                }
                Err(other) => return Err(other),
            }
        }
        Ok((refused_at - 1, refusal))
    }

    /// Stops indexing a partition at a record Postgres refuses: nothing is dropped, the
    /// partition waits for an operator, `/health` and the metrics say where and why.
    fn halt(&mut self, record: &Pending, refusal: &CommitError) {
        let (partition, offset) = (record.partition, record.offset);
        let event = serde_json::from_slice::<IngestLogEvent>(&record.payload).ok();
        let append_id = event.as_ref().map(|e| e.append_id.to_string());
        let append = append_id.as_deref().unwrap_or("unknown");
        tracing::error!(
            partition,
            offset,
            append_id = append,
            stream_id = event.as_ref().map(|e| e.stream_id.as_str()),
            event_id = event.as_ref().map(|e| e.event_id.to_string()),
            error = %refusal,
            "ingest-log partition halted at a record Postgres refuses (nothing dropped); \
             `esk indexer quarantine --partition {partition} --offset {offset}` sets it aside"
        );
        if refusal.is_invariant_violation() {
            self.metrics.invariant_violations.inc();
        }
        self.health.set_problem(
            &format!("partition-{partition}"),
            format!(
                "ingest-log partition {partition} halted at offset {offset} (append {append}): \
                 {refusal}; after a look, `esk indexer quarantine --partition {partition} \
                 --offset {offset}` sets the record aside"
            ),
        );
        self.states.insert(
            partition,
            PartitionState {
                halted_at: Some(offset),
                ..Default::default()
            },
        );
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.topic, partition);
        if let Err(error) = self.consumer.pause(&list) {
            tracing::warn!(%error, partition, "cannot pause the halted partition");
        }
        self.count_halted();
    }

    fn count_halted(&self) {
        let halted = self.states.values().filter(|s| s.halted()).count();
        self.metrics.halted_partitions.set(halted as i64);
    }

    /// Resumes halted partitions whose record an operator quarantined: the record is set aside
    /// (into `indexer_quarantine`) when it is read again, in the transaction that moves on.
    async fn release_quarantined(&mut self) {
        let halted: Vec<(i32, i64)> = self
            .states
            .iter()
            .filter_map(|(p, s)| s.halted_at.map(|o| (*p, o)))
            .collect();
        let partitions: Vec<i32> = halted.iter().map(|(p, _)| *p).collect();
        let requested: Vec<(i32, i64)> = match sqlx::query_as(
            "SELECT partition_id, kafka_offset FROM indexer_quarantine
             WHERE topic = $1 AND partition_id = ANY($2) AND quarantined_at IS NULL",
        )
        .bind(&self.topic)
        .bind(&partitions)
        .fetch_all(&self.pool)
        .await
        {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "cannot read quarantine requests");
                return;
            }
        };
        for (partition, offset) in requested {
            if !halted.contains(&(partition, offset)) {
                continue;
            }
            let mut list = TopicPartitionList::new();
            list.add_partition(&self.topic, partition);
            if let Err(error) = self.consumer.resume(&list) {
                tracing::warn!(%error, partition, "cannot resume the partition; will retry");
                continue;
            }
            if let Err(error) = self.consumer.seek(
                &self.topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(5),
            ) {
                tracing::warn!(%error, partition, "cannot seek to the quarantined record; will retry");
                let _ = self.consumer.pause(&list);
                continue;
            }
            tracing::warn!(
                partition,
                offset,
                "operator quarantined the record the partition halted at; resuming"
            );
            self.quarantined.insert((partition, offset));
            self.states.insert(
                partition,
                PartitionState {
                    expected: Some(offset),
                    seeking: true,
                    halted_at: None,
                },
            );
            self.health.clear_problem(&format!("partition-{partition}"));
        }
        self.count_halted();
    }

    fn forget(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.states.remove(partition);
        }
    }

    async fn try_index(&mut self, batch: &[Pending], mode: Mode) -> Result<(), CommitError> {
        let mut ranges: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
        for p in batch {
            let range = ranges
                .entry(p.partition)
                .or_insert((p.offset, p.offset + 1));
            range.1 = p.offset + 1;
        }
        let decoded: Vec<Result<IngestLogEvent, NotIndexed>> = batch
            .iter()
            .map(|p| {
                if self.quarantined.contains(&(p.partition, p.offset)) {
                    return Err(NotIndexed::Quarantined);
                }
                serde_json::from_slice::<IngestLogEvent>(&p.payload)
                    .map_err(|e| NotIndexed::Undecodable(e.to_string()))
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
                Err(NotIndexed::Quarantined) => {
                    write.quarantined.push(Quarantined {
                        partition: pending.partition,
                        offset: pending.offset,
                        payload: pending.payload.clone(),
                    });
                }
                Err(NotIndexed::Undecodable(error)) => {
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
        commit::commit(&self.pool, &self.topic, &mut write, &self.metrics, mode).await?;
        if mode == Mode::TryOnly {
            return Ok(());
        }
        for q in &write.quarantined {
            tracing::warn!(
                partition = q.partition,
                offset = q.offset,
                "record quarantined: set aside in indexer_quarantine, not indexed"
            );
            self.quarantined.remove(&(q.partition, q.offset));
        }
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

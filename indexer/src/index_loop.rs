//! The consuming side: one consumer in the group on `ingest-log`, its partitions followed by
//! the shared partition cursor (positions from Postgres), batches handed to one committer,
//! transient failures retried, refused batches narrowed down and their partition halted.

use std::sync::Arc;
use std::time::Duration;

use esk_model::wire::header;
use esk_runtime::internal_event::InternalEvent;
use esk_runtime::kafka::RebalanceLog;
use esk_runtime::partition_cursor::{Admission, PartitionCursor, Spans};
use esk_runtime::supervisor::Progress;
use esk_runtime::telemetry::Health;
use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::commit::{CommitError, Mode};
use crate::committed_tail::CommittedTail;
use crate::config::IndexerConfig;
use crate::halts::Halts;
use crate::index_batch::{BatchIndexer, Pending};
use crate::internal_events::{IndexingFailed, StepFailed, ZombieRollback};
use crate::metrics::IndexerMetrics;
use crate::{narrow, offsets};

/// How many events a record says it holds (its `event_count` header, format 2), for the batch's
/// event budget only: a record without one (format 1) counts as one.
fn event_count<M: Message>(record: &M) -> usize {
    record
        .headers()
        .and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == header::EVENT_COUNT)
                .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
        })
        .unwrap_or(1)
        .max(1)
}

/// How often a process with a halted partition looks for an operator's quarantine request.
const QUARANTINE_POLL: Duration = Duration::from_secs(2);
/// Failed indexing transactions in a row before `/health` says so (a blip is not a problem).
const FAILURES_BEFORE_UNHEALTHY: u32 = 3;

pub(crate) struct Indexer {
    consumer: StreamConsumer<RebalanceLog>,
    pool: PgPool,
    metrics: Arc<IndexerMetrics>,
    health: Arc<Health>,
    /// The partitions this consumer owns and the next offset of each.
    cursor: PartitionCursor,
    /// Partitions halted at a refused record, and quarantined records.
    halts: Halts,
    /// The indexing transaction.
    batches: BatchIndexer,
    max_batch: usize,
    max_batch_bytes: usize,
    linger: Duration,
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
            esk_runtime::kafka::consumer_config(&config.common.kafka(), &config.group_id);
        client.set("enable.auto.commit", "false");
        let consumer: StreamConsumer<RebalanceLog> =
            client.create_with_context(RebalanceLog::default())?;
        let topic = &config.common.topics.ingest_log;
        consumer.subscribe(&[topic])?;
        Ok(Indexer {
            consumer,
            cursor: PartitionCursor::new(topic.as_str()),
            halts: Halts::new(topic, health.clone(), metrics.clone()),
            batches: BatchIndexer {
                pool: pool.clone(),
                topic: topic.clone(),
                metrics: metrics.clone(),
                indexed,
                tail,
            },
            pool,
            metrics,
            health,
            max_batch: config.max_batch.max(1),
            max_batch_bytes: config.max_batch_bytes.max(1),
            linger: Duration::from_millis(config.linger_ms),
            failures: 0,
            progress,
        })
    }

    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        loop {
            if self.halts.any() {
                for (partition, offset) in self
                    .halts
                    .release_quarantined(&self.pool, &self.consumer)
                    .await
                {
                    self.cursor.sought(partition, offset);
                }
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

    /// Waits for one record, then takes what the client already holds without waiting, until
    /// the batch is full: under load records pile up while the previous batch commits, so
    /// batches grow by themselves; when quiet a record is indexed at once. A linger (0 by
    /// default) waits that much longer for more once nothing is left to take.
    async fn collect(&mut self) -> Vec<Pending> {
        let mut batch = Vec::new();
        let (mut bytes, mut events) = (0usize, 0usize);
        let mut deadline = None;
        loop {
            let next = if batch.is_empty() {
                if self.halts.any() {
                    // Come back now and then to look for a quarantine request.
                    match tokio::time::timeout(QUARANTINE_POLL, self.consumer.recv()).await {
                        Ok(result) => Some(result),
                        Err(_) => return batch,
                    }
                } else {
                    Some(self.consumer.recv().await)
                }
            } else if let Some(ready) = self.consumer.recv().now_or_never() {
                Some(ready)
            } else if self.linger.is_zero() {
                None
            } else {
                let deadline =
                    *deadline.get_or_insert_with(|| tokio::time::Instant::now() + self.linger);
                tokio::time::timeout_at(deadline, self.consumer.recv())
                    .await
                    .ok()
            };
            let Some(result) = next else { break };
            // Only where the record is, when it was produced, its value and how many events
            // it says it holds are kept; nothing else is copied.
            let result = result.map(|m| {
                let pending = Pending {
                    partition: m.partition(),
                    offset: m.offset(),
                    produced_ms: m.timestamp().to_millis(),
                    payload: m.payload().unwrap_or_default().to_vec(),
                };
                (pending, event_count(&m))
            });
            // Partitions a rebalance moved are loaded again (a halt stays until a restart).
            self.cursor.forget(self.consumer.context().take_changed());
            match result {
                Ok((record, count)) => {
                    if let Some(pending) = self.admit(record).await {
                        bytes += pending.payload.len();
                        events += count;
                        batch.push(pending);
                    }
                }
                Err(error) => {
                    StepFailed {
                        metrics: &self.metrics,
                        stage: "consume",
                        error: &error,
                        partition: None,
                        message: "ingest-log consumer error",
                    }
                    .emit();
                    if batch.is_empty() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    break;
                }
            }
            if events >= self.max_batch || bytes >= self.max_batch_bytes {
                break;
            }
        }
        batch
    }

    /// Decides whether a record is the next one to index for its partition.
    async fn admit(&mut self, record: Pending) -> Option<Pending> {
        let (partition, offset) = (record.partition, record.offset);
        if self.halts.is_halted(partition) {
            return None;
        }
        let mut admission = self.cursor.admit(&self.consumer, partition, offset);
        if admission == Admission::Untracked {
            let stored =
                offsets::load(&self.pool, self.cursor.topic(), partition, &self.metrics).await;
            self.cursor.track(partition, stored);
            admission = self.cursor.admit(&self.consumer, partition, offset);
        }
        (admission == Admission::Take).then_some(record)
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
            match self.try_index(&batch).await {
                Ok(()) => {
                    self.indexing_recovered();
                    return;
                }
                Err(CommitError::NotOwner(lost)) => {
                    ZombieRollback {
                        metrics: &self.metrics,
                        lost: &lost,
                    }
                    .emit();
                    self.cursor.forget(lost.iter().copied());
                    batch.retain(|p| !lost.contains(&p.partition));
                }
                Err(refused @ (CommitError::Refused { .. } | CommitError::Undecodable { .. })) => {
                    self.indexing_recovered();
                    self.isolate_refused(&batch, refused).await;
                    return;
                }
                Err(CommitError::Database(error)) => {
                    self.failures += 1;
                    IndexingFailed {
                        metrics: &self.metrics,
                        error: &error,
                        records: batch.len(),
                        failures: self.failures,
                    }
                    .emit();
                    if self.failures >= FAILURES_BEFORE_UNHEALTHY {
                        self.health.set_problem(
                            "indexing",
                            format!(
                                "{} indexing transactions in a row failed; retrying: {error}",
                                self.failures
                            ),
                        );
                    }
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
            let outcome = match self.try_index(&records).await {
                Ok(()) => continue,
                Err(refused @ (CommitError::Refused { .. } | CommitError::Undecodable { .. })) => {
                    narrow::first_refused(
                        &self.batches,
                        &records,
                        self.halts.quarantined(),
                        refused,
                    )
                    .await
                }
                Err(other) => Err(other),
            };
            match outcome {
                Ok((index, refusal)) => {
                    if index > 0 {
                        if let Err(error) = self.try_index(&records[..index]).await {
                            // Re-read from the stored offset later; the halt below still holds.
                            tracing::warn!(%error, partition, "cannot commit the records before the refused one");
                        }
                    }
                    self.halts.halt(&self.consumer, &records[index], &refusal);
                    self.cursor.forget([partition]);
                }
                Err(error) => {
                    // Not narrowed this time (the database went away, the partition moved):
                    // re-read the partition from its stored offset and try again.
                    tracing::warn!(%error, partition, "cannot narrow the refused batch now; re-reading the partition");
                    self.cursor.forget([partition]);
                }
            }
        }
    }

    /// Indexes `batch` in one kept transaction, then notes what it set aside and hints the
    /// new positions to Kafka.
    async fn try_index(&mut self, batch: &[Pending]) -> Result<(), CommitError> {
        let indexed = self
            .batches
            .index(batch, self.halts.quarantined(), Mode::Commit)
            .await?;
        self.halts.set_aside(&indexed.set_aside);
        self.hint_offsets(&indexed.spans);
        Ok(())
    }

    /// Commits the batch's next offsets to Kafka: only a hint for where to start (Postgres
    /// decides).
    fn hint_offsets(&self, spans: &Spans) {
        let mut offsets = TopicPartitionList::new();
        for (partition, span) in spans.iter() {
            let _ = offsets.add_partition_offset(
                self.cursor.topic(),
                partition,
                Offset::Offset(span.next),
            );
        }
        if let Err(error) = self.consumer.commit(&offsets, CommitMode::Async) {
            tracing::debug!(%error, "kafka offset hint not committed");
        }
    }
}

//! The consuming side (rules 4-6 of the multi-stream design): one committer, elected with a
//! session advisory lock, reads every partition of `ingest-log` by manual assignment from the
//! offsets stored in Postgres; a standby polls for the lock. The leader reads ahead, commits the
//! closed frontier (`frontier.rs`) one batch per transaction, retries transient failures, and
//! narrows refused batches down to the block at fault, whose partitions halt. A leader that
//! loses its lock connection drops its consumer and everything read ahead, and stands by.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use esk_model::wire::header;
use esk_runtime::internal_event::InternalEvent;
use esk_runtime::kafka::KafkaSettings;
use esk_runtime::partition_cursor::{Admission, PartitionCursor};
use esk_runtime::records::header_text;
use esk_runtime::supervisor::Progress;
use esk_runtime::telemetry::Health;
use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::commit::{CommitError, Mode};
use crate::committed_tail::CommittedTail;
use crate::config::IndexerConfig;
use crate::election::{Leadership, COMMITTER_LOCK};
use crate::frontier::ReadAhead;
use crate::group::{GroupKey, GroupTag};
use crate::halts::Halts;
use crate::index_batch::{BatchIndexer, Pending};
use crate::internal_events::{IndexingFailed, StepFailed, ZombieRollback};
use crate::metrics::IndexerMetrics;
use crate::{classify, frontier, narrow, offsets, units};

/// How many events a record says it holds (its `event_count` header, format 2), for the batch's
/// event budget only: a record without one (format 1) counts as one.
fn event_count(record: &BorrowedMessage<'_>) -> usize {
    record
        .headers()
        .and_then(|headers| header_text(headers, header::EVENT_COUNT)?.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// How long a wait for records lasts before the leader looks at its lock and at quarantine
/// requests again.
const WAIT_FOR_RECORDS: Duration = Duration::from_secs(1);
/// How often the leader checks that its lock connection is alive (and looks for quarantine
/// requests while a partition is halted).
const CONFIRM_EVERY: Duration = Duration::from_secs(1);
/// How often a standby tries to take the lock.
const STANDBY_POLL: Duration = Duration::from_secs(1);
/// How long the leader pauses after a consumer error.
const CONSUMER_ERROR_PAUSE: Duration = Duration::from_millis(200);
/// The `/health` problem of records held in the read-ahead past the stall limit.
const HELD_PROBLEM: &str = "indexer_read_ahead_held";

/// Failed indexing transactions in a row before `/health` says so (a blip is not a problem).
const FAILURES_BEFORE_UNHEALTHY: u32 = 3;

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// What the leader holds while it leads.
struct Lead {
    leadership: Leadership,
    consumer: StreamConsumer,
    /// Partitions of `ingest-log`.
    partitions: i32,
    /// The assigned partitions and the next offset of each.
    cursor: PartitionCursor,
    ahead: ReadAhead,
    confirmed: Instant,
    /// When the leader last said it reads past the caps.
    warned_past_caps: Option<Instant>,
    /// Since when records have been read ahead without a batch to take (a multi-stream group
    /// still misses a part); `None` while batches are taken or nothing is held.
    held_since: Option<Instant>,
}

/// Why a leader stops leading.
#[derive(Debug, thiserror::Error)]
enum StepDown {
    #[error("the committer lock's connection is lost: {0}")]
    LockLost(sqlx::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

pub(crate) struct Indexer {
    kafka: KafkaSettings,
    group_id: String,
    topic: String,
    pool: PgPool,
    metrics: Arc<IndexerMetrics>,
    health: Arc<Health>,
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
    /// How long records may be held in the read-ahead before `/health` says so.
    stall_after: Duration,
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
    ) -> Self {
        let topic = &config.common.topics.ingest_log;
        Indexer {
            kafka: config.common.kafka(),
            group_id: config.group_id.clone(),
            topic: topic.clone(),
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
            stall_after: config.common.stall_after(),
        }
    }

    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        loop {
            self.health.set_role("standby");
            self.metrics.committer_leader.set(0);
            self.progress.idle();
            let leadership = tokio::select! {
                _ = shutdown.cancelled() => break,
                l = Leadership::try_acquire(&self.pool, COMMITTER_LOCK) => l,
            };
            let Some(leadership) = leadership else {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(STANDBY_POLL) => continue,
                }
            };
            let mut lead = match self.take_over(leadership).await {
                Ok(lead) => lead,
                Err((leadership, error)) => {
                    tracing::warn!(%error, "cannot read ingest-log as the committer; standing by");
                    leadership.release().await;
                    tokio::time::sleep(STANDBY_POLL).await;
                    continue;
                }
            };
            self.health.set_role("leader");
            self.metrics.committer_leader.set(1);
            tracing::info!(
                partitions = lead.partitions,
                "elected index committer: reading every ingest-log partition"
            );
            let outcome = self.lead(&mut lead, &shutdown).await;
            self.halts.forget_halts();
            self.indexing_recovered();
            self.metrics.read_ahead_events.set(0);
            // A standby holds nothing: what its leadership held is forgotten.
            self.health.clear_problem(HELD_PROBLEM);
            lead.leadership.release().await;
            match outcome {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(%error, "index committer stepping down");
                    self.progress.blocked_by(&error);
                    tokio::time::sleep(STANDBY_POLL).await;
                }
            }
        }
        tracing::info!("indexer stopped");
    }

    /// Becomes the committer: a consumer assigned every partition at its stored offset.
    async fn take_over(
        &mut self,
        leadership: Leadership,
    ) -> Result<Lead, (Leadership, KafkaError)> {
        let kafka = self.kafka.clone();
        let topic = self.topic.clone();
        let counted = tokio::task::spawn_blocking(move || {
            esk_runtime::kafka::partition_count(&kafka, &topic)
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled));
        let partitions = match counted {
            Ok(n) if n > 0 => n,
            Ok(_) => {
                return Err((
                    leadership,
                    KafkaError::MetadataFetch(rdkafka::types::RDKafkaErrorCode::UnknownTopic),
                ))
            }
            Err(error) => return Err((leadership, error)),
        };
        let mut client = esk_runtime::kafka::consumer_config(&self.kafka, &self.group_id);
        client.set("enable.auto.commit", "false");
        let consumer: StreamConsumer = match client.create() {
            Ok(c) => c,
            Err(error) => return Err((leadership, error)),
        };
        let mut lead = Lead {
            leadership,
            consumer,
            partitions,
            cursor: PartitionCursor::new(self.topic.as_str()),
            ahead: ReadAhead::default(),
            confirmed: Instant::now(),
            warned_past_caps: None,
            held_since: None,
        };
        if let Err(error) = self.assign(&mut lead).await {
            return Err((lead.leadership, error));
        }
        Ok(lead)
    }

    /// Assigns every partition that is not halted at its stored offset (an unpinned one from
    /// its beginning), forgetting what was read ahead: the start, and the re-seek after a lost
    /// compare-and-set, a narrowed batch or a quarantine.
    async fn assign(&mut self, lead: &mut Lead) -> Result<(), KafkaError> {
        lead.ahead = ReadAhead::default();
        lead.cursor = PartitionCursor::new(self.topic.as_str());
        let mut list = TopicPartitionList::new();
        for partition in 0..lead.partitions {
            if self.halts.is_halted(partition) {
                continue;
            }
            let stored = offsets::load(&self.pool, &self.topic, partition, &self.metrics).await;
            let offset = stored.next.map_or(Offset::Beginning, Offset::Offset);
            list.add_partition_offset(&self.topic, partition, offset)?;
            lead.cursor.track(partition, stored);
        }
        lead.consumer.assign(&list)
    }

    /// Leads until shutdown (`Ok`) or until the lock is lost.
    async fn lead(
        &mut self,
        lead: &mut Lead,
        shutdown: &CancellationToken,
    ) -> Result<(), StepDown> {
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            if lead.confirmed.elapsed() >= CONFIRM_EVERY {
                lead.leadership
                    .confirm()
                    .await
                    .map_err(StepDown::LockLost)?;
                lead.confirmed = Instant::now();
                // Quarantine requests are looked for as often.
                if self.halts.any() && !self.halts.release_quarantined(&self.pool).await.is_empty()
                {
                    self.assign(lead).await?;
                }
            }
            let batch = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                b = self.collect(lead) => b,
            };
            self.check_held(lead, batch.is_empty());
            if batch.is_empty() {
                continue;
            }
            self.progress.busy();
            self.index(lead, batch, shutdown).await?;
            self.progress.progressed();
            self.progress.idle();
        }
    }

    /// Reads ahead and returns the closed frontier (rule 5): takes what the consumer already
    /// holds up to the batch caps; when nothing is closed, waits for more, past the caps if
    /// need be (a group's last part may sit behind them). Returns an empty batch after a quiet
    /// second, so the caller looks at its lock and at quarantine requests.
    async fn collect(&mut self, lead: &mut Lead) -> Vec<Pending> {
        let mut deadline = None;
        // The frontier was empty with the read-ahead at its caps: read on past them.
        let mut past_caps = false;
        loop {
            while past_caps || self.under_caps(&lead.ahead) {
                let Some(next) = lead.consumer.recv().now_or_never() else {
                    break;
                };
                if !self.accept(&mut lead.cursor, &lead.consumer, &mut lead.ahead, next) {
                    tokio::time::sleep(CONSUMER_ERROR_PAUSE).await;
                    return Vec::new();
                }
            }
            let under_caps = self.under_caps(&lead.ahead);
            let lingering = !lead.ahead.is_empty() && under_caps && !self.linger.is_zero();
            if !lead.ahead.is_empty() && !lingering {
                let batch = self.take_closed(lead).await;
                if !batch.is_empty() {
                    return batch;
                }
                // While a partition is halted, a group with a part behind the halt cannot
                // close: reading on would only fill memory until an operator acts.
                if !under_caps && !self.halts.any() {
                    past_caps = true;
                    self.waiting_for_parts(lead);
                }
            }
            let wait = if lingering {
                *deadline.get_or_insert_with(|| tokio::time::Instant::now() + self.linger)
            } else {
                tokio::time::Instant::now() + WAIT_FOR_RECORDS
            };
            match tokio::time::timeout_at(wait, lead.consumer.recv()).await {
                Ok(next) => {
                    if !self.accept(&mut lead.cursor, &lead.consumer, &mut lead.ahead, next) {
                        tokio::time::sleep(CONSUMER_ERROR_PAUSE).await;
                        return Vec::new();
                    }
                }
                Err(_) if lingering => return self.take_closed(lead).await,
                Err(_) => return Vec::new(),
            }
        }
    }

    /// Turns `/health` unhealthy while records have been read ahead for the stall limit with no
    /// batch to take: their partitions cannot move until the group they wait for is whole (a
    /// part lost on the broker, or a producer that never finished), or until its ledger rows
    /// can be read. Healthy again once a batch is taken or nothing is held.
    fn check_held(&self, lead: &mut Lead, nothing_taken: bool) {
        if !nothing_taken || lead.ahead.is_empty() {
            if lead.held_since.take().is_some() {
                self.health.clear_problem(HELD_PROBLEM);
            }
            return;
        }
        let since = *lead.held_since.get_or_insert_with(Instant::now);
        if since.elapsed() < self.stall_after {
            return;
        }
        let held: Vec<String> = lead
            .ahead
            .buffers
            .iter()
            .filter_map(|(p, b)| Some(format!("partition {p} at offset {}", b.front()?.offset)))
            .collect();
        self.health.set_problem(
            HELD_PROBLEM,
            format!(
                "{} events read ahead have waited {}s with no batch to take (a multi-stream \
                 group misses a part, or its ledger rows cannot be read): {}",
                lead.ahead.events,
                since.elapsed().as_secs(),
                held.join(", ")
            ),
        );
    }

    fn under_caps(&self, ahead: &ReadAhead) -> bool {
        ahead.events < self.max_batch && ahead.bytes < self.max_batch_bytes
    }

    /// Says (at most every ten seconds) that the read-ahead went past its caps because no
    /// group in it is whole yet: normal for a moment (a group's last part is in flight), a
    /// problem if it lasts (a part that never comes holds its partitions).
    fn waiting_for_parts(&self, lead: &mut Lead) {
        if lead
            .warned_past_caps
            .is_some_and(|at| at.elapsed() < Duration::from_secs(10))
        {
            return;
        }
        lead.warned_past_caps = Some(Instant::now());
        let waiting: Vec<String> = lead
            .ahead
            .buffers
            .iter()
            .filter_map(|(p, b)| Some(format!("partition {p} at offset {}", b.front()?.offset)))
            .collect();
        tracing::warn!(
            events = lead.ahead.events,
            bytes = lead.ahead.bytes,
            waiting = ?waiting,
            "reading past the batch caps: no multi-stream group read ahead is whole yet"
        );
    }

    /// Keeps a record the consumer delivered if it is the next of its partition; `false` on a
    /// consumer error (the caller returns to its loop).
    fn accept(
        &self,
        cursor: &mut PartitionCursor,
        consumer: &StreamConsumer,
        ahead: &mut ReadAhead,
        next: Result<BorrowedMessage<'_>, KafkaError>,
    ) -> bool {
        let message = match next {
            Ok(message) => message,
            Err(error) => {
                StepFailed {
                    metrics: &self.metrics,
                    stage: "consume",
                    error: &error,
                    partition: None,
                    message: "ingest-log consumer error",
                }
                .emit();
                return false;
            }
        };
        let (partition, offset) = (message.partition(), message.offset());
        if self.halts.is_halted(partition)
            || cursor.admit(consumer, partition, offset) != Admission::Take
        {
            return true;
        }
        ahead.push(Pending {
            partition,
            offset,
            produced_ms: message.timestamp().to_millis(),
            payload: message.payload().unwrap_or_default().to_vec(),
            events: event_count(&message),
            group: GroupTag::from_headers(message.headers()),
        });
        true
    }

    /// Takes the closed frontier out of the read-ahead: asks the ledger which groups are
    /// accepted (waiting on undecided attempts' locks outside any transaction, rule 3).
    async fn take_closed(&mut self, lead: &mut Lead) -> Vec<Pending> {
        let groups: HashSet<GroupKey> = frontier::groups(&lead.ahead.buffers);
        let accepted = if groups.is_empty() {
            HashSet::new()
        } else {
            match classify::committed(&self.pool, &groups).await {
                Ok(accepted) => accepted,
                Err(error) => {
                    StepFailed {
                        metrics: &self.metrics,
                        stage: "commit",
                        error: &error,
                        partition: None,
                        message: "cannot read the ledger for the read-ahead groups; retrying",
                    }
                    .emit();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    return Vec::new();
                }
            }
        };
        let cut = frontier::closed(&lead.ahead.buffers, &accepted, self.halts.quarantined());
        let batch = lead.ahead.take(&cut);
        self.metrics.read_ahead_events.set(gauge(lead.ahead.events));
        batch
    }

    /// Indexes one batch: commit, retrying transient failures; a lost compare-and-set (another
    /// committer moved the offsets) re-seeks every partition; a batch Postgres refuses is
    /// narrowed to the block at fault, whose partitions halt.
    async fn index(
        &mut self,
        lead: &mut Lead,
        batch: Vec<Pending>,
        shutdown: &CancellationToken,
    ) -> Result<(), StepDown> {
        let mut backoff = esk_runtime::retry::until_stopped(Duration::from_millis(50));
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            match self.try_index(&batch).await {
                Ok(()) => {
                    self.indexing_recovered();
                    return Ok(());
                }
                Err(CommitError::NotOwner(lost)) => {
                    ZombieRollback {
                        metrics: &self.metrics,
                        lost: &lost,
                    }
                    .emit();
                    self.assign(lead).await?;
                    return Ok(());
                }
                Err(refused @ (CommitError::Refused { .. } | CommitError::Undecodable { .. })) => {
                    self.indexing_recovered();
                    self.isolate_refused(&batch, refused).await;
                    self.assign(lead).await?;
                    return Ok(());
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

    /// Finds the first refused block of a refused batch, commits the blocks before it and
    /// halts each partition of that block at its first record there (a group's parts halt
    /// together). Nothing is skipped; the caller re-reads everything else.
    async fn isolate_refused(&mut self, batch: &[Pending], refused: CommitError) {
        tracing::warn!(error = %refused, records = batch.len(), "Postgres refused a batch; narrowing it down");
        let keys: Vec<(i32, Option<GroupKey>)> = batch
            .iter()
            .map(|p| (p.partition, p.group.map(|g| g.key())))
            .collect();
        let blocks = units::commit_blocks(&keys);
        let outcome = narrow::first_refused(
            &self.batches,
            batch,
            &blocks,
            self.halts.quarantined(),
            refused,
        )
        .await;
        match outcome {
            Ok((index, refusal)) => {
                if index > 0 {
                    let before = narrow::prefix(batch, &blocks[..index]);
                    if let Err(error) = self.try_index(&before).await {
                        // Re-read from the stored offsets later; the halt below still holds.
                        tracing::warn!(%error, "cannot commit the records before the refused ones");
                    }
                }
                let mut firsts: Vec<&Pending> = Vec::new();
                for &i in &blocks[index] {
                    if !firsts.iter().any(|p| p.partition == batch[i].partition) {
                        firsts.push(&batch[i]);
                    }
                }
                self.halts.halt_together(&firsts, &refusal);
            }
            Err(error) => {
                // Not narrowed this time (the database went away): read again and retry.
                tracing::warn!(%error, "cannot narrow the refused batch now; re-reading");
            }
        }
    }

    /// Indexes `batch` in one kept transaction, then notes what it set aside.
    async fn try_index(&mut self, batch: &[Pending]) -> Result<(), CommitError> {
        let indexed = self
            .batches
            .index(batch, self.halts.quarantined(), Mode::Commit)
            .await?;
        self.halts.set_aside(&indexed.set_aside);
        Ok(())
    }
}

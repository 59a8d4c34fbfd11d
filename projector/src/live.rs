//! Live projection from the canonical topic: one consumer group per projection, a bounded queue
//! between the consumer and the handler, partitions paused when the queue is full and resumed
//! below a low watermark (the consumer keeps polling, so it stays in its group), positions per
//! partition checked against Postgres, repeats skipped by global position. A record of a
//! multi-stream append makes the projection apply the whole group at once (`group.rs`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use esk_model::wire::CanonicalEvent;
use esk_runtime::kafka::RebalanceLog;
use esk_runtime::pages;
use esk_runtime::partition_cursor::{Admission, PartitionCursor, Spans};
use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{self, Progress};
use crate::config::Tuning;
use crate::dead_letters::UndecodableRecord;
use crate::event::{event_columns, ProjectedEvent};
use crate::group::{self, BatchGroups, GroupRef};
use crate::internal_events::{Paused, Resumed, ZombieRollback};
use crate::projection::{ProcessError, Projection};
use esk_runtime::internal_event::InternalEvent;

/// Why the live loop returned.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    Shutdown,
    /// The projection's positions are gone (a rebuild reset it): catch up again.
    NeedsCatchUp,
}

/// A canonical record as the queue holds it: where it came from, its payload and the
/// multi-stream group its headers name. Other headers and the key are not copied (the payload
/// carries everything a projection reads).
#[derive(Debug)]
struct QueuedRecord {
    partition: i32,
    offset: i64,
    payload: Vec<u8>,
    group: Option<GroupRef>,
}

impl QueuedRecord {
    fn copy_of(message: &BorrowedMessage<'_>) -> Self {
        Self {
            partition: message.partition(),
            offset: message.offset(),
            payload: message.payload().unwrap_or_default().to_vec(),
            group: group::of(message),
        }
    }
}

/// The bounded queue between the consumer and the handler, by count and by bytes.
struct Queue {
    items: Mutex<VecDeque<QueuedRecord>>,
    /// Payload bytes of the queued records.
    bytes: AtomicUsize,
    capacity: usize,
    capacity_bytes: usize,
    resume_at: usize,
    resume_at_bytes: usize,
    not_empty: Notify,
    drained: Notify,
    paused: AtomicBool,
}

impl Queue {
    fn len(&self) -> usize {
        self.items.lock().map(|q| q.len()).unwrap_or(0)
    }

    /// Queues a record without waking the handler (see [`Queue::wake`]); returns the queue's
    /// length.
    fn push(&self, message: QueuedRecord) -> usize {
        self.bytes
            .fetch_add(message.payload.len(), Ordering::SeqCst);
        let len = self
            .items
            .lock()
            .map(|mut q| {
                q.push_back(message);
                q.len()
            })
            .unwrap_or(0);
        len
    }

    /// Wakes the handler: once per fetch the client delivered, so that it takes the whole fetch
    /// as one batch instead of its first record alone.
    fn wake(&self) {
        self.not_empty.notify_one();
    }

    /// Whether the queue is at its count or byte capacity (`len` as `push` returned it).
    fn is_full(&self, len: usize) -> bool {
        len >= self.capacity || self.bytes.load(Ordering::SeqCst) >= self.capacity_bytes
    }

    /// Whether the queue drained enough to resume fetching.
    fn may_resume(&self) -> bool {
        self.len() <= self.resume_at && self.bytes.load(Ordering::SeqCst) <= self.resume_at_bytes
    }

    /// Takes up to `max` records and up to `max_bytes` of them (at least one).
    fn take(&self, max: usize, max_bytes: usize) -> Vec<QueuedRecord> {
        let taken: Vec<QueuedRecord> = self
            .items
            .lock()
            .map(|mut q| {
                let mut taken = Vec::new();
                let mut bytes = 0;
                while taken.len() < max && bytes < max_bytes {
                    let Some(record) = q.pop_front() else { break };
                    bytes += record.payload.len();
                    taken.push(record);
                }
                taken
            })
            .unwrap_or_default();
        let bytes: usize = taken.iter().map(|r| r.payload.len()).sum();
        self.bytes.fetch_sub(bytes, Ordering::SeqCst);
        self.drained.notify_one();
        taken
    }
}

pub(crate) struct LiveRun<'a> {
    pub(crate) pool: &'a PgPool,
    pub(crate) projection: &'a Projection,
    pub(crate) tuning: &'a Tuning,
    pub(crate) kafka: &'a esk_runtime::kafka::KafkaSettings,
    pub(crate) topic: &'a str,
}

impl LiveRun<'_> {
    pub(crate) async fn run(&self, shutdown: &CancellationToken) -> anyhow::Result<Exit> {
        let name = &self.projection.name;
        let group = format!("{}-{}", self.tuning.group_prefix, name);
        let mut client = esk_runtime::kafka::consumer_config(self.kafka, &group);
        client
            .set("enable.auto.commit", "false")
            // librdkafka's own prefetch is bounded too, so memory stays flat while paused.
            .set("queued.max.messages.kbytes", "16384")
            .set("fetch.max.bytes", "8388608")
            .set("max.partition.fetch.bytes", "1048576");
        let consumer: Arc<StreamConsumer<RebalanceLog>> =
            Arc::new(client.create_with_context(RebalanceLog::default())?);
        consumer.subscribe(&[self.topic])?;
        let capacity = self.tuning.queue_capacity.max(1);
        let queue = Arc::new(Queue {
            // Grown as records come: the capacity is a bound, not an allocation.
            items: Mutex::new(VecDeque::new()),
            bytes: AtomicUsize::new(0),
            capacity,
            capacity_bytes: self.tuning.queue_bytes.max(1),
            resume_at: ((capacity as f64) * self.tuning.resume_below.clamp(0.0, 1.0)) as usize,
            resume_at_bytes: ((self.tuning.queue_bytes as f64)
                * self.tuning.resume_below.clamp(0.0, 1.0)) as usize,
            not_empty: Notify::new(),
            drained: Notify::new(),
            paused: AtomicBool::new(false),
        });
        let stop_fetching = shutdown.child_token();
        let fetcher = tokio::spawn(fetch(
            consumer.clone(),
            queue.clone(),
            self.topic.to_owned(),
            name.clone(),
            self.projection.metrics.clone(),
            stop_fetching.clone(),
        ));
        let exit = self.apply_loop(&consumer, &queue, shutdown).await;
        stop_fetching.cancel();
        let _ = fetcher.await;
        self.projection
            .metrics
            .paused
            .with_label_values(&[name])
            .set(0);
        exit
    }

    async fn apply_loop(
        &self,
        consumer: &StreamConsumer<RebalanceLog>,
        queue: &Queue,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Exit> {
        let mut cursor = PartitionCursor::new(self.topic);
        loop {
            if queue.len() == 0 {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(Exit::Shutdown),
                    _ = queue.not_empty.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
            if shutdown.is_cancelled() {
                return Ok(Exit::Shutdown);
            }
            // Partitions a rebalance moved are loaded again before their next record.
            cursor.forget(consumer.context().take_changed());
            // A handler batch is bounded by bytes too: a quarter of the queue's byte budget.
            let messages = queue.take(
                self.tuning.batch.max(1),
                (self.tuning.queue_bytes / 4).max(1),
            );
            self.projection
                .metrics
                .queue_depth
                .with_label_values(&[&self.projection.name])
                .set(queue.len() as i64);
            if messages.is_empty() {
                continue;
            }
            let mut admitted = Vec::with_capacity(messages.len());
            for message in messages {
                match self.admit(consumer, &mut cursor, message).await? {
                    Admit::Take(m) => admitted.push(m),
                    Admit::Skip => {}
                    Admit::NotLive => return Ok(Exit::NeedsCatchUp),
                }
            }
            if !admitted.is_empty() {
                self.apply(&mut cursor, admitted, shutdown).await?;
            }
        }
    }

    /// Decides whether a record is the next one to apply for its partition; the first record
    /// of a partition loads its stored position (none: the projection is not live any more).
    async fn admit(
        &self,
        consumer: &StreamConsumer<RebalanceLog>,
        cursor: &mut PartitionCursor,
        message: QueuedRecord,
    ) -> anyhow::Result<Admit> {
        let (partition, offset) = (message.partition, message.offset);
        let mut admission = cursor.admit(consumer, partition, offset);
        if admission == Admission::Untracked {
            match checkpoint::partition(self.pool, &self.projection.name, partition).await? {
                None => return Ok(Admit::NotLive),
                Some(stored) => cursor.track(partition, stored),
            }
            admission = cursor.admit(consumer, partition, offset);
        }
        Ok(match admission {
            Admission::Take => Admit::Take(message),
            Admission::Skip | Admission::Untracked => Admit::Skip,
        })
    }

    /// Applies admitted records (in partition order) with their positions, retrying transient
    /// failures; partitions owned elsewhere are dropped and re-read.
    async fn apply(
        &self,
        cursor: &mut PartitionCursor,
        mut admitted: Vec<QueuedRecord>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let name = &self.projection.name;
        let mut backoff = esk_runtime::retry::until_stopped(Duration::from_millis(50));
        loop {
            if admitted.is_empty() || shutdown.is_cancelled() {
                return Ok(());
            }
            let mut spans = Spans::default();
            let mut events = Vec::with_capacity(admitted.len());
            let mut undecodable = Vec::new();
            // The groups met, each with where its events go in the batch (at its first record).
            let mut groups: Vec<MetGroup> = Vec::new();
            for message in &admitted {
                let partition = message.partition;
                let span = cursor.extend(&mut spans, partition, message.offset);
                let event: CanonicalEvent = match serde_json::from_slice(&message.payload) {
                    Ok(e) => e,
                    Err(error) => {
                        // Dead-lettered with the checkpoint that moves past it (and
                        // reported once that committed).
                        undecodable.push(UndecodableRecord {
                            topic: self.topic,
                            partition,
                            offset: message.offset,
                            payload: &message.payload,
                            error: error.to_string(),
                        });
                        continue;
                    }
                };
                // A repeat (after a publisher crash or a broker outage) was applied already:
                // before this batch (the partition's position), or earlier in this batch (a
                // record and its repeat can arrive together).
                if span.is_repeat(event.global_position) {
                    continue;
                }
                let event = ProjectedEvent {
                    event,
                    source: Some((partition, message.offset)),
                };
                if let Some(group) = message
                    .group
                    .filter(|g| g.contains(event.event.global_position))
                {
                    // The whole group is applied where its first record is met (matching or
                    // not); its records are gathered there.
                    match groups.iter_mut().find(|m| m.group.span == group.span) {
                        Some(met) => met.arrived.push(event),
                        None => groups.push(MetGroup {
                            group,
                            at: events.len(),
                            arrived: vec![event],
                        }),
                    }
                    continue;
                }
                if self.projection.filter.matches(&event.event) {
                    events.push(event);
                }
            }
            let groups = match self.expand_groups(&mut events, groups).await {
                Ok(groups) => groups,
                Err(error) => {
                    tracing::warn!(projection = %name, %error, "reading a group's events failed; retrying");
                    tokio::time::sleep(
                        backoff
                            .next()
                            .unwrap_or(esk_runtime::retry::MAX_RETRY_DELAY),
                    )
                    .await;
                    continue;
                }
            };
            match self
                .projection
                .process(
                    self.pool,
                    &events,
                    &undecodable,
                    (
                        &Progress::Live {
                            spans: spans.clone(),
                        },
                        &groups,
                    ),
                    shutdown,
                )
                .await
            {
                Ok(()) => {
                    cursor.committed(&spans);
                    let metrics = &self.projection.metrics;
                    metrics
                        .events_applied
                        .with_label_values(&[name])
                        .inc_by(events.len() as u64);
                    let now = Utc::now();
                    for e in &events {
                        metrics.event_lag.observe(
                            (now - e.event.created_at).num_milliseconds().max(0) as f64 / 1000.0,
                        );
                    }
                    if let Some(last) = events.last() {
                        metrics
                            .lag_seconds
                            .with_label_values(&[name])
                            .set((now - last.event.created_at).num_seconds().max(0));
                    }
                    return Ok(());
                }
                Err(ProcessError::NotOwner(lost)) => {
                    ZombieRollback {
                        metrics: &self.projection.metrics,
                        projection: name,
                        lost: &lost,
                    }
                    .emit();
                    cursor.forget(lost.iter().copied());
                    admitted.retain(|m| !lost.contains(&m.partition));
                }
                Err(ProcessError::Stopped) => return Ok(()),
                Err(ProcessError::Database(error)) => {
                    tracing::warn!(projection = %name, %error, "projection batch failed; retrying");
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
}

/// A group a live batch met: where its events go in the batch, and its records that arrived in
/// it (on any partition).
struct MetGroup {
    group: GroupRef,
    at: usize,
    arrived: Vec<ProjectedEvent>,
}

impl LiveRun<'_> {
    /// Puts each group's events that the projection selects into `events` where its first
    /// record was met, leaving out the groups the projection applied before. A group whose
    /// records all arrived in the batch is taken from them; otherwise (its records on other
    /// partitions have not arrived) its rows are read from the events table.
    async fn expand_groups(
        &self,
        events: &mut Vec<ProjectedEvent>,
        met: Vec<MetGroup>,
    ) -> Result<BatchGroups, sqlx::Error> {
        if met.is_empty() {
            return Ok(BatchGroups::default());
        }
        let refs: Vec<GroupRef> = met.iter().map(|m| m.group).collect();
        let applied = group::applied(self.pool, &self.projection.name, &refs).await?;
        let columns = event_columns(self.projection.needs_data());
        let mut apply = Vec::new();
        // From the last insertion point back, so the earlier ones stay where they were.
        for MetGroup {
            group,
            at,
            mut arrived,
        } in met.into_iter().rev()
        {
            if applied.contains(&group.span.first) {
                continue;
            }
            let whole = if arrived.len() as i64 == group.span.last - group.span.first + 1 {
                arrived.sort_by_key(|e| e.event.global_position);
                arrived.retain(|e| self.projection.filter.matches(&e.event));
                arrived
            } else {
                pages::read_group(self.pool, columns, &self.projection.filter, group.span)
                    .await?
                    .into_iter()
                    .map(|event| ProjectedEvent {
                        event,
                        source: None,
                    })
                    .collect()
            };
            events.splice(at..at, whole);
            apply.push(group);
        }
        apply.reverse();
        Ok(BatchGroups { apply, seen: true })
    }
}

enum Admit {
    Take(QueuedRecord),
    Skip,
    NotLive,
}

/// Polls the consumer into the queue; pauses the assigned partitions when the queue is full
/// and resumes them once it drains below the low watermark. It keeps polling while paused, so
/// the consumer stays in its group.
async fn fetch(
    consumer: Arc<StreamConsumer<RebalanceLog>>,
    queue: Arc<Queue>,
    topic: String,
    name: String,
    metrics: Arc<crate::metrics::ProjectorMetrics>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = queue.drained.notified() => {
                if queue.paused.load(Ordering::SeqCst) && queue.may_resume() {
                    esk_runtime::kafka::set_paused(&consumer, &topic, false);
                    queue.paused.store(false, Ordering::SeqCst);
                    Resumed { metrics: &metrics, projection: &name }.emit();
                }
            }
            message = consumer.recv() => {
                // Everything the client already holds is queued before the handler is woken.
                let mut next = Some(message);
                while let Some(message) = next.take() {
                    match message {
                        Ok(message) => {
                            let len = queue.push(QueuedRecord::copy_of(&message));
                            if queue.is_full(len) {
                                if !queue.paused.swap(true, Ordering::SeqCst) {
                                    esk_runtime::kafka::set_paused(&consumer, &topic, true);
                                    Paused { metrics: &metrics, projection: &name, queued: len }.emit();
                                } else {
                                    // Still arriving while paused: a rebalance assigned
                                    // partitions that are not paused yet (a stalled handler may
                                    // hold the queue full for long). Pause the whole assignment
                                    // again.
                                    esk_runtime::kafka::set_paused(&consumer, &topic, true);
                                }
                                break;
                            }
                        }
                        Err(error) => {
                            queue.wake();
                            tracing::warn!(projection = %name, %error, "consumer error");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            break;
                        }
                    }
                    next = consumer.recv().now_or_never();
                }
                queue.wake();
            }
        }
    }
}

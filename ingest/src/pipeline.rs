//! The batching pipeline both entry points feed: bounded queues sharded by stream, one worker
//! per shard turning whatever has queued up into one attempt.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use esk_model::event::{Append, GroupAppend};
use esk_runtime::internal_event::InternalEvent;
use esk_runtime::supervisor::{Progress, Watchdog};
use futures::StreamExt;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::attempt::{self, AttemptError};
use crate::config::IngestConfig;
use crate::group_attempt;
use crate::ingest_log::IngestLog;
use crate::internal_events::{AttemptGaveUp, AttemptRetried};
use crate::metrics::IngestMetrics;
use crate::outcome::{
    AppendOutcome, AppendReply, GroupOutcome, GroupRejection, Rejection, Unavailable,
};

/// A request waiting in a shard's queue for its outcome: a single append
/// ([`AppendCommand`]) or a multi-stream one ([`GroupCommand`]).
#[derive(Debug)]
pub(crate) struct Queued<R, O> {
    pub(crate) request: R,
    pub(crate) reply: oneshot::Sender<Result<O, Unavailable>>,
    pub(crate) received: Instant,
}

impl<R, O> Queued<R, O> {
    /// A queued request and the receiver of its reply.
    pub(crate) fn new(request: R) -> (Self, oneshot::Receiver<Result<O, Unavailable>>) {
        let (reply, rx) = oneshot::channel();
        (
            Queued {
                request,
                reply,
                received: Instant::now(),
            },
            rx,
        )
    }
}

/// An append waiting for its outcome.
pub(crate) type AppendCommand = Queued<Append, AppendOutcome>;

/// A multi-stream append waiting for its outcome.
pub(crate) type GroupCommand = Queued<GroupAppend, GroupOutcome>;

/// What a shard's queue carries.
#[derive(Debug)]
enum Command {
    /// Batched with the other single appends queued with it.
    Single(AppendCommand),
    /// Decided in an attempt of its own.
    Group(GroupCommand),
}

impl Command {
    /// The stream whose shard the command goes to (a multi-stream append: its first stream;
    /// its other streams' rows are locked in sorted order like any attempt's).
    fn shard_key(&self) -> &str {
        match self {
            Command::Single(c) => c.request.subject(),
            Command::Group(c) => c.request.first_stream(),
        }
    }
}

/// Handle to the workers; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Pipeline {
    shards: Arc<Vec<mpsc::Sender<Command>>>,
    metrics: Arc<IngestMetrics>,
    /// Bytes of requests held at once, over both entry points (I6: counts alone do not bound
    /// memory when a request may be megabytes).
    bytes: Arc<Semaphore>,
    max_bytes: usize,
}

/// Bytes of request held in memory, returned when dropped.
pub(crate) type BytesHeld = OwnedSemaphorePermit;

struct Worker {
    progress: Arc<Progress>,
    pool: PgPool,
    ingest_log: IngestLog,
    metrics: Arc<IngestMetrics>,
    max_batch: usize,
    retries: usize,
    /// Multi-stream appends decided at once (each its own attempt and connection).
    group_concurrency: usize,
}

impl Pipeline {
    /// Creates one worker per shard and returns the handle with the workers' loops, for the
    /// caller to run supervised. A loop ends once every handle is dropped.
    pub(crate) fn start(
        config: &IngestConfig,
        pool: PgPool,
        ingest_log: IngestLog,
        metrics: Arc<IngestMetrics>,
        watchdog: &Watchdog,
    ) -> (
        Self,
        Vec<impl std::future::Future<Output = ()> + Send + 'static>,
    ) {
        let workers = config.workers.max(1);
        let mut shards = Vec::with_capacity(workers);
        let mut loops = Vec::with_capacity(workers);
        for shard in 0..workers {
            let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
            shards.push(tx);
            let worker = Worker {
                progress: watchdog.register(format!("append worker {shard}")),
                pool: pool.clone(),
                ingest_log: ingest_log.clone(),
                metrics: metrics.clone(),
                max_batch: config.max_batch.max(1),
                retries: config.attempt_retries,
                // A worker's share of the pool: a worker runs its single appends' attempt or
                // its multi-stream appends' attempts, never both at once.
                group_concurrency: (config.pg_connections as usize / workers).max(1),
            };
            loops.push(worker.run(rx));
        }
        let max_bytes = config.max_in_flight_bytes.clamp(1, u32::MAX as usize);
        let pipeline = Pipeline {
            shards: Arc::new(shards),
            metrics,
            bytes: Arc::new(Semaphore::new(max_bytes)),
            max_bytes,
        };
        (pipeline, loops)
    }

    fn shard(&self, stream_id: &str) -> &mpsc::Sender<Command> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        stream_id.hash(&mut hasher);
        let index = (hasher.finish() % self.shards.len() as u64) as usize;
        &self.shards[index]
    }

    /// Reserves `bytes` of the in-flight budget, or `None` when it is used up.
    pub(crate) fn try_hold_bytes(&self, bytes: usize) -> Option<BytesHeld> {
        self.bytes
            .clone()
            .try_acquire_many_owned(self.permits(bytes))
            .ok()
    }

    /// Reserves `bytes` of the in-flight budget, waiting for room.
    pub(crate) async fn hold_bytes(&self, bytes: usize) -> Option<BytesHeld> {
        self.bytes
            .clone()
            .acquire_many_owned(self.permits(bytes))
            .await
            .ok()
    }

    /// A request larger than the whole budget takes all of it (alone), never waits for ever.
    fn permits(&self, bytes: usize) -> u32 {
        u32::try_from(bytes.clamp(1, self.max_bytes)).unwrap_or(u32::MAX)
    }

    /// Queues a command, or hands it back when its shard's queue is full.
    pub(crate) fn try_submit(&self, command: AppendCommand) -> Result<(), AppendCommand> {
        match self.try_send(Command::Single(command)) {
            Err(Command::Single(c)) => Err(c),
            _ => Ok(()),
        }
    }

    /// Queues a multi-stream append, or hands it back when its shard's queue is full.
    pub(crate) fn try_submit_group(&self, command: GroupCommand) -> Result<(), GroupCommand> {
        match self.try_send(Command::Group(command)) {
            Err(Command::Group(c)) => Err(c),
            _ => Ok(()),
        }
    }

    fn try_send(&self, command: Command) -> Result<(), Command> {
        match self.shard(command.shard_key()).try_send(command) {
            Ok(()) => {
                self.metrics.in_flight.inc();
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(c)) | Err(mpsc::error::TrySendError::Closed(c)) => {
                Err(c)
            }
        }
    }

    /// Queues a command, waiting for room.
    pub(crate) async fn submit(&self, command: AppendCommand) -> Result<(), AppendCommand> {
        match self.send(Command::Single(command)).await {
            Err(Command::Single(c)) => Err(c),
            _ => Ok(()),
        }
    }

    /// Queues a multi-stream append, waiting for room.
    pub(crate) async fn submit_group(&self, command: GroupCommand) -> Result<(), GroupCommand> {
        match self.send(Command::Group(command)).await {
            Err(Command::Group(c)) => Err(c),
            _ => Ok(()),
        }
    }

    async fn send(&self, command: Command) -> Result<(), Command> {
        let shard = self.shard(command.shard_key()).clone();
        self.metrics.in_flight.inc();
        shard.send(command).await.map_err(|e| {
            self.metrics.in_flight.dec();
            e.0
        })
    }
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.recv().await {
            self.progress.busy();
            let mut commands = vec![first];
            while commands.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(command) => commands.push(command),
                    Err(_) => break,
                }
            }
            let mut batch = Vec::with_capacity(commands.len());
            let mut groups = Vec::new();
            for command in commands {
                match command {
                    Command::Single(c) => batch.push(c),
                    Command::Group(c) => groups.push(c),
                }
            }
            if !batch.is_empty() {
                self.process(batch).await;
            }
            for wave in waves(groups) {
                futures::stream::iter(wave)
                    .for_each_concurrent(self.group_concurrency, |group| self.process_group(group))
                    .await;
            }
            self.progress.progressed();
            if rx.is_empty() {
                self.progress.idle();
            }
        }
    }

    async fn process(&self, batch: Vec<AppendCommand>) {
        self.metrics.in_flight.sub(batch.len() as i64);
        // A retry can share a batch with its first attempt: decide each append id once and
        // answer the later copies from the first.
        let mut first_of: HashMap<Uuid, usize> = HashMap::with_capacity(batch.len());
        let mut primaries: Vec<&Append> = Vec::with_capacity(batch.len());
        let mut primary_index: Vec<usize> = Vec::with_capacity(batch.len());
        for command in &batch {
            let slot = *first_of
                .entry(command.request.append_id)
                .or_insert_with(|| {
                    primaries.push(&command.request);
                    primaries.len() - 1
                });
            primary_index.push(slot);
        }
        let events: usize = primaries.iter().map(|a| a.events.len()).sum();
        self.metrics.batch_appends.observe(primaries.len() as f64);
        self.metrics.batch_events.observe(events as f64);

        let started = Instant::now();
        let decided = self.decide(&primaries).await;
        self.metrics
            .attempt_seconds
            .observe(started.elapsed().as_secs_f64());

        let outcomes: Vec<AppendReply> = batch
            .iter()
            .zip(&primary_index)
            .map(|(command, slot)| match &decided[*slot] {
                Ok(_) if primaries[*slot].fingerprint() != command.request.fingerprint() => {
                    Ok(AppendOutcome::Rejected(Rejection::AppendIdReused))
                }
                reply => reply.clone(),
            })
            .collect();
        for (command, reply) in batch.into_iter().zip(outcomes) {
            self.metrics
                .record(&command.request, &reply, command.received.elapsed());
            if let Ok(outcome) = &reply {
                log_outcome(&command.request, outcome);
            }
            // The client may have gone; its outcome is in the ledger either way.
            let _ = command.reply.send(reply);
        }
    }
}

/// Splits multi-stream appends (in arrival order) into waves, run one after another, the
/// appends of a wave at once: an append goes into the wave after the last one holding an append
/// that shares a stream with it, so appends with a stream in common are still decided in arrival
/// order (as single appends to one stream are, chained in their batch). Appends with no stream
/// in common have no order to keep; each is its own attempt, locking its rows in sorted order
/// like every attempt, so running them at once cannot deadlock.
fn waves(groups: Vec<GroupCommand>) -> Vec<Vec<GroupCommand>> {
    let mut last_wave: HashMap<&str, usize> = HashMap::new();
    let wave_of: Vec<usize> = groups
        .iter()
        .map(|command| {
            let streams = || command.request.parts.iter().map(|p| p.subject());
            let wave = streams()
                .filter_map(|s| last_wave.get(s).map(|w| w + 1))
                .max()
                .unwrap_or(0);
            for stream in streams() {
                last_wave.insert(stream, wave);
            }
            wave
        })
        .collect();
    let mut waves: Vec<Vec<GroupCommand>> = Vec::new();
    for (command, wave) in groups.into_iter().zip(wave_of) {
        if waves.len() <= wave {
            waves.resize_with(wave + 1, Vec::new);
        }
        waves[wave].push(command);
    }
    waves
}

impl Worker {
    /// Decides a multi-stream append in an attempt of its own (retried while it fails
    /// transiently) and answers it.
    async fn process_group(&self, command: GroupCommand) {
        self.metrics.in_flight.dec();
        let group = &command.request;
        self.metrics.batch_appends.observe(1.0);
        self.metrics
            .batch_events
            .observe(group.event_count() as f64);
        let started = Instant::now();
        let reply =
            match (|| group_attempt::run(&self.pool, &self.ingest_log, group, &self.metrics))
                .retry(self.backoff())
                .when(|error: &AttemptError| error.refused_by_broker().is_none())
                .notify(|error: &AttemptError, delay| {
                    AttemptRetried {
                        metrics: &self.metrics,
                        error,
                        appends: 1,
                        retry_in: delay,
                    }
                    .emit();
                })
                .await
            {
                Ok(outcome) => Ok(outcome),
                Err(error) => self
                    .gave_up(&error, 1)
                    .map(|rejection| GroupOutcome::Rejected(GroupRejection::of(rejection))),
            };
        self.metrics
            .attempt_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .record_group(group, &reply, command.received.elapsed());
        match &reply {
            Ok(GroupOutcome::Accepted(_)) => tracing::debug!(
                append_id = %group.append_id, streams = group.parts.len(),
                "multi-stream append accepted"
            ),
            Ok(GroupOutcome::Rejected(rejected)) => tracing::info!(
                append_id = %group.append_id, streams = group.parts.len(),
                reason = rejected.rejection.code(), "multi-stream append rejected"
            ),
            Err(_) => {}
        }
        // The client may have gone; its outcome is in the ledger either way.
        let _ = command.reply.send(reply);
    }

    /// How a transiently failed attempt is retried.
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(20))
            .with_max_delay(Duration::from_secs(1))
            .with_max_times(self.retries)
    }

    /// One reply per append. An attempt the broker refuses for good (a record too large for
    /// it) is not retried; if it held several appends, each is tried alone so that only the
    /// one at fault is rejected and the others are not held back by it.
    async fn decide(&self, appends: &[&Append]) -> Vec<AppendReply> {
        match self.attempt(appends).await {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(error) if appends.len() > 1 && error.refused_by_broker().is_some() => {
                let mut replies = Vec::with_capacity(appends.len());
                for append in appends {
                    replies.push(match self.attempt(&[*append]).await {
                        Ok(mut outcome) => outcome.pop().ok_or_else(|| missing(append)),
                        Err(error) => self.failed(&error, 1).remove(0),
                    });
                }
                replies
            }
            Err(error) => self.failed(&error, appends.len()),
        }
    }

    /// One attempt, retried while it fails transiently.
    async fn attempt(&self, appends: &[&Append]) -> Result<Vec<AppendOutcome>, AttemptError> {
        (|| attempt::run(&self.pool, &self.ingest_log, appends, &self.metrics))
            .retry(self.backoff())
            .when(|error: &AttemptError| error.refused_by_broker().is_none())
            .notify(|error: &AttemptError, delay| {
                AttemptRetried {
                    metrics: &self.metrics,
                    error,
                    appends: appends.len(),
                    retry_in: delay,
                }
                .emit();
            })
            .await
    }

    /// The replies of `count` appends whose attempt failed with `error`.
    fn failed(&self, error: &AttemptError, count: usize) -> Vec<AppendReply> {
        vec![self.gave_up(error, count).map(AppendOutcome::Rejected); count]
    }

    /// What the `count` appends of an attempt that failed with `error` get: the broker's
    /// refusal, or "unavailable, retry".
    fn gave_up(&self, error: &AttemptError, count: usize) -> Result<Rejection, Unavailable> {
        AttemptGaveUp {
            metrics: &self.metrics,
            error,
            appends: count,
        }
        .emit();
        error.refused_by_broker().ok_or_else(|| Unavailable {
            code: error.code(),
            message: error.to_string(),
        })
    }
}

/// The reply when an attempt returned no outcome for an append (not expected).
fn missing(append: &Append) -> Unavailable {
    Unavailable {
        code: "unavailable",
        message: format!("no outcome for append {}", append.append_id),
    }
}

fn log_outcome(append: &Append, outcome: &AppendOutcome) {
    let correlation_id = append
        .events
        .first()
        .and_then(|e| e.correlation_id.as_deref());
    match outcome {
        AppendOutcome::Accepted {
            first_version,
            last_version,
        } => tracing::debug!(
            stream_id = %append.stream_id,
            append_id = %append.append_id,
            event_id = %append.events.first().map(|e| e.id).unwrap_or_default(),
            correlation_id = correlation_id.unwrap_or(""),
            first_version = first_version.get(),
            last_version = last_version.get(),
            "append accepted"
        ),
        AppendOutcome::Rejected(rejection) => tracing::info!(
            stream_id = %append.stream_id,
            append_id = %append.append_id,
            correlation_id = correlation_id.unwrap_or(""),
            reason = rejection.code(), "append rejected"
        ),
    }
}

#[cfg(test)]
mod tests {
    use esk_model::event::ExpectedVersion;

    use super::*;

    fn group(id: u128, streams: &[&str]) -> GroupCommand {
        let parts = streams
            .iter()
            .map(|stream| Append {
                stream_id: (*stream).to_owned(),
                expected_version: ExpectedVersion::Any,
                append_id: Uuid::from_u128(id),
                events: Vec::new(),
                lifecycle: None,
            })
            .collect();
        GroupCommand::new(GroupAppend {
            append_id: Uuid::from_u128(id),
            parts,
        })
        .0
    }

    fn ids(waves: &[Vec<GroupCommand>]) -> Vec<Vec<u128>> {
        waves
            .iter()
            .map(|wave| wave.iter().map(|c| c.request.append_id.as_u128()).collect())
            .collect()
    }

    #[test]
    fn appends_sharing_a_stream_keep_their_arrival_order_and_the_others_run_together() {
        let waves = waves(vec![
            group(1, &["A", "B"]),
            group(2, &["C", "D"]),
            group(3, &["B", "E"]),
            group(4, &["F", "G"]),
            group(5, &["E", "C"]),
            group(6, &["A", "H"]),
        ]);
        // 3 follows 1 (B); 5 follows 3 (E) and 2 (C); 6 follows 1 (A) only.
        assert_eq!(ids(&waves), vec![vec![1, 2, 4], vec![3, 6], vec![5]]);
    }

    #[test]
    fn no_appends_no_waves() {
        assert!(waves(Vec::new()).is_empty());
    }
}

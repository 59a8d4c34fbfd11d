//! Handlers: what a projection does with its events, and how each kind commits its progress.
//! SQL: writes and checkpoint in one transaction (exactly once). Webhook and topic: deliver,
//! then checkpoint (at least once; the event id is there for deduplication).
//!
//! Failures go through one classification ([`HandlerError`]): a transient one stalls the
//! projection, which retries with capped exponential backoff until it recovers or the process
//! stops, dead-lettering nothing; a rejection dead-letters the events it is about.

pub(crate) mod counts;
pub(crate) mod failure;
pub(crate) mod sql;
pub(crate) mod stream_summary;
pub(crate) mod topic;
pub(crate) mod webhook;

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::ExponentialBackoff;
use sqlx::{Acquire, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

pub(crate) use failure::HandlerError;

use crate::checkpoint::{self, CheckpointError, Progress};
use crate::config::{HandlerSpec, ProjectionSpec, Tuning};
use crate::dead_letters::{self, UndecodableRecord};
use crate::event::ProjectedEvent;
use crate::metrics::ProjectorMetrics;
use esk_runtime::telemetry::Health;

/// Why a batch was not processed (the caller re-reads, or stops).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProcessError {
    #[error("partitions {0:?} are owned by another consumer")]
    NotOwner(Vec<i32>),
    #[error("postgres: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stopped while waiting for a transient failure to pass")]
    Stopped,
}

/// How one try at committing a batch ended, short of success.
#[derive(Debug, thiserror::Error)]
enum TryError {
    /// The handler failed (transient or rejected).
    #[error(transparent)]
    Handler(HandlerError),
    /// The projector's own writes (checkpoint, dead letters) failed: always waited out, as
    /// there is nothing to dead-letter.
    #[error("postgres: {0}")]
    Store(#[from] sqlx::Error),
    #[error("partitions {0:?} are owned by another consumer")]
    NotOwner(Vec<i32>),
}

impl From<CheckpointError> for TryError {
    fn from(e: CheckpointError) -> Self {
        match e {
            CheckpointError::NotOwner(p) => TryError::NotOwner(p),
            CheckpointError::Database(e) => TryError::Store(e),
        }
    }
}

/// A configured handler.
pub(crate) enum Handler {
    Sql(Box<dyn sql::SqlProjection>),
    Webhook(webhook::Webhook),
    Topic(topic::TopicForwarder),
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Handler::Sql(_) => "Handler::Sql",
            Handler::Webhook(_) => "Handler::Webhook",
            Handler::Topic(_) => "Handler::Topic",
        })
    }
}

/// A projection: its name, filter, handler and knobs.
#[derive(Debug)]
pub(crate) struct Projection {
    pub(crate) name: String,
    pub(crate) filter: crate::event::Filter,
    pub(crate) handler: Handler,
    /// Rejections of one event (webhook, topic) before it is dead-lettered.
    pub(crate) max_attempts: usize,
    pub(crate) retry: Duration,
    pub(crate) metrics: Arc<ProjectorMetrics>,
    pub(crate) health: Arc<Health>,
}

impl Projection {
    pub(crate) fn new(
        spec: &ProjectionSpec,
        tuning: &Tuning,
        brokers: &str,
        metrics: Arc<ProjectorMetrics>,
        health: Arc<Health>,
    ) -> anyhow::Result<Self> {
        let handler =
            match &spec.handler {
                HandlerSpec::Sql { sql } => Handler::Sql(
                    sql::registered(sql)
                        .ok_or_else(|| anyhow::anyhow!("unknown sql projection {sql}"))?,
                ),
                HandlerSpec::Webhook { url, timeout_ms } => Handler::Webhook(
                    webhook::Webhook::new(&spec.name, url, Duration::from_millis(*timeout_ms))?,
                ),
                HandlerSpec::Topic { topic } => {
                    Handler::Topic(topic::TopicForwarder::new(brokers, topic)?)
                }
            };
        metrics.init_projection(&spec.name);
        Ok(Projection {
            name: spec.name.clone(),
            filter: crate::event::Filter::of(spec),
            handler,
            max_attempts: tuning.max_attempts.max(1),
            retry: Duration::from_millis(tuning.retry_ms),
            metrics,
            health,
        })
    }

    /// Whether replays must read payloads.
    pub(crate) fn needs_data(&self) -> bool {
        match &self.handler {
            Handler::Sql(h) => h.needs_data(),
            _ => true,
        }
    }

    /// Applies `events` (already filtered, in order), dead-letters `undecodable` records, and
    /// records `progress`. Transient failures are waited out (until `shutdown`: then
    /// [`ProcessError::Stopped`] and nothing is recorded); rejected events are dead-lettered in
    /// the transaction that records the progress.
    pub(crate) async fn process(
        &self,
        pool: &PgPool,
        events: &[ProjectedEvent],
        undecodable: &[UndecodableRecord<'_>],
        progress: &Progress,
        shutdown: &CancellationToken,
    ) -> Result<(), ProcessError> {
        let mut stall = Stall::new(self);
        let result = match &self.handler {
            Handler::Sql(handler) => {
                self.process_sql(
                    pool,
                    handler.as_ref(),
                    events,
                    undecodable,
                    progress,
                    &mut stall,
                    shutdown,
                )
                .await
            }
            _ => {
                self.process_delivery(pool, events, undecodable, progress, &mut stall, shutdown)
                    .await
            }
        };
        if !matches!(result, Err(ProcessError::Stopped)) {
            stall.recovered();
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn process_sql(
        &self,
        pool: &PgPool,
        handler: &dyn sql::SqlProjection,
        events: &[ProjectedEvent],
        undecodable: &[UndecodableRecord<'_>],
        progress: &Progress,
        stall: &mut Stall<'_>,
        shutdown: &CancellationToken,
    ) -> Result<(), ProcessError> {
        // Set once the batch as a whole was rejected: from then on each event is applied under
        // its own savepoint, so the poison is found and the rest still commits with the
        // checkpoint (exactly once).
        let mut isolate = false;
        loop {
            let tried = if isolate {
                self.apply_isolated(pool, handler, events, undecodable, progress)
                    .await
            } else {
                self.apply_batch(pool, handler, events, undecodable, progress)
                    .await
            };
            match tried {
                Ok(dead) => {
                    self.count_dead_letters(dead + undecodable.len());
                    return Ok(());
                }
                Err(TryError::NotOwner(partitions)) => {
                    return Err(ProcessError::NotOwner(partitions))
                }
                Err(TryError::Handler(error)) if !error.is_transient() => {
                    tracing::warn!(projection = %self.name, %error, events = events.len(),
                        "batch rejected; applying its events one by one");
                    isolate = true;
                }
                Err(error) => stall.wait(&error, shutdown).await?,
            }
        }
    }

    /// One transaction for the batch; returns the number of events dead-lettered (none).
    async fn apply_batch(
        &self,
        pool: &PgPool,
        handler: &dyn sql::SqlProjection,
        events: &[ProjectedEvent],
        undecodable: &[UndecodableRecord<'_>],
        progress: &Progress,
    ) -> Result<usize, TryError> {
        let mut tx = pool.begin().await?;
        if !events.is_empty() {
            handler
                .apply(&mut tx, &self.name, events)
                .await
                .map_err(|e| TryError::Handler(HandlerError::database(e)))?;
        }
        self.store_undecodable(&mut tx, undecodable).await?;
        checkpoint::write(&mut tx, &self.name, progress).await?;
        tx.commit().await?;
        Ok(0)
    }

    /// One transaction, one savepoint per event: a rejected event is dead-lettered (the same
    /// statement on the same data fails the same way), a transient failure aborts the try.
    async fn apply_isolated(
        &self,
        pool: &PgPool,
        handler: &dyn sql::SqlProjection,
        events: &[ProjectedEvent],
        undecodable: &[UndecodableRecord<'_>],
        progress: &Progress,
    ) -> Result<usize, TryError> {
        let mut tx = pool.begin().await?;
        let mut dead = Vec::new();
        for event in events {
            let mut savepoint = tx.begin().await?;
            match handler
                .apply(&mut savepoint, &self.name, std::slice::from_ref(event))
                .await
                .map_err(HandlerError::database)
            {
                Ok(()) => savepoint.commit().await?,
                Err(error) if error.is_transient() => return Err(TryError::Handler(error)),
                Err(error) => {
                    savepoint.rollback().await?;
                    dead_letters::store(&mut tx, &self.name, event, &error.to_string(), 1).await?;
                    dead.push((event, error));
                }
            }
        }
        self.store_undecodable(&mut tx, undecodable).await?;
        checkpoint::write(&mut tx, &self.name, progress).await?;
        tx.commit().await?;
        self.log_dead_letters(&dead);
        Ok(dead.len())
    }

    async fn deliver(&self, events: &[ProjectedEvent]) -> Result<(), HandlerError> {
        match &self.handler {
            Handler::Webhook(w) => w.deliver(events).await,
            Handler::Topic(t) => t.deliver(events).await,
            Handler::Sql(_) => Ok(()),
        }
    }

    /// Delivers `events` until the handler acknowledges them (`None`) or has rejected them
    /// `rejections` times (`Some(last rejection)`); transient failures are waited out.
    async fn deliver_until_answered(
        &self,
        events: &[ProjectedEvent],
        rejections: usize,
        stall: &mut Stall<'_>,
        shutdown: &CancellationToken,
    ) -> Result<Option<HandlerError>, ProcessError> {
        let mut rejected = 0;
        let mut backoff = esk_runtime::retry::until_stopped(self.retry);
        loop {
            match self.deliver(events).await {
                Ok(()) => {
                    stall.recovered();
                    return Ok(None);
                }
                Err(error) if error.is_transient() => stall.wait(&error, shutdown).await?,
                Err(error) => {
                    // It answered: whatever it thinks of these events, it is there.
                    stall.recovered();
                    rejected += 1;
                    if rejected >= rejections {
                        return Ok(Some(error));
                    }
                    self.metrics.retries.with_label_values(&[&self.name]).inc();
                    tracing::warn!(projection = %self.name, %error, attempt = rejected,
                        events = events.len(), "delivery rejected; retrying");
                    pause(&mut backoff, shutdown).await?;
                }
            }
        }
    }

    async fn process_delivery(
        &self,
        pool: &PgPool,
        events: &[ProjectedEvent],
        undecodable: &[UndecodableRecord<'_>],
        progress: &Progress,
        stall: &mut Stall<'_>,
        shutdown: &CancellationToken,
    ) -> Result<(), ProcessError> {
        let mut poisoned: Vec<(&ProjectedEvent, HandlerError)> = Vec::new();
        if !events.is_empty() {
            if let Some(error) = self
                .deliver_until_answered(events, 1, stall, shutdown)
                .await?
            {
                // One at a time, in order, so one rejected event does not hold back the rest.
                tracing::warn!(projection = %self.name, %error, events = events.len(),
                    "batch rejected; delivering its events one by one");
                for event in events {
                    let one = std::slice::from_ref(event);
                    if let Some(error) = self
                        .deliver_until_answered(one, self.max_attempts, stall, shutdown)
                        .await?
                    {
                        poisoned.push((event, error));
                    }
                }
            }
        }
        loop {
            match self
                .commit_delivery(pool, &poisoned, undecodable, progress)
                .await
            {
                Ok(()) => {
                    self.log_dead_letters(&poisoned);
                    self.count_dead_letters(poisoned.len() + undecodable.len());
                    return Ok(());
                }
                Err(TryError::NotOwner(partitions)) => {
                    return Err(ProcessError::NotOwner(partitions))
                }
                Err(error) => stall.wait(&error, shutdown).await?,
            }
        }
    }

    async fn commit_delivery(
        &self,
        pool: &PgPool,
        poisoned: &[(&ProjectedEvent, HandlerError)],
        undecodable: &[UndecodableRecord<'_>],
        progress: &Progress,
    ) -> Result<(), TryError> {
        let mut tx = pool.begin().await?;
        for (event, error) in poisoned {
            dead_letters::store(
                &mut tx,
                &self.name,
                event,
                &error.to_string(),
                self.max_attempts,
            )
            .await?;
        }
        self.store_undecodable(&mut tx, undecodable).await?;
        checkpoint::write(&mut tx, &self.name, progress).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn store_undecodable(
        &self,
        conn: &mut PgConnection,
        undecodable: &[UndecodableRecord<'_>],
    ) -> Result<(), sqlx::Error> {
        for record in undecodable {
            dead_letters::store_undecodable(conn, &self.name, record).await?;
        }
        Ok(())
    }

    fn log_dead_letters(&self, dead: &[(&ProjectedEvent, HandlerError)]) {
        for (event, error) in dead {
            tracing::error!(projection = %self.name, event_id = %event.event.event_id,
                stream_id = %event.event.stream_id, %error, "rejected event dead-lettered");
        }
    }

    fn count_dead_letters(&self, n: usize) {
        if n > 0 {
            self.metrics
                .dead_letters
                .with_label_values(&[&self.name])
                .inc_by(n as u64);
        }
    }

    /// Applies one dead-lettered event again and marks it replayed: in the same transaction
    /// for SQL handlers, after the delivery for the others. A one-shot command: any failure is
    /// tried `max_attempts` times, then reported.
    pub(crate) async fn replay_dead_letter(
        &self,
        pool: &PgPool,
        event: &ProjectedEvent,
        dead_letter_id: i64,
    ) -> Result<(), String> {
        let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
        match &self.handler {
            Handler::Sql(handler) => handler
                .apply(&mut tx, &self.name, std::slice::from_ref(event))
                .await
                .map_err(|e| e.to_string())?,
            _ => {
                let mut backoff = esk_runtime::retry::until_stopped(self.retry);
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match self.deliver(std::slice::from_ref(event)).await {
                        Ok(()) => break,
                        Err(error) if attempt >= self.max_attempts => return Err(error.to_string()),
                        Err(error) => {
                            tracing::warn!(projection = %self.name, event_id = %event.event.event_id,
                                %error, attempt, "replay failed; retrying");
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
        dead_letters::mark_replayed(&mut tx, dead_letter_id)
            .await
            .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())
    }

    /// Empties the read model (SQL) and the positions, in one transaction.
    pub(crate) async fn reset(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let mut tx = pool.begin().await?;
        if let Handler::Sql(handler) = &self.handler {
            handler.reset(&mut tx, &self.name).await?;
        }
        checkpoint::reset(&mut tx, &self.name).await?;
        tx.commit().await
    }
}

/// A projection waiting out a transient failure: its backoff, and the `/health` problem and
/// `esk_projector_stalled` gauge that show it while it lasts.
#[derive(Debug)]
struct Stall<'a> {
    projection: &'a Projection,
    backoff: ExponentialBackoff,
    since: Option<Instant>,
}

impl<'a> Stall<'a> {
    fn new(projection: &'a Projection) -> Self {
        Stall {
            projection,
            backoff: esk_runtime::retry::until_stopped(projection.retry),
            since: None,
        }
    }

    /// Reports the stall, counts a retry, and sleeps the next backoff delay (or stops).
    async fn wait(
        &mut self,
        error: &(dyn std::fmt::Display + Sync),
        shutdown: &CancellationToken,
    ) -> Result<(), ProcessError> {
        let p = self.projection;
        let stalled_for = self.since.get_or_insert_with(Instant::now).elapsed();
        p.metrics.stalled.with_label_values(&[&p.name]).set(1);
        p.health.set_problem(
            &stall_key(&p.name),
            format!("projection {} stalled: {error}", p.name),
        );
        p.metrics.retries.with_label_values(&[&p.name]).inc();
        tracing::warn!(projection = %p.name, %error, stalled_for_s = stalled_for.as_secs_f64(),
            "projection stalled on a transient failure; retrying");
        pause(&mut self.backoff, shutdown).await
    }

    /// The failure passed: clears the report and starts the next backoff from the beginning.
    fn recovered(&mut self) {
        if let Some(since) = self.since.take() {
            let p = self.projection;
            p.metrics.stalled.with_label_values(&[&p.name]).set(0);
            p.health.clear_problem(&stall_key(&p.name));
            self.backoff = esk_runtime::retry::until_stopped(p.retry);
            tracing::info!(projection = %p.name, stalled_for_s = since.elapsed().as_secs_f64(),
                "projection recovered");
        }
    }
}

/// Sleeps the next delay of `backoff`, or returns [`ProcessError::Stopped`] on shutdown.
async fn pause(
    backoff: &mut ExponentialBackoff,
    shutdown: &CancellationToken,
) -> Result<(), ProcessError> {
    let delay = backoff
        .next()
        .unwrap_or(esk_runtime::retry::MAX_RETRY_DELAY);
    tokio::select! {
        _ = shutdown.cancelled() => Err(ProcessError::Stopped),
        _ = tokio::time::sleep(delay) => Ok(()),
    }
}

/// The `/health` problem key of a stalled projection.
fn stall_key(projection: &str) -> String {
    format!("projection-stalled:{projection}")
}

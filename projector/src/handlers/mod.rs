//! Handlers: what a projection does with its events, and how each kind commits its progress.
//! SQL: writes and checkpoint in one transaction (exactly once). Webhook and topic: deliver,
//! then checkpoint (at least once; the event id is there for deduplication).

pub(crate) mod counts;
pub(crate) mod sql;
pub(crate) mod stream_summary;
pub(crate) mod topic;
pub(crate) mod webhook;

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use sqlx::{Acquire, PgPool};

use crate::checkpoint::{self, CheckpointError, Progress};
use crate::config::{HandlerSpec, ProjectionSpec, Tuning};
use crate::dead_letters;
use crate::event::ProjectedEvent;
use crate::metrics::ProjectorMetrics;

/// Why a batch could not be processed now (the caller retries or re-reads).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProcessError {
    #[error("partitions {0:?} are owned by another consumer")]
    NotOwner(Vec<i32>),
    #[error("postgres: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<CheckpointError> for ProcessError {
    fn from(e: CheckpointError) -> Self {
        match e {
            CheckpointError::NotOwner(p) => ProcessError::NotOwner(p),
            CheckpointError::Database(e) => ProcessError::Database(e),
        }
    }
}

/// A delivery that did not succeed (webhook, topic).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct DeliveryError(pub(crate) String);

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
    pub(crate) max_attempts: usize,
    pub(crate) retry: Duration,
    pub(crate) metrics: Arc<ProjectorMetrics>,
}

impl Projection {
    pub(crate) fn new(
        spec: &ProjectionSpec,
        tuning: &Tuning,
        brokers: &str,
        metrics: Arc<ProjectorMetrics>,
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
        })
    }

    /// Whether replays must read payloads.
    pub(crate) fn needs_data(&self) -> bool {
        match &self.handler {
            Handler::Sql(h) => h.needs_data(),
            _ => true,
        }
    }

    fn backoff(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(self.retry)
            .with_max_delay(Duration::from_secs(10))
            .without_max_times()
            .build()
    }

    /// Applies `events` (already filtered, in order) and records `progress`. A batch that keeps
    /// failing is retried event by event; an event that still fails after `max_attempts` goes
    /// to the dead-letter table and the projection moves on.
    pub(crate) async fn process(
        &self,
        pool: &PgPool,
        events: &[ProjectedEvent],
        progress: &Progress,
    ) -> Result<(), ProcessError> {
        match &self.handler {
            Handler::Sql(handler) => {
                self.process_sql(pool, handler.as_ref(), events, progress)
                    .await
            }
            _ => self.process_delivery(pool, events, progress).await,
        }
    }

    async fn process_sql(
        &self,
        pool: &PgPool,
        handler: &dyn sql::SqlProjection,
        events: &[ProjectedEvent],
        progress: &Progress,
    ) -> Result<(), ProcessError> {
        let mut backoff = self.backoff();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut tx = pool.begin().await?;
            let applied = if events.is_empty() {
                Ok(())
            } else {
                handler.apply(&mut tx, &self.name, events).await
            };
            let error = match applied {
                Ok(()) => {
                    checkpoint::write(&mut tx, &self.name, progress).await?;
                    tx.commit().await?;
                    return Ok(());
                }
                Err(error) => error,
            };
            drop(tx);
            if attempt >= self.max_attempts {
                if is_rejection(&error) {
                    break;
                }
                // The database itself is failing: dead-letter nothing, let the caller wait.
                return Err(ProcessError::Database(error));
            }
            self.metrics.retries.with_label_values(&[&self.name]).inc();
            tracing::warn!(projection = %self.name, %error, attempt, "projection batch failed; retrying");
            tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(10))).await;
        }
        // Isolate the poison: one savepoint per event inside a single transaction, so the
        // good events and the checkpoint still commit together (exactly once).
        let mut tx = pool.begin().await?;
        for event in events {
            let mut savepoint = tx.begin().await?;
            match handler
                .apply(&mut savepoint, &self.name, std::slice::from_ref(event))
                .await
            {
                Ok(()) => savepoint.commit().await?,
                Err(error) if is_rejection(&error) => {
                    savepoint.rollback().await?;
                    dead_letters::store(
                        &mut tx,
                        &self.name,
                        event,
                        &error.to_string(),
                        self.max_attempts,
                    )
                    .await?;
                    self.metrics
                        .dead_letters
                        .with_label_values(&[&self.name])
                        .inc();
                    tracing::error!(projection = %self.name, event_id = %event.event.event_id,
                        stream_id = %event.event.stream_id, %error, "poison event dead-lettered");
                }
                Err(error) => return Err(ProcessError::Database(error)),
            }
        }
        checkpoint::write(&mut tx, &self.name, progress).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn deliver(&self, events: &[ProjectedEvent]) -> Result<(), DeliveryError> {
        match &self.handler {
            Handler::Webhook(w) => w.deliver(events).await,
            Handler::Topic(t) => t.deliver(events).await,
            Handler::Sql(_) => Ok(()),
        }
    }

    async fn deliver_with_retries(&self, events: &[ProjectedEvent]) -> Result<(), DeliveryError> {
        let mut backoff = self.backoff();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.deliver(events).await {
                Ok(()) => return Ok(()),
                Err(error) if attempt < self.max_attempts => {
                    self.metrics.retries.with_label_values(&[&self.name]).inc();
                    tracing::warn!(projection = %self.name, %error, attempt, events = events.len(), "delivery failed; retrying");
                    tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(10))).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn process_delivery(
        &self,
        pool: &PgPool,
        events: &[ProjectedEvent],
        progress: &Progress,
    ) -> Result<(), ProcessError> {
        let mut poisoned: Vec<(&ProjectedEvent, String)> = Vec::new();
        if !events.is_empty() && self.deliver_with_retries(events).await.is_err() {
            // One at a time, in order, so one bad event does not hold back the rest.
            for event in events {
                if let Err(error) = self.deliver_with_retries(std::slice::from_ref(event)).await {
                    poisoned.push((event, error.0));
                }
            }
        }
        let mut tx = pool.begin().await?;
        for (event, error) in &poisoned {
            dead_letters::store(&mut tx, &self.name, event, error, self.max_attempts).await?;
            self.metrics
                .dead_letters
                .with_label_values(&[&self.name])
                .inc();
            tracing::error!(projection = %self.name, event_id = %event.event.event_id,
                stream_id = %event.event.stream_id, %error, "undeliverable event dead-lettered");
        }
        checkpoint::write(&mut tx, &self.name, progress).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Applies one dead-lettered event again and marks it replayed: in the same transaction
    /// for SQL handlers, after the delivery for the others.
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
            _ => self
                .deliver_with_retries(std::slice::from_ref(event))
                .await
                .map_err(|e| e.0)?,
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

/// A statement the server refused (bad data for this handler), as opposed to an unreachable
/// or failing database.
fn is_rejection(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(_))
}

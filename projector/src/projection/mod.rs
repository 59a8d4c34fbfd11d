//! A projection: its name, filter and handler, and how it processes a batch and commits its
//! progress. SQL: writes and checkpoint in one transaction (exactly once). Webhook and topic:
//! deliver, then checkpoint (at least once; the event id is there for deduplication).
//!
//! Failures go through one classification ([`HandlerError`]): a transient one stalls the
//! projection, which retries with capped exponential backoff until it recovers or the process
//! stops, dead-lettering nothing; a rejection dead-letters the events it is about.

mod dead_letter_replay;
mod delivery;
mod sql_batch;
mod stall;

use std::sync::Arc;
use std::time::Duration;

use esk_runtime::telemetry::Health;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{self, CheckpointError, Progress};
use crate::config::Tuning;
use crate::dead_letters::{self, UndecodableRecord};
use crate::event::ProjectedEvent;
use crate::filter::Filter;
use crate::group::{self, BatchGroups};
use crate::handlers::{Handler, HandlerError, HandlerSetupError};
use crate::internal_events::{EventDeadLettered, UndecodableDeadLettered};
use crate::metrics::ProjectorMetrics;
use crate::projections_file::ProjectionSpec;
use esk_runtime::internal_event::InternalEvent;
use stall::Stall;

/// Why a batch was not processed (the caller re-reads, or stops).
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Another consumer owns these partitions now.
    #[error("partitions {0:?} are owned by another consumer")]
    NotOwner(Vec<i32>),
    /// Postgres failed.
    #[error("postgres: {0}")]
    Database(#[from] sqlx::Error),
    /// Shutdown was requested while a transient failure was being waited out.
    #[error("stopped while waiting for a transient failure to pass")]
    Stopped,
}

/// How one try at committing a batch ended, short of success.
#[derive(Debug, thiserror::Error)]
pub(super) enum TryError {
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

/// A projection: its name, filter, handler and knobs.
#[derive(Debug)]
pub(crate) struct Projection {
    pub(crate) name: String,
    pub(crate) filter: Filter,
    pub(crate) handler: Handler,
    /// Rejections of one event (webhook, topic) before it is dead-lettered.
    pub(crate) max_attempts: usize,
    pub(crate) retry: Duration,
    pub(crate) metrics: Arc<ProjectorMetrics>,
    pub(crate) health: Arc<Health>,
}

impl Projection {
    /// The projection `spec` declares, with the shared knobs, metrics and health.
    pub(crate) fn new(
        spec: &ProjectionSpec,
        tuning: &Tuning,
        kafka: &esk_runtime::kafka::KafkaSettings,
        metrics: Arc<ProjectorMetrics>,
        health: Arc<Health>,
    ) -> Result<Self, HandlerSetupError> {
        let handler = Handler::for_spec(spec, kafka)?;
        metrics.init_projection(&spec.name);
        Ok(Projection {
            name: spec.name.clone(),
            filter: Filter::of(spec),
            handler,
            max_attempts: tuning.max_attempts.max(1),
            retry: Duration::from_millis(tuning.retry_ms),
            metrics,
            health,
        })
    }

    /// Whether replays must read payloads.
    pub(crate) fn needs_data(&self) -> bool {
        self.handler.needs_data()
    }

    /// Applies `events` (already filtered, in order; the groups in `groups` whole), dead-letters
    /// `undecodable` records, and records `progress` and the groups applied (live). Transient failures are waited out (until `shutdown`: then
    /// [`ProcessError::Stopped`] and nothing is recorded); rejected events are dead-lettered in
    /// the transaction that records the progress.
    pub(crate) async fn process(
        &self,
        pool: &PgPool,
        events: &[ProjectedEvent],
        undecodable: &[UndecodableRecord<'_>],
        (progress, groups): (&Progress, &BatchGroups),
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
                    (progress, groups),
                    &mut stall,
                    shutdown,
                )
                .await
            }
            _ => {
                self.process_delivery(
                    pool,
                    events,
                    undecodable,
                    (progress, groups),
                    &mut stall,
                    shutdown,
                )
                .await
            }
        };
        if !matches!(result, Err(ProcessError::Stopped)) {
            stall.recovered();
        }
        result
    }

    /// Dead-letters the records that did not decode, in the caller's transaction.
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

    /// Reports each dead letter a committed transaction stored: rejected events and
    /// undecodable records.
    fn report_dead_letters(
        &self,
        rejected: &[(&ProjectedEvent, HandlerError)],
        undecodable: &[UndecodableRecord<'_>],
    ) {
        for (event, error) in rejected {
            EventDeadLettered {
                metrics: &self.metrics,
                projection: &self.name,
                event,
                error,
            }
            .emit();
        }
        for record in undecodable {
            UndecodableDeadLettered {
                metrics: &self.metrics,
                projection: &self.name,
                record,
            }
            .emit();
        }
    }

    /// Empties the read model (SQL) and the positions, in one transaction.
    pub(crate) async fn reset(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let mut tx = pool.begin().await?;
        if let Handler::Sql(handler) = &self.handler {
            handler.reset(&mut tx, &self.name).await?;
        }
        checkpoint::reset(&mut tx, &self.name).await?;
        group::reset(&mut tx, &self.name).await?;
        tx.commit().await
    }
}

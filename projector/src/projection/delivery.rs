//! A webhook or topic projection's batch: deliver, then record the progress (at least once).
//! A rejected batch is delivered again event by event; an event rejected `max_attempts` times
//! is dead-lettered with the progress. A multi-stream group's events are in one batch, in order,
//! so they are delivered together (one request, or one by one in order after a rejection); the
//! group is recorded with the progress so its records on other partitions are not delivered
//! again (a crash between delivery and record delivers it again: at least once).

use esk_runtime::internal_event::InternalEvent;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::stall::{pause, Stall};
use super::{ProcessError, Projection, TryError};
use crate::checkpoint::{self, Progress};
use crate::dead_letters::{self, UndecodableRecord};
use crate::event::ProjectedEvent;
use crate::group::BatchGroups;
use crate::handlers::HandlerError;
use crate::internal_events::Retrying;

impl Projection {
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
            match self.handler.deliver(events).await {
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
                    Retrying {
                        metrics: &self.metrics,
                        projection: &self.name,
                        error: &error,
                        events: events.len(),
                        attempt: rejected,
                        stalled_for: None,
                        message: "delivery rejected; retrying",
                    }
                    .emit();
                    pause(&mut backoff, shutdown).await?;
                }
            }
        }
    }

    pub(super) async fn process_delivery(
        &self,
        pool: &PgPool,
        events: &[ProjectedEvent],
        undecodable: &[UndecodableRecord<'_>],
        progress: (&Progress, &BatchGroups),
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
                    self.report_dead_letters(&poisoned, undecodable);
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
        (progress, groups): (&Progress, &BatchGroups),
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
        // Delivered already: whether another consumer recorded the group too changes nothing.
        groups.claim(&mut tx, &self.name).await?;
        groups.prune(&mut tx, &self.name).await?;
        tx.commit().await?;
        Ok(())
    }
}

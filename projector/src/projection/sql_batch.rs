//! A SQL projection's batch: its writes, dead letters, checkpoint and the multi-stream groups it
//! applied in one transaction (exactly once; a group another consumer recorded first is left
//! out). A rejected batch is applied again event by event under savepoints, so the
//! poison is dead-lettered and the rest still commits.

use std::borrow::Cow;

use sqlx::{Acquire, PgPool};
use tokio_util::sync::CancellationToken;

use super::stall::Stall;
use super::{ProcessError, Projection, TryError};
use crate::checkpoint::{self, Progress};
use crate::dead_letters::{self, UndecodableRecord};
use crate::event::ProjectedEvent;
use crate::group::{self, BatchGroups};
use crate::handlers::HandlerError;
use crate::sql_projections::SqlProjection;

/// An event the handler rejected for good, with why.
type DeadLetter<'e> = (&'e ProjectedEvent, HandlerError);

impl Projection {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn process_sql(
        &self,
        pool: &PgPool,
        handler: &dyn SqlProjection,
        events: &[ProjectedEvent],
        undecodable: &[UndecodableRecord<'_>],
        progress: (&Progress, &BatchGroups),
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
                    self.report_dead_letters(&dead, undecodable);
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
    async fn apply_batch<'e>(
        &self,
        pool: &PgPool,
        handler: &dyn SqlProjection,
        events: &'e [ProjectedEvent],
        undecodable: &[UndecodableRecord<'_>],
        (progress, groups): (&Progress, &BatchGroups),
    ) -> Result<Vec<DeadLetter<'e>>, TryError> {
        let mut tx = pool.begin().await?;
        let lost = groups.claim(&mut tx, &self.name).await?;
        let kept: Cow<'_, [ProjectedEvent]> = if lost.is_empty() {
            Cow::Borrowed(events)
        } else {
            Cow::Owned(
                events
                    .iter()
                    .filter(|e| !group::in_any(&lost, e.event.global_position))
                    .cloned()
                    .collect(),
            )
        };
        if !kept.is_empty() {
            handler
                .apply(&mut tx, &self.name, &kept)
                .await
                .map_err(|e| TryError::Handler(HandlerError::database(e)))?;
        }
        self.store_undecodable(&mut tx, undecodable).await?;
        checkpoint::write(&mut tx, &self.name, progress).await?;
        groups.prune(&mut tx, &self.name).await?;
        tx.commit().await?;
        Ok(Vec::new())
    }

    /// One transaction, one savepoint per event: a rejected event is dead-lettered (the same
    /// statement on the same data fails the same way), a transient failure aborts the try.
    async fn apply_isolated<'e>(
        &self,
        pool: &PgPool,
        handler: &dyn SqlProjection,
        events: &'e [ProjectedEvent],
        undecodable: &[UndecodableRecord<'_>],
        (progress, groups): (&Progress, &BatchGroups),
    ) -> Result<Vec<DeadLetter<'e>>, TryError> {
        let mut tx = pool.begin().await?;
        let lost = groups.claim(&mut tx, &self.name).await?;
        let mut dead = Vec::new();
        for event in events {
            if group::in_any(&lost, event.event.global_position) {
                continue;
            }
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
        groups.prune(&mut tx, &self.name).await?;
        tx.commit().await?;
        Ok(dead)
    }
}

//! The scavenger task: every round, deletes the events reads hide (retention rules and deletes)
//! in bounded batches, each its own short transaction, until none is left; the rows stay hidden
//! meanwhile, so when it runs changes nothing a reader sees.

use std::sync::Arc;
use std::time::Duration;

use esk_runtime::internal_event::InternalEvent;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::internal_events::StepFailed;
use crate::metrics::IndexerMetrics;

/// Periodic scavenging.
pub(crate) struct Scavenger {
    pub(crate) pool: PgPool,
    pub(crate) every: Duration,
    pub(crate) batch: i32,
    pub(crate) metrics: Arc<IndexerMetrics>,
}

impl Scavenger {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.every.max(Duration::from_millis(100)));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(error) = self.round(&shutdown).await {
                StepFailed {
                    metrics: &self.metrics,
                    stage: "scavenge",
                    error: &error,
                    partition: None,
                    message: "scavenging failed",
                }
                .emit();
            }
        }
    }

    /// Batches until one comes back short (nothing left) or shutdown.
    async fn round(&self, shutdown: &CancellationToken) -> Result<(), sqlx::Error> {
        while !shutdown.is_cancelled() {
            let deleted = esk_runtime::scavenge::scavenge_batch(&self.pool, self.batch).await?;
            self.metrics.scavenged.inc_by(deleted);
            if deleted > 0 {
                tracing::debug!(deleted, "scavenged hidden events");
            }
            if deleted < u64::try_from(self.batch).unwrap_or(0) {
                break;
            }
        }
        Ok(())
    }
}

//! The scavenger's round: deletes the events reads hide (retention rules and deletes) in bounded
//! batches, each its own short transaction, until none is left; the rows stay hidden meanwhile,
//! so when it runs changes nothing a reader sees. [`crate::chore::Chore`] runs it periodically.

use std::sync::Arc;

use esk_runtime::supervisor::Progress;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::metrics::IndexerMetrics;

/// Scavenging in batches of `batch` events.
pub(crate) struct Scavenger {
    pub(crate) pool: PgPool,
    pub(crate) batch: i32,
    pub(crate) metrics: Arc<IndexerMetrics>,
}

impl Scavenger {
    /// Batches until one comes back short (nothing left) or shutdown; every batch is progress.
    pub(crate) async fn round(
        &self,
        shutdown: &CancellationToken,
        progress: &Progress,
    ) -> Result<(), sqlx::Error> {
        while !shutdown.is_cancelled() {
            let deleted = esk_runtime::scavenge::scavenge_batch(&self.pool, self.batch).await?;
            progress.progressed();
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

//! Ledger upkeep: prune rows past the idempotency window once their events are indexed, and
//! count accepted appends that stay unindexed too long (the alert the brief asks for).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use crate::metrics::IndexerMetrics;

/// Ledger upkeep; [`crate::chore::Chore`] runs its round periodically.
pub(crate) struct LedgerMaintenance {
    pub(crate) pool: PgPool,
    pub(crate) window: Duration,
    pub(crate) alert_after: Duration,
    pub(crate) metrics: Arc<IndexerMetrics>,
}

impl LedgerMaintenance {
    /// Prunes what may go and counts accepted appends left unindexed too long.
    pub(crate) async fn round(&self) -> Result<(), sqlx::Error> {
        // Only appends whose last event is in the table (or that were rejected) may go: the
        // ledger is what tells the indexer an ingest-log record is committed. A stream's events
        // are indexed in version order (one partition), so an event at or after the append's
        // last version proves it indexed even when the scavenger deleted that event.
        let pruned = sqlx::query(
            "DELETE FROM append_ledger WHERE append_id IN (
                SELECT l.append_id FROM append_ledger l
                WHERE l.created_at < now() - make_interval(secs => $1)
                  AND (l.status = 'rejected'
                       OR EXISTS (SELECT 1 FROM events e
                                  WHERE e.stream_id = l.stream_id AND e.version >= l.last_version))
                ORDER BY l.created_at LIMIT 10000)",
        )
        .bind(self.window.as_secs_f64())
        .execute(&self.pool)
        .await?;
        self.metrics.ledger_pruned.inc_by(pruned.rows_affected());
        // Recent appends only: older ones were either indexed or already alerted on.
        let stuck: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (
                SELECT 1 FROM append_ledger l
                WHERE l.status = 'accepted'
                  AND l.created_at BETWEEN now() - interval '1 hour' AND now() - make_interval(secs => $1)
                  AND NOT EXISTS (SELECT 1 FROM events e
                                  WHERE e.stream_id = l.stream_id AND e.version = l.last_version)
                LIMIT 10000) AS stuck",
        )
        .bind(self.alert_after.as_secs_f64())
        .fetch_one(&self.pool)
        .await?;
        self.metrics.unindexed_appends.set(stuck);
        if stuck > 0 {
            tracing::warn!(
                stuck,
                "accepted appends not indexed past the alert threshold"
            );
        }
        Ok(())
    }
}

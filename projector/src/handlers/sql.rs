//! SQL projections: read models in Postgres whose writes commit in the same transaction as the
//! projection's checkpoint, so each event is applied exactly once.
//!
//! Adding one is a one-file job: write a type implementing [`SqlProjection`] (its tables go in
//! a migration, keyed by the projection name so one kind can back several projections), and add
//! it to [`registered`]. See `docs/projections.md`.

use futures::future::BoxFuture;
use sqlx::PgConnection;

use crate::event::ProjectedEvent;

/// A read model maintained inside the projector's transaction.
pub(crate) trait SqlProjection: Send + Sync {
    /// Whether `apply` reads event payloads (`data`, `metadata`); replays skip them if not.
    fn needs_data(&self) -> bool {
        true
    }

    /// Applies `events` (in order) for the projection called `projection`.
    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        projection: &'a str,
        events: &'a [ProjectedEvent],
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;

    /// Deletes everything this projection wrote (before a rebuild).
    fn reset<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        projection: &'a str,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
}

/// The registry: SQL projection kinds by the name used in the projections file.
pub(crate) fn registered(kind: &str) -> Option<Box<dyn SqlProjection>> {
    match kind {
        "category_type_counts" => Some(Box::new(super::counts::CategoryTypeCounts)),
        "stream_summary" => Some(Box::new(super::stream_summary::StreamSummary)),
        _ => None,
    }
}

/// Names accepted by [`registered`].
pub(crate) fn names() -> Vec<&'static str> {
    vec!["category_type_counts", "stream_summary"]
}

/// The `reset` of a read model whose rows are keyed by projection name: deletes them all.
/// `table` is one of the built-in tables (never user input).
pub(crate) fn delete_projection_rows<'a>(
    conn: &'a mut PgConnection,
    table: &'static str,
    projection: &'a str,
) -> BoxFuture<'a, Result<(), sqlx::Error>> {
    use futures::FutureExt;
    async move {
        sqlx::query(&format!("DELETE FROM {table} WHERE projection = $1"))
            .bind(projection)
            .execute(conn)
            .await?;
        Ok(())
    }
    .boxed()
}

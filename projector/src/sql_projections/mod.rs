//! SQL projections: read models in Postgres whose writes commit in the same transaction as the
//! projection's checkpoint, so each event is applied exactly once.
//!
//! Adding one takes one file in this directory (a type implementing [`SqlProjection`]; its
//! tables go in a migration, keyed by the projection name so one kind can back several
//! projections) and one line in the [`registry!`] below. See `docs/projections.md`.

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

/// Declares each SQL projection's module and registers its type under the name the projections
/// file uses (`sql = "..."`), so that a projection is registered by exactly one line.
macro_rules! registry {
    ($($kind:literal => $module:ident :: $projection:ident,)*) => {
        $(mod $module;)*

        /// The SQL projection kinds the projections file may name, in registration order.
        pub(crate) const KINDS: &[&str] = &[$($kind),*];

        /// The SQL projection registered as `kind`.
        pub(crate) fn registered(kind: &str) -> Option<Box<dyn SqlProjection>> {
            match kind {
                $($kind => Some(Box::new($module::$projection)),)*
                _ => None,
            }
        }
    };
}

registry! {
    "category_type_counts" => counts::CategoryTypeCounts,
    "stream_summary" => stream_summary::StreamSummary,
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

/// The example of `docs/projections.md` ("Adding a SQL projection"), extracted from the page by
/// `build.rs` and compiled here, where the page says the file goes: a test build fails when
/// the page's code no longer compiles against this module.
#[cfg(test)]
mod doc_example {
    include!(concat!(env!("OUT_DIR"), "/projections_doc_example.rs"));

    #[test]
    fn the_documented_sql_projection_is_one() {
        let projection: Box<dyn SqlProjection> = Box::new(DailyCounts);
        assert!(!projection.needs_data());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_kind_resolves_and_nothing_else_does() {
        for kind in KINDS {
            assert!(registered(kind).is_some(), "{kind} is registered");
        }
        assert!(registered("no_such_projection").is_none());
    }
}

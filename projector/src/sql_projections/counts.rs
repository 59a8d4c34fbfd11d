//! Built-in: event counts per category and event type.

use std::collections::HashMap;

use esk_model::event::category_of;
use futures::future::BoxFuture;
use futures::FutureExt;
use sqlx::PgConnection;

use super::SqlProjection;
use crate::event::ProjectedEvent;

/// `projection_category_type_counts`.
#[derive(Debug)]
pub(crate) struct CategoryTypeCounts;

impl SqlProjection for CategoryTypeCounts {
    fn needs_data(&self) -> bool {
        false
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        projection: &'a str,
        events: &'a [ProjectedEvent],
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        async move {
            // Folded in memory first: one upsert row per (category, type) in the batch.
            let mut counts: HashMap<(&str, &str), i64> = HashMap::new();
            for e in events {
                *counts
                    .entry((category_of(&e.event.stream_id), e.event.event_type.as_str()))
                    .or_default() += 1;
            }
            let mut categories = Vec::with_capacity(counts.len());
            let mut types = Vec::with_capacity(counts.len());
            let mut numbers = Vec::with_capacity(counts.len());
            for ((category, event_type), n) in counts {
                categories.push(category);
                types.push(event_type);
                numbers.push(n);
            }
            sqlx::query(
                "INSERT INTO projection_category_type_counts (projection, category, event_type, count)
                 SELECT $1, c, t, n FROM unnest($2::text[], $3::text[], $4::int8[]) AS u(c, t, n)
                 ORDER BY c, t
                 ON CONFLICT (projection, category, event_type)
                 DO UPDATE SET count = projection_category_type_counts.count + EXCLUDED.count",
            )
            .bind(projection)
            .bind(&categories)
            .bind(&types)
            .bind(&numbers)
            .execute(conn)
            .await?;
            Ok(())
        }
        .boxed()
    }

    fn reset<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        projection: &'a str,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        super::delete_projection_rows(conn, "projection_category_type_counts", projection)
    }
}

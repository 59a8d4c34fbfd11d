//! Built-in: one row per stream with its latest version, last event type and time.

use std::collections::HashMap;

use futures::future::BoxFuture;
use futures::FutureExt;
use sqlx::PgConnection;

use super::SqlProjection;
use crate::event::ProjectedEvent;

/// `projection_stream_summary`.
#[derive(Debug)]
pub(crate) struct StreamSummary;

impl SqlProjection for StreamSummary {
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
            let mut latest: HashMap<&str, &ProjectedEvent> = HashMap::new();
            for e in events {
                let slot = latest.entry(e.event.stream_id.as_str()).or_insert(e);
                if e.event.version >= slot.event.version {
                    *slot = e;
                }
            }
            let mut streams: Vec<&str> = latest.keys().copied().collect();
            streams.sort_unstable();
            let versions: Vec<i64> = streams.iter().map(|s| latest[s].event.version).collect();
            let types: Vec<&str> = streams.iter().map(|s| latest[s].event.event_type.as_str()).collect();
            let times: Vec<chrono::DateTime<chrono::Utc>> =
                streams.iter().map(|s| latest[s].event.created_at).collect();
            // A repeat of an older event never moves a stream back.
            sqlx::query(
                "INSERT INTO projection_stream_summary (projection, stream_id, version, last_event_type, updated_at)
                 SELECT $1, s, v, t, u FROM unnest($2::text[], $3::int8[], $4::text[], $5::timestamptz[]) AS x(s, v, t, u)
                 ON CONFLICT (projection, stream_id) DO UPDATE
                 SET version = EXCLUDED.version, last_event_type = EXCLUDED.last_event_type,
                     updated_at = EXCLUDED.updated_at
                 WHERE projection_stream_summary.version < EXCLUDED.version",
            )
            .bind(projection)
            .bind(&streams)
            .bind(&versions)
            .bind(&types)
            .bind(&times)
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
        super::delete_projection_rows(conn, "projection_stream_summary", projection)
    }
}

//! The stream index (step 4): lock the batch's streams in sorted order, then set their versions.

use std::collections::HashMap;

use esk_model::event::NO_STREAM;
use sqlx::{PgConnection, Row};

/// Locks `sorted_streams` (sorted, distinct) and returns each one's version ([`NO_STREAM`] for
/// a stream without events), in one statement: a missing stream gets a placeholder row (so a
/// concurrent attempt creating the same stream waits on our row instead of racing past it) and
/// an existing one is locked by a no-op update. Rows are taken in sorted order, so concurrent
/// attempts cannot deadlock; a row another attempt holds is waited for and read as committed.
pub(crate) async fn lock(
    conn: &mut PgConnection,
    sorted_streams: &[&str],
) -> Result<HashMap<String, i64>, sqlx::Error> {
    let rows = sqlx::query(
        "INSERT INTO streams (stream_id, version)
         SELECT s, -1 FROM unnest($1::text[]) AS t(s) ORDER BY s
         ON CONFLICT (stream_id) DO UPDATE SET version = streams.version
         RETURNING stream_id, version",
    )
    .bind(sorted_streams)
    .fetch_all(&mut *conn)
    .await?;
    let mut versions = HashMap::with_capacity(rows.len());
    for row in rows {
        versions.insert(row.try_get("stream_id")?, row.try_get("version")?);
    }
    Ok(versions)
}

/// Removes placeholders that no accepted append filled (their streams stay absent).
pub(crate) async fn remove_placeholders(
    conn: &mut PgConnection,
    unfilled_placeholders: &[&str],
) -> Result<(), sqlx::Error> {
    if unfilled_placeholders.is_empty() {
        return Ok(());
    }
    sqlx::query("DELETE FROM streams WHERE stream_id = ANY($1) AND version = $2")
        .bind(unfilled_placeholders)
        .bind(NO_STREAM)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

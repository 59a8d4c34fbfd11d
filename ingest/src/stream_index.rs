//! The stream index (step 4): lock the batch's streams in sorted order, then set their versions.

use std::collections::HashMap;

use esk_model::event::{StreamVersion, Version};
use sqlx::{PgConnection, Row};

/// The `streams.version` of a placeholder row: a stream without events, locked by an attempt.
/// The store's only sentinel; nothing above this module sees it.
const PLACEHOLDER_VERSION: i64 = -1;

/// Reads a `streams.version` value.
fn stream_version(stored: i64) -> Result<StreamVersion, sqlx::Error> {
    if stored == PLACEHOLDER_VERSION {
        return Ok(StreamVersion::NoStream);
    }
    Version::try_from(stored)
        .map(StreamVersion::At)
        .map_err(|e| sqlx::Error::ColumnDecode {
            index: "version".to_owned(),
            source: Box::new(e),
        })
}

/// Locks `sorted_streams` (sorted, distinct) and returns each one's version, in one statement:
/// a missing stream gets a placeholder row (so a concurrent attempt creating the same stream
/// waits on our row instead of racing past it) and an existing one is locked by a no-op update.
/// Rows are taken in sorted order, so concurrent attempts cannot deadlock; a row another attempt
/// holds is waited for and read as committed.
pub(crate) async fn lock(
    conn: &mut PgConnection,
    sorted_streams: &[&str],
) -> Result<HashMap<String, StreamVersion>, sqlx::Error> {
    let rows = sqlx::query(
        "INSERT INTO streams (stream_id, version)
         SELECT s, $2 FROM unnest($1::text[]) AS t(s) ORDER BY s
         ON CONFLICT (stream_id) DO UPDATE SET version = streams.version
         RETURNING stream_id, version",
    )
    .bind(sorted_streams)
    .bind(PLACEHOLDER_VERSION)
    .fetch_all(&mut *conn)
    .await?;
    let mut versions = HashMap::with_capacity(rows.len());
    for row in rows {
        versions.insert(
            row.try_get("stream_id")?,
            stream_version(row.try_get("version")?)?,
        );
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
        .bind(PLACEHOLDER_VERSION)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

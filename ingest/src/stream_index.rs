//! The stream index (step 4): lock the batch's streams in sorted order, then set their versions.

use std::collections::HashMap;

use esk_core::model::NO_STREAM;
use sqlx::{PgConnection, Row};

/// Locks `sorted_streams` (sorted, distinct) and returns each one's version ([`NO_STREAM`] for
/// a stream without events). Missing streams get a placeholder row first, so a concurrent
/// attempt creating the same stream waits on our row instead of racing past it.
pub(crate) async fn lock(
    conn: &mut PgConnection,
    sorted_streams: &[&str],
) -> Result<HashMap<String, i64>, sqlx::Error> {
    sqlx::query(
        "INSERT INTO streams (stream_id, version)
         SELECT s, -1 FROM unnest($1::text[]) AS t(s) ORDER BY s
         ON CONFLICT (stream_id) DO NOTHING",
    )
    .bind(sorted_streams)
    .execute(&mut *conn)
    .await?;
    let rows = sqlx::query(
        "SELECT stream_id, version FROM streams
         WHERE stream_id = ANY($1) ORDER BY stream_id FOR UPDATE",
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

/// Writes new versions and removes placeholders that no accepted append filled.
pub(crate) async fn store(
    conn: &mut PgConnection,
    updates: &[(&str, i64)],
    unfilled_placeholders: &[&str],
) -> Result<(), sqlx::Error> {
    if !updates.is_empty() {
        let (streams, versions): (Vec<&str>, Vec<i64>) = updates.iter().copied().unzip();
        sqlx::query(
            "UPDATE streams AS s SET version = u.v
             FROM unnest($1::text[], $2::int8[]) AS u(id, v)
             WHERE s.stream_id = u.id",
        )
        .bind(&streams)
        .bind(&versions)
        .execute(&mut *conn)
        .await?;
    }
    if !unfilled_placeholders.is_empty() {
        sqlx::query("DELETE FROM streams WHERE stream_id = ANY($1) AND version = $2")
            .bind(unfilled_placeholders)
            .bind(NO_STREAM)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

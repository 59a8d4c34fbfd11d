//! The stream index (step 4): lock the batch's streams in sorted order, then set their versions.

use std::collections::HashMap;

use esk_model::event::{StreamVersion, Version};
use sqlx::{PgConnection, Row};

use crate::decide::{FlagChange, MetadataWrite, StreamState};

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

/// Locks `sorted_streams` (sorted, distinct) and returns each one's state, in one statement:
/// a missing stream gets a placeholder row (so a concurrent attempt creating the same stream
/// waits on our row instead of racing past it) and an existing one is locked by a no-op update.
/// Rows are taken in sorted order, so concurrent attempts cannot deadlock; a row another attempt
/// holds is waited for and read as committed: the lifecycle flags come from the same row
/// version as the version (`RETURNING` of the locking update), so a tombstone committed by the
/// attempt we waited for is seen here.
pub(crate) async fn lock(
    conn: &mut PgConnection,
    sorted_streams: &[&str],
) -> Result<HashMap<String, StreamState>, sqlx::Error> {
    let rows = sqlx::query(
        "INSERT INTO streams (stream_id, version)
         SELECT s, $2 FROM unnest($1::text[]) AS t(s) ORDER BY s
         ON CONFLICT (stream_id) DO UPDATE SET version = streams.version
         RETURNING stream_id, version, deleted_through, tombstoned",
    )
    .bind(sorted_streams)
    .bind(PLACEHOLDER_VERSION)
    .fetch_all(&mut *conn)
    .await?;
    let mut versions = HashMap::with_capacity(rows.len());
    for row in rows {
        let deleted_through: Option<i64> = row.try_get("deleted_through")?;
        versions.insert(
            row.try_get("stream_id")?,
            StreamState {
                version: stream_version(row.try_get("version")?)?,
                deleted_through: deleted_through
                    .map(|v| {
                        Version::try_from(v).map_err(|e| sqlx::Error::ColumnDecode {
                            index: "deleted_through".to_owned(),
                            source: Box::new(e),
                        })
                    })
                    .transpose()?,
                tombstoned: row.try_get("tombstoned")?,
            },
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

/// Stores the lifecycle flags accepted deletes changed (rows this attempt holds locked).
pub(crate) async fn set_flags(
    conn: &mut PgConnection,
    changes: &[FlagChange<'_>],
) -> Result<(), sqlx::Error> {
    if changes.is_empty() {
        return Ok(());
    }
    let streams: Vec<&str> = changes.iter().map(|c| c.stream_id).collect();
    let deleted: Vec<Option<i64>> = changes
        .iter()
        .map(|c| c.deleted_through.map(Version::get))
        .collect();
    let tombstoned: Vec<bool> = changes.iter().map(|c| c.tombstoned).collect();
    sqlx::query(
        "UPDATE streams AS s SET deleted_through = f.d, tombstoned = f.t
         FROM unnest($1::text[], $2::int8[], $3::bool[]) AS f(stream_id, d, t)
         WHERE s.stream_id = f.stream_id",
    )
    .bind(&streams)
    .bind(&deleted)
    .bind(&tombstoned)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Stores the metadata accepted changes set, in the attempt's transaction: an acknowledged
/// `PUT /streams/{id}/metadata` is read back by the next `GET` (read-your-writes). Only a newer
/// metadata version replaces an older one.
pub(crate) async fn set_metadata(
    conn: &mut PgConnection,
    writes: &[MetadataWrite<'_>],
) -> Result<(), sqlx::Error> {
    if writes.is_empty() {
        return Ok(());
    }
    let mut streams = Vec::with_capacity(writes.len());
    let mut versions = Vec::with_capacity(writes.len());
    let mut ages = Vec::with_capacity(writes.len());
    let mut counts = Vec::with_capacity(writes.len());
    let mut truncates = Vec::with_capacity(writes.len());
    let mut customs: Vec<Option<&str>> = Vec::with_capacity(writes.len());
    for w in writes {
        streams.push(w.stream_id);
        versions.push(w.metadata_version.get());
        ages.push(w.metadata.max_age_s);
        counts.push(w.metadata.max_count);
        truncates.push(w.metadata.truncate_before.map(Version::get));
        customs.push(w.metadata.custom.as_deref().map(|c| c.get()));
    }
    sqlx::query(
        "INSERT INTO stream_metadata
             (stream_id, metadata_version, max_age_s, max_count, truncate_before, custom)
         SELECT s, v, a, c, t, j::json
         FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::text[])
              AS m(s, v, a, c, t, j)
         ORDER BY s
         ON CONFLICT (stream_id) DO UPDATE SET
             metadata_version = EXCLUDED.metadata_version, max_age_s = EXCLUDED.max_age_s,
             max_count = EXCLUDED.max_count, truncate_before = EXCLUDED.truncate_before,
             custom = EXCLUDED.custom, updated_at = now()
         WHERE stream_metadata.metadata_version < EXCLUDED.metadata_version",
    )
    .bind(&streams)
    .bind(&versions)
    .bind(&ages)
    .bind(&counts)
    .bind(&truncates)
    .bind(&customs)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

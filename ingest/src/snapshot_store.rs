//! Snapshots in Postgres: one row per stream, the newest (migrations/0008_snapshots.sql). A
//! snapshot names a version the `events` table has; the upsert only ever moves a stream's
//! snapshot forward, in one statement, so concurrent writers cannot put an older state over a
//! newer one.

use esk_model::api::Snapshot;
use esk_model::event::Version;
use esk_model::snapshot::NewSnapshot;
use serde_json::value::RawValue;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

/// What became of a snapshot sent.
#[derive(Debug)]
pub(crate) enum PutOutcome {
    /// It is the stream's snapshot now.
    Stored(Snapshot),
    /// The stream already had one at this version or a newer one: that one was kept.
    Kept(Snapshot),
    /// Nothing was written: its version is not an indexed event of the stream.
    Refused(NoSuchVersion),
}

/// Why a snapshot's version cannot be snapshotted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoSuchVersion {
    /// The stream has no events, indexed or accepted.
    NoStream,
    /// Ingest accepted the version but the indexer has not written it to `events` yet: a retry
    /// after `GET /wait` succeeds.
    NotIndexed {
        /// The stream's last accepted version.
        accepted: i64,
    },
    /// The stream ends before the version.
    AheadOfStream {
        /// The stream's last accepted version.
        accepted: i64,
    },
}

/// The columns [`snapshot_from_row`] reads, in its order.
const COLUMNS: &str = "stream_id, version, data::text, created_at";

/// Stores `snapshot` unless the stream's snapshot is as new or newer.
pub(crate) async fn put(pool: &PgPool, snapshot: &NewSnapshot) -> Result<PutOutcome, sqlx::Error> {
    let version = snapshot.version.get();
    // `events` is the authority on which versions exist (and they never change once there), so
    // checking first and writing after cannot race with the answer.
    let indexed: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM events WHERE stream_id = $1 AND version = $2)",
    )
    .bind(&snapshot.stream_id)
    .bind(version)
    .fetch_one(pool)
    .await?;
    if !indexed {
        return Ok(PutOutcome::Refused(
            why_missing(pool, &snapshot.stream_id, version).await?,
        ));
    }
    let stored = sqlx::query(&format!(
        "INSERT INTO snapshots (stream_id, version, data, created_at)
         VALUES ($1, $2, $3::json, now())
         ON CONFLICT (stream_id) DO UPDATE
             SET version = EXCLUDED.version, data = EXCLUDED.data, created_at = EXCLUDED.created_at
             WHERE snapshots.version < EXCLUDED.version
         RETURNING {COLUMNS}"
    ))
    .bind(&snapshot.stream_id)
    .bind(version)
    .bind(snapshot.data.get())
    .fetch_optional(pool)
    .await?;
    if let Some(row) = stored {
        return Ok(PutOutcome::Stored(snapshot_from_row(&row)?));
    }
    // Not written: a snapshot at this version or a newer one is there (rows are never deleted).
    match get(pool, &snapshot.stream_id).await? {
        Some(current) => Ok(PutOutcome::Kept(current)),
        None => Err(sqlx::Error::RowNotFound),
    }
}

/// The stream's snapshot, if it has one.
pub(crate) async fn get(pool: &PgPool, stream_id: &str) -> Result<Option<Snapshot>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM snapshots WHERE stream_id = $1"
    ))
    .bind(stream_id)
    .fetch_optional(pool)
    .await?
    .as_ref()
    .map(snapshot_from_row)
    .transpose()
}

/// Why `version` is not in `events`: the stream's last accepted version is in the stream index
/// (`streams`, ahead of `events` by what the indexer has still to write; -1 is an attempt's
/// placeholder, not a version).
async fn why_missing(
    pool: &PgPool,
    stream_id: &str,
    version: i64,
) -> Result<NoSuchVersion, sqlx::Error> {
    let accepted: Option<i64> = sqlx::query_scalar(
        "SELECT greatest(
             (SELECT version FROM streams WHERE stream_id = $1 AND version >= 0),
             (SELECT max(version) FROM events WHERE stream_id = $1))",
    )
    .bind(stream_id)
    .fetch_one(pool)
    .await?;
    Ok(match accepted {
        None => NoSuchVersion::NoStream,
        Some(accepted) if version <= accepted => NoSuchVersion::NotIndexed { accepted },
        Some(accepted) => NoSuchVersion::AheadOfStream { accepted },
    })
}

fn snapshot_from_row(row: &PgRow) -> Result<Snapshot, sqlx::Error> {
    let decode = |e: Box<dyn std::error::Error + Send + Sync>| sqlx::Error::Decode(e);
    let data: String = row.try_get(2)?;
    let version: i64 = row.try_get(1)?;
    Ok(Snapshot {
        stream_id: row.try_get(0)?,
        version: Version::try_from(version).map_err(|e| decode(Box::new(e)))?,
        data: RawValue::from_string(data).map_err(|e| decode(Box::new(e)))?,
        created_at: row.try_get(3)?,
    })
}

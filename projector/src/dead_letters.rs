//! A projection's dead letters in Postgres: events its handler rejected, and canonical records
//! that did not decode, kept for inspection and replay (`projector dead-letters list|replay
//! NAME`; the replay itself is the projection's, in `projection/dead_letter_replay.rs`).

use sqlx::{PgConnection, PgPool, Row};

use crate::event::ProjectedEvent;

/// The `source` column of a projection's dead letters.
fn source(projection: &str) -> String {
    format!("projection:{projection}")
}

/// Stores an event in the caller's transaction.
pub(crate) async fn store(
    conn: &mut PgConnection,
    projection: &str,
    event: &ProjectedEvent,
    error: &str,
    attempts: usize,
) -> Result<(), sqlx::Error> {
    let payload = serde_json::to_vec(&event.event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "INSERT INTO dead_letters (source, global_position, event_id, kafka_partition, kafka_offset, payload, error, attempts)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(source(projection))
    .bind(event.event.global_position)
    .bind(event.event.event_id)
    .bind(event.source.map(|(p, _)| p))
    .bind(event.source.map(|(_, o)| o))
    .bind(payload)
    // Whatever a handler's error quotes, a credential never lands in the table.
    .bind(esk_runtime::redact::redact_text(error))
    .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
    .execute(conn)
    .await?;
    Ok(())
}

/// A canonical-topic record whose value is not an event envelope: dead-lettered with where it
/// came from and its bytes, never skipped silently.
#[derive(Debug)]
pub(crate) struct UndecodableRecord<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) payload: &'a [u8],
    pub(crate) error: String,
}

/// Stores an undecodable record in the caller's transaction.
pub(crate) async fn store_undecodable(
    conn: &mut PgConnection,
    projection: &str,
    record: &UndecodableRecord<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO dead_letters (source, kafka_topic, kafka_partition, kafka_offset, payload, error, attempts)
         VALUES ($1, $2, $3, $4, $5, $6, 1)",
    )
    .bind(source(projection))
    .bind(record.topic)
    .bind(record.partition)
    .bind(record.offset)
    .bind(record.payload)
    .bind(esk_runtime::redact::redact_text(&format!(
        "undecodable canonical record: {}",
        record.error
    )))
    .execute(conn)
    .await?;
    Ok(())
}

/// A stored dead letter, as `dead-letters list` shows it.
#[derive(Debug, serde::Serialize)]
pub struct DeadLetter {
    /// Its id in `dead_letters`.
    pub id: i64,
    /// The event's global position (none for an undecodable record).
    pub global_position: Option<i64>,
    /// The event's id (none for an undecodable record).
    pub event_id: Option<uuid::Uuid>,
    /// Where it was on the canonical topic (none when it was replayed from Postgres).
    pub kafka_partition: Option<i32>,
    /// Its offset in that partition.
    pub kafka_offset: Option<i64>,
    /// Why it was dead-lettered (the latest failure).
    pub error: String,
    /// How many times it was tried.
    pub attempts: i32,
    /// When it was dead-lettered.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Dead letters not replayed yet, oldest first.
pub(crate) async fn list(pool: &PgPool, projection: &str) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, global_position, event_id, kafka_partition, kafka_offset, error, attempts, created_at
         FROM dead_letters
         WHERE source = $1 AND replayed_at IS NULL ORDER BY id",
    )
    .bind(source(projection))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(DeadLetter {
                id: r.try_get("id")?,
                global_position: r.try_get("global_position")?,
                event_id: r.try_get("event_id")?,
                kafka_partition: r.try_get("kafka_partition")?,
                kafka_offset: r.try_get("kafka_offset")?,
                error: r.try_get("error")?,
                attempts: r.try_get("attempts")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}

/// The (id, payload) of every dead letter not replayed yet, oldest first.
pub(crate) async fn unreplayed_payloads(
    pool: &PgPool,
    projection: &str,
) -> Result<Vec<(i64, Option<Vec<u8>>)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, payload FROM dead_letters WHERE source = $1 AND replayed_at IS NULL ORDER BY id",
    )
    .bind(source(projection))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("id")?, row.try_get("payload")?)))
        .collect()
}

/// Counts a failed replay of a dead letter and keeps its latest error.
pub(crate) async fn record_failed_replay(
    pool: &PgPool,
    id: i64,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE dead_letters SET attempts = attempts + 1, error = $2 WHERE id = $1")
        .bind(id)
        .bind(esk_runtime::redact::redact_text(error))
        .execute(pool)
        .await?;
    Ok(())
}

/// Marks a dead letter replayed, in the caller's transaction.
pub(crate) async fn mark_replayed(conn: &mut PgConnection, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE dead_letters SET replayed_at = now() WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

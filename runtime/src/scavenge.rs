//! The scavenger's statements: physically delete the events that reads already hide (retention
//! rules, deletes; migration 0009), in bounded batches. The indexer runs it as a task and `esk
//! scavenge` runs it on demand; both go through these two calls.

use sqlx::PgPool;

/// Deletes at most `limit` hidden events in one short transaction of its own (the statement),
/// without touching the position counter, so indexing goes on meanwhile. Returns how many went:
/// fewer than `limit` means nothing was left when it ran.
pub async fn scavenge_batch(pool: &PgPool, limit: i32) -> Result<u64, sqlx::Error> {
    let deleted: i64 = sqlx::query_scalar("SELECT scavenge_events($1)")
        .bind(limit.max(1))
        .fetch_one(pool)
        .await?;
    Ok(u64::try_from(deleted).unwrap_or(0))
}

/// How many events the scavenger may delete now.
pub async fn scavengeable(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let count: i64 = sqlx::query_scalar("SELECT scavengeable_event_count()")
        .fetch_one(pool)
        .await?;
    Ok(u64::try_from(count).unwrap_or(0))
}

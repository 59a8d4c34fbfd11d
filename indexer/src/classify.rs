//! Which ingest-log records are committed: an event is indexed only if its (append id, attempt
//! id) has an accepted ledger row. For a pair with no row yet, wait on the attempt's advisory
//! lock in a short separate transaction, then look again: a new stream's uncommitted row is
//! invisible, so waiting on stream rows would drop committed appends.

use std::collections::{HashMap, HashSet};

use esk_model::event::advisory_key;
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// (append id, attempt id).
pub(crate) type AttemptPair = (Uuid, Uuid);

/// Returns the pairs whose attempt committed the append.
pub(crate) async fn committed(
    pool: &PgPool,
    pairs: &HashSet<AttemptPair>,
) -> Result<HashSet<AttemptPair>, sqlx::Error> {
    let append_ids: Vec<Uuid> = pairs
        .iter()
        .map(|(a, _)| *a)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut decided = load(pool, &append_ids).await?;
    let undecided_attempts: Vec<i64> = pairs
        .iter()
        .filter(|(append, _)| !decided.contains_key(append))
        .map(|(_, attempt)| advisory_key(*attempt))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if !undecided_attempts.is_empty() {
        // Never inside the indexing transaction: this waits for ingest attempts to end.
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock_shared(k) FROM unnest($1::int8[]) AS t(k)")
            .bind(&undecided_attempts)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let retry: Vec<Uuid> = append_ids
            .iter()
            .copied()
            .filter(|a| !decided.contains_key(a))
            .collect();
        decided.extend(load(pool, &retry).await?);
    }
    Ok(pairs
        .iter()
        .copied()
        .filter(|(append, attempt)| decided.get(append) == Some(attempt))
        .collect())
}

/// Accepted ledger rows: append id → the attempt that committed it.
async fn load(pool: &PgPool, append_ids: &[Uuid]) -> Result<HashMap<Uuid, Uuid>, sqlx::Error> {
    // One primary-key probe per id. `append_id = ANY($1)` with a batch's thousand ids made the
    // planner scan the whole ledger while it was small (docs/design.md, "Performance notes").
    let rows = sqlx::query(
        "SELECT l.append_id, l.attempt_id, l.status
         FROM unnest($1::uuid[]) AS u(id)
         CROSS JOIN LATERAL (
             SELECT append_id, attempt_id, status FROM append_ledger WHERE append_id = u.id LIMIT 1
         ) AS l",
    )
    .bind(append_ids)
    .fetch_all(pool)
    .await?;
    let mut decided = HashMap::with_capacity(rows.len());
    for row in rows {
        let status: &str = row.try_get("status")?;
        // A rejected append produced nothing; any record naming it is a phantom. Recording the
        // row (with a nil attempt) still marks the append as decided.
        let attempt = if status == "accepted" {
            row.try_get("attempt_id")?
        } else {
            Uuid::nil()
        };
        decided.insert(row.try_get("append_id")?, attempt);
    }
    Ok(decided)
}

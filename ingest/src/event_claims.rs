//! Event-id claims (step 3): event ids are unique in the store, enforced at ingest so a
//! duplicate is refused before it is acknowledged, never dropped later by the indexer.

use std::collections::HashMap;

use esk_model::event::Append;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::claim_mode::OnHeld;

/// Claims every event id of `appends` for its append, in event-id order (then arrival order, so
/// of two appends of the batch with the same event id the earlier one claims it). Returns the
/// ids claimed now with the append that claimed each; an id missing from the result already
/// belongs to another append (with [`OnHeld::Fail`], such an id fails the statement instead).
pub(crate) async fn claim(
    conn: &mut PgConnection,
    appends: &[&Append],
    on_held: OnHeld,
) -> Result<HashMap<Uuid, Uuid>, sqlx::Error> {
    macro_rules! claim_sql {
        ($on_held:literal) => {
            concat!(
                "INSERT INTO event_claims (event_id, append_id)
                 SELECT e, a FROM unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS t(e, a, arrival)
                 ORDER BY e, arrival ",
                $on_held,
                " RETURNING event_id, append_id"
            )
        };
    }
    let sql = match on_held {
        OnHeld::Fail => claim_sql!(""),
        OnHeld::Skip => claim_sql!("ON CONFLICT (event_id) DO NOTHING"),
    };
    let total = appends.iter().map(|a| a.events.len()).sum();
    let mut event_ids = Vec::with_capacity(total);
    let mut owners = Vec::with_capacity(total);
    for append in appends {
        for event in &append.events {
            event_ids.push(event.id);
            owners.push(append.append_id);
        }
    }
    let claimed: Vec<(Uuid, Uuid)> = sqlx::query_as(sql)
        .bind(&event_ids)
        .bind(&owners)
        .fetch_all(conn)
        .await?;
    Ok(claimed.into_iter().collect())
}

/// The appends owning these event ids.
pub(crate) async fn owners(
    conn: &mut PgConnection,
    event_ids: &[Uuid],
) -> Result<HashMap<Uuid, Uuid>, sqlx::Error> {
    let rows: Vec<(Uuid, Uuid)> =
        sqlx::query_as("SELECT event_id, append_id FROM event_claims WHERE event_id = ANY($1)")
            .bind(event_ids)
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().collect())
}

/// Releases claims this attempt made for appends it rejected, so those ids stay usable.
pub(crate) async fn release(
    conn: &mut PgConnection,
    event_ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    if event_ids.is_empty() {
        return Ok(());
    }
    sqlx::query("DELETE FROM event_claims WHERE event_id = ANY($1)")
        .bind(event_ids)
        .execute(conn)
        .await?;
    Ok(())
}

//! Steps 2–4 of an attempt in one round trip (`esk_claim_and_lock`, migration 0012): the same
//! statements in the same order as `ledger::claim`, `event_claims::claim` and
//! `stream_index::lock`, run by Postgres one after the other. Step 4 runs there only when steps
//! 2 and 3 claimed everything (the usual case); otherwise the attempt answers the rest and locks
//! what is left with those statements, as before (docs/design.md, "Steps 2–4 in one round
//! trip").

use std::collections::{HashMap, HashSet};

use esk_model::event::Append;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::decide::{EventClaims, StreamState};
use crate::ledger::ClaimColumns;
use crate::{event_claims, stream_index};

/// What steps 2–4 of the fold did.
pub(crate) struct Claimed {
    /// Step 2: the append ids claimed now.
    pub(crate) appends: HashSet<Uuid>,
    /// Step 3: the event ids claimed now, with the append that claimed each.
    pub(crate) events: EventClaims,
    /// Step 4: the locked streams' states, when steps 2 and 3 claimed everything and the
    /// streams locked were `lock_streams`; `None` when step 4 is left to the caller.
    pub(crate) locked: Option<HashMap<String, StreamState>>,
}

/// Runs steps 2 and 3 for `appends`, and step 4 over `lock_streams` (the streams and subjects
/// of every append, sorted and distinct: what step 4 locks when everything was claimed).
pub(crate) async fn claim_and_lock(
    conn: &mut PgConnection,
    attempt_id: Uuid,
    appends: &[&Append],
    lock_streams: &[&str],
) -> Result<Claimed, sqlx::Error> {
    let ledger = ClaimColumns::of_appends(appends);
    let (event_ids, event_appends) = event_claims::columns(appends);
    let rows = sqlx::query(
        "SELECT kind, id, owner, stream_id, version, deleted_through, tombstoned
         FROM esk_claim_and_lock($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(attempt_id)
    .bind(&ledger.ids)
    .bind(&ledger.streams)
    .bind(&ledger.fingerprints)
    .bind(&ledger.counts)
    .bind(&event_ids)
    .bind(&event_appends)
    .bind(lock_streams)
    .bind(stream_index::PLACEHOLDER_VERSION)
    .fetch_all(conn)
    .await?;
    let mut claimed = Claimed {
        appends: HashSet::with_capacity(appends.len()),
        events: EventClaims::with_capacity(event_ids.len()),
        locked: None,
    };
    for row in &rows {
        let kind: i8 = row.try_get("kind")?;
        match u8::try_from(kind).unwrap_or(0) {
            b'a' => {
                claimed.appends.insert(row.try_get("id")?);
            }
            b'e' => {
                claimed
                    .events
                    .insert(row.try_get("id")?, row.try_get("owner")?);
            }
            b's' => {
                let (stream, state) = stream_index::locked_row(row)?;
                claimed
                    .locked
                    .get_or_insert_with(HashMap::new)
                    .insert(stream, state);
            }
            other => {
                return Err(sqlx::Error::ColumnDecode {
                    index: "kind".to_owned(),
                    source: format!("unknown row kind {other}").into(),
                })
            }
        }
    }
    // Step 4 ran exactly when everything was claimed: then it locked every stream given.
    let everything =
        claimed.appends.len() == appends.len() && claimed.events.len() == event_ids.len();
    if everything && claimed.locked.is_none() && !lock_streams.is_empty() {
        return Err(sqlx::Error::Protocol(
            "esk_claim_and_lock claimed everything but locked no stream".to_owned(),
        ));
    }
    Ok(claimed)
}

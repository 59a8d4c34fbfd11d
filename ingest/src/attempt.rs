//! One ingest attempt: a single Postgres transaction over a micro-batch of appends, following
//! the brief's steps 1–6 in order (the order is what keeps idempotency, I4).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use chrono::Utc;
use esk_model::event::{advisory_key, Append, NO_STREAM};
use sqlx::PgPool;
use uuid::Uuid;

use crate::ingest_log::{Accepted, IngestLog, ProduceError};
use crate::metrics::IngestMetrics;
use crate::outcome::{AppendOutcome, Rejection};
use crate::{event_claims, ledger, stream_index};

/// Why an attempt produced no outcomes. Every variant is retryable with the same append ids:
/// before the commit nothing was written, and after an unknown commit the ledger answers.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    /// A statement before the commit failed; the transaction rolled back.
    #[error("postgres: {0}")]
    Database(#[from] sqlx::Error),
    /// The broker did not acknowledge every event; the transaction rolled back.
    #[error("kafka: {0}")]
    Produce(#[from] ProduceError),
    /// COMMIT failed: the transaction may or may not have committed.
    #[error("commit outcome unknown: {0}")]
    CommitUnknown(#[source] sqlx::Error),
    /// A ledger row that blocked our claim could not be read back.
    #[error("ledger row for append {0} vanished during the attempt")]
    LedgerRowMissing(Uuid),
}

impl AttemptError {
    /// The broker refused the records for good: the same append would fail every time.
    pub(crate) fn refused_by_broker(&self) -> Option<Rejection> {
        let AttemptError::Produce(error) = self else {
            return None;
        };
        let kafka = error.permanent()?;
        Some(Rejection::RefusedByBroker {
            too_large: esk_runtime::kafka::is_too_large(kafka),
            reason: kafka.to_string(),
        })
    }

    /// The stage, for metrics and the client's error code.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            AttemptError::CommitUnknown(_) => "commit_outcome_unknown",
            _ => "unavailable",
        }
    }
}

/// Runs one attempt over `appends` (distinct append ids, in arrival order) and returns the
/// outcome of each, in the same order.
pub(crate) async fn run(
    pool: &PgPool,
    ingest_log: &IngestLog,
    appends: &[&Append],
    metrics: &IngestMetrics,
) -> Result<Vec<AppendOutcome>, AttemptError> {
    let attempt_id = Uuid::new_v4();
    let started = Instant::now();
    let mut outcomes: Vec<Option<AppendOutcome>> = vec![None; appends.len()];

    // Step 1: the attempt's advisory lock lets the indexer wait for this transaction's end. It
    // is taken by the BEGIN's own round trip (the key is an integer, formatted, never text).
    let mut tx = pool
        .begin_with(format!(
            "BEGIN; SELECT pg_advisory_xact_lock({})",
            advisory_key(attempt_id)
        ))
        .await?;

    // Step 2: claim the append ids; those already decided are answered from the ledger.
    let claimed: HashSet<Uuid> = ledger::claim(&mut tx, attempt_id, appends)
        .await?
        .into_iter()
        .collect();
    let decided_earlier: Vec<Uuid> = appends
        .iter()
        .map(|a| a.append_id)
        .filter(|id| !claimed.contains(id))
        .collect();
    if !decided_earlier.is_empty() {
        let entries = ledger::load(&mut tx, &decided_earlier).await?;
        for (slot, append) in outcomes.iter_mut().zip(appends) {
            if claimed.contains(&append.append_id) {
                continue;
            }
            let entry = entries
                .get(&append.append_id)
                .ok_or(AttemptError::LedgerRowMissing(append.append_id))?;
            *slot = Some(
                entry
                    .outcome_for(append)
                    .ok_or(AttemptError::LedgerRowMissing(append.append_id))?,
            );
        }
    }
    let new_appends: Vec<&Append> = appends
        .iter()
        .copied()
        .filter(|a| claimed.contains(&a.append_id))
        .collect();

    // Step 3: claim the event ids; an id owned by another append rejects this one. Claims this
    // attempt made for appends it then rejects are released again (by event id, so a claim that
    // belonged to someone else before is never touched).
    let mut release: Vec<Uuid> = Vec::new();
    if !new_appends.is_empty() {
        let claimed_events = event_claims::claim(&mut tx, &new_appends).await?;
        let conflicting: Vec<Uuid> = new_appends
            .iter()
            .flat_map(|a| a.events.iter().map(|e| e.id))
            .filter(|id| !claimed_events.contains(id))
            .collect();
        let owners = if conflicting.is_empty() {
            HashMap::new()
        } else {
            event_claims::owners(&mut tx, &conflicting).await?
        };
        for (slot, append) in outcomes.iter_mut().zip(appends) {
            if slot.is_some() {
                continue;
            }
            let mut taken = append
                .events
                .iter()
                .filter(|e| !claimed_events.contains(&e.id))
                .peekable();
            if taken.peek().is_none() {
                continue;
            }
            // Its own ids, claimed under its own append id, with no ledger row: the append was
            // accepted and its ledger row pruned after the idempotency window.
            let expired = taken.all(|e| owners.get(&e.id) == Some(&append.append_id));
            let rejection = if expired {
                Rejection::AppendExpired
            } else {
                Rejection::DuplicateEventId
            };
            *slot = Some(AppendOutcome::Rejected(rejection));
            release.extend(
                append
                    .events
                    .iter()
                    .map(|e| e.id)
                    .filter(|id| claimed_events.contains(id)),
            );
        }
    }

    // Step 4: compare-and-set the stream index, streams in sorted order, appends to one stream
    // chained in arrival order.
    let mut streams: Vec<&str> = appends
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| o.is_none())
        .map(|(a, _)| a.stream_id.as_str())
        .collect();
    streams.sort_unstable();
    streams.dedup();
    let mut accepted: Vec<Accepted<'_>> = Vec::new();
    let mut stream_versions: Vec<(&str, i64)> = Vec::new();
    if !streams.is_empty() {
        let before = stream_index::lock(&mut tx, &streams).await?;
        let mut current: HashMap<&str, i64> = streams
            .iter()
            .map(|s| (*s, before.get(*s).copied().unwrap_or(NO_STREAM)))
            .collect();
        for (slot, append) in outcomes.iter_mut().zip(appends) {
            if slot.is_some() {
                continue;
            }
            let version = current
                .entry(append.stream_id.as_str())
                .or_insert(NO_STREAM);
            if append.expected_version.admits(*version) {
                let first_version = *version + 1;
                let last_version = *version + append.events.len() as i64;
                *version = last_version;
                accepted.push(Accepted {
                    append,
                    first_version,
                });
                *slot = Some(AppendOutcome::Accepted {
                    first_version,
                    last_version,
                });
            } else {
                let actual = (*version != NO_STREAM).then_some(*version);
                *slot = Some(AppendOutcome::Rejected(Rejection::WrongExpectedVersion {
                    actual,
                }));
                release.extend(append.events.iter().map(|e| e.id));
            }
        }
        let mut unfilled: Vec<&str> = Vec::new();
        for stream in &streams {
            let old = before.get(*stream).copied().unwrap_or(NO_STREAM);
            let new = current.get(stream).copied().unwrap_or(NO_STREAM);
            if new != old {
                stream_versions.push((stream, new));
            } else if new == NO_STREAM {
                unfilled.push(stream);
            }
        }
        stream_index::remove_placeholders(&mut tx, &unfilled).await?;
    }

    // Record every outcome of an append claimed by this attempt, rejections included (a
    // redelivered rejected request must not be accepted later), with the new stream versions.
    let recorded: Vec<(Uuid, &AppendOutcome)> = appends
        .iter()
        .zip(&outcomes)
        .filter(|(a, _)| claimed.contains(&a.append_id))
        .filter_map(|(a, o)| o.as_ref().map(|o| (a.append_id, o)))
        .collect();
    if !recorded.is_empty() || !stream_versions.is_empty() {
        ledger::record_outcomes_and_versions(&mut tx, &recorded, &stream_versions).await?;
    }
    event_claims::release(&mut tx, &release).await?;

    let stage = |name: &str, since: Instant| {
        metrics
            .stage_seconds
            .with_label_values(&[name])
            .observe(since.elapsed().as_secs_f64());
    };
    stage("decide", started);

    // Step 5: every accepted event must be acknowledged by the broker before the commit.
    if !accepted.is_empty() {
        let producing = Instant::now();
        ingest_log
            .produce(&accepted, attempt_id, Utc::now())
            .await?;
        stage("produce", producing);
    }

    // Step 6: commit; only now may anyone be answered.
    let committing = Instant::now();
    tx.commit().await.map_err(AttemptError::CommitUnknown)?;
    stage("commit", committing);

    outcomes
        .into_iter()
        .zip(appends)
        .map(|(o, a)| o.ok_or(AttemptError::LedgerRowMissing(a.append_id)))
        .collect()
}

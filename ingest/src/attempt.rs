//! One ingest attempt: a single Postgres transaction over a micro-batch of appends, following
//! the brief's steps 1–6 in order (the order is what keeps idempotency, I4).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use chrono::Utc;
use esk_model::event::{advisory_key, Append};
use sqlx::PgPool;
use uuid::Uuid;

use crate::claim_mode::{self, OnHeld};
use crate::decide::{self, DecideError, Inputs, LedgerEntry};
use crate::ingest_log::{IngestLog, ProduceError};
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
    /// What was loaded cannot be decided (a ledger row vanished); the transaction rolled back.
    #[error(transparent)]
    Decide(#[from] DecideError),
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

/// Step 1: begins the attempt's transaction holding its advisory lock, which lets the indexer
/// wait for the transaction's end. The lock is taken by the BEGIN's own round trip (the key is
/// an integer, formatted, never text).
pub(crate) async fn begin(
    pool: &PgPool,
    attempt_id: Uuid,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    pool.begin_with(format!(
        "BEGIN; SELECT pg_advisory_xact_lock({})",
        advisory_key(attempt_id)
    ))
    .await
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

    // Steps 1–3, claiming with plain inserts; an id someone holds redoes them skipping it.
    let mut tx = begin(pool, attempt_id).await?;
    let claims = match claim(&mut tx, attempt_id, appends, OnHeld::Fail).await {
        Err(error) if claim_mode::is_held(&error) => {
            tx.rollback().await?;
            metrics.claims_redone.inc();
            tx = begin(pool, attempt_id).await?;
            claim(&mut tx, attempt_id, appends, OnHeld::Skip).await?
        }
        claimed => claimed?,
    };
    let Claims {
        appends: claimed_appends,
        ledger: ledger_rows,
        events: claimed_events,
        event_owners,
    } = claims;

    // Step 4: lock the stream index rows of the appends still undecided, in sorted order.
    let streams = decide::streams_to_lock(appends, &claimed_appends, &claimed_events);
    let stream_versions = if streams.is_empty() {
        HashMap::new()
    } else {
        stream_index::lock(&mut tx, &streams).await?
    };

    // Every rule that is not SQL: a ledger row that vanished fails the attempt here (it rolls
    // back and is retried, as when the row was first found missing).
    let decision = decide::decide(Inputs {
        appends,
        claimed_appends: &claimed_appends,
        ledger: &ledger_rows,
        claimed_events: &claimed_events,
        event_owners: &event_owners,
        streams: &stream_versions,
    })?;

    // The end of step 4: drop the placeholders no append filled, record every outcome of an
    // append claimed by this attempt (rejections included: a redelivered rejected request must
    // not be accepted later) with the new stream versions, and release the event ids of the
    // appends it rejected.
    stream_index::remove_placeholders(&mut tx, &decision.unfilled_placeholders).await?;
    if !decision.recorded.is_empty() || !decision.new_versions.is_empty() {
        ledger::record_outcomes_and_versions(&mut tx, &decision.recorded, &decision.new_versions)
            .await?;
    }
    event_claims::release(&mut tx, &decision.released_events).await?;
    // Lifecycle changes (rare): the flags on rows this attempt holds locked, and the metadata.
    stream_index::set_flags(&mut tx, &decision.flag_changes).await?;
    stream_index::set_metadata(&mut tx, &decision.metadata).await?;

    let stage = |name: &str, since: Instant| {
        metrics
            .stage_seconds
            .with_label_values(&[name])
            .observe(since.elapsed().as_secs_f64());
    };
    stage("decide", started);

    // Step 5: every accepted event must be acknowledged by the broker before the commit.
    if !decision.accepted.is_empty() {
        let producing = Instant::now();
        ingest_log
            .produce(&decision.accepted, attempt_id, Utc::now(), None)
            .await?;
        stage("produce", producing);
    }

    // Step 6: commit; only now may anyone be answered.
    let committing = Instant::now();
    tx.commit().await.map_err(AttemptError::CommitUnknown)?;
    stage("commit", committing);

    Ok(decision.outcomes)
}

/// What steps 2 and 3 found.
struct Claims {
    /// The append ids claimed now.
    appends: HashSet<Uuid>,
    /// The ledger rows of the appends decided earlier.
    ledger: HashMap<Uuid, LedgerEntry>,
    /// The event ids claimed now, with the append of each.
    events: decide::EventClaims,
    /// The owners of the event ids of appends claimed now that someone else holds.
    event_owners: HashMap<Uuid, Uuid>,
}

/// Steps 2 and 3 in `tx`: claims the append ids, then the event ids of the appends claimed now.
async fn claim(
    tx: &mut sqlx::PgConnection,
    attempt_id: Uuid,
    appends: &[&Append],
    on_held: OnHeld,
) -> Result<Claims, sqlx::Error> {
    // Step 2: claim the append ids; those already decided are answered from the ledger.
    let claimed_appends: HashSet<Uuid> = ledger::claim(&mut *tx, attempt_id, appends, on_held)
        .await?
        .into_iter()
        .collect();
    let decided_earlier = decide::decided_earlier(appends, &claimed_appends);
    let ledger_rows = if decided_earlier.is_empty() {
        HashMap::new()
    } else {
        ledger::load(&mut *tx, &decided_earlier).await?
    };

    // Step 3: claim the event ids of the appends claimed now; the owners of the ids someone
    // else holds tell a duplicate from an expired retry.
    let new_appends = decide::claimed_now(appends, &claimed_appends);
    let mut claimed_events = decide::EventClaims::new();
    let mut event_owners = HashMap::new();
    if !new_appends.is_empty() {
        claimed_events = event_claims::claim(&mut *tx, &new_appends, on_held).await?;
        let unclaimed = decide::unclaimed_events(&new_appends, &claimed_events);
        if !unclaimed.is_empty() {
            event_owners = event_claims::owners(&mut *tx, &unclaimed).await?;
        }
    }
    Ok(Claims {
        appends: claimed_appends,
        ledger: ledger_rows,
        events: claimed_events,
        event_owners,
    })
}

//! The attempt of one multi-stream append (rules 1 and 2 of the multi-stream design): the
//! single-append steps 1–6 (`attempt.rs`) over an attempt of its own, so that the append's
//! ingest-log records are exactly the attempt's records, and the group they form is keyed by
//! (append id, attempt id).

use std::time::Instant;

use chrono::Utc;
use esk_model::event::{Append, GroupAppend};
use sqlx::PgPool;
use uuid::Uuid;

use crate::attempt::AttemptError;
use crate::claim_mode::OnHeld;
use crate::decide::{self, DecideError};
use crate::decide_group::{claim_conflict, decide_group};
use crate::ingest_log::IngestLog;
use crate::metrics::IngestMetrics;
use crate::outcome::GroupOutcome;
use crate::{event_claims, ledger, stream_index};

/// Runs one attempt over `group` and returns its outcome.
pub(crate) async fn run(
    pool: &PgPool,
    ingest_log: &IngestLog,
    group: &GroupAppend,
    metrics: &IngestMetrics,
) -> Result<GroupOutcome, AttemptError> {
    let attempt_id = Uuid::new_v4();
    let started = Instant::now();

    // Step 1: the attempt's transaction, holding its advisory lock.
    let mut tx = crate::attempt::begin(pool, attempt_id).await?;

    // Step 2: one ledger row for the whole append; decided earlier, it answers (the
    // transaction wrote nothing and rolls back when dropped).
    let missing = || DecideError::LedgerRowMissing(group.append_id);
    if !ledger::claim_group(&mut tx, attempt_id, group).await? {
        let entry = ledger::load_group(&mut tx, group.append_id)
            .await?
            .ok_or_else(missing)?;
        return Ok(entry.outcome_for(group).ok_or_else(missing)?);
    }

    // Step 3: claim every part's event ids; one held by someone else rejects the whole append.
    let parts: Vec<&Append> = group.parts.iter().collect();
    let claimed_events = event_claims::claim(&mut tx, &parts, OnHeld::Skip).await?;
    let unclaimed = decide::unclaimed_events(&parts, &claimed_events);
    if !unclaimed.is_empty() {
        let event_owners = event_claims::owners(&mut tx, &unclaimed).await?;
        if let Some(rejection) = claim_conflict(group, &claimed_events, &event_owners) {
            let outcome = GroupOutcome::Rejected(rejection);
            ledger::record_group(&mut tx, group.append_id, &outcome, &[]).await?;
            let released: Vec<Uuid> = claimed_events.keys().copied().collect();
            event_claims::release(&mut tx, &released).await?;
            tx.commit().await.map_err(AttemptError::CommitUnknown)?;
            return Ok(outcome);
        }
    }

    // Step 4: lock every stream in sorted order (the statement single appends use), check
    // every expectation; the outcome and the new versions are recorded together.
    let mut streams: Vec<&str> = group.parts.iter().map(|p| p.stream_id.as_str()).collect();
    streams.sort_unstable();
    let states = stream_index::lock(&mut tx, &streams).await?;
    let decision = decide_group(group, &states)?;
    stream_index::remove_placeholders(&mut tx, &decision.unfilled_placeholders).await?;
    ledger::record_group(
        &mut tx,
        group.append_id,
        &decision.outcome,
        &decision.new_versions,
    )
    .await?;
    metrics
        .stage_seconds
        .with_label_values(&["decide"])
        .observe(started.elapsed().as_secs_f64());

    match &decision.outcome {
        GroupOutcome::Rejected(_) => {
            let released: Vec<Uuid> = claimed_events.keys().copied().collect();
            event_claims::release(&mut tx, &released).await?;
        }
        GroupOutcome::Accepted(_) => {
            // Step 5: every part's records, each on its stream's partition, all naming the
            // group; every delivery report before the commit.
            let producing = Instant::now();
            ingest_log
                .produce(
                    &decision.accepted,
                    attempt_id,
                    Utc::now(),
                    Some(group.append_id),
                )
                .await?;
            metrics
                .stage_seconds
                .with_label_values(&["produce"])
                .observe(producing.elapsed().as_secs_f64());
        }
    }

    // Step 6: commit; only now may anyone be answered.
    let committing = Instant::now();
    tx.commit().await.map_err(AttemptError::CommitUnknown)?;
    metrics
        .stage_seconds
        .with_label_values(&["commit"])
        .observe(committing.elapsed().as_secs_f64());
    Ok(decision.outcome)
}

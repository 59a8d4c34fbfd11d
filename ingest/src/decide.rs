//! The decision of an attempt, without I/O: from what steps 2–4 loaded (ledger rows, the
//! append and event-id claims, the locked stream versions) to each append's outcome and what
//! the transaction then stores. `attempt.rs` only loads, calls [`decide`], and stores, so every
//! rule of the protocol that is not SQL lives here and is tested without Postgres.

use std::collections::{HashMap, HashSet};

use esk_model::event::{Append, StreamVersion, Version};
use uuid::Uuid;

use crate::ingest_log::Accepted;
use crate::outcome::{AppendOutcome, Rejection};

/// A committed ledger row, as a retry sees it.
#[derive(Debug, Clone)]
pub(crate) struct LedgerEntry {
    /// Fingerprint of the append that claimed the id first.
    pub(crate) fingerprint: Uuid,
    /// Its recorded outcome; `None` for a row still pending or with a code this ingest does not
    /// know.
    pub(crate) outcome: Option<AppendOutcome>,
}

impl LedgerEntry {
    /// The outcome a retry of `append` gets: the original one, or `append_id_reused` when the
    /// id was used for different events.
    pub(crate) fn outcome_for(&self, append: &Append) -> Option<AppendOutcome> {
        if self.fingerprint != append.fingerprint() {
            return Some(AppendOutcome::Rejected(Rejection::AppendIdReused));
        }
        self.outcome.clone()
    }
}

/// What an attempt has loaded by the end of step 4.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inputs<'i, 'a> {
    /// The batch: distinct append ids, in arrival order.
    pub(crate) appends: &'i [&'a Append],
    /// Append ids this attempt claimed in the ledger (step 2); the others were decided earlier.
    pub(crate) claimed_appends: &'i HashSet<Uuid>,
    /// Ledger rows of the appends decided earlier (step 2).
    pub(crate) ledger: &'i HashMap<Uuid, LedgerEntry>,
    /// Event ids this attempt claimed (step 3).
    pub(crate) claimed_events: &'i HashSet<Uuid>,
    /// The append owning each event id this attempt could not claim (step 3).
    pub(crate) event_owners: &'i HashMap<Uuid, Uuid>,
    /// Version of each stream locked in step 4 ([`streams_to_lock`]); a stream missing here
    /// has no events.
    pub(crate) streams: &'i HashMap<String, StreamVersion>,
}

/// Each append's outcome and what the attempt stores and produces for them.
#[derive(Debug)]
pub(crate) struct Decision<'a> {
    /// One outcome per append, in batch order.
    pub(crate) outcomes: Vec<AppendOutcome>,
    /// Outcomes for the ledger: every append this attempt claimed, rejections included (a
    /// redelivered rejected request must not be accepted later).
    pub(crate) recorded: Vec<(Uuid, AppendOutcome)>,
    /// New version of every stream an accepted append moved, in stream order.
    pub(crate) new_versions: Vec<(&'a str, Version)>,
    /// Streams locked as placeholders that no accepted append filled: they are removed, so
    /// the streams stay absent.
    pub(crate) unfilled_placeholders: Vec<&'a str>,
    /// Event ids this attempt claimed for appends it rejected: released, so they stay usable
    /// (only claims made now, never one that belonged to someone else before).
    pub(crate) released_events: Vec<Uuid>,
    /// Accepted appends with their first version, in arrival order: what step 5 produces.
    pub(crate) accepted: Vec<Accepted<'a>>,
}

/// Loaded state the protocol cannot decide on; the attempt rolls back and is retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecideError {
    /// A ledger row that blocked our claim could not be read back (or is still pending).
    #[error("ledger row for append {0} vanished during the attempt")]
    LedgerRowMissing(Uuid),
    /// Accepting the append would take its stream past the largest version the store holds.
    #[error("stream {0} would pass the largest version the store can hold")]
    VersionOverflow(String),
}

/// Step 2's follow-up: the appends this attempt could not claim, to be answered from their
/// ledger rows.
pub(crate) fn decided_earlier(appends: &[&Append], claimed_appends: &HashSet<Uuid>) -> Vec<Uuid> {
    appends
        .iter()
        .map(|a| a.append_id)
        .filter(|id| !claimed_appends.contains(id))
        .collect()
}

/// Step 3's input: the appends this attempt claimed, whose event ids it claims next.
pub(crate) fn claimed_now<'a>(
    appends: &[&'a Append],
    claimed_appends: &HashSet<Uuid>,
) -> Vec<&'a Append> {
    appends
        .iter()
        .copied()
        .filter(|a| claimed_appends.contains(&a.append_id))
        .collect()
}

/// Step 3's follow-up: the event ids of `appends` this attempt could not claim, whose owners
/// tell a duplicate from an expired retry.
pub(crate) fn unclaimed_events(appends: &[&Append], claimed_events: &HashSet<Uuid>) -> Vec<Uuid> {
    appends
        .iter()
        .flat_map(|a| a.events.iter().map(|e| e.id))
        .filter(|id| !claimed_events.contains(id))
        .collect()
}

/// Step 4's input: the streams of the appends steps 2 and 3 left undecided, sorted (so
/// concurrent attempts lock in one order and cannot deadlock) and distinct.
pub(crate) fn streams_to_lock<'a>(
    appends: &[&'a Append],
    claimed_appends: &HashSet<Uuid>,
    claimed_events: &HashSet<Uuid>,
) -> Vec<&'a str> {
    let mut streams: Vec<&str> = appends
        .iter()
        .filter(|a| reaches_stream_index(a, claimed_appends, claimed_events))
        .map(|a| a.stream_id.as_str())
        .collect();
    streams.sort_unstable();
    streams.dedup();
    streams
}

/// Whether steps 2 and 3 leave `append` to the stream index: claimed now, with every event id.
fn reaches_stream_index(
    append: &Append,
    claimed_appends: &HashSet<Uuid>,
    claimed_events: &HashSet<Uuid>,
) -> bool {
    claimed_appends.contains(&append.append_id)
        && append.events.iter().all(|e| claimed_events.contains(&e.id))
}

/// Decides every append of the batch, in arrival order:
/// - not claimed now (step 2): the ledger row's outcome, or `append_id_reused` when the id came
///   with different events;
/// - an event id held by another append (step 3): `duplicate_event_id`, or `append_expired`
///   when every such id is held under this very append id (accepted once, its ledger row
///   pruned); the ids it claimed now are released;
/// - else (step 4) the expected version is checked against its stream, chained: an append sees
///   the stream as the earlier appends of this batch left it. Accepted: the next versions;
///   rejected: `wrong_expected_version` with the actual version, its event ids released.
pub(crate) fn decide<'a>(inputs: Inputs<'_, 'a>) -> Result<Decision<'a>, DecideError> {
    let Inputs {
        appends,
        claimed_appends,
        ledger,
        claimed_events,
        event_owners,
        streams,
    } = inputs;
    let mut outcomes = Vec::with_capacity(appends.len());
    let mut recorded = Vec::new();
    let mut released_events = Vec::new();
    let mut accepted = Vec::new();
    // The streams step 4 reached, as the appends decided so far left them.
    let mut current: HashMap<&'a str, StreamVersion> = HashMap::new();

    for &append in appends {
        if !claimed_appends.contains(&append.append_id) {
            let missing = DecideError::LedgerRowMissing(append.append_id);
            let entry = ledger.get(&append.append_id).ok_or(missing.clone())?;
            outcomes.push(entry.outcome_for(append).ok_or(missing)?);
            continue;
        }

        let outcome =
            if let Some(rejection) = event_claim_conflict(append, claimed_events, event_owners) {
                released_events.extend(
                    append
                        .events
                        .iter()
                        .map(|e| e.id)
                        .filter(|id| claimed_events.contains(id)),
                );
                AppendOutcome::Rejected(rejection)
            } else {
                let stream = append.stream_id.as_str();
                let version = current.entry(stream).or_insert_with(|| {
                    streams
                        .get(stream)
                        .copied()
                        .unwrap_or(StreamVersion::NoStream)
                });
                if append.expected_version.admits(*version) {
                    let overflow = || DecideError::VersionOverflow(append.stream_id.clone());
                    let first_version = version.next().ok_or_else(overflow)?;
                    let last_version = first_version
                        .plus(append.events.len().saturating_sub(1))
                        .ok_or_else(overflow)?;
                    *version = StreamVersion::At(last_version);
                    accepted.push(Accepted {
                        append,
                        first_version,
                    });
                    AppendOutcome::Accepted {
                        first_version,
                        last_version,
                    }
                } else {
                    // Every event id of an append that reached this step was claimed now.
                    released_events.extend(append.events.iter().map(|e| e.id));
                    AppendOutcome::Rejected(Rejection::WrongExpectedVersion { actual: *version })
                }
            };
        recorded.push((append.append_id, outcome.clone()));
        outcomes.push(outcome);
    }

    let mut reached: Vec<(&'a str, StreamVersion)> = current.into_iter().collect();
    reached.sort_unstable_by_key(|(stream, _)| *stream);
    let mut new_versions = Vec::new();
    let mut unfilled_placeholders = Vec::new();
    for (stream, now) in reached {
        let before = streams
            .get(stream)
            .copied()
            .unwrap_or(StreamVersion::NoStream);
        match now {
            StreamVersion::At(version) if now != before => new_versions.push((stream, version)),
            StreamVersion::NoStream => unfilled_placeholders.push(stream),
            StreamVersion::At(_) => {}
        }
    }

    Ok(Decision {
        outcomes,
        recorded,
        new_versions,
        unfilled_placeholders,
        released_events,
        accepted,
    })
}

/// Step 3 for one claimed append: the rejection when one of its event ids is held by someone.
fn event_claim_conflict(
    append: &Append,
    claimed_events: &HashSet<Uuid>,
    event_owners: &HashMap<Uuid, Uuid>,
) -> Option<Rejection> {
    let mut taken = append
        .events
        .iter()
        .filter(|e| !claimed_events.contains(&e.id))
        .peekable();
    taken.peek()?;
    // Its own ids, claimed under its own append id, with no ledger row: the append was
    // accepted and its ledger row pruned after the idempotency window.
    let expired = taken.all(|e| event_owners.get(&e.id) == Some(&append.append_id));
    Some(if expired {
        Rejection::AppendExpired
    } else {
        Rejection::DuplicateEventId
    })
}

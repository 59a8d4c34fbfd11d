//! The decision of an attempt, without I/O: from what steps 2–4 loaded (ledger rows, the
//! append and event-id claims, the locked stream versions) to each append's outcome and what
//! the transaction then stores. `attempt.rs` only loads, calls [`decide`], and stores, so every
//! rule of the protocol that is not SQL lives here and is tested without Postgres.

use std::collections::{HashMap, HashSet};

use esk_model::event::{Append, ExpectedVersion, StreamVersion, Version};
use esk_model::lifecycle::{DeleteMode, LifecycleChange, StreamMetadata};
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

/// The event ids this attempt claimed (step 3), each with the append of the batch that claimed
/// it. Two appends of one batch may carry the same event id: only the first (in arrival order)
/// claims it, so the other is refused as a duplicate instead of both being accepted.
pub(crate) type EventClaims = HashMap<Uuid, Uuid>;

/// Whether `append` claimed `event_id` in this attempt.
fn claimed_by(claims: &EventClaims, event_id: Uuid, append: &Append) -> bool {
    claims.get(&event_id) == Some(&append.append_id)
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
    /// Event ids this attempt claimed, with the append that claimed each (step 3).
    pub(crate) claimed_events: &'i EventClaims,
    /// The append owning each event id this attempt could not claim (step 3).
    pub(crate) event_owners: &'i HashMap<Uuid, Uuid>,
    /// State of each stream locked in step 4 ([`streams_to_lock`]); a stream missing here
    /// has no events.
    pub(crate) streams: &'i HashMap<String, StreamState>,
}

/// A stream index row as the decision needs it: the version and the lifecycle flags that
/// ingest enforces at the door, read under the stream's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamState {
    /// The version of its last accepted event.
    pub(crate) version: StreamVersion,
    /// Versions up to this one were soft-deleted (hidden); when it is the current version,
    /// the stream reads as not found until its next append.
    pub(crate) deleted_through: Option<Version>,
    /// Hard-deleted: nothing is appended to it again.
    pub(crate) tombstoned: bool,
}

impl StreamState {
    /// A stream without lifecycle flags.
    pub(crate) fn at(version: StreamVersion) -> Self {
        StreamState {
            version,
            deleted_through: None,
            tombstoned: false,
        }
    }

    /// Soft-deleted and not appended to since.
    fn soft_deleted(&self) -> bool {
        matches!((self.version, self.deleted_through), (StreamVersion::At(v), Some(d)) if v == d)
    }

    /// Whether an append with `expected` may go on: a soft-deleted stream also admits
    /// `no_stream`, as it reads as not found (its versions still continue).
    pub(crate) fn admits(&self, expected: ExpectedVersion) -> bool {
        expected.admits(self.version)
            || (expected == ExpectedVersion::NoStream && self.soft_deleted())
    }
}

/// A stream whose lifecycle flags an accepted delete changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlagChange<'a> {
    pub(crate) stream_id: &'a str,
    pub(crate) deleted_through: Option<Version>,
    pub(crate) tombstoned: bool,
}

/// The current metadata of a stream, set by an accepted metadata change.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MetadataWrite<'a> {
    pub(crate) stream_id: &'a str,
    /// The version of the `$metadata` event in `$$<stream>`.
    pub(crate) metadata_version: Version,
    pub(crate) metadata: &'a StreamMetadata,
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
    /// Streams whose lifecycle flags accepted deletes changed, in stream order.
    pub(crate) flag_changes: Vec<FlagChange<'a>>,
    /// The newest metadata of each stream an accepted metadata change set, in stream order.
    pub(crate) metadata: Vec<MetadataWrite<'a>>,
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
pub(crate) fn unclaimed_events(appends: &[&Append], claimed_events: &EventClaims) -> Vec<Uuid> {
    appends
        .iter()
        .flat_map(|a| {
            a.events
                .iter()
                .map(|e| e.id)
                .filter(|id| !claimed_by(claimed_events, *id, a))
        })
        .collect()
}

/// Step 4's input: the streams of the appends steps 2 and 3 left undecided, sorted (so
/// concurrent attempts lock in one order and cannot deadlock) and distinct.
pub(crate) fn streams_to_lock<'a>(
    appends: &[&'a Append],
    claimed_appends: &HashSet<Uuid>,
    claimed_events: &EventClaims,
) -> Vec<&'a str> {
    // A lifecycle change also locks the stream it is about: the tombstone is checked and set
    // under that stream's lock, so no append can slip past it.
    let mut streams: Vec<&str> = appends
        .iter()
        .filter(|a| reaches_stream_index(a, claimed_appends, claimed_events))
        .flat_map(|a| [a.stream_id.as_str(), a.subject()])
        .collect();
    streams.sort_unstable();
    streams.dedup();
    streams
}

/// Whether steps 2 and 3 leave `append` to the stream index: claimed now, with every event id.
fn reaches_stream_index(
    append: &Append,
    claimed_appends: &HashSet<Uuid>,
    claimed_events: &EventClaims,
) -> bool {
    claimed_appends.contains(&append.append_id)
        && append
            .events
            .iter()
            .all(|e| claimed_by(claimed_events, e.id, append))
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
    let mut current: HashMap<&'a str, StreamState> = HashMap::new();
    let mut metadata_writes: HashMap<&'a str, MetadataWrite<'a>> = HashMap::new();

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
                        .filter(|id| claimed_by(claimed_events, *id, append)),
                );
                AppendOutcome::Rejected(rejection)
            } else {
                let initial = |stream: &str| {
                    streams
                        .get(stream)
                        .copied()
                        .unwrap_or(StreamState::at(StreamVersion::NoStream))
                };
                let subject = append.subject();
                let own = *current
                    .entry(append.stream_id.as_str())
                    .or_insert_with(|| initial(&append.stream_id));
                let about = *current.entry(subject).or_insert_with(|| initial(subject));
                match check(append, own, about) {
                    Err(rejection) => {
                        // Every event id of an append that reached this step was claimed now.
                        released_events.extend(append.events.iter().map(|e| e.id));
                        AppendOutcome::Rejected(rejection)
                    }
                    Ok(()) => {
                        let overflow = || DecideError::VersionOverflow(append.stream_id.clone());
                        let first_version = own.version.next().ok_or_else(overflow)?;
                        let last_version = first_version
                            .plus(append.events.len().saturating_sub(1))
                            .ok_or_else(overflow)?;
                        if let Some(state) = current.get_mut(append.stream_id.as_str()) {
                            state.version = StreamVersion::At(last_version);
                        }
                        if let Some(lifecycle) = &append.lifecycle {
                            match &lifecycle.change {
                                LifecycleChange::SetMetadata(metadata) => {
                                    metadata_writes.insert(
                                        subject,
                                        MetadataWrite {
                                            stream_id: subject,
                                            metadata_version: first_version,
                                            metadata,
                                        },
                                    );
                                }
                                LifecycleChange::Delete { mode, .. } => {
                                    if let Some(state) = current.get_mut(subject) {
                                        match (mode, state.version) {
                                            (DeleteMode::Hard, _) => state.tombstoned = true,
                                            (DeleteMode::Soft, StreamVersion::At(v)) => {
                                                state.deleted_through = Some(v)
                                            }
                                            (DeleteMode::Soft, StreamVersion::NoStream) => {}
                                        }
                                    }
                                }
                            }
                        }
                        accepted.push(Accepted {
                            append,
                            first_version,
                        });
                        AppendOutcome::Accepted {
                            first_version,
                            last_version,
                        }
                    }
                }
            };
        recorded.push((append.append_id, outcome.clone()));
        outcomes.push(outcome);
    }

    let mut reached: Vec<(&'a str, StreamState)> = current.into_iter().collect();
    reached.sort_unstable_by_key(|(stream, _)| *stream);
    let mut new_versions = Vec::new();
    let mut unfilled_placeholders = Vec::new();
    let mut flag_changes = Vec::new();
    for (stream, now) in reached {
        let before = streams
            .get(stream)
            .copied()
            .unwrap_or(StreamState::at(StreamVersion::NoStream));
        match now.version {
            StreamVersion::At(version) if now.version != before.version => {
                new_versions.push((stream, version))
            }
            StreamVersion::NoStream => unfilled_placeholders.push(stream),
            StreamVersion::At(_) => {}
        }
        if (now.deleted_through, now.tombstoned) != (before.deleted_through, before.tombstoned) {
            flag_changes.push(FlagChange {
                stream_id: stream,
                deleted_through: now.deleted_through,
                tombstoned: now.tombstoned,
            });
        }
    }
    let mut metadata: Vec<MetadataWrite<'a>> = metadata_writes.into_values().collect();
    metadata.sort_unstable_by_key(|m| m.stream_id);

    Ok(Decision {
        outcomes,
        recorded,
        new_versions,
        unfilled_placeholders,
        released_events,
        accepted,
        flag_changes,
        metadata,
    })
}

/// Step 4 for one append whose event ids are all claimed: whether the streams it touches (its
/// own, `own`, and the one it is about, `about`; the same for an ordinary append) let it go on.
fn check(append: &Append, own: StreamState, about: StreamState) -> Result<(), Rejection> {
    if about.tombstoned {
        return Err(Rejection::StreamDeleted);
    }
    if let Some(LifecycleChange::Delete {
        mode,
        expected_version,
    }) = append.lifecycle.as_ref().map(|l| &l.change)
    {
        let gone = about.version == StreamVersion::NoStream
            || (about.soft_deleted() && *mode == DeleteMode::Soft);
        if gone {
            return Err(Rejection::StreamNotFound);
        }
        if !about.admits(*expected_version) {
            return Err(Rejection::WrongExpectedVersion {
                actual: about.version,
            });
        }
    }
    if !own.admits(append.expected_version) {
        return Err(Rejection::WrongExpectedVersion {
            actual: own.version,
        });
    }
    Ok(())
}

/// Step 3 for one claimed append: the rejection when one of its event ids is held by someone.
pub(crate) fn event_claim_conflict(
    append: &Append,
    claimed_events: &EventClaims,
    event_owners: &HashMap<Uuid, Uuid>,
) -> Option<Rejection> {
    let mut taken = append
        .events
        .iter()
        .filter(|e| !claimed_by(claimed_events, e.id, append))
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

/// A test append: id `append_id`, `events` events of type `T` with data `{}`, whose event ids
/// are `seed` in the high bits and the event's index below (distinct seeds, distinct ids).
#[cfg(test)]
pub(crate) fn test_append(
    append_id: u128,
    stream: &str,
    expected: ExpectedVersion,
    events: u128,
    seed: u128,
) -> Append {
    Append {
        stream_id: stream.to_owned(),
        expected_version: expected,
        append_id: Uuid::from_u128(append_id),
        events: (0..events)
            .map(|e| esk_model::event::NewEvent {
                id: Uuid::from_u128((seed << 32) | e),
                event_type: "T".into(),
                data: serde_json::value::RawValue::from_string("{}".into()).expect("valid JSON"),
                metadata: None,
                correlation_id: None,
                causation_id: None,
            })
            .collect(),
        lifecycle: None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use esk_model::event::ExpectedVersion;
    use proptest::prelude::*;

    use super::*;

    const STREAMS: [&str; 3] = ["Order-a", "Order-b", "Order-c"];

    /// What the store knows about an append of the batch before this attempt.
    #[derive(Debug, Clone)]
    enum History {
        /// Never seen: this attempt claims its append id and every event id.
        New,
        /// Decided by an earlier attempt, with this outcome.
        Retry(AppendOutcome),
        /// Its append id was used before for different events.
        Reused,
        /// Its first event id belongs to another append.
        DuplicateEvent,
        /// Its event ids are held under its own append id, its ledger row pruned.
        Expired,
    }

    /// One append of a generated batch.
    #[derive(Debug, Clone)]
    struct Planned {
        stream: usize,
        expected: ExpectedVersion,
        events: usize,
        history: History,
    }

    /// A batch, the streams before it, and what steps 2–4 load for it.
    #[derive(Debug)]
    struct World {
        before: HashMap<String, StreamVersion>,
        appends: Vec<Append>,
        histories: Vec<History>,
        claimed_appends: HashSet<Uuid>,
        ledger: HashMap<Uuid, LedgerEntry>,
        claimed_events: EventClaims,
        event_owners: HashMap<Uuid, Uuid>,
    }

    impl World {
        fn new(before: [StreamVersion; 3], planned: Vec<Planned>) -> World {
            let appends: Vec<Append> = planned
                .iter()
                .enumerate()
                .map(|(i, p)| append(i, STREAMS[p.stream], p.expected, p.events))
                .collect();
            let mut world = World {
                before: STREAMS
                    .iter()
                    .zip(before)
                    .map(|(s, v)| (s.to_string(), v))
                    .collect(),
                appends,
                histories: planned.iter().map(|p| p.history.clone()).collect(),
                claimed_appends: HashSet::new(),
                ledger: HashMap::new(),
                claimed_events: EventClaims::new(),
                event_owners: HashMap::new(),
            };
            for (append, history) in world.appends.iter().zip(&world.histories) {
                let id = append.append_id;
                let events = append.events.iter().map(|e| e.id);
                match history {
                    History::Retry(outcome) => {
                        world.ledger.insert(
                            id,
                            LedgerEntry {
                                fingerprint: append.fingerprint(),
                                outcome: Some(outcome.clone()),
                            },
                        );
                    }
                    History::Reused => {
                        world.ledger.insert(
                            id,
                            LedgerEntry {
                                fingerprint: Uuid::nil(),
                                outcome: Some(AppendOutcome::Rejected(Rejection::AppendExpired)),
                            },
                        );
                    }
                    History::New => {
                        world.claimed_appends.insert(id);
                        world.claimed_events.extend(events.map(|e| (e, id)));
                    }
                    History::DuplicateEvent | History::Expired => {
                        world.claimed_appends.insert(id);
                        let mut events = events;
                        if let Some(taken) = events.next() {
                            let owner = match history {
                                History::Expired => id,
                                _ => Uuid::from_u128(u128::MAX - id.as_u128()),
                            };
                            world.event_owners.insert(taken, owner);
                        }
                        world.claimed_events.extend(events.map(|e| (e, id)));
                    }
                }
            }
            world
        }

        fn batch(&self) -> Vec<&Append> {
            self.appends.iter().collect()
        }

        /// What step 4 loads: the locked streams' versions (a placeholder for a new one).
        fn locked(&self) -> HashMap<String, StreamState> {
            let batch = self.batch();
            streams_to_lock(&batch, &self.claimed_appends, &self.claimed_events)
                .into_iter()
                .map(|s| (s.to_owned(), StreamState::at(self.before[s])))
                .collect()
        }

        fn decide(&self) -> Result<Decision<'_>, DecideError> {
            let streams = self.locked();
            let batch = self.batch();
            decide(Inputs {
                appends: &batch,
                claimed_appends: &self.claimed_appends,
                ledger: &self.ledger,
                claimed_events: &self.claimed_events,
                event_owners: &self.event_owners,
                streams: &streams,
            })
        }

        /// The stream versions each append sees when checked in arrival order, with the
        /// appends accepted before it applied (`None` for appends that never reach step 4).
        fn seen_versions(&self, outcomes: &[AppendOutcome]) -> Vec<Option<StreamVersion>> {
            let mut now = self.before.clone();
            self.appends
                .iter()
                .zip(&self.histories)
                .zip(outcomes)
                .map(|((append, history), outcome)| {
                    if !matches!(history, History::New) {
                        return None;
                    }
                    let seen = now[&append.stream_id];
                    if let AppendOutcome::Accepted { last_version, .. } = outcome {
                        now.insert(append.stream_id.clone(), StreamVersion::At(*last_version));
                    }
                    Some(seen)
                })
                .collect()
        }
    }

    fn append(index: usize, stream: &str, expected: ExpectedVersion, events: usize) -> Append {
        let id = index as u128 + 1;
        test_append(id, stream, expected, events as u128, id)
    }

    fn version(v: u32) -> Version {
        Version::from(v)
    }

    fn stream_version() -> impl Strategy<Value = StreamVersion> {
        prop_oneof![
            Just(StreamVersion::NoStream),
            (0u32..4).prop_map(|v| StreamVersion::At(version(v))),
        ]
    }

    fn expected_version() -> impl Strategy<Value = ExpectedVersion> {
        prop_oneof![
            Just(ExpectedVersion::Any),
            Just(ExpectedVersion::NoStream),
            Just(ExpectedVersion::StreamExists),
            (0u32..7).prop_map(|v| ExpectedVersion::Exact(version(v))),
        ]
    }

    fn recorded_outcome() -> impl Strategy<Value = AppendOutcome> {
        prop_oneof![
            (0u32..5, 0u32..3).prop_map(|(first, extra)| AppendOutcome::Accepted {
                first_version: version(first),
                last_version: version(first + extra),
            }),
            stream_version().prop_map(|actual| AppendOutcome::Rejected(
                Rejection::WrongExpectedVersion { actual }
            )),
            Just(AppendOutcome::Rejected(Rejection::DuplicateEventId)),
            Just(AppendOutcome::Rejected(Rejection::AppendExpired)),
        ]
    }

    fn history() -> impl Strategy<Value = History> {
        prop_oneof![
            6 => Just(History::New),
            1 => recorded_outcome().prop_map(History::Retry),
            1 => Just(History::Reused),
            1 => Just(History::DuplicateEvent),
            1 => Just(History::Expired),
        ]
    }

    fn world() -> impl Strategy<Value = World> {
        let planned = (0..STREAMS.len(), expected_version(), 1usize..4, history()).prop_map(
            |(stream, expected, events, history)| Planned {
                stream,
                expected,
                events,
                history,
            },
        );
        (
            [stream_version(), stream_version(), stream_version()],
            prop::collection::vec(planned, 0..10),
        )
            .prop_map(|(before, planned)| World::new(before, planned))
    }

    proptest! {
        #[test]
        fn each_stream_gets_contiguous_versions_with_one_winner_each(world in world()) {
            let decision = world.decide().expect("decidable");
            let mut next: BTreeMap<&str, Option<Version>> = BTreeMap::new();
            let mut written: HashSet<(&str, i64)> = HashSet::new();
            for ((append, history), outcome) in
                world.appends.iter().zip(&world.histories).zip(&decision.outcomes)
            {
                let AppendOutcome::Accepted { first_version, last_version } = outcome else {
                    continue;
                };
                if !matches!(history, History::New) {
                    continue;
                }
                let stream = append.stream_id.as_str();
                let expected_first = *next
                    .entry(stream)
                    .or_insert_with(|| world.before[stream].next());
                prop_assert_eq!(Some(*first_version), expected_first, "{}", stream);
                prop_assert_eq!(
                    last_version.get() - first_version.get() + 1,
                    append.events.len() as i64
                );
                for v in first_version.get()..=last_version.get() {
                    prop_assert!(written.insert((stream, v)), "{} version {} twice", stream, v);
                }
                next.insert(stream, last_version.plus(1));
            }
            let moved: Vec<(&str, Version)> = next
                .iter()
                .filter_map(|(s, n)| Some((*s, Version::try_from(n.as_ref()?.get() - 1).ok()?)))
                .collect();
            prop_assert_eq!(&decision.new_versions, &moved);
        }

        #[test]
        fn appends_to_one_stream_are_chained_in_arrival_order(world in world()) {
            let decision = world.decide().expect("decidable");
            let seen = world.seen_versions(&decision.outcomes);
            for ((append, outcome), seen) in world.appends.iter().zip(&decision.outcomes).zip(seen) {
                let Some(seen) = seen else { continue };
                if append.expected_version.admits(seen) {
                    prop_assert_eq!(
                        outcome,
                        &AppendOutcome::Accepted {
                            first_version: seen.next().expect("in range"),
                            last_version: seen
                                .next()
                                .and_then(|f| f.plus(append.events.len() - 1))
                                .expect("in range"),
                        }
                    );
                } else {
                    prop_assert_eq!(
                        outcome,
                        &AppendOutcome::Rejected(Rejection::WrongExpectedVersion { actual: seen })
                    );
                }
            }
        }

        #[test]
        fn retries_get_the_original_outcome_and_write_nothing(world in world()) {
            let decision = world.decide().expect("decidable");
            let produced: HashSet<Uuid> =
                decision.accepted.iter().map(|a| a.append.append_id).collect();
            let recorded: HashSet<Uuid> = decision.recorded.iter().map(|(id, _)| *id).collect();
            let released: HashSet<Uuid> = decision.released_events.iter().copied().collect();
            for ((append, history), outcome) in
                world.appends.iter().zip(&world.histories).zip(&decision.outcomes)
            {
                let original = match history {
                    History::Retry(original) => original.clone(),
                    History::Reused => AppendOutcome::Rejected(Rejection::AppendIdReused),
                    _ => continue,
                };
                prop_assert_eq!(outcome, &original);
                prop_assert!(!produced.contains(&append.append_id));
                prop_assert!(!recorded.contains(&append.append_id));
                prop_assert!(append.events.iter().all(|e| !released.contains(&e.id)));
            }
        }

        #[test]
        fn event_id_conflicts_reject_and_release_only_the_claims_made_now(world in world()) {
            let decision = world.decide().expect("decidable");
            let mut expected_release = HashSet::new();
            for ((append, history), outcome) in
                world.appends.iter().zip(&world.histories).zip(&decision.outcomes)
            {
                match history {
                    History::DuplicateEvent => prop_assert_eq!(
                        outcome,
                        &AppendOutcome::Rejected(Rejection::DuplicateEventId)
                    ),
                    History::Expired => prop_assert_eq!(
                        outcome,
                        &AppendOutcome::Rejected(Rejection::AppendExpired)
                    ),
                    _ => {}
                }
                let claimed_now = world.claimed_appends.contains(&append.append_id);
                if claimed_now && matches!(outcome, AppendOutcome::Rejected(_)) {
                    expected_release.extend(
                        append
                            .events
                            .iter()
                            .map(|e| e.id)
                            .filter(|id| world.claimed_events.get(id) == Some(&append.append_id)),
                    );
                }
            }
            let released: HashSet<Uuid> = decision.released_events.iter().copied().collect();
            prop_assert_eq!(released.len(), decision.released_events.len(), "released twice");
            prop_assert_eq!(released, expected_release);
        }

        #[test]
        fn every_append_claimed_now_is_recorded_and_every_accepted_one_produced(world in world()) {
            let decision = world.decide().expect("decidable");
            prop_assert_eq!(decision.outcomes.len(), world.appends.len());
            let recorded: Vec<(Uuid, AppendOutcome)> = world
                .appends
                .iter()
                .zip(&decision.outcomes)
                .filter(|(a, _)| world.claimed_appends.contains(&a.append_id))
                .map(|(a, o)| (a.append_id, o.clone()))
                .collect();
            prop_assert_eq!(&decision.recorded, &recorded);
            let accepted: Vec<(Uuid, Version)> = world
                .appends
                .iter()
                .zip(&decision.outcomes)
                .filter(|(a, _)| world.claimed_appends.contains(&a.append_id))
                .filter_map(|(a, o)| match o {
                    AppendOutcome::Accepted { first_version, .. } => {
                        Some((a.append_id, *first_version))
                    }
                    AppendOutcome::Rejected(_) => None,
                })
                .collect();
            let produced: Vec<(Uuid, Version)> = decision
                .accepted
                .iter()
                .map(|a| (a.append.append_id, a.first_version))
                .collect();
            prop_assert_eq!(produced, accepted);
        }

        #[test]
        fn placeholders_are_dropped_for_locked_streams_left_without_events(world in world()) {
            let decision = world.decide().expect("decidable");
            let locked = world.locked();
            let moved: HashSet<&str> = decision.new_versions.iter().map(|(s, _)| *s).collect();
            let mut expected: Vec<&str> = locked
                .iter()
                .filter(|(s, v)| v.version == StreamVersion::NoStream && !moved.contains(s.as_str()))
                .map(|(s, _)| s.as_str())
                .collect();
            expected.sort_unstable();
            prop_assert_eq!(&decision.unfilled_placeholders, &expected);
        }

        #[test]
        fn the_locked_streams_are_sorted_and_exactly_those_step_4_decides(world in world()) {
            let decision = world.decide().expect("decidable");
            let batch = world.batch();
            let locked = streams_to_lock(&batch, &world.claimed_appends, &world.claimed_events);
            let mut reached: Vec<&str> = world
                .appends
                .iter()
                .zip(&decision.outcomes)
                .filter(|(a, o)| {
                    world.claimed_appends.contains(&a.append_id)
                        && matches!(
                            o,
                            AppendOutcome::Accepted { .. }
                                | AppendOutcome::Rejected(Rejection::WrongExpectedVersion { .. })
                        )
                })
                .map(|(a, _)| a.stream_id.as_str())
                .collect();
            reached.sort_unstable();
            reached.dedup();
            prop_assert_eq!(locked, reached);
        }
    }

    fn single(
        before: StreamVersion,
        expected: ExpectedVersion,
    ) -> Result<AppendOutcome, DecideError> {
        let world = World::new(
            [before, StreamVersion::NoStream, StreamVersion::NoStream],
            vec![Planned {
                stream: 0,
                expected,
                events: 2,
                history: History::New,
            }],
        );
        Ok(world.decide()?.outcomes.remove(0))
    }

    #[test]
    fn every_expected_version_mode_on_a_missing_and_an_existing_stream() {
        let missing = StreamVersion::NoStream;
        let at_1 = StreamVersion::At(version(1));
        let new_stream = AppendOutcome::Accepted {
            first_version: version(0),
            last_version: version(1),
        };
        let grown = AppendOutcome::Accepted {
            first_version: version(2),
            last_version: version(3),
        };
        let wrong = |actual| AppendOutcome::Rejected(Rejection::WrongExpectedVersion { actual });
        let cases = [
            (missing, ExpectedVersion::Any, new_stream.clone()),
            (missing, ExpectedVersion::NoStream, new_stream.clone()),
            (missing, ExpectedVersion::StreamExists, wrong(missing)),
            (missing, ExpectedVersion::Exact(version(0)), wrong(missing)),
            (at_1, ExpectedVersion::Any, grown.clone()),
            (at_1, ExpectedVersion::NoStream, wrong(at_1)),
            (at_1, ExpectedVersion::StreamExists, grown.clone()),
            (at_1, ExpectedVersion::Exact(version(1)), grown),
            (at_1, ExpectedVersion::Exact(version(0)), wrong(at_1)),
            (at_1, ExpectedVersion::Exact(version(2)), wrong(at_1)),
        ];
        for (before, expected, outcome) in cases {
            assert_eq!(
                single(before, expected),
                Ok(outcome),
                "{before:?} {expected}"
            );
        }
    }

    #[test]
    fn a_second_no_stream_append_in_one_batch_sees_the_stream_the_first_created() {
        let no_stream = |history| Planned {
            stream: 0,
            expected: ExpectedVersion::NoStream,
            events: 1,
            history,
        };
        let world = World::new(
            [StreamVersion::NoStream; 3],
            vec![no_stream(History::New), no_stream(History::New)],
        );
        let decision = world.decide().expect("decidable");
        assert_eq!(
            decision.outcomes,
            vec![
                AppendOutcome::Accepted {
                    first_version: version(0),
                    last_version: version(0),
                },
                AppendOutcome::Rejected(Rejection::WrongExpectedVersion {
                    actual: StreamVersion::At(version(0)),
                }),
            ]
        );
        assert_eq!(decision.new_versions, vec![("Order-a", version(0))]);
        assert!(decision.unfilled_placeholders.is_empty());
    }

    #[test]
    fn of_two_appends_in_one_batch_sharing_an_event_id_only_the_first_is_accepted() {
        let first = append(0, "Order-a", ExpectedVersion::Any, 1);
        let mut second = append(1, "Order-b", ExpectedVersion::Any, 2);
        let shared = first.events[0].id;
        second.events[1].id = shared;
        let own = second.events[0].id;
        let batch = vec![&first, &second];
        let claimed_appends: HashSet<Uuid> = [first.append_id, second.append_id].into();
        // What event_claims::claim answers: the shared id went to the earlier append.
        let claims: EventClaims = [(shared, first.append_id), (own, second.append_id)].into();
        let unclaimed = unclaimed_events(&batch, &claims);
        assert_eq!(unclaimed, vec![shared]);
        let owners: HashMap<Uuid, Uuid> = [(shared, first.append_id)].into();
        let locked = streams_to_lock(&batch, &claimed_appends, &claims);
        assert_eq!(locked, vec!["Order-a"]);
        let decision = decide(Inputs {
            appends: &batch,
            claimed_appends: &claimed_appends,
            ledger: &HashMap::new(),
            claimed_events: &claims,
            event_owners: &owners,
            streams: &HashMap::new(),
        })
        .expect("decidable");
        assert_eq!(
            decision.outcomes,
            vec![
                AppendOutcome::Accepted {
                    first_version: version(0),
                    last_version: version(0),
                },
                AppendOutcome::Rejected(Rejection::DuplicateEventId),
            ]
        );
        // Only the id the rejected append claimed itself is released, never the shared one.
        assert_eq!(decision.released_events, vec![own]);
        assert_eq!(decision.accepted.len(), 1);
    }

    #[test]
    fn a_vanished_or_pending_ledger_row_fails_the_decision() {
        let retry = Planned {
            stream: 0,
            expected: ExpectedVersion::Any,
            events: 1,
            history: History::Retry(AppendOutcome::Rejected(Rejection::DuplicateEventId)),
        };
        let mut world = World::new([StreamVersion::NoStream; 3], vec![retry]);
        let id = world.appends[0].append_id;
        if let Some(entry) = world.ledger.get_mut(&id) {
            entry.outcome = None;
        }
        assert_eq!(
            world.decide().err(),
            Some(DecideError::LedgerRowMissing(id))
        );
        world.ledger.clear();
        assert_eq!(
            world.decide().err(),
            Some(DecideError::LedgerRowMissing(id))
        );
    }

    #[test]
    fn a_stream_at_the_largest_version_cannot_grow() {
        let largest = StreamVersion::At(Version::try_from(i64::MAX).expect("a version"));
        assert_eq!(
            single(largest, ExpectedVersion::Any),
            Err(DecideError::VersionOverflow("Order-a".into()))
        );
    }

    /// Decides `batch` (every id claimed now) against `streams`.
    fn decide_new<'a>(
        batch: &[&'a Append],
        streams: &HashMap<String, StreamState>,
    ) -> Result<Decision<'a>, DecideError> {
        let claimed_appends: HashSet<Uuid> = batch.iter().map(|a| a.append_id).collect();
        let claimed_events: EventClaims = batch
            .iter()
            .flat_map(|a| a.events.iter().map(|e| (e.id, a.append_id)))
            .collect();
        decide(Inputs {
            appends: batch,
            claimed_appends: &claimed_appends,
            ledger: &HashMap::new(),
            claimed_events: &claimed_events,
            event_owners: &HashMap::new(),
            streams,
        })
    }

    fn delete(index: usize, mode: DeleteMode, expected: ExpectedVersion) -> Append {
        esk_model::lifecycle::lifecycle_append(
            "Order-a",
            LifecycleChange::Delete {
                mode,
                expected_version: expected,
            },
            ExpectedVersion::Any,
            Uuid::from_u128(1000 + index as u128),
            &esk_model::validate::Limits::default(),
        )
        .expect("valid")
    }

    #[test]
    fn a_hard_delete_stops_every_later_append_of_the_same_batch() {
        let streams: HashMap<String, StreamState> = [(
            "Order-a".to_owned(),
            StreamState::at(StreamVersion::At(version(2))),
        )]
        .into();
        let hard = delete(0, DeleteMode::Hard, ExpectedVersion::Exact(version(2)));
        let late = append(1, "Order-a", ExpectedVersion::Any, 1);
        let again = delete(2, DeleteMode::Soft, ExpectedVersion::Any);
        let decision = decide_new(&[&hard, &late, &again], &streams).expect("decided");
        assert!(matches!(
            decision.outcomes[0],
            AppendOutcome::Accepted { .. }
        ));
        assert_eq!(
            decision.outcomes[1..],
            [
                AppendOutcome::Rejected(Rejection::StreamDeleted),
                AppendOutcome::Rejected(Rejection::StreamDeleted)
            ]
        );
        assert_eq!(
            decision.flag_changes,
            vec![FlagChange {
                stream_id: "Order-a",
                deleted_through: None,
                tombstoned: true
            }]
        );
        assert_eq!(decision.new_versions, vec![("$$Order-a", Version::FIRST)]);
    }

    #[test]
    fn a_soft_deleted_stream_admits_no_stream_and_continues_its_versions() {
        let streams: HashMap<String, StreamState> = [(
            "Order-a".to_owned(),
            StreamState::at(StreamVersion::At(version(2))),
        )]
        .into();
        let soft = delete(0, DeleteMode::Soft, ExpectedVersion::Any);
        let twice = delete(1, DeleteMode::Soft, ExpectedVersion::Any);
        let recreate = append(2, "Order-a", ExpectedVersion::NoStream, 1);
        let decision = decide_new(&[&soft, &twice, &recreate], &streams).expect("decided");
        assert_eq!(
            decision.outcomes[1..],
            [
                AppendOutcome::Rejected(Rejection::StreamNotFound),
                AppendOutcome::Accepted {
                    first_version: version(3),
                    last_version: version(3)
                }
            ]
        );
        assert_eq!(decision.flag_changes[0].deleted_through, Some(version(2)));
        // A delete of a stream that never existed finds nothing.
        let decision = decide_new(&[&soft], &HashMap::new()).expect("decided");
        assert_eq!(
            decision.outcomes,
            [AppendOutcome::Rejected(Rejection::StreamNotFound)]
        );
        assert_eq!(decision.unfilled_placeholders, vec!["$$Order-a", "Order-a"]);
    }
}

//! The decision of a multi-stream append's attempt, without I/O (rule 1 of the multi-stream
//! design): every part's expectation is checked against its locked stream, and one failure
//! rejects the whole append. `group_attempt.rs` loads, calls these, and stores.

use std::collections::HashMap;

use esk_model::api::{StreamAppendResult, StreamConflict};
use esk_model::event::{GroupAppend, StreamVersion, Version};
use uuid::Uuid;

use crate::decide::{event_claim_conflict, DecideError, EventClaims, StreamState};
use crate::ingest_log::Accepted;
use crate::outcome::{GroupOutcome, GroupRejection, Rejection};

/// The outcome of a multi-stream append and what its attempt then stores and produces.
#[derive(Debug)]
pub(crate) struct GroupDecision<'a> {
    pub(crate) outcome: GroupOutcome,
    /// The new version of every stream, sorted by stream (empty when rejected).
    pub(crate) new_versions: Vec<(&'a str, Version)>,
    /// Streams locked as placeholders that stay absent (every new stream, when rejected).
    pub(crate) unfilled_placeholders: Vec<&'a str>,
    /// The parts to produce, in request order (empty when rejected).
    pub(crate) accepted: Vec<Accepted<'a>>,
}

/// Step 3 for the whole append: the rejection when an event id of any part is held by another
/// append (`duplicate_event_id`), or every such id is held under this very append id (accepted
/// once, its ledger row pruned: `append_expired`).
pub(crate) fn claim_conflict(
    group: &GroupAppend,
    claimed_events: &EventClaims,
    event_owners: &HashMap<Uuid, Uuid>,
) -> Option<GroupRejection> {
    let conflicts: Vec<Rejection> = group
        .parts
        .iter()
        .filter_map(|part| event_claim_conflict(part, claimed_events, event_owners))
        .collect();
    let rejection = if conflicts.contains(&Rejection::DuplicateEventId) {
        Rejection::DuplicateEventId
    } else {
        conflicts.into_iter().next()?
    };
    Some(GroupRejection::of(rejection))
}

/// Step 4 for the whole append, its streams locked (`streams`; a stream missing there has no
/// events). A hard-deleted stream refuses the whole append (`stream_deleted`, naming every such
/// stream); else a failed expectation does (`wrong_expected_version`, naming every failing
/// stream with its actual version); else every part is accepted at its stream's next versions.
pub(crate) fn decide_group<'a>(
    group: &'a GroupAppend,
    streams: &HashMap<String, StreamState>,
) -> Result<GroupDecision<'a>, DecideError> {
    let state = |stream: &str| {
        streams
            .get(stream)
            .copied()
            .unwrap_or(StreamState::at(StreamVersion::NoStream))
    };
    let conflicts = |keep: &dyn Fn(StreamState, &esk_model::event::Append) -> bool| {
        group
            .parts
            .iter()
            .filter(|part| keep(state(&part.stream_id), part))
            .map(|part| StreamConflict {
                stream_id: part.stream_id.clone(),
                expected_version: part.expected_version,
                actual_version: state(&part.stream_id).version,
            })
            .collect::<Vec<_>>()
    };
    let deleted = conflicts(&|s, _| s.tombstoned);
    let rejection = if !deleted.is_empty() {
        Some(GroupRejection {
            rejection: Rejection::StreamDeleted,
            streams: deleted,
        })
    } else {
        let failing = conflicts(&|s, part| !s.admits(part.expected_version));
        failing.first().map(|first| GroupRejection {
            rejection: Rejection::WrongExpectedVersion {
                actual: first.actual_version,
            },
            streams: failing.clone(),
        })
    };
    if let Some(rejection) = rejection {
        let mut unfilled_placeholders: Vec<&str> = group
            .parts
            .iter()
            .map(|p| p.stream_id.as_str())
            .filter(|s| state(s).version == StreamVersion::NoStream)
            .collect();
        unfilled_placeholders.sort_unstable();
        return Ok(GroupDecision {
            outcome: GroupOutcome::Rejected(rejection),
            new_versions: Vec::new(),
            unfilled_placeholders,
            accepted: Vec::new(),
        });
    }

    let mut results = Vec::with_capacity(group.parts.len());
    let mut new_versions = Vec::with_capacity(group.parts.len());
    let mut accepted = Vec::with_capacity(group.parts.len());
    for part in &group.parts {
        let overflow = || DecideError::VersionOverflow(part.stream_id.clone());
        let first_version = state(&part.stream_id).version.next().ok_or_else(overflow)?;
        let last_version = first_version
            .plus(part.events.len().saturating_sub(1))
            .ok_or_else(overflow)?;
        results.push(StreamAppendResult {
            stream_id: part.stream_id.clone(),
            first_version,
            last_version,
        });
        new_versions.push((part.stream_id.as_str(), last_version));
        accepted.push(Accepted {
            append: part,
            first_version,
        });
    }
    new_versions.sort_unstable_by_key(|(stream, _)| *stream);
    Ok(GroupDecision {
        outcome: GroupOutcome::Accepted(results),
        new_versions,
        unfilled_placeholders: Vec::new(),
        accepted,
    })
}

#[cfg(test)]
mod tests {
    use esk_model::event::{Append, ExpectedVersion};

    use super::*;

    fn part(stream: &str, expected: ExpectedVersion, events: u128, seed: u128) -> Append {
        crate::decide::test_append(1, stream, expected, events, seed)
    }

    fn group(parts: Vec<Append>) -> GroupAppend {
        GroupAppend {
            append_id: Uuid::from_u128(1),
            parts,
        }
    }

    fn at(v: u32) -> StreamState {
        StreamState::at(StreamVersion::At(v.into()))
    }

    #[test]
    fn accepts_every_part_at_its_streams_next_versions() {
        let g = group(vec![
            part("B-1", ExpectedVersion::Exact(4.into()), 2, 1),
            part("A-1", ExpectedVersion::NoStream, 1, 2),
        ]);
        let streams = HashMap::from([("B-1".to_owned(), at(4))]);
        let decision = decide_group(&g, &streams).expect("decided");
        let GroupOutcome::Accepted(results) = &decision.outcome else {
            panic!("rejected: {:?}", decision.outcome);
        };
        assert_eq!(results[0].stream_id, "B-1");
        assert_eq!(results[0].first_version, 5.into());
        assert_eq!(results[0].last_version, 6.into());
        assert_eq!(results[1].first_version, 0.into());
        assert_eq!(
            decision.new_versions,
            vec![("A-1", 0.into()), ("B-1", 6.into())]
        );
        assert_eq!(decision.accepted.len(), 2);
        assert!(decision.unfilled_placeholders.is_empty());
    }

    #[test]
    fn one_failed_expectation_rejects_all_and_names_every_failing_stream() {
        let g = group(vec![
            part("A-1", ExpectedVersion::NoStream, 1, 1),
            part("B-1", ExpectedVersion::Exact(0.into()), 1, 2),
            part("C-1", ExpectedVersion::StreamExists, 1, 3),
            part("D-1", ExpectedVersion::Any, 1, 4),
        ]);
        let streams = HashMap::from([("B-1".to_owned(), at(3))]);
        let decision = decide_group(&g, &streams).expect("decided");
        let GroupOutcome::Rejected(rejection) = &decision.outcome else {
            panic!("accepted");
        };
        assert_eq!(rejection.rejection.code(), "wrong_expected_version");
        let failing: Vec<(&str, StreamVersion)> = rejection
            .streams
            .iter()
            .map(|s| (s.stream_id.as_str(), s.actual_version))
            .collect();
        assert_eq!(
            failing,
            vec![
                ("B-1", StreamVersion::At(3.into())),
                ("C-1", StreamVersion::NoStream)
            ]
        );
        assert!(decision.accepted.is_empty() && decision.new_versions.is_empty());
        assert_eq!(decision.unfilled_placeholders, vec!["A-1", "C-1", "D-1"]);
    }

    #[test]
    fn a_hard_deleted_stream_refuses_the_whole_append_naming_it() {
        let g = group(vec![
            part("A-1", ExpectedVersion::Any, 1, 1),
            part("B-1", ExpectedVersion::Any, 1, 2),
        ]);
        let mut tombstone = at(2);
        tombstone.tombstoned = true;
        let streams = HashMap::from([("B-1".to_owned(), tombstone), ("A-1".to_owned(), at(0))]);
        let decision = decide_group(&g, &streams).expect("decided");
        let GroupOutcome::Rejected(rejection) = decision.outcome else {
            panic!("accepted");
        };
        assert_eq!(rejection.rejection, Rejection::StreamDeleted);
        assert_eq!(rejection.streams.len(), 1);
        assert_eq!(rejection.streams[0].stream_id, "B-1");
    }

    #[test]
    fn a_taken_event_id_in_any_part_is_a_duplicate() {
        let g = group(vec![
            part("A-1", ExpectedVersion::Any, 1, 1),
            part("B-1", ExpectedVersion::Any, 1, 2),
        ]);
        let mut claimed = EventClaims::new();
        claimed.insert(g.parts[0].events[0].id, g.append_id);
        let owners = HashMap::from([(g.parts[1].events[0].id, Uuid::from_u128(77))]);
        let conflict = claim_conflict(&g, &claimed, &owners).map(|r| r.rejection);
        assert_eq!(conflict, Some(Rejection::DuplicateEventId));
        let owners = HashMap::from([(g.parts[1].events[0].id, g.append_id)]);
        let conflict = claim_conflict(&g, &claimed, &owners).map(|r| r.rejection);
        assert_eq!(conflict, Some(Rejection::AppendExpired));
        claimed.insert(g.parts[1].events[0].id, g.append_id);
        assert_eq!(claim_conflict(&g, &claimed, &HashMap::new()), None);
    }
}

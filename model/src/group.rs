//! Turning an untrusted multi-stream append request (`{"append_id"?, "appends": [{"stream_id",
//! "expected_version", "events"}, ...]}`) into a validated [`GroupAppend`]. Each part is
//! validated exactly like a single append ([`parse_append`]); the request as a whole must name
//! at least one stream, each stream once, at most `max_streams` of them, at most
//! `max_events_per_append` events in all, and each event id once.

use std::collections::HashSet;

use serde_json::value::RawValue;

use crate::event::{derived_group_append_id, GroupAppend};
use crate::raw_json::{kind, Kind, Members};
use crate::validate::{parse_append, parse_object, parse_optional_uuid, parse_stream_id_member};
use crate::validate::{InvalidAppend, Limits, TraceDefaults};

/// The field of a request that makes it a multi-stream append.
pub const APPENDS_FIELD: &str = "appends";

/// Parses and validates the body of `POST /appends`.
pub fn parse_group_body(
    body: &[u8],
    limits: &Limits,
    max_streams: usize,
    trace: TraceDefaults<'_>,
) -> Result<GroupAppend, InvalidAppend> {
    let members = parse_object(body)?;
    parse_group(&members, &[], limits, max_streams, trace)
}

/// Parses the multi-stream fields of a request (the HTTP body, or a Kafka append request whose
/// other fields are named in `allowed_extra`) into a validated [`GroupAppend`].
pub fn parse_group(
    body: &Members<'_>,
    allowed_extra: &[&str],
    limits: &Limits,
    max_streams: usize,
    trace: TraceDefaults<'_>,
) -> Result<GroupAppend, InvalidAppend> {
    if let Some(name) = body.first_duplicate() {
        return Err(InvalidAppend::DuplicateField(name.to_owned()));
    }
    for (key, _) in &body.0 {
        let known = matches!(key.as_ref(), "append_id" | APPENDS_FIELD);
        if !known && !allowed_extra.contains(&key.as_ref()) {
            return Err(InvalidAppend::UnknownField(key.to_string()));
        }
    }
    let items = parts_of(
        body.last(APPENDS_FIELD)
            .ok_or_else(|| InvalidAppend::MissingField(APPENDS_FIELD.into()))?,
    )?;
    if items.is_empty() {
        return Err(InvalidAppend::EmptyAppends);
    }
    if items.len() > max_streams {
        return Err(InvalidAppend::TooManyStreams {
            count: items.len(),
            limit: max_streams,
        });
    }
    let given_id = parse_optional_uuid(body.last("append_id"), "append_id")?;
    let mut streams = HashSet::with_capacity(items.len());
    let mut event_ids = HashSet::new();
    let mut events = 0usize;
    let mut parts = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let in_part = |error| InvalidAppend::InPart {
            index,
            error: Box::new(error),
        };
        let part = parse_part(item, limits, trace).map_err(in_part)?;
        if !streams.insert(part.stream_id.clone()) {
            return Err(InvalidAppend::DuplicateStream(part.stream_id));
        }
        events += part.events.len();
        if events > limits.max_events_per_append {
            return Err(InvalidAppend::TooManyEvents {
                count: events,
                limit: limits.max_events_per_append,
            });
        }
        for event in &part.events {
            if !event_ids.insert(event.id) {
                return Err(in_part(InvalidAppend::DuplicateEventIdInAppend(event.id)));
            }
        }
        parts.push(part);
    }
    let append_id = given_id.unwrap_or_else(|| {
        derived_group_append_id(
            parts
                .iter()
                .map(|p| (p.stream_id.as_str(), p.events.iter().map(|e| e.id))),
        )
    });
    for part in &mut parts {
        part.append_id = append_id;
    }
    Ok(GroupAppend { append_id, parts })
}

/// The items of the `appends` array.
fn parts_of(value: &RawValue) -> Result<Vec<&RawValue>, InvalidAppend> {
    let wrong_type = || InvalidAppend::WrongType {
        field: APPENDS_FIELD.into(),
        expected: "an array",
    };
    if kind(value) != Kind::Array {
        return Err(wrong_type());
    }
    serde_json::from_str(value.get()).map_err(|_| wrong_type())
}

/// One part: an object with `stream_id`, `expected_version` and `events` (no append id of its
/// own: the request's covers every part).
fn parse_part(
    value: &RawValue,
    limits: &Limits,
    trace: TraceDefaults<'_>,
) -> Result<crate::event::Append, InvalidAppend> {
    let object = Members::of(value)
        .ok()
        .flatten()
        .ok_or(InvalidAppend::NotAnObject)?;
    if object.last("append_id").is_some() {
        return Err(InvalidAppend::UnknownField("append_id".into()));
    }
    let stream_id = parse_stream_id_member(&object)?;
    parse_append(&stream_id, &object, &["stream_id"], limits, trace)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};
    use uuid::Uuid;

    use super::*;

    fn parse(body: Value) -> Result<GroupAppend, InvalidAppend> {
        parse_group_body(
            body.to_string().as_bytes(),
            &Limits::default(),
            3,
            TraceDefaults::default(),
        )
    }

    fn part(stream: &str, ids: &[u128]) -> Value {
        let events: Vec<Value> = ids
            .iter()
            .map(|id| json!({"id": Uuid::from_u128(*id), "type": "T", "data": {}}))
            .collect();
        json!({"stream_id": stream, "expected_version": "any", "events": events})
    }

    fn code(body: Value) -> &'static str {
        match parse(body) {
            Ok(_) => "accepted",
            Err(e) => e.code(),
        }
    }

    #[test]
    fn accepts_parts_in_order_under_one_derived_id() {
        let body = json!({"appends": [part("A-1", &[1, 2]), part("B-1", &[3])]});
        let group = parse(body.clone()).expect("valid");
        assert_eq!(group.parts.len(), 2);
        assert_eq!(group.parts[0].stream_id, "A-1");
        assert_eq!(group.parts[1].events.len(), 1);
        assert!(group.parts.iter().all(|p| p.append_id == group.append_id));
        assert_eq!(group.append_id, group.fingerprint());
        assert_eq!(parse(body).expect("valid").append_id, group.append_id);
        let given = Uuid::from_u128(9);
        let body = json!({"append_id": given, "appends": [part("A-1", &[1])]});
        assert_eq!(parse(body).expect("valid").append_id, given);
    }

    #[test]
    fn refuses_what_a_multi_stream_append_cannot_be() {
        assert_eq!(code(json!({"appends": []})), "empty_appends");
        assert_eq!(code(json!({})), "missing_field");
        assert_eq!(code(json!({"appends": {}})), "wrong_type");
        assert_eq!(
            code(json!({"appends": [part("A-1", &[1]), part("A-1", &[2])]})),
            "duplicate_stream"
        );
        assert_eq!(
            code(json!({"appends": [part("A-1", &[1]), part("B-1", &[1])]})),
            "duplicate_event_id_in_append"
        );
        let four: Vec<Value> = (0..4).map(|i| part(&format!("S-{i}"), &[i])).collect();
        assert_eq!(code(json!({ "appends": four })), "too_many_streams");
        assert_eq!(
            code(json!({"appends": [part("$$A-1", &[1])]})),
            "invalid_stream_id"
        );
        assert_eq!(code(json!({"appends": [part("A-1", &[])]})), "empty_events");
        let mut with_id = part("A-1", &[1]);
        with_id["append_id"] = json!(Uuid::from_u128(1));
        assert_eq!(code(json!({ "appends": [with_id] })), "unknown_field");
        assert_eq!(
            code(json!({"appends": [part("A-1", &[1])], "stream_id": "A-1"})),
            "unknown_field"
        );
        assert_eq!(code(json!({"appends": [7]})), "invalid_body");
    }

    #[test]
    fn the_event_limit_counts_every_part() {
        let limits = Limits {
            max_events_per_append: 2,
            ..Limits::default()
        };
        let body = json!({"appends": [part("A-1", &[1, 2]), part("B-1", &[3])]});
        let refused = parse_group_body(
            body.to_string().as_bytes(),
            &limits,
            3,
            TraceDefaults::default(),
        );
        assert_eq!(refused.err().map(|e| e.code()), Some("too_many_events"));
    }

    #[test]
    fn a_part_error_names_its_part() {
        let body = json!({"appends": [part("A-1", &[1]), part("B-1", &[])]});
        let error = parse(body).expect_err("refused");
        assert!(error.to_string().starts_with("appends[1]: "), "{error}");
        assert_eq!(error.innermost(), &InvalidAppend::EmptyEvents);
    }
}

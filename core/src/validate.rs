//! Turning untrusted JSON into a validated [`Append`]: every violation is a typed rejection of
//! the whole append, never a panic and never a partial append.

use std::collections::HashSet;

use clap::Args;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::model::{derived_append_id, Append, ExpectedVersion, NewEvent};

/// Input limits, configurable per deployment.
#[derive(Debug, Clone, Args)]
pub struct Limits {
    /// Largest event (data plus metadata, serialized), in bytes.
    #[arg(long, env = "ESK_MAX_EVENT_BYTES", default_value_t = 1024 * 1024)]
    pub max_event_bytes: usize,
    /// Most events in one append.
    #[arg(long, env = "ESK_MAX_EVENTS_PER_APPEND", default_value_t = 1000)]
    pub max_events_per_append: usize,
    /// Longest stream id, in bytes.
    #[arg(long, env = "ESK_MAX_STREAM_ID_BYTES", default_value_t = 256)]
    pub max_stream_id_bytes: usize,
    /// Longest event type, in bytes.
    #[arg(long, env = "ESK_MAX_EVENT_TYPE_BYTES", default_value_t = 256)]
    pub max_event_type_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_event_bytes: 1024 * 1024,
            max_events_per_append: 1000,
            max_stream_id_bytes: 256,
            max_event_type_bytes: 256,
        }
    }
}

/// Why an append was refused before it reached the store.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidAppend {
    /// The body is not JSON.
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    /// The body is JSON but not an object.
    #[error("the body must be a JSON object")]
    NotAnObject,
    /// A required field is absent.
    #[error("missing field `{0}`")]
    MissingField(String),
    /// A field has the wrong JSON type.
    #[error("field `{field}` must be {expected}")]
    WrongType {
        /// The field's path.
        field: String,
        /// What it should have been.
        expected: &'static str,
    },
    /// The expected version is neither a known word nor a non-negative integer.
    #[error("expected_version must be \"any\", \"no_stream\", \"stream_exists\" or a non-negative integer, got {0}")]
    InvalidExpectedVersion(String),
    /// The stream id is empty, too long, or has control characters or a reserved prefix.
    #[error("invalid stream id: {0}")]
    InvalidStreamId(String),
    /// The events list is empty.
    #[error("an append needs at least one event")]
    EmptyEvents,
    /// More events than the limit allows.
    #[error("{count} events in one append; the limit is {limit}")]
    TooManyEvents {
        /// Events sent.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// An id that must be a UUID is not one.
    #[error("field `{field}` must be a UUID")]
    InvalidUuid {
        /// The field's path.
        field: String,
    },
    /// An event type is empty or too long.
    #[error("invalid event type at `{field}`: {reason}")]
    InvalidEventType {
        /// The field's path.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// An event is larger than the limit.
    #[error("event {index} is {size} bytes; the limit is {limit}")]
    EventTooLarge {
        /// Position in the append.
        index: usize,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The same event id appears twice in one append.
    #[error("event id {0} appears more than once in this append")]
    DuplicateEventIdInAppend(Uuid),
    /// Metadata must be a JSON object when present.
    #[error("field `{0}` must be a JSON object or null")]
    InvalidMetadata(String),
    /// A field the schema does not know (typos are caught, not ignored).
    #[error("unknown field `{0}`")]
    UnknownField(String),
}

impl InvalidAppend {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            InvalidAppend::MalformedJson(_) => "malformed_json",
            InvalidAppend::NotAnObject => "invalid_body",
            InvalidAppend::MissingField(_) => "missing_field",
            InvalidAppend::WrongType { .. } => "wrong_type",
            InvalidAppend::InvalidExpectedVersion(_) => "invalid_expected_version",
            InvalidAppend::InvalidStreamId(_) => "invalid_stream_id",
            InvalidAppend::EmptyEvents => "empty_events",
            InvalidAppend::TooManyEvents { .. } => "too_many_events",
            InvalidAppend::InvalidUuid { .. } => "invalid_uuid",
            InvalidAppend::InvalidEventType { .. } => "invalid_event_type",
            InvalidAppend::EventTooLarge { .. } => "event_too_large",
            InvalidAppend::DuplicateEventIdInAppend(_) => "duplicate_event_id_in_append",
            InvalidAppend::InvalidMetadata(_) => "invalid_metadata",
            InvalidAppend::UnknownField(_) => "unknown_field",
        }
    }
}

/// Checks a stream id against the limits.
pub fn validate_stream_id(stream_id: &str, limits: &Limits) -> Result<(), InvalidAppend> {
    if stream_id.is_empty() {
        return Err(InvalidAppend::InvalidStreamId("it is empty".into()));
    }
    if stream_id.len() > limits.max_stream_id_bytes {
        return Err(InvalidAppend::InvalidStreamId(format!(
            "it is {} bytes; the limit is {}",
            stream_id.len(),
            limits.max_stream_id_bytes
        )));
    }
    if stream_id.starts_with('$') {
        return Err(InvalidAppend::InvalidStreamId(
            "ids starting with `$` are reserved".into(),
        ));
    }
    if stream_id.chars().any(char::is_control) {
        return Err(InvalidAppend::InvalidStreamId(
            "it contains control characters".into(),
        ));
    }
    Ok(())
}

/// Parses the append body of `POST /streams/{stream_id}/events` (or the same fields of a Kafka
/// append request) into a validated [`Append`].
pub fn parse_append(
    stream_id: &str,
    body: &Map<String, Value>,
    allowed_extra: &[&str],
    limits: &Limits,
) -> Result<Append, InvalidAppend> {
    validate_stream_id(stream_id, limits)?;
    for key in body.keys() {
        let known = matches!(key.as_str(), "expected_version" | "append_id" | "events");
        if !known && !allowed_extra.contains(&key.as_str()) {
            return Err(InvalidAppend::UnknownField(key.clone()));
        }
    }
    let expected_version = parse_expected_version(
        body.get("expected_version")
            .ok_or_else(|| InvalidAppend::MissingField("expected_version".into()))?,
    )?;
    let events = parse_events(
        body.get("events")
            .ok_or_else(|| InvalidAppend::MissingField("events".into()))?,
        limits,
    )?;
    let append_id = match body.get("append_id") {
        None | Some(Value::Null) => derived_append_id(stream_id, events.iter().map(|e| e.id)),
        Some(v) => parse_uuid(v, "append_id")?,
    };
    Ok(Append {
        stream_id: stream_id.to_owned(),
        expected_version,
        append_id,
        events,
    })
}

/// Parses `"any" | "no_stream" | "stream_exists" | N`.
pub fn parse_expected_version(value: &Value) -> Result<ExpectedVersion, InvalidAppend> {
    match value {
        Value::String(word) => match word.as_str() {
            "any" => Ok(ExpectedVersion::Any),
            "no_stream" => Ok(ExpectedVersion::NoStream),
            "stream_exists" => Ok(ExpectedVersion::StreamExists),
            _ => Err(InvalidAppend::InvalidExpectedVersion(value.to_string())),
        },
        Value::Number(n) => match n.as_i64() {
            Some(v) if v >= 0 => Ok(ExpectedVersion::Exact(v)),
            _ => Err(InvalidAppend::InvalidExpectedVersion(n.to_string())),
        },
        other => Err(InvalidAppend::InvalidExpectedVersion(other.to_string())),
    }
}

fn parse_events(value: &Value, limits: &Limits) -> Result<Vec<NewEvent>, InvalidAppend> {
    let items = value.as_array().ok_or_else(|| InvalidAppend::WrongType {
        field: "events".into(),
        expected: "an array",
    })?;
    if items.is_empty() {
        return Err(InvalidAppend::EmptyEvents);
    }
    if items.len() > limits.max_events_per_append {
        return Err(InvalidAppend::TooManyEvents {
            count: items.len(),
            limit: limits.max_events_per_append,
        });
    }
    let mut seen = HashSet::with_capacity(items.len());
    let mut events = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let event = parse_event(index, item, limits)?;
        if !seen.insert(event.id) {
            return Err(InvalidAppend::DuplicateEventIdInAppend(event.id));
        }
        events.push(event);
    }
    Ok(events)
}

fn parse_event(index: usize, value: &Value, limits: &Limits) -> Result<NewEvent, InvalidAppend> {
    let path = |name: &str| format!("events[{index}].{name}");
    let object = value.as_object().ok_or_else(|| InvalidAppend::WrongType {
        field: format!("events[{index}]"),
        expected: "an object",
    })?;
    for key in object.keys() {
        if !matches!(key.as_str(), "id" | "type" | "data" | "metadata") {
            return Err(InvalidAppend::UnknownField(path(key)));
        }
    }
    let id = parse_uuid(
        object
            .get("id")
            .ok_or_else(|| InvalidAppend::MissingField(path("id")))?,
        &path("id"),
    )?;
    let event_type = object
        .get("type")
        .ok_or_else(|| InvalidAppend::MissingField(path("type")))?
        .as_str()
        .ok_or_else(|| InvalidAppend::WrongType {
            field: path("type"),
            expected: "a string",
        })?;
    if event_type.trim().is_empty() {
        return Err(InvalidAppend::InvalidEventType {
            field: path("type"),
            reason: "it is empty".into(),
        });
    }
    if event_type.len() > limits.max_event_type_bytes {
        return Err(InvalidAppend::InvalidEventType {
            field: path("type"),
            reason: format!("longer than {} bytes", limits.max_event_type_bytes),
        });
    }
    let data = object
        .get("data")
        .ok_or_else(|| InvalidAppend::MissingField(path("data")))?;
    let metadata = match object.get("metadata") {
        None | Some(Value::Null) => None,
        Some(m @ Value::Object(_)) => Some(m.clone()),
        Some(_) => return Err(InvalidAppend::InvalidMetadata(path("metadata"))),
    };
    // Serialized once here; the text is what ingest-log carries, so its length is the size.
    let data = serde_json::value::to_raw_value(data).map_err(|_| InvalidAppend::WrongType {
        field: path("data"),
        expected: "JSON",
    })?;
    let size = data.get().len() + metadata.as_ref().map_or(0, json_size);
    if size > limits.max_event_bytes {
        return Err(InvalidAppend::EventTooLarge {
            index,
            size,
            limit: limits.max_event_bytes,
        });
    }
    Ok(NewEvent {
        id,
        event_type: event_type.to_owned(),
        data,
        metadata,
    })
}

fn parse_uuid(value: &Value, field: &str) -> Result<Uuid, InvalidAppend> {
    value
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| InvalidAppend::InvalidUuid {
            field: field.to_owned(),
        })
}

fn json_size(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a Value into an in-memory counter cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: Value) -> Result<Append, InvalidAppend> {
        let map = body.as_object().cloned().unwrap_or_default();
        parse_append("Order-1", &map, &[], &Limits::default())
    }

    fn event() -> Value {
        json!({"id": Uuid::new_v4().to_string(), "type": "T", "data": {}})
    }

    #[test]
    fn accepts_a_valid_append_and_derives_its_id() {
        let append = parse(json!({"expected_version": 3, "events": [event()]}));
        let append = append.expect("valid");
        assert_eq!(append.expected_version, ExpectedVersion::Exact(3));
        assert_eq!(
            append.append_id,
            derived_append_id("Order-1", [append.events[0].id])
        );
    }

    #[test]
    fn rejects_bad_inputs_with_codes() {
        let cases = [
            (json!({"events": [event()]}), "missing_field"),
            (
                json!({"expected_version": -1, "events": [event()]}),
                "invalid_expected_version",
            ),
            (
                json!({"expected_version": "sometimes", "events": [event()]}),
                "invalid_expected_version",
            ),
            (
                json!({"expected_version": "any", "events": []}),
                "empty_events",
            ),
            (
                json!({"expected_version": "any", "events": {}}),
                "wrong_type",
            ),
            (
                json!({"expected_version": "any", "events": [{"id": "x", "type": "T", "data": 1}]}),
                "invalid_uuid",
            ),
            (
                json!({"expected_version": "any", "events": [{"id": Uuid::new_v4().to_string(), "type": "", "data": 1}]}),
                "invalid_event_type",
            ),
            (
                json!({"expected_version": "any", "events": [event()], "extra": 1}),
                "unknown_field",
            ),
        ];
        for (body, code) in cases {
            let err = parse(body.clone()).expect_err("must be rejected");
            assert_eq!(err.code(), code, "{body}");
        }
    }

    #[test]
    fn rejects_duplicate_event_ids_inside_one_append() {
        let e = event();
        let err = parse(json!({"expected_version": "any", "events": [e.clone(), e]}));
        assert_eq!(err.expect_err("dup").code(), "duplicate_event_id_in_append");
    }

    #[test]
    fn rejects_long_stream_ids() {
        let long = "x".repeat(10_000);
        let err = validate_stream_id(&long, &Limits::default()).expect_err("too long");
        assert_eq!(err.code(), "invalid_stream_id");
    }
}

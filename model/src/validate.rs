//! Turning untrusted JSON into a validated [`Append`]: every violation is a typed rejection of
//! the whole append, never a panic and never a partial append.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use uuid::Uuid;

use crate::event::{derived_append_id, Append, ExpectedVersion, NewEvent};
use crate::raw_json::{compact_owned, kind, Kind, Members, UnstorableJson};

/// Input limits, configurable per deployment.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct Limits {
    /// Largest event (data plus metadata, serialized), in bytes.
    #[cfg_attr(feature = "clap", arg(long, env = "ESK_MAX_EVENT_BYTES", default_value_t = 1024 * 1024))]
    pub max_event_bytes: usize,
    /// Most events in one append.
    #[cfg_attr(
        feature = "clap",
        arg(long, env = "ESK_MAX_EVENTS_PER_APPEND", default_value_t = 1000)
    )]
    pub max_events_per_append: usize,
    /// Longest stream id, in bytes.
    #[cfg_attr(
        feature = "clap",
        arg(long, env = "ESK_MAX_STREAM_ID_BYTES", default_value_t = 256)
    )]
    pub max_stream_id_bytes: usize,
    /// Longest event type, in bytes.
    #[cfg_attr(
        feature = "clap",
        arg(long, env = "ESK_MAX_EVENT_TYPE_BYTES", default_value_t = 256)
    )]
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
    /// The stream id is empty, too long, has a reserved prefix, or control or invisible
    /// format characters.
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
    /// A field appears twice in one object (which one counts is ambiguous).
    #[error("field `{0}` appears more than once")]
    DuplicateField(String),
    /// A payload that is valid JSON to most parsers but that Postgres would refuse.
    #[error("`{field}` cannot be stored: {reason}")]
    UnstorableJson {
        /// The field's path.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A correlation or causation id header that is too long or not printable.
    #[error("invalid trace id: {0}")]
    InvalidTraceId(String),
    /// A Kafka append request of a format version this ingest does not speak.
    #[error("schema_version {0} is not supported; this ingest speaks version 1")]
    UnsupportedSchemaVersion(String),
    /// An event type starting with `$`: those are the store's own (`$metadata`,
    /// `$streamDeleted`), written only by the lifecycle routes.
    #[error("event type {0:?} is reserved: types starting with `$` are the store's own")]
    ReservedEventType(String),
    /// A Kafka append request with no value (a tombstone).
    #[error("the request record has no value (a tombstone); send a JSON append request")]
    EmptyRequest,
    /// A delete mode other than `soft` or `hard`.
    #[error("the delete mode must be \"soft\" or \"hard\", got {0}")]
    InvalidDeleteMode(String),
    /// A multi-stream append whose `appends` list is empty.
    #[error("a multi-stream append needs at least one stream in `appends`")]
    EmptyAppends,
    /// A multi-stream append naming one stream in two parts.
    #[error("stream {0:?} appears more than once in `appends`; put all its events in one part")]
    DuplicateStream(String),
    /// A multi-stream append over more streams than the limit allows.
    #[error("{count} streams in one append; the limit is {limit}")]
    TooManyStreams {
        /// Streams sent.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A part of a multi-stream append is invalid (the whole append is refused).
    #[error("appends[{index}]: {error}")]
    InPart {
        /// The part's position in `appends`.
        index: usize,
        /// What is wrong with it.
        error: Box<InvalidAppend>,
    },
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
            InvalidAppend::DuplicateField(_) => "duplicate_field",
            InvalidAppend::UnstorableJson { .. } => "unstorable_json",
            InvalidAppend::InvalidTraceId(_) => "invalid_trace_id",
            InvalidAppend::UnsupportedSchemaVersion(_) => "unsupported_schema_version",
            InvalidAppend::EmptyRequest => "empty_request",
            InvalidAppend::ReservedEventType(_) => "reserved_event_type",
            InvalidAppend::InvalidDeleteMode(_) => "invalid_delete_mode",
            InvalidAppend::EmptyAppends => "empty_appends",
            InvalidAppend::DuplicateStream(_) => "duplicate_stream",
            InvalidAppend::TooManyStreams { .. } => "too_many_streams",
            InvalidAppend::InPart { error, .. } => error.code(),
        }
    }

    /// The error itself, out of the part of a multi-stream append it was found in.
    pub fn innermost(&self) -> &InvalidAppend {
        match self {
            InvalidAppend::InPart { error, .. } => error.innermost(),
            other => other,
        }
    }
}

/// The `X-Correlation-Id` / `X-Causation-Id` of a request, given to the events that do not
/// carry their own in their metadata.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceDefaults<'a> {
    /// Correlation id for events without one.
    pub correlation_id: Option<&'a str>,
    /// Causation id for events without one.
    pub causation_id: Option<&'a str>,
}

/// Longest trace id (correlation or causation id from a request header), in bytes.
pub const MAX_TRACE_ID_BYTES: usize = 256;

/// Checks a trace id from a request header: at most [`MAX_TRACE_ID_BYTES`], printable ASCII.
pub fn validate_trace_id(name: &str, value: &[u8]) -> Result<(), InvalidAppend> {
    if value.len() > MAX_TRACE_ID_BYTES {
        return Err(InvalidAppend::InvalidTraceId(format!(
            "{name} is {} bytes; the limit is {MAX_TRACE_ID_BYTES}",
            value.len()
        )));
    }
    if value.is_empty() || !value.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Err(InvalidAppend::InvalidTraceId(format!(
            "{name} must be 1 to {MAX_TRACE_ID_BYTES} printable ASCII characters"
        )));
    }
    Ok(())
}

/// What is wrong with a name (stream id, event type) that Postgres or a later hop would refuse
/// or show misleadingly: control characters (NUL among them) and invisible format, bidi and line
/// separator characters. Also what read filters check type and category names with.
pub fn name_problem(name: &str) -> Option<&'static str> {
    for c in name.chars() {
        if c.is_control() {
            return Some("it contains control characters");
        }
        if matches!(c,
            '\u{200B}'..='\u{200F}' | '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
        {
            return Some("it contains invisible format, bidi or line-separator characters");
        }
    }
    None
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
    if let Some(problem) = name_problem(stream_id) {
        return Err(InvalidAppend::InvalidStreamId(problem.into()));
    }
    Ok(())
}

/// Reads a request body as a JSON object, keeping every value as the text that was sent.
pub fn parse_object(body: &[u8]) -> Result<Members<'_>, InvalidAppend> {
    let text = std::str::from_utf8(body)
        .map_err(|e| InvalidAppend::MalformedJson(format!("the body is not UTF-8: {e}")))?;
    let members = Members::parse(text)
        .map_err(|e| InvalidAppend::MalformedJson(e.to_string()))?
        .ok_or(InvalidAppend::NotAnObject)?;
    if let Some(name) = members.first_duplicate() {
        return Err(InvalidAppend::DuplicateField(name.to_owned()));
    }
    Ok(members)
}

/// Parses and validates the body of `POST /streams/{stream_id}/events`.
pub fn parse_append_body(
    stream_id: &str,
    body: &[u8],
    limits: &Limits,
    trace: TraceDefaults<'_>,
) -> Result<Append, InvalidAppend> {
    let members = parse_object(body)?;
    parse_append(stream_id, &members, &[], limits, trace)
}

/// Parses the append fields of a request (the HTTP body, or a Kafka append request whose other
/// fields are named in `allowed_extra`) into a validated [`Append`].
pub fn parse_append(
    stream_id: &str,
    body: &Members<'_>,
    allowed_extra: &[&str],
    limits: &Limits,
    trace: TraceDefaults<'_>,
) -> Result<Append, InvalidAppend> {
    validate_stream_id(stream_id, limits)?;
    if let Some(name) = body.first_duplicate() {
        return Err(InvalidAppend::DuplicateField(name.to_owned()));
    }
    for (key, _) in &body.0 {
        let known = matches!(key.as_ref(), "expected_version" | "append_id" | "events");
        if !known && !allowed_extra.contains(&key.as_ref()) {
            return Err(InvalidAppend::UnknownField(key.to_string()));
        }
    }
    let expected_version = parse_expected_version_raw(
        body.last("expected_version")
            .ok_or_else(|| InvalidAppend::MissingField("expected_version".into()))?,
    )?;
    let events = parse_events(
        body.last("events")
            .ok_or_else(|| InvalidAppend::MissingField("events".into()))?,
        limits,
        trace,
    )?;
    let append_id = match body.last("append_id") {
        None => derived_append_id(stream_id, events.iter().map(|e| e.id)),
        Some(v) if kind(v) == Kind::Null => {
            derived_append_id(stream_id, events.iter().map(|e| e.id))
        }
        Some(v) => parse_uuid(v, "append_id")?,
    };
    Ok(Append {
        stream_id: stream_id.to_owned(),
        expected_version,
        append_id,
        events,
        lifecycle: None,
    })
}

fn parse_expected_version_raw(raw: &RawValue) -> Result<ExpectedVersion, InvalidAppend> {
    let value: Value = serde_json::from_str(raw.get())
        .map_err(|_| InvalidAppend::InvalidExpectedVersion(raw.get().to_owned()))?;
    parse_expected_version(&value)
}

/// Parses `"any" | "no_stream" | "stream_exists" | N` (the codec of [`ExpectedVersion`]).
pub fn parse_expected_version(value: &Value) -> Result<ExpectedVersion, InvalidAppend> {
    ExpectedVersion::deserialize(value)
        .map_err(|_| InvalidAppend::InvalidExpectedVersion(value.to_string()))
}

fn parse_events(
    value: &RawValue,
    limits: &Limits,
    trace: TraceDefaults<'_>,
) -> Result<Vec<NewEvent>, InvalidAppend> {
    let wrong_type = || InvalidAppend::WrongType {
        field: "events".into(),
        expected: "an array",
    };
    if kind(value) != Kind::Array {
        return Err(wrong_type());
    }
    let items: Vec<&RawValue> = serde_json::from_str(value.get()).map_err(|_| wrong_type())?;
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
    for (index, item) in items.into_iter().enumerate() {
        let event = parse_event(index, item, limits, trace)?;
        if !seen.insert(event.id) {
            return Err(InvalidAppend::DuplicateEventIdInAppend(event.id));
        }
        events.push(event);
    }
    Ok(events)
}

fn parse_event(
    index: usize,
    value: &RawValue,
    limits: &Limits,
    trace: TraceDefaults<'_>,
) -> Result<NewEvent, InvalidAppend> {
    let path = |name: &str| format!("events[{index}].{name}");
    let object = Members::of(value)
        .ok()
        .flatten()
        .ok_or_else(|| InvalidAppend::WrongType {
            field: format!("events[{index}]"),
            expected: "an object",
        })?;
    if let Some(name) = object.first_duplicate() {
        return Err(InvalidAppend::DuplicateField(path(name)));
    }
    for (key, _) in &object.0 {
        if !matches!(key.as_ref(), "id" | "type" | "data" | "metadata") {
            return Err(InvalidAppend::UnknownField(path(key)));
        }
    }
    let id = parse_uuid(
        object
            .last("id")
            .ok_or_else(|| InvalidAppend::MissingField(path("id")))?,
        &path("id"),
    )?;
    let event_type = parse_event_type(
        object
            .last("type")
            .ok_or_else(|| InvalidAppend::MissingField(path("type")))?,
        &path("type"),
        limits,
    )?;
    let unstorable = |field: String| {
        move |e: UnstorableJson| InvalidAppend::UnstorableJson {
            field: field.clone(),
            reason: e.to_string(),
        }
    };
    let data = compact_owned(
        object
            .last("data")
            .ok_or_else(|| InvalidAppend::MissingField(path("data")))?,
    )
    .map_err(unstorable(path("data")))?;
    let metadata = match object.last("metadata") {
        None => None,
        Some(m) if kind(m) == Kind::Null => None,
        Some(m) if kind(m) == Kind::Object => {
            Some(compact_owned(m).map_err(unstorable(path("metadata")))?)
        }
        Some(_) => return Err(InvalidAppend::InvalidMetadata(path("metadata"))),
    };
    let (metadata, correlation_id, causation_id) = with_trace_defaults(metadata, trace);
    // The raw texts are what ingest-log carries, so their lengths are the size.
    let size = data.get().len() + metadata.as_ref().map_or(0, |m| m.get().len());
    if size > limits.max_event_bytes {
        return Err(InvalidAppend::EventTooLarge {
            index,
            size,
            limit: limits.max_event_bytes,
        });
    }
    Ok(NewEvent {
        id,
        event_type,
        data,
        metadata,
        correlation_id,
        causation_id,
    })
}

fn parse_event_type(
    value: &RawValue,
    field: &str,
    limits: &Limits,
) -> Result<String, InvalidAppend> {
    let invalid = |reason: &str| InvalidAppend::InvalidEventType {
        field: field.to_owned(),
        reason: reason.to_owned(),
    };
    if kind(value) != Kind::String {
        return Err(InvalidAppend::WrongType {
            field: field.to_owned(),
            expected: "a string",
        });
    }
    let event_type: String =
        serde_json::from_str(value.get()).map_err(|_| invalid("it has an invalid \\u escape"))?;
    if event_type.trim().is_empty() {
        return Err(invalid("it is empty"));
    }
    if event_type.len() > limits.max_event_type_bytes {
        return Err(invalid(&format!(
            "longer than {} bytes",
            limits.max_event_type_bytes
        )));
    }
    if let Some(problem) = name_problem(&event_type) {
        return Err(invalid(problem));
    }
    if event_type.starts_with('$') {
        return Err(InvalidAppend::ReservedEventType(event_type));
    }
    Ok(event_type)
}

/// The event's trace ids: its metadata's own string fields, else the request's defaults, which
/// are then written into the metadata (appended as members, the client's text left as sent).
fn with_trace_defaults(
    metadata: Option<Box<RawValue>>,
    trace: TraceDefaults<'_>,
) -> (Option<Box<RawValue>>, Option<String>, Option<String>) {
    let members = metadata
        .as_deref()
        .and_then(|m| Members::of(m).ok().flatten());
    let own = |key: &str| -> Option<Option<String>> {
        let value = members.as_ref()?.last(key)?;
        // Present: the event's own, even when it is not a string (no header then).
        Some(serde_json::from_str::<String>(value.get()).ok())
    };
    let mut added = Vec::new();
    let mut resolve = |key: &'static str, default: Option<&str>| match own(key) {
        Some(own) => own,
        None => {
            let default = default?;
            added.push((key, default.to_owned()));
            Some(default.to_owned())
        }
    };
    let correlation_id = resolve("correlation_id", trace.correlation_id);
    let causation_id = resolve("causation_id", trace.causation_id);
    drop(members);
    if added.is_empty() {
        return (metadata, correlation_id, causation_id);
    }
    // The compacted object ends in `}`; it is `{}` when it has no members.
    let mut text = metadata.map_or_else(|| "{}".to_owned(), |m| m.get().to_owned());
    text.pop();
    for (key, value) in added {
        if text.len() > 1 {
            text.push(',');
        }
        text.push('"');
        text.push_str(key);
        text.push_str("\":");
        // Serialising a str cannot fail.
        text.push_str(&serde_json::to_string(&value).unwrap_or_default());
    }
    text.push('}');
    let metadata = RawValue::from_string(text).ok();
    (metadata, correlation_id, causation_id)
}

/// A request object's `stream_id`: required, a JSON string (what the stream id must be beyond
/// that is [`validate_stream_id`]'s, run with the append).
pub fn parse_stream_id_member(object: &Members<'_>) -> Result<String, InvalidAppend> {
    let stream_id = object
        .last("stream_id")
        .ok_or_else(|| InvalidAppend::MissingField("stream_id".into()))?;
    serde_json::from_str::<String>(stream_id.get()).map_err(|_| InvalidAppend::WrongType {
        field: "stream_id".into(),
        expected: "a string",
    })
}

/// Reads an optional UUID field: absent or null is `None`.
pub fn parse_optional_uuid(
    value: Option<&RawValue>,
    field: &str,
) -> Result<Option<Uuid>, InvalidAppend> {
    match value {
        None => Ok(None),
        Some(raw) if kind(raw) == Kind::Null => Ok(None),
        Some(raw) => parse_uuid(raw, field).map(Some),
    }
}

/// Reads a UUID given as a JSON string; anything else is `invalid_uuid` naming `field`.
pub fn parse_uuid(value: &RawValue, field: &str) -> Result<Uuid, InvalidAppend> {
    serde_json::from_str::<String>(value.get())
        .ok()
        .and_then(|s| Uuid::parse_str(&s).ok())
        .ok_or_else(|| InvalidAppend::InvalidUuid {
            field: field.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: Value) -> Result<Append, InvalidAppend> {
        parse_text(&body.to_string())
    }

    fn parse_text(body: &str) -> Result<Append, InvalidAppend> {
        parse_append_body(
            "Order-1",
            body.as_bytes(),
            &Limits::default(),
            TraceDefaults::default(),
        )
    }

    fn one_event_body(event: &str) -> String {
        format!(r#"{{"expected_version": "any", "events": [{event}]}}"#)
    }

    const ID: &str = "6f1c0a3e-2b1d-4c55-9a53-0d1f7e0f6b11";

    fn event() -> Value {
        json!({"id": Uuid::new_v4().to_string(), "type": "T", "data": {}})
    }

    #[test]
    fn accepts_a_valid_append_and_derives_its_id() {
        let append = parse(json!({"expected_version": 3, "events": [event()]}));
        let append = append.expect("valid");
        assert_eq!(append.expected_version, ExpectedVersion::Exact(3.into()));
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

    #[test]
    fn payloads_are_kept_as_sent_but_for_whitespace_between_tokens() {
        let data = r#"{"r":0.17393510096763853,"big":18446744073709551617,"k":1,"k":2,"a":{"z":1e400,"y":-0.0}}"#;
        let metadata = r#"{"z":1,"correlation_id":"c-1","z":2}"#;
        let body = one_event_body(&format!(
            r#"{{"id": "{ID}", "type": "T", "data": {data}, "metadata": {metadata}}}"#
        ));
        let append = parse_text(&body).expect("valid");
        let event = &append.events[0];
        assert_eq!(event.data.get(), data);
        assert_eq!(event.metadata.as_deref().map(RawValue::get), Some(metadata));
        assert_eq!(event.correlation_id.as_deref(), Some("c-1"));

        let spaced = one_event_body(&format!(
            "{{\"id\": \"{ID}\", \"type\": \"T\", \"data\": {{ \"a b\" : [ 1 , 2.50 ] }} }}"
        ));
        let append = parse_text(&spaced).expect("valid");
        assert_eq!(append.events[0].data.get(), r#"{"a b":[1,2.50]}"#);
    }

    #[test]
    fn request_trace_ids_are_added_to_metadata_without_changing_the_rest() {
        let trace = TraceDefaults {
            correlation_id: Some("corr \"1\""),
            causation_id: Some("cause-1"),
        };
        let parse_with = |event: &str| {
            parse_append_body(
                "Order-1",
                one_event_body(event).as_bytes(),
                &Limits::default(),
                trace,
            )
            .expect("valid")
            .events
            .remove(0)
        };
        let none = parse_with(&format!(r#"{{"id": "{ID}", "type": "T", "data": 1}}"#));
        assert_eq!(
            none.metadata.as_deref().map(RawValue::get),
            Some(r#"{"correlation_id":"corr \"1\"","causation_id":"cause-1"}"#)
        );
        assert_eq!(none.correlation_id.as_deref(), Some("corr \"1\""));
        let own = parse_with(&format!(
            r#"{{"id": "{ID}", "type": "T", "data": 1, "metadata": {{"b":2.10, "correlation_id": 7}}}}"#
        ));
        assert_eq!(
            own.metadata.as_deref().map(RawValue::get),
            Some(r#"{"b":2.10,"correlation_id":7,"causation_id":"cause-1"}"#)
        );
        assert_eq!(own.correlation_id, None, "a non-string id gives no header");
        assert_eq!(own.causation_id.as_deref(), Some("cause-1"));
    }

    #[test]
    fn trace_defaults_count_toward_the_event_size() {
        let limits = Limits {
            max_event_bytes: 40,
            ..Limits::default()
        };
        let body = one_event_body(&format!(r#"{{"id": "{ID}", "type": "T", "data": 1}}"#));
        let trace = TraceDefaults {
            correlation_id: Some(&"c".repeat(64)),
            causation_id: None,
        };
        assert!(parse_append_body("Order-1", body.as_bytes(), &limits, Default::default()).is_ok());
        let err = parse_append_body("Order-1", body.as_bytes(), &limits, trace)
            .expect_err("metadata from the header counts");
        assert_eq!(err.code(), "event_too_large");
    }

    #[test]
    fn names_with_control_or_invisible_characters_are_refused() {
        for bad in [
            "a\u{0}b",
            "a\u{7f}",
            "a\u{85}",
            "a\u{200B}",
            "a\u{2028}",
            "a\u{202E}",
            "a\u{2067}",
            "\u{FEFF}a",
        ] {
            let err = validate_stream_id(bad, &Limits::default()).expect_err(bad);
            assert_eq!(err.code(), "invalid_stream_id", "{bad:?}");
            let event = serde_json::json!({"id": ID, "type": bad, "data": 1}).to_string();
            let err = parse_text(&one_event_body(&event)).expect_err(bad);
            assert_eq!(err.code(), "invalid_event_type", "{bad:?}");
        }
        assert!(validate_stream_id("Order-ü-日本", &Limits::default()).is_ok());
    }

    #[test]
    fn structural_problems_are_typed() {
        let cases = [
            (
                format!(
                    r#"{{"expected_version": "any", "expected_version": 1, "events": [{{"id": "{ID}", "type": "T", "data": 1}}]}}"#
                ),
                "duplicate_field",
            ),
            (
                one_event_body(&format!(
                    r#"{{"id": "{ID}", "type": "T", "type": "U", "data": 1}}"#
                )),
                "duplicate_field",
            ),
            (
                one_event_body(&format!(
                    r#"{{"id": "{ID}", "type": "T", "data": "\ud800"}}"#
                )),
                "unstorable_json",
            ),
            (
                one_event_body(&format!(
                    r#"{{"id": "{ID}", "type": "T", "data": 1, "metadata": {{"a": "\udc00"}}}}"#
                )),
                "unstorable_json",
            ),
            (
                one_event_body(&format!(r#"{{"id": "{ID}", "type": "\ud800", "data": 1}}"#)),
                "invalid_event_type",
            ),
            (
                one_event_body(&format!(
                    r#"{{"id": "{ID}", "type": "T", "data": 1, "metadata": "x"}}"#
                )),
                "invalid_metadata",
            ),
            (
                r#"{"expected_version": "any", "events": [1]}"#.to_owned(),
                "wrong_type",
            ),
            ("[]".to_owned(), "invalid_body"),
            ("{".to_owned(), "malformed_json"),
        ];
        for (body, code) in cases {
            let err = parse_text(&body).expect_err(&body);
            assert_eq!(err.code(), code, "{body}");
        }
        let err = parse_append_body(
            "S",
            &[0xff, b'{', b'}'],
            &Limits::default(),
            Default::default(),
        );
        assert_eq!(err.expect_err("not UTF-8").code(), "malformed_json");
    }

    #[test]
    fn trace_ids_must_be_short_and_printable() {
        assert!(validate_trace_id("x-correlation-id", b"abc-123 ok").is_ok());
        for bad in [&b""[..], b"a\tb", b"\xc3\xa9", &[b'x'; 257][..]] {
            let err = validate_trace_id("x-correlation-id", bad).expect_err("bad");
            assert_eq!(err.code(), "invalid_trace_id");
        }
    }
}

//! Stream lifecycle: metadata (retention and custom data) and deletes. Each change is an event
//! of a reserved type on the stream's metadata stream `$$<stream>`, appended through the same
//! path as any event (ordered, idempotent, on the canonical topic); see docs/design.md.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::event::{Append, ExpectedVersion, NewEvent, StreamVersion, Version};
use crate::raw_json::{compact_owned, kind, Kind, Members};
use crate::validate::{
    parse_expected_version, parse_optional_uuid, validate_stream_id, InvalidAppend, Limits,
};

/// Streams whose id starts with this are metadata streams (ordinary appends cannot write them:
/// every id starting with `$` is reserved).
pub const METADATA_STREAM_PREFIX: &str = "$$";
/// The event type of a metadata change.
pub const METADATA_EVENT_TYPE: &str = "$metadata";
/// The event type of a delete (soft or hard).
pub const STREAM_DELETED_EVENT_TYPE: &str = "$streamDeleted";

/// Namespace of the event ids of lifecycle changes, derived from their append ids.
const LIFECYCLE_EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x3c9e_51d2_7a40_4b6e_9f13_5e2a_c8d0_4f71);

/// The metadata stream of `stream_id`.
pub fn metadata_stream(stream_id: &str) -> String {
    format!("{METADATA_STREAM_PREFIX}{stream_id}")
}

/// A stream's metadata: its retention rules (KurrentDB's `$maxAge`, `$maxCount`, `$tb`) and
/// the user's own `custom` object. Absent means no rule.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamMetadata {
    /// Events older than this many seconds are hidden (1 or more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_s: Option<i64>,
    /// Only the newest this many events are visible (1 or more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<i64>,
    /// Events with a version below this are hidden.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate_before: Option<Version>,
    /// Any JSON object, kept as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub custom: Option<Box<RawValue>>,
}

/// How a stream is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DeleteMode {
    /// Hidden until the next append, which recreates it (versions continue).
    Soft,
    /// A tombstone: every later append and read is refused (`stream_deleted`).
    Hard,
}

impl DeleteMode {
    /// The query-parameter spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteMode::Soft => "soft",
            DeleteMode::Hard => "hard",
        }
    }
}

impl std::str::FromStr for DeleteMode {
    type Err = InvalidAppend;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "soft" => Ok(DeleteMode::Soft),
            "hard" => Ok(DeleteMode::Hard),
            other => Err(InvalidAppend::InvalidDeleteMode(format!("{other:?}"))),
        }
    }
}

/// What a lifecycle append changes.
#[derive(Debug, Clone)]
pub enum LifecycleChange {
    /// Replaces the stream's metadata.
    SetMetadata(StreamMetadata),
    /// Deletes the stream; the condition is on the stream itself.
    Delete {
        /// Soft or hard.
        mode: DeleteMode,
        /// The stream must be at this version (`any`: no check).
        expected_version: ExpectedVersion,
    },
}

/// The lifecycle part of an [`Append`] to a metadata stream.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// The stream the change is about (the append's own stream is `$$<subject>`).
    pub subject: String,
    /// The change.
    pub change: LifecycleChange,
}

/// The data of a `$streamDeleted` event.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StreamDeleted<'a> {
    stream_id: &'a str,
    mode: DeleteMode,
    expected_version: ExpectedVersion,
}

/// The append that makes `change` to `subject`: one event of a reserved type on `$$<subject>`,
/// under `expected_metadata_version` (the metadata stream's version). Its event id is derived
/// from the append id and the change, so a redelivered request is the same append and the same
/// append id sent with another change is `append_id_reused`.
pub fn lifecycle_append(
    subject: &str,
    change: LifecycleChange,
    expected_metadata_version: ExpectedVersion,
    append_id: Uuid,
    limits: &Limits,
) -> Result<Append, InvalidAppend> {
    validate_stream_id(subject, limits)?;
    let (event_type, data) = match &change {
        LifecycleChange::SetMetadata(metadata) => (METADATA_EVENT_TYPE, to_raw(metadata)?),
        LifecycleChange::Delete {
            mode,
            expected_version,
        } => (
            STREAM_DELETED_EVENT_TYPE,
            to_raw(&StreamDeleted {
                stream_id: subject,
                mode: *mode,
                expected_version: *expected_version,
            })?,
        ),
    };
    let mut name = Vec::with_capacity(16 + event_type.len() + 1 + data.get().len());
    name.extend_from_slice(append_id.as_bytes());
    name.extend_from_slice(event_type.as_bytes());
    name.push(0);
    name.extend_from_slice(data.get().as_bytes());
    let event = NewEvent {
        id: Uuid::new_v5(&LIFECYCLE_EVENT_NAMESPACE, &name),
        event_type: event_type.to_owned(),
        data,
        metadata: None,
        correlation_id: None,
        causation_id: None,
    };
    Ok(Append {
        stream_id: metadata_stream(subject),
        expected_version: expected_metadata_version,
        append_id,
        events: vec![event],
        lifecycle: Some(Box::new(Lifecycle {
            subject: subject.to_owned(),
            change,
        })),
    })
}

fn to_raw<T: Serialize>(value: &T) -> Result<Box<RawValue>, InvalidAppend> {
    serde_json::to_string(value)
        .ok()
        .and_then(|text| RawValue::from_string(text).ok())
        .ok_or_else(|| InvalidAppend::MalformedJson("cannot encode the change".into()))
}

/// The fields of a metadata change (the body of `PUT /streams/{id}/metadata`, or the
/// `metadata` object of a Kafka request).
pub const METADATA_FIELDS: [&str; 4] = ["max_age_s", "max_count", "truncate_before", "custom"];

/// Parses the body of `PUT /streams/{id}/metadata`: the metadata and the condition on the
/// metadata stream (`expected_metadata_version`, default `any`). Unknown or duplicate fields,
/// wrong types and out-of-range numbers are refused.
pub fn parse_metadata_body(
    body: &Members<'_>,
    allowed_extra: &[&str],
) -> Result<(StreamMetadata, ExpectedVersion), InvalidAppend> {
    if let Some(name) = body.first_duplicate() {
        return Err(InvalidAppend::DuplicateField(name.to_owned()));
    }
    for (key, _) in &body.0 {
        let known = METADATA_FIELDS.contains(&key.as_ref()) || key == "expected_metadata_version";
        if !known && !allowed_extra.contains(&key.as_ref()) {
            return Err(InvalidAppend::UnknownField(key.to_string()));
        }
    }
    let expected = match body.last("expected_metadata_version") {
        None => ExpectedVersion::Any,
        Some(raw) if kind(raw) == Kind::Null => ExpectedVersion::Any,
        Some(raw) => {
            let value: serde_json::Value = serde_json::from_str(raw.get())
                .map_err(|_| InvalidAppend::InvalidExpectedVersion(raw.get().to_owned()))?;
            parse_expected_version(&value)?
        }
    };
    let metadata =
        StreamMetadata {
            max_age_s: positive(body, "max_age_s", 1)?,
            max_count: positive(body, "max_count", 1)?,
            truncate_before: positive(body, "truncate_before", 0)?
                .map(Version::try_from)
                .transpose()
                .map_err(|_| wrong_type("truncate_before", 0))?,
            custom: match body.last("custom") {
                None => None,
                Some(raw) if kind(raw) == Kind::Null => None,
                Some(raw) if kind(raw) == Kind::Object => Some(compact_owned(raw).map_err(
                    |e| InvalidAppend::UnstorableJson {
                        field: "custom".into(),
                        reason: e.to_string(),
                    },
                )?),
                Some(_) => {
                    return Err(InvalidAppend::WrongType {
                        field: "custom".into(),
                        expected: "a JSON object or null",
                    })
                }
            },
        };
    Ok((metadata, expected))
}

/// The fields of the `delete` object of a Kafka request.
pub const DELETE_FIELDS: [&str; 2] = ["mode", "expected_version"];

/// Parses the `delete` object of a Kafka request: `mode` (`"soft"` by default, or `"hard"`)
/// and `expected_version`, the stream's version (`"any"` by default), as the query parameters
/// of `DELETE /streams/{id}`.
pub fn parse_delete_object(
    body: &Members<'_>,
) -> Result<(DeleteMode, ExpectedVersion), InvalidAppend> {
    if let Some(name) = body.first_duplicate() {
        return Err(InvalidAppend::DuplicateField(name.to_owned()));
    }
    if let Some((key, _)) = body
        .0
        .iter()
        .find(|(k, _)| !DELETE_FIELDS.contains(&k.as_ref()))
    {
        return Err(InvalidAppend::UnknownField(format!("delete.{key}")));
    }
    let mode = match body.last("mode") {
        None => DeleteMode::Soft,
        Some(raw) if kind(raw) == Kind::Null => DeleteMode::Soft,
        Some(raw) => match serde_json::from_str::<String>(raw.get()) {
            Ok(text) => text.parse()?,
            Err(_) => return Err(InvalidAppend::InvalidDeleteMode(raw.get().to_owned())),
        },
    };
    let expected_version = match body.last("expected_version") {
        None => ExpectedVersion::Any,
        Some(raw) if kind(raw) == Kind::Null => ExpectedVersion::Any,
        Some(raw) => {
            let value: serde_json::Value = serde_json::from_str(raw.get())
                .map_err(|_| InvalidAppend::InvalidExpectedVersion(raw.get().to_owned()))?;
            parse_expected_version(&value)?
        }
    };
    Ok((mode, expected_version))
}

/// The lifecycle forms of a Kafka append request about `stream_id`: `"metadata": {...}` (the
/// body of `PUT /streams/{id}/metadata`) or `"delete": {...}` ([`parse_delete_object`]),
/// with an optional `append_id` (else `default_append_id()`). `None` when the request has
/// neither (an ordinary append). Fields other than these and `allowed_extra` are refused, so
/// a request cannot mix events with a change.
pub fn parse_lifecycle_request(
    stream_id: &str,
    body: &Members<'_>,
    allowed_extra: &[&str],
    default_append_id: impl FnOnce() -> Uuid,
    limits: &Limits,
) -> Result<Option<Append>, InvalidAppend> {
    let (form, raw) = match (body.last("metadata"), body.last("delete")) {
        (None, None) => return Ok(None),
        (Some(raw), _) => ("metadata", raw),
        (None, Some(raw)) => ("delete", raw),
    };
    if let Some(name) = body.first_duplicate() {
        return Err(InvalidAppend::DuplicateField(name.to_owned()));
    }
    for (key, _) in &body.0 {
        let known = key == form || key == "append_id";
        if !known && !allowed_extra.contains(&key.as_ref()) {
            return Err(InvalidAppend::UnknownField(key.to_string()));
        }
    }
    let members = Members::of(raw)
        .ok()
        .flatten()
        .ok_or_else(|| InvalidAppend::WrongType {
            field: form.into(),
            expected: "a JSON object",
        })?;
    let (change, expected_metadata_version) = if form == "metadata" {
        let (metadata, expected) = parse_metadata_body(&members, &[])?;
        (LifecycleChange::SetMetadata(metadata), expected)
    } else {
        let (mode, expected_version) = parse_delete_object(&members)?;
        let change = LifecycleChange::Delete {
            mode,
            expected_version,
        };
        (change, ExpectedVersion::Any)
    };
    let append_id =
        parse_optional_uuid(body.last("append_id"), "append_id")?.unwrap_or_else(default_append_id);
    lifecycle_append(
        stream_id,
        change,
        expected_metadata_version,
        append_id,
        limits,
    )
    .map(Some)
}

fn wrong_type(field: &str, min: i64) -> InvalidAppend {
    InvalidAppend::WrongType {
        field: field.into(),
        expected: if min == 0 {
            "an integer of 0 or more, or null"
        } else {
            "an integer of 1 or more, or null"
        },
    }
}

/// An optional integer field of at least `min`.
fn positive(body: &Members<'_>, field: &str, min: i64) -> Result<Option<i64>, InvalidAppend> {
    match body.last(field) {
        None => Ok(None),
        Some(raw) if kind(raw) == Kind::Null => Ok(None),
        Some(raw) => match serde_json::from_str::<i64>(raw.get()) {
            Ok(n) if n >= min => Ok(Some(n)),
            _ => Err(wrong_type(field, min)),
        },
    }
}

/// The body of `PUT /streams/{stream_id}/metadata`, as a client sends it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PutMetadataRequest {
    /// The version of the metadata this change replaces (absent: `any`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_metadata_version: Option<ExpectedVersion>,
    /// The idempotency key (absent: the server picks one, and a retry is a new change).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub append_id: Option<Uuid>,
    /// The new metadata (fields left out are unset).
    #[serde(flatten)]
    pub metadata: StreamMetadata,
}

/// The answer of `GET` and `PUT /streams/{stream_id}/metadata`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "MetadataResponseFields")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamMetadataResponse {
    /// The stream the metadata is about.
    pub stream_id: String,
    /// The version of the metadata (of its metadata stream `$$<stream>`); null when it has
    /// never been set.
    pub metadata_version: StreamVersion,
    /// The metadata.
    #[serde(flatten)]
    pub metadata: StreamMetadata,
}

/// [`StreamMetadataResponse`] as read: serde cannot read a raw value (`custom`) inside a
/// flattened struct, so the fields are spelled out here.
#[derive(Deserialize)]
struct MetadataResponseFields {
    stream_id: String,
    metadata_version: StreamVersion,
    max_age_s: Option<i64>,
    max_count: Option<i64>,
    truncate_before: Option<Version>,
    custom: Option<Box<RawValue>>,
}

impl From<MetadataResponseFields> for StreamMetadataResponse {
    fn from(fields: MetadataResponseFields) -> Self {
        StreamMetadataResponse {
            stream_id: fields.stream_id,
            metadata_version: fields.metadata_version,
            metadata: StreamMetadata {
                max_age_s: fields.max_age_s,
                max_count: fields.max_count,
                truncate_before: fields.truncate_before,
                custom: fields.custom,
            },
        }
    }
}

/// The answer of `DELETE /streams/{stream_id}` (200).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeleteStreamResponse {
    /// The stream deleted.
    pub stream_id: String,
    /// Soft or hard.
    pub mode: DeleteMode,
    /// The version of the `$streamDeleted` event in `$$<stream>`.
    pub metadata_version: Version,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(StreamMetadata, ExpectedVersion), InvalidAppend> {
        let members = Members::parse(text)
            .map_err(|e| InvalidAppend::MalformedJson(e.to_string()))?
            .ok_or(InvalidAppend::NotAnObject)?;
        parse_metadata_body(&members, &[])
    }

    #[test]
    fn parses_every_field() {
        let (metadata, expected) = parse(
            r#"{"expected_metadata_version":2,"max_age_s":60,"max_count":3,"truncate_before":0,"custom":{"a": 1}}"#,
        )
        .expect("valid");
        assert_eq!(expected, ExpectedVersion::Exact(2.into()));
        assert_eq!(metadata.max_age_s, Some(60));
        assert_eq!(metadata.max_count, Some(3));
        assert_eq!(metadata.truncate_before, Some(Version::FIRST));
        assert_eq!(
            metadata.custom.map(|c| c.get().to_owned()),
            Some(r#"{"a":1}"#.into())
        );
    }

    #[test]
    fn refuses_wrong_types_negatives_and_unknown_fields() {
        for (body, code) in [
            (r#"{"max_count":"ten"}"#, "wrong_type"),
            (r#"{"max_count":0}"#, "wrong_type"),
            (r#"{"max_age_s":-5}"#, "wrong_type"),
            (r#"{"max_age_s":1.5}"#, "wrong_type"),
            (r#"{"truncate_before":-1}"#, "wrong_type"),
            (r#"{"custom":[1]}"#, "wrong_type"),
            (r#"{"maxCount":3}"#, "unknown_field"),
            (r#"{"max_count":3,"max_count":4}"#, "duplicate_field"),
            (
                r#"{"expected_metadata_version":-1}"#,
                "invalid_expected_version",
            ),
        ] {
            assert_eq!(
                parse(body).map(|_| ()).map_err(|e| e.code()),
                Err(code),
                "{body}"
            );
        }
    }

    #[test]
    fn a_lifecycle_append_goes_to_the_metadata_stream_with_a_derived_event_id() {
        let id = Uuid::from_u128(7);
        let change = || LifecycleChange::Delete {
            mode: DeleteMode::Hard,
            expected_version: ExpectedVersion::Exact(3.into()),
        };
        let limits = Limits::default();
        let a = lifecycle_append("Order-1", change(), ExpectedVersion::Any, id, &limits)
            .expect("valid");
        let b = lifecycle_append("Order-1", change(), ExpectedVersion::Any, id, &limits)
            .expect("valid");
        assert_eq!(a.stream_id, "$$Order-1");
        assert_eq!(a.events[0].event_type, STREAM_DELETED_EVENT_TYPE);
        assert_eq!(a.events[0].id, b.events[0].id);
        assert_eq!(
            a.events[0].data.get(),
            r#"{"stream_id":"Order-1","mode":"hard","expected_version":3}"#
        );
        assert!(lifecycle_append("$$x", change(), ExpectedVersion::Any, id, &limits).is_err());
        let soft = LifecycleChange::Delete {
            mode: DeleteMode::Soft,
            expected_version: ExpectedVersion::Exact(3.into()),
        };
        let other =
            lifecycle_append("Order-1", soft, ExpectedVersion::Any, id, &limits).expect("valid");
        assert_ne!(
            a.fingerprint(),
            other.fingerprint(),
            "the same append id with another change is not a retry"
        );
    }

    fn kafka(text: &str) -> Result<Option<Append>, InvalidAppend> {
        let members = Members::parse(text)
            .map_err(|e| InvalidAppend::MalformedJson(e.to_string()))?
            .ok_or(InvalidAppend::NotAnObject)?;
        let id = Uuid::from_u128(9);
        parse_lifecycle_request(
            "Order-1",
            &members,
            &["stream_id"],
            || id,
            &Limits::default(),
        )
    }

    #[test]
    fn a_metadata_response_reads_back() {
        let text =
            r#"{"stream_id":"Order-1","metadata_version":null,"max_count":2,"custom":{"a":[1]}}"#;
        let answer: StreamMetadataResponse = serde_json::from_str(text).expect("readable");
        assert_eq!(answer.metadata_version, StreamVersion::NoStream);
        assert_eq!(answer.metadata.max_count, Some(2));
        assert_eq!(serde_json::to_string(&answer).expect("writable"), text);
    }

    #[test]
    fn parses_the_kafka_forms() {
        let append = kafka(r#"{"stream_id":"Order-1","metadata":{"max_count":2,"expected_metadata_version":"no_stream"}}"#)
            .expect("valid")
            .expect("a change");
        assert_eq!(append.stream_id, "$$Order-1");
        assert_eq!(append.expected_version, ExpectedVersion::NoStream);
        assert_eq!(append.append_id, Uuid::from_u128(9));
        let append = kafka(r#"{"stream_id":"Order-1","append_id":"00000000-0000-0000-0000-000000000001","delete":{"mode":"hard","expected_version":4}}"#)
            .expect("valid")
            .expect("a change");
        assert_eq!(append.append_id, Uuid::from_u128(1));
        assert!(matches!(
            append.lifecycle.map(|l| l.change),
            Some(LifecycleChange::Delete {
                mode: DeleteMode::Hard,
                expected_version: ExpectedVersion::Exact(v)
            }) if v.get() == 4
        ));
        assert!(kafka(r#"{"stream_id":"Order-1","events":[]}"#)
            .expect("not a change")
            .is_none());
    }

    #[test]
    fn refuses_bad_kafka_forms() {
        for (body, code) in [
            (r#"{"metadata":{"max_count":"ten"}}"#, "wrong_type"),
            (r#"{"metadata":[1]}"#, "wrong_type"),
            (r#"{"delete":{"mode":"gone"}}"#, "invalid_delete_mode"),
            (r#"{"delete":{"mode":1}}"#, "invalid_delete_mode"),
            (
                r#"{"delete":{"expected_version":-2}}"#,
                "invalid_expected_version",
            ),
            (r#"{"delete":{"force":true}}"#, "unknown_field"),
            (r#"{"delete":{},"metadata":{}}"#, "unknown_field"),
            (r#"{"delete":{},"events":[]}"#, "unknown_field"),
            (r#"{"delete":{},"append_id":"x"}"#, "invalid_uuid"),
        ] {
            assert_eq!(
                kafka(body).map(|_| ()).map_err(|e| e.code()),
                Err(code),
                "{body}"
            );
        }
    }
}

//! The HTTP API's request and response bodies: one set of types for the server (`ingest`), the
//! Rust client (`esk-client`), the CLI and the OpenAPI document (derived from these types with
//! the `openapi` feature).
//!
//! Payloads are carried as the text that was sent ([`RawValue`]), never through
//! `serde_json::Value`, which would alter number digits, key order and duplicate keys.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::event::{ExpectedVersion, StreamVersion, Version};
use crate::wire::CanonicalEvent;

/// The body of `POST /streams/{stream_id}/events`. The server validates the body as text
/// (`crate::validate`), refusing what this type cannot express (unknown or duplicate fields);
/// a request serialized from this type always passes that parsing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppendRequest {
    /// The optimistic-concurrency condition.
    pub expected_version: ExpectedVersion,
    /// Idempotency key; derived from the stream and event ids when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append_id: Option<Uuid>,
    /// The events, in order; at least one.
    pub events: Vec<EventData>,
}

/// One event of an [`AppendRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventData {
    /// Globally unique event id.
    pub id: Uuid,
    /// Event type, non-empty.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The payload: any JSON, stored exactly as sent (less whitespace between tokens).
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub data: Box<RawValue>,
    /// A JSON object of metadata (`correlation_id` and `causation_id` live here), or absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub metadata: Option<Box<RawValue>>,
}

/// The answer to an accepted append (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppendResponse {
    /// The stream appended to.
    pub stream_id: String,
    /// The version of the append's first event.
    pub first_version: Version,
    /// The version of its last event (the stream's version now).
    pub last_version: Version,
    /// The append's idempotency key (given or derived).
    pub append_id: Uuid,
}

/// The body of `POST /appends`: events for several streams, written all or nothing. Validated
/// as text like [`AppendRequest`] (`crate::group`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MultiAppendRequest {
    /// Idempotency key of the whole append; derived from every part's stream and event ids
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append_id: Option<Uuid>,
    /// One part per stream, each stream once; at least one.
    pub appends: Vec<StreamAppend>,
}

/// One stream's part of a [`MultiAppendRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamAppend {
    /// The stream.
    pub stream_id: String,
    /// The optimistic-concurrency condition on this stream.
    pub expected_version: ExpectedVersion,
    /// Its events, in order; at least one.
    pub events: Vec<EventData>,
}

/// The answer to an accepted multi-stream append (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MultiAppendResponse {
    /// The append's idempotency key (given or derived).
    pub append_id: Uuid,
    /// One result per part, in request order.
    pub results: Vec<StreamAppendResult>,
}

/// Where one stream's part of a multi-stream append was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamAppendResult {
    /// The stream.
    pub stream_id: String,
    /// The version of the part's first event.
    pub first_version: Version,
    /// The version of its last event (the stream's version now).
    pub last_version: Version,
}

/// A stream that kept a multi-stream append from being written (in the error's `streams`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamConflict {
    /// The stream.
    pub stream_id: String,
    /// What the append expected of it.
    pub expected_version: ExpectedVersion,
    /// Where it was (null: no stream).
    pub actual_version: StreamVersion,
}

/// Which way a stream page reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Direction {
    /// From old to new versions.
    #[default]
    Forward,
    /// From new to old versions.
    Backward,
}

impl Direction {
    /// The query-parameter spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Backward => "backward",
        }
    }
}

/// A page of one stream (`GET /streams/{stream_id}/events`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamPage {
    /// The stream read.
    pub stream_id: String,
    /// Which way it was read.
    pub direction: Direction,
    /// The events, in the page's order.
    pub events: Vec<CanonicalEvent>,
    /// The `from` of the next page; null at the end.
    pub next: Option<i64>,
}

/// A page of `$all` or of a category, in global-position order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PositionedPage {
    /// `$all` or the category read.
    pub source: String,
    /// The events, by global position.
    pub events: Vec<CanonicalEvent>,
    /// The `from` (a global position) of the next page; null at the end.
    pub next: Option<i64>,
}

/// The answer of `GET /wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WaitResponse {
    /// True once the version or position is indexed; false when the timeout passed first.
    pub reached: bool,
}

/// The body of `PUT /streams/{stream_id}/snapshot`. The server validates the body as text
/// (`crate::snapshot`), refusing unknown or duplicate fields and data larger than an event's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PutSnapshotRequest {
    /// The version of the stream's last event folded into `data`; the stream must have it.
    pub version: Version,
    /// The state: any JSON, stored exactly as sent (less whitespace between tokens).
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub data: Box<RawValue>,
}

/// A stream's snapshot: its state as of `version` (`GET /streams/{stream_id}/snapshot`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Snapshot {
    /// The stream it folds.
    pub stream_id: String,
    /// The version of the last event folded into it: events after it are `version + 1` on.
    pub version: Version,
    /// The state, as it was sent.
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub data: Box<RawValue>,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
}

/// The answer of `PUT /streams/{stream_id}/snapshot` (200): whether the snapshot sent was
/// stored, and the stream's snapshot now (a newer or equal one is never replaced by an older).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PutSnapshotResponse {
    /// True: the snapshot sent is the stream's snapshot now. False: the stream already had one
    /// at this version or a newer one, which was kept.
    pub stored: bool,
    /// The version of the stream's snapshot after this request.
    pub version: Version,
    /// The stream's snapshot after this request: when it is the one sent, or when the caller
    /// may also read the stream (a token with only `append:` learns the kept one's version,
    /// never its data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Snapshot>,
}

/// Whether a process can do its job (`GET /health`, on every esk process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum HealthStatus {
    /// No problem reported (200).
    Ok,
    /// At least one problem (503).
    Unhealthy,
}

/// The body of `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthReport {
    /// Healthy or not.
    pub status: HealthStatus,
    /// What keeps the process from doing its job, one line each (empty when healthy).
    pub problems: Vec<String>,
    /// The role of a process elected among several (the indexer: `leader` or `standby`; a
    /// standby is healthy). Absent for processes without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// Whether a process serves requests (`GET /ready`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Readiness {
    /// Started and healthy (200).
    Ready,
    /// Starting, stopping or unhealthy (503).
    NotReady,
}

/// The body of `GET /ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReadyReport {
    /// Ready or not.
    pub status: Readiness,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{parse_append_body, Limits, TraceDefaults};

    #[test]
    fn a_request_built_from_the_type_passes_the_servers_parsing() {
        let request = AppendRequest {
            expected_version: ExpectedVersion::NoStream,
            append_id: None,
            events: vec![EventData {
                id: Uuid::new_v4(),
                event_type: "Opened".into(),
                data: RawValue::from_string(r#"{"n":1.50,"n":2}"#.into()).expect("raw json"),
                metadata: Some(
                    RawValue::from_string(r#"{"correlation_id":"c-1"}"#.into()).expect("raw json"),
                ),
            }],
        };
        let body = serde_json::to_vec(&request).expect("serializes");
        let append = parse_append_body(
            "Order-1",
            &body,
            &Limits::default(),
            TraceDefaults::default(),
        )
        .expect("valid");
        assert_eq!(append.expected_version, ExpectedVersion::NoStream);
        assert_eq!(append.events[0].data.get(), r#"{"n":1.50,"n":2}"#);
        assert_eq!(append.events[0].correlation_id.as_deref(), Some("c-1"));
    }
}

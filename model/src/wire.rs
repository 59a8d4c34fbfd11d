//! Record formats on the Kafka topics. Every format is JSON with a schema version, so producers
//! in any language can speak it; headers repeat the routing fields for tools that read only them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::event::StreamVersion;

/// Header names shared by `ingest-log` and `events` records.
pub mod header {
    /// Event id (UUID text).
    pub const EVENT_ID: &str = "event_id";
    /// Event type.
    pub const EVENT_TYPE: &str = "event_type";
    /// Stream version of the event (decimal text).
    pub const STREAM_VERSION: &str = "stream_version";
    /// Append id (UUID text), on `ingest-log` only.
    pub const APPEND_ID: &str = "append_id";
    /// Attempt id (UUID text), on `ingest-log` only.
    pub const ATTEMPT_ID: &str = "attempt_id";
    /// Global position (decimal text), on `events` only.
    pub const GLOBAL_POSITION: &str = "global_position";
    /// Correlation id from the event's metadata.
    pub const CORRELATION_ID: &str = "correlation_id";
    /// Causation id from the event's metadata.
    pub const CAUSATION_ID: &str = "causation_id";
    /// Number of events in an `ingest-log` record of format 2 (decimal text).
    pub const EVENT_COUNT: &str = "event_count";
    /// The multi-stream append a record belongs to (UUID text): on every `ingest-log` record
    /// of a multi-stream append's attempt, and on every `events` record of one. Absent for
    /// single-stream appends.
    pub const GROUP_APPEND_ID: &str = "group_append_id";
    /// How many `ingest-log` records (over every partition) the attempt of a multi-stream
    /// append produced (decimal text). The group is keyed by (`group_append_id`,
    /// `attempt_id`): the indexer commits it only once it holds all of them.
    pub const GROUP_RECORDS: &str = "group_records";
    /// The first global position of a multi-stream append's events (decimal text), on
    /// `events` only. Its events have the contiguous positions first..=last.
    pub const GROUP_FIRST_POSITION: &str = "group_first_position";
    /// The last global position of a multi-stream append's events (decimal text), on
    /// `events` only.
    pub const GROUP_LAST_POSITION: &str = "group_last_position";
    /// How many events a multi-stream append wrote (decimal text), on `events` only.
    pub const GROUP_EVENTS: &str = "group_events";
}

/// Current version of the append request and result formats.
pub const APPEND_SCHEMA_VERSION: u32 = 1;

/// An event on `ingest-log`: produced by ingest inside its attempt, before the commit is known.
/// Alone, it is a format-1 record's value; the indexer reads both formats through
/// [`crate::ingest_log::decode`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IngestLogEvent {
    /// Event id.
    pub event_id: Uuid,
    /// Stream id (also the record key).
    pub stream_id: String,
    /// Stream version assigned by ingest.
    pub version: i64,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Payload, kept as raw JSON text end to end.
    pub data: Box<RawValue>,
    /// Metadata object, raw JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Box<RawValue>>,
    /// The append this event belongs to.
    pub append_id: Uuid,
    /// The ingest attempt (transaction) that produced it.
    pub attempt_id: Uuid,
    /// When ingest accepted it.
    pub created_at: DateTime<Utc>,
}

/// An event on the canonical `events` topic (committed, with its global position).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CanonicalEvent {
    /// Event id.
    pub event_id: Uuid,
    /// Stream id (also the record key).
    pub stream_id: String,
    /// Stream version.
    pub version: i64,
    /// Position in the store's total order.
    pub global_position: i64,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Payload.
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub data: Box<RawValue>,
    /// Metadata object, or null.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub metadata: Option<Box<RawValue>>,
    /// When ingest accepted it.
    pub created_at: DateTime<Utc>,
}

/// The outcome of one append request from the `appends` topic, on `append-results`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AppendResult {
    /// Format version ([`APPEND_SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// The request's `request_id`, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Where the request came from, for callers that gave no request id.
    pub request_partition: i32,
    /// Offset of the request record.
    pub request_offset: i64,
    /// Stream id, when the request had a readable one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<String>,
    /// Append id, when the request was valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append_id: Option<Uuid>,
    /// `accepted` or `rejected`.
    pub outcome: Outcome,
    /// First version written, when accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_version: Option<i64>,
    /// Last version written, when accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_version: Option<i64>,
    /// For an accepted multi-stream append: one result per part, in request order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<crate::api::StreamAppendResult>>,
    /// Why, when rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// Accepted or rejected.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Written.
    Accepted,
    /// Not written, for the reason in `error`.
    Rejected,
}

/// The error object of HTTP bodies and append results.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// Stable snake_case code.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// The stream's version, for `wrong_expected_version` (null: no stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_version: Option<StreamVersion>,
    /// For a multi-stream append: the streams that kept it from being written, with what was
    /// expected of each and where each was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams: Option<Vec<crate::api::StreamConflict>>,
}

/// The envelope every HTTP error body has: `{"error": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorBody,
}

/// The borrowing twin of [`IngestLogEvent`], for encoding without copying payloads. The two
/// serialize to the same JSON.
#[derive(Debug, Serialize)]
pub struct IngestLogEventRef<'a> {
    /// Event id.
    pub event_id: Uuid,
    /// Stream id.
    pub stream_id: &'a str,
    /// Stream version assigned by ingest.
    pub version: i64,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: &'a str,
    /// Payload.
    pub data: &'a RawValue,
    /// Metadata object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<&'a RawValue>,
    /// The append this event belongs to.
    pub append_id: Uuid,
    /// The ingest attempt that produced it.
    pub attempt_id: Uuid,
    /// When ingest accepted it.
    pub created_at: DateTime<Utc>,
}

impl CanonicalEvent {
    /// Roughly what the event takes in memory and on the wire: its payloads and names (for
    /// byte budgets, not exact accounting).
    pub fn size_bytes(&self) -> usize {
        self.data.get().len()
            + self.metadata.as_ref().map_or(0, |m| m.get().len())
            + self.stream_id.len()
            + self.event_type.len()
            + 128
    }

    /// The `correlation_id` and `causation_id` strings of the event's metadata.
    pub fn trace_ids(&self) -> (Option<String>, Option<String>) {
        let Some(metadata) = &self.metadata else {
            return (None, None);
        };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(metadata.get()) else {
            return (None, None);
        };
        let get = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        (get("correlation_id"), get("causation_id"))
    }
}

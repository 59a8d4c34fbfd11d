//! The event model: expected versions, events, and the identities derived from them.

use uuid::Uuid;

/// Stream version stored for "no stream" (a stream's version is that of its last event).
pub const NO_STREAM: i64 = -1;

/// Namespace for identities derived from event ids (UUIDv5).
const DERIVED_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_4a3e_9c2d_4e8f_a1b2_c3d4_e5f6_0718);

/// The optimistic-concurrency condition of an append (the KurrentDB set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist.
    NoStream,
    /// The stream must exist.
    StreamExists,
    /// The stream's current version (that of its last event) must be exactly this.
    Exact(i64),
}

impl ExpectedVersion {
    /// Whether a stream currently at `current` (or [`NO_STREAM`]) satisfies this condition.
    pub fn admits(self, current: i64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == NO_STREAM,
            ExpectedVersion::StreamExists => current != NO_STREAM,
            ExpectedVersion::Exact(n) => current == n,
        }
    }

    /// The JSON form used on the wire: a word or a number.
    pub fn to_json(self) -> serde_json::Value {
        match self {
            ExpectedVersion::Any => "any".into(),
            ExpectedVersion::NoStream => "no_stream".into(),
            ExpectedVersion::StreamExists => "stream_exists".into(),
            ExpectedVersion::Exact(n) => n.into(),
        }
    }
}

/// One event of an append, validated.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Globally unique event id.
    pub id: Uuid,
    /// Event type, non-empty.
    pub event_type: String,
    /// JSON payload: the text the client sent, less whitespace between tokens.
    pub data: Box<serde_json::value::RawValue>,
    /// Optional JSON object of metadata, kept as text like `data` (correlation and causation
    /// ids live here).
    pub metadata: Option<Box<serde_json::value::RawValue>>,
    /// The metadata's `correlation_id`, when it is a string.
    pub correlation_id: Option<String>,
    /// The metadata's `causation_id`, when it is a string.
    pub causation_id: Option<String>,
}

/// A validated append: what ingest turns into one ledger row.
#[derive(Debug, Clone)]
pub struct Append {
    /// Target stream.
    pub stream_id: String,
    /// Concurrency condition.
    pub expected_version: ExpectedVersion,
    /// Idempotency key (given by the client or derived from the event ids).
    pub append_id: Uuid,
    /// Events in order; never empty.
    pub events: Vec<NewEvent>,
}

impl Append {
    /// Identifies the content of the append, to tell a retry from a reuse of its id.
    pub fn fingerprint(&self) -> Uuid {
        fingerprint(&self.stream_id, self.events.iter().map(|e| e.id))
    }
}

/// The append id used when the client gives none: UUIDv5 over the stream and event ids, so
/// that re-sending the same events is idempotent.
pub fn derived_append_id(stream_id: &str, event_ids: impl IntoIterator<Item = Uuid>) -> Uuid {
    fingerprint(stream_id, event_ids)
}

fn fingerprint(stream_id: &str, event_ids: impl IntoIterator<Item = Uuid>) -> Uuid {
    let mut bytes = Vec::with_capacity(stream_id.len() + 1 + 16 * 8);
    bytes.extend_from_slice(stream_id.as_bytes());
    bytes.push(0);
    for id in event_ids {
        bytes.extend_from_slice(id.as_bytes());
    }
    Uuid::new_v5(&DERIVED_ID_NAMESPACE, &bytes)
}

/// The category of a stream: its id up to the first `-` (the whole id when it has none).
pub fn category_of(stream_id: &str) -> &str {
    stream_id.split_once('-').map_or(stream_id, |(c, _)| c)
}

/// A 64-bit key for Postgres advisory locks on an attempt id.
pub fn advisory_key(id: Uuid) -> i64 {
    let (hi, _) = id.as_u64_pair();
    hi as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn category_is_prefix_before_first_dash() {
        assert_eq!(category_of("Order-1-2"), "Order");
        assert_eq!(category_of("Order"), "Order");
        assert_eq!(category_of("-x"), "");
    }

    #[test]
    fn expected_version_admits() {
        assert!(ExpectedVersion::Any.admits(NO_STREAM));
        assert!(ExpectedVersion::NoStream.admits(NO_STREAM));
        assert!(!ExpectedVersion::NoStream.admits(0));
        assert!(ExpectedVersion::StreamExists.admits(0));
        assert!(!ExpectedVersion::StreamExists.admits(NO_STREAM));
        assert!(ExpectedVersion::Exact(3).admits(3));
        assert!(!ExpectedVersion::Exact(3).admits(4));
    }

    #[test]
    fn derived_append_id_depends_on_stream_and_ids() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        assert_eq!(
            derived_append_id("s", [a, b]),
            derived_append_id("s", [a, b])
        );
        assert_ne!(
            derived_append_id("s", [a, b]),
            derived_append_id("s", [b, a])
        );
        assert_ne!(derived_append_id("s", [a]), derived_append_id("t", [a]));
    }
}

//! The event a projection sees, from the canonical topic or from the events table.

use esk_model::wire::CanonicalEvent;

/// A committed event, with where it came from when it came from Kafka.
#[derive(Debug, Clone)]
pub(crate) struct ProjectedEvent {
    pub(crate) event: CanonicalEvent,
    /// (partition, offset) on the canonical topic; None when replayed from Postgres.
    pub(crate) source: Option<(i32, i64)>,
}

/// Columns of a replayed event (read by [`esk_runtime::db::canonical_event_from_row`]); `with_data` false skips the payloads for handlers
/// that do not read them (a large part of a replay's cost). Same order as
/// [`esk_runtime::db::EVENT_COLUMNS`], which the row is read by.
pub(crate) fn event_columns(with_data: bool) -> &'static str {
    if with_data {
        esk_runtime::db::EVENT_COLUMNS
    } else {
        "global_position, event_id, stream_id, event_type, NULL::text AS data, NULL::text AS metadata, version, created_at"
    }
}

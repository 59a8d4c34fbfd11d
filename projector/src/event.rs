//! The event a projection sees, from the canonical topic or from the events table, and the
//! filters that choose which events a projection gets.

use esk_model::event::category_of;
use esk_model::wire::CanonicalEvent;

use crate::config::ProjectionSpec;

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

/// Which events a projection takes.
#[derive(Debug, Clone)]
pub(crate) enum Filter {
    All,
    Category(String),
    EventTypes(Vec<String>),
}

impl Filter {
    pub(crate) fn of(spec: &ProjectionSpec) -> Self {
        match (&spec.category, &spec.event_types) {
            (Some(c), _) => Filter::Category(c.strip_suffix("-*").unwrap_or(c).to_owned()),
            (None, Some(types)) => Filter::EventTypes(types.clone()),
            (None, None) => Filter::All,
        }
    }

    pub(crate) fn matches(&self, event: &CanonicalEvent) -> bool {
        match self {
            Filter::All => true,
            Filter::Category(c) => category_of(&event.stream_id) == c,
            Filter::EventTypes(types) => types.contains(&event.event_type),
        }
    }

    /// A SQL condition (with `$3`) narrowing a replay; matches are re-checked in Rust.
    pub(crate) fn sql(&self) -> &'static str {
        match self {
            Filter::All => "$3::text IS NULL",
            Filter::Category(_) => "category = $3::text",
            Filter::EventTypes(_) => "event_type = ANY($3::text[])",
        }
    }
}

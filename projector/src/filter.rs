//! The filter that chooses which events a projection gets, in Rust (live) and in SQL (replay).

use esk_model::event::category_of;
use esk_model::wire::CanonicalEvent;

use crate::projections_file::ProjectionSpec;

/// Which events a projection takes.
#[derive(Debug, Clone)]
pub(crate) enum Filter {
    All,
    Category(String),
    EventTypes(Vec<String>),
}

impl Filter {
    /// The filter a projection declares (a category, event types, or nothing: every event).
    pub(crate) fn of(spec: &ProjectionSpec) -> Self {
        match (&spec.category, &spec.event_types) {
            (Some(c), _) => Filter::Category(c.strip_suffix("-*").unwrap_or(c).to_owned()),
            (None, Some(types)) => Filter::EventTypes(types.clone()),
            (None, None) => Filter::All,
        }
    }

    /// Whether the projection takes `event`.
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

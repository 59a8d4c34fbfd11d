//! The filter that chooses which events a projection gets, in Rust (live) and in SQL (replay).

use esk_model::event::category_of;
use esk_model::wire::CanonicalEvent;
use esk_runtime::pages::{PgQuery, Selection};

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
}

/// The same filter in SQL, for replays and for reading a group's rows from the events table.
impl Selection for Filter {
    fn sql(&self, first: usize) -> String {
        match self {
            Filter::All => String::new(),
            Filter::Category(_) => format!(" AND category = ${first}"),
            Filter::EventTypes(_) => format!(" AND event_type = ANY(${first})"),
        }
    }

    fn bind<'q>(&self, query: PgQuery<'q>) -> PgQuery<'q> {
        match self {
            Filter::All => query,
            Filter::Category(c) => query.bind(c.clone()),
            Filter::EventTypes(types) => query.bind(types.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sql_filter_numbers_its_parameter_after_the_statements_own() {
        assert_eq!(Filter::All.sql(3), "");
        assert_eq!(
            Filter::Category("Order".into()).sql(3),
            " AND category = $3"
        );
        assert_eq!(
            Filter::EventTypes(vec!["A".into()]).sql(4),
            " AND event_type = ANY($4)"
        );
    }
}

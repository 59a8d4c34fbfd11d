//! The event filters of `$all` reads, type reads, category reads (a one-category filter) and
//! `$all` subscriptions: `types=A,B` and `categories=Order,Invoice`, parsed and validated here
//! once, turned into one SQL predicate over `events.event_type` and `events.category` (the
//! category column the indexer fills from the stream id: the part before its first `-`), and
//! into the scopes a caller needs.

use std::collections::HashMap;

use esk_model::validate::{name_problem, Limits};
use esk_runtime::scope::Need;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::Postgres;

/// Most names one filter parameter may list.
pub(crate) const MAX_NAMES: usize = 100;

/// The query parameters a filter reads.
pub(crate) const PARAMS: [&str; 2] = ["types", "categories"];

/// Which events a read or subscription selects: those of any of `types` (every type when
/// empty) in any of `categories` (every category when empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct EventFilter {
    types: Vec<String>,
    categories: Vec<String>,
}

/// A filter parameter that is refused (400 `invalid_filter`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InvalidFilter {
    /// `types=` or `categories=` with nothing in it.
    #[error("`{0}` is empty: list one or more names, separated by commas, or leave it out")]
    Empty(&'static str),
    /// `types=A,,B`.
    #[error("`{0}` has an empty name between commas")]
    EmptyName(&'static str),
    /// More names than [`MAX_NAMES`].
    #[error("`{param}` lists {count} names; the limit is {MAX_NAMES}")]
    TooMany { param: &'static str, count: usize },
    /// A name longer than the names the store accepts.
    #[error("{what} {name:?} is {len} bytes; the limit is {max}")]
    TooLong {
        what: &'static str,
        name: String,
        len: usize,
        max: usize,
    },
    /// A name no event can have.
    #[error("{what} {name:?} is invalid: {reason}")]
    BadName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
}

impl EventFilter {
    /// The filter of `types` and `categories` in `params` (absent ones select everything).
    pub(crate) fn from_params(
        params: &HashMap<String, String>,
        limits: &Limits,
    ) -> Result<Self, InvalidFilter> {
        let mut filter = EventFilter::default();
        if let Some(raw) = params.get("types") {
            filter.types = names(raw, "types", |name| event_type(name, limits))?;
        }
        if let Some(raw) = params.get("categories") {
            filter.categories = names(raw, "categories", |name| category(name, limits))?;
        }
        Ok(filter)
    }

    /// The filter of `GET /types/{event_type}/events`: that type, and the `categories` in
    /// `params` if any (a `types` parameter is not taken there).
    pub(crate) fn of_type(
        name: &str,
        params: &HashMap<String, String>,
        limits: &Limits,
    ) -> Result<Self, InvalidFilter> {
        let mut filter = EventFilter::from_params(params, limits)?;
        filter.types = vec![event_type(name, limits)?];
        Ok(filter)
    }

    /// The filter of `GET /categories/{category}/events`: that one category (`Order` or
    /// `Order-*`).
    pub(crate) fn of_category(name: &str, limits: &Limits) -> Result<Self, InvalidFilter> {
        Ok(EventFilter {
            types: Vec::new(),
            categories: vec![category(name, limits)?],
        })
    }

    /// What the caller needs to read what the filter selects: read on every category it names,
    /// or, when it names none, read on everything (`read:*`).
    pub(crate) fn needs(&self) -> Vec<Need<'_>> {
        if self.categories.is_empty() {
            vec![Need::ReadAll]
        } else {
            self.categories
                .iter()
                .map(|c| Need::ReadCategory(c))
                .collect()
        }
    }

    /// The filter's conditions as ` AND ...` over `events`, its parameters numbered from
    /// `first` (bind them with [`EventFilter::bind`] after the statement's own).
    pub(crate) fn sql(&self, first: usize) -> String {
        let mut sql = String::new();
        let mut next = first;
        for (column, names) in [("event_type", &self.types), ("category", &self.categories)] {
            if let Some(condition) = condition(column, names, next) {
                sql.push_str(&condition);
                next += 1;
            }
        }
        sql
    }

    /// Binds the parameters of [`EventFilter::sql`], in its order.
    pub(crate) fn bind<'q>(
        &self,
        mut query: Query<'q, Postgres, PgArguments>,
    ) -> Query<'q, Postgres, PgArguments> {
        for names in [&self.types, &self.categories] {
            query = match names.as_slice() {
                [] => query,
                [one] => query.bind(one.clone()),
                many => query.bind(many.to_vec()),
            };
        }
        query
    }
}

/// ` AND column = $n` for one name, ` AND column = ANY($n)` for several, nothing for none. One
/// name is an equality so that the index on `(column, global_position)` yields the rows in
/// position order and a page stops after `LIMIT` rows; Postgres 15 does not use an index's
/// order for `= ANY(...)`, so that form reads and sorts every match.
fn condition(column: &str, names: &[String], parameter: usize) -> Option<String> {
    match names {
        [] => None,
        [_] => Some(format!(" AND {column} = ${parameter}")),
        _ => Some(format!(" AND {column} = ANY(${parameter})")),
    }
}

/// The comma-separated names of `raw`, each checked by `check`, without duplicates.
fn names(
    raw: &str,
    param: &'static str,
    check: impl Fn(&str) -> Result<String, InvalidFilter>,
) -> Result<Vec<String>, InvalidFilter> {
    if raw.is_empty() {
        return Err(InvalidFilter::Empty(param));
    }
    let count = raw.split(',').count();
    if count > MAX_NAMES {
        return Err(InvalidFilter::TooMany { param, count });
    }
    let mut names = Vec::with_capacity(count);
    for name in raw.split(',') {
        if name.is_empty() {
            return Err(InvalidFilter::EmptyName(param));
        }
        let name = check(name)?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// An event type as appends accept them: not blank, within the type length limit, no control
/// or invisible characters.
fn event_type(name: &str, limits: &Limits) -> Result<String, InvalidFilter> {
    checked("event type", name, limits.max_event_type_bytes)?;
    if name.trim().is_empty() {
        return Err(bad("event type", name, "it is blank"));
    }
    Ok(name.to_owned())
}

/// A category: `Order` (or `Order-*`), the part of a stream id before its first `-`.
fn category(name: &str, limits: &Limits) -> Result<String, InvalidFilter> {
    let name = name.strip_suffix("-*").unwrap_or(name);
    checked("category", name, limits.max_stream_id_bytes)?;
    if name.is_empty() || name.contains('-') {
        return Err(bad(
            "category",
            name,
            "a category is the part of a stream id before its first `-`",
        ));
    }
    if name.starts_with('$') {
        return Err(bad(
            "category",
            name,
            "names starting with `$` are reserved",
        ));
    }
    Ok(name.to_owned())
}

fn checked(what: &'static str, name: &str, max: usize) -> Result<(), InvalidFilter> {
    if name.len() > max {
        return Err(InvalidFilter::TooLong {
            what,
            name: name.chars().take(64).collect::<String>() + "…",
            len: name.len(),
            max,
        });
    }
    match name_problem(name) {
        Some(reason) => Err(bad(what, name, reason)),
        None => Ok(()),
    }
}

fn bad(what: &'static str, name: &str, reason: &'static str) -> InvalidFilter {
    InvalidFilter::BadName {
        what,
        name: name.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<EventFilter, InvalidFilter> {
        let params = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        EventFilter::from_params(&params, &Limits::default())
    }

    #[test]
    fn names_are_split_checked_and_deduplicated() {
        let filter = parse(&[("types", "A,B,A"), ("categories", "Order,Invoice-*")]);
        assert_eq!(
            filter,
            Ok(EventFilter {
                types: vec!["A".into(), "B".into()],
                categories: vec!["Order".into(), "Invoice".into()],
            })
        );
        assert_eq!(parse(&[]), Ok(EventFilter::default()));
    }

    #[test]
    fn bad_filters_are_refused_with_the_reason() {
        let long = "x".repeat(257);
        let many = vec!["T"; MAX_NAMES + 1].join(",");
        for (params, expected) in [
            (("types", ""), "is empty"),
            (("categories", ""), "is empty"),
            (("types", "A,,B"), "empty name"),
            (("types", long.as_str()), "the limit is 256"),
            (("types", "A\u{7}"), "control characters"),
            (("types", "A\u{202E}"), "bidi"),
            (("types", "  "), "blank"),
            (("types", many.as_str()), "the limit is 100"),
            (("categories", "Order-1"), "before its first"),
            (("categories", "-*"), "before its first"),
            (("categories", "$all"), "reserved"),
        ] {
            let error = parse(&[params]).expect_err(&format!("{params:?} was accepted"));
            assert!(
                error.to_string().contains(expected),
                "{params:?}: {error} does not say {expected:?}"
            );
        }
    }

    #[test]
    fn the_predicate_numbers_its_parameters_after_the_statements_own() {
        let both = parse(&[("types", "A"), ("categories", "Order,Invoice")]).expect("valid");
        assert_eq!(both.sql(3), " AND event_type = $3 AND category = ANY($4)");
        let categories = parse(&[("categories", "Order")]).expect("valid");
        assert_eq!(categories.sql(2), " AND category = $2");
        let types = parse(&[("types", "A,B")]).expect("valid");
        assert_eq!(types.sql(2), " AND event_type = ANY($2)");
        assert_eq!(EventFilter::default().sql(2), "");
    }

    #[test]
    fn a_filter_by_category_needs_read_on_each_category_else_on_everything() {
        assert_eq!(EventFilter::default().needs(), vec![Need::ReadAll]);
        let filter = parse(&[("types", "A"), ("categories", "Order,Invoice")]).expect("valid");
        assert_eq!(
            filter.needs(),
            vec![Need::ReadCategory("Order"), Need::ReadCategory("Invoice")]
        );
    }
}

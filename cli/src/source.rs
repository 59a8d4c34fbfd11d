//! What `read` and `tail` read: one stream, `$all`, or a category, and how a page of it is
//! fetched.

use esk_model::wire::CanonicalEvent;
use serde::Deserialize;

use crate::exit::Failure;
use crate::http::{segment, Api};

/// The name that reads every event in global order.
pub(crate) const ALL: &str = "$all";

/// A readable sequence of events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// One stream, by version.
    Stream(String),
    /// Every event, by global position.
    All,
    /// Streams `{category}-…`, by global position.
    Category(String),
}

/// One page as the read endpoints answer it.
#[derive(Debug, Deserialize)]
pub(crate) struct Page {
    pub(crate) events: Vec<CanonicalEvent>,
    pub(crate) next: Option<i64>,
}

impl Source {
    /// From a positional stream id (or `$all`) and `--category`; `default` when neither.
    pub(crate) fn from_args(
        stream: Option<String>,
        category: Option<String>,
        default: Option<Source>,
    ) -> anyhow::Result<Self> {
        match (stream, category) {
            (Some(_), Some(_)) => Err(Failure::usage("give a stream or --category, not both")),
            (Some(s), None) if s == ALL => Ok(Source::All),
            (Some(s), None) if s.is_empty() => Err(Failure::usage("the stream id is empty")),
            (Some(s), None) => Ok(Source::Stream(s)),
            (None, Some(c)) => {
                let c = c.strip_suffix("-*").unwrap_or(&c).to_owned();
                if c.is_empty() || c.contains('-') {
                    return Err(Failure::usage(
                        "a category is the part of a stream id before its first `-`",
                    ));
                }
                Ok(Source::Category(c))
            }
            (None, None) => default.ok_or_else(|| {
                Failure::usage("give a stream id, `$all` or --category (see esk read --help)")
            }),
        }
    }

    /// Whether `from` counts global positions (`$all`, category) rather than versions.
    pub(crate) fn by_position(&self) -> bool {
        !matches!(self, Source::Stream(_))
    }

    /// How the source is shown to people.
    pub(crate) fn label(&self) -> String {
        match self {
            Source::Stream(s) => format!("stream {s}"),
            Source::All => ALL.to_owned(),
            Source::Category(c) => format!("category {c}"),
        }
    }

    fn path(&self) -> String {
        match self {
            Source::Stream(s) => format!("/streams/{}/events", segment(s)),
            Source::All => format!("/streams/{ALL}/events"),
            Source::Category(c) => format!("/categories/{}/events", segment(c)),
        }
    }

    /// Where reading continues after `event`.
    pub(crate) fn after(&self, event: &CanonicalEvent) -> i64 {
        match self {
            Source::Stream(_) => event.version + 1,
            _ => event.global_position + 1,
        }
    }

    /// One page from `from` (a version or a position), at most `limit` events.
    pub(crate) async fn page(
        &self,
        api: &Api,
        from: Option<i64>,
        limit: i64,
        backward: bool,
    ) -> anyhow::Result<Page> {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(from) = from {
            query.push(("from", from.to_string()));
        }
        if backward {
            query.push(("direction", "backward".to_owned()));
        }
        api.get_default(&self.path(), &query).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_from_arguments() -> anyhow::Result<()> {
        assert_eq!(
            Source::from_args(Some("$all".into()), None, None)?,
            Source::All
        );
        assert_eq!(
            Source::from_args(None, Some("Order-*".into()), None)?,
            Source::Category("Order".into())
        );
        assert_eq!(
            Source::from_args(None, None, Some(Source::All))?,
            Source::All
        );
        assert!(Source::from_args(None, Some("Or-der".into()), None).is_err());
        assert!(Source::from_args(None, None, None).is_err());
        assert_eq!(Source::Stream("a b".into()).path(), "/streams/a%20b/events");
        Ok(())
    }
}

//! What `read` and `tail` read: one stream, `$all`, or a category, and how a page of it (or
//! every page from somewhere on) is fetched.

use esk_client::{Client, ClientError, Events, ReadStream};
use esk_model::api::Direction;
use esk_model::wire::CanonicalEvent;

use crate::exit::Failure;

/// The name that reads every event in global order.
pub(crate) const ALL: &str = esk_client::ALL;

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

    /// One page from `from` (a version or a position), at most `limit` events: the events and
    /// where the next page starts (None: this was the last).
    pub(crate) async fn page(
        &self,
        client: &Client,
        from: Option<i64>,
        limit: u32,
        backward: bool,
    ) -> Result<(Vec<CanonicalEvent>, Option<i64>), ClientError> {
        Ok(match self {
            Source::Stream(s) => {
                let page = client
                    .read_stream(s, stream_read(from, limit, backward))
                    .await?;
                (page.events, page.next)
            }
            Source::All => {
                let page = client.read_all(from, Some(limit)).await?;
                (page.events, page.next)
            }
            Source::Category(c) => {
                let page = client.read_category(c, from, Some(limit)).await?;
                (page.events, page.next)
            }
        })
    }

    /// Every event from `from` to the end (backward: to the start), in pages of `limit`.
    pub(crate) fn events(
        &self,
        client: &Client,
        from: Option<i64>,
        limit: u32,
        backward: bool,
    ) -> Events {
        match self {
            Source::Stream(s) => client.stream_events(s, stream_read(from, limit, backward)),
            Source::All => client.all_events(from, Some(limit)),
            Source::Category(c) => client.category_events(c, from, Some(limit)),
        }
    }
}

fn stream_read(from: Option<i64>, limit: u32, backward: bool) -> ReadStream {
    ReadStream {
        from,
        limit: Some(limit),
        direction: if backward {
            Direction::Backward
        } else {
            Direction::Forward
        },
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
        Ok(())
    }
}

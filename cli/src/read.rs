//! `esk read`: a page (or every page) of a stream, `$all` or a category.

use clap::Args;
use esk_client::Client;
use esk_model::wire::CanonicalEvent;
use futures::TryStreamExt;
use serde::Serialize;

use crate::exit::Failure;
use crate::http::OrFailure;
use crate::output::{note, Output};
use crate::source::Source;

/// Page size when `--limit` is not given.
const DEFAULT_LIMIT: u32 = 100;
/// Largest page the server gives.
const MAX_LIMIT: u32 = 1000;

/// Options of `esk read`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  esk read Order-1                     the stream's first 100 events
  esk read Order-1 --backward --limit 1  its last event
  esk read '$all' --from 1000 --all-pages
  esk read --category Order --json")]
pub(crate) struct ReadArgs {
    /// Stream id, or `$all` for every event in global order.
    stream: Option<String>,
    /// Read a category instead: streams named `CATEGORY-…` in global order.
    #[arg(long, short = 'c', conflicts_with = "stream")]
    category: Option<String>,
    /// Start here: a version for a stream, a global position for `$all` and categories
    /// [default: the start; the end with --backward].
    #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
    from: Option<i64>,
    /// Events per page (1 to 1000) [default: 100].
    #[arg(long, short = 'n', value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_LIMIT)))]
    limit: Option<u32>,
    /// Read a stream from the newest event down.
    #[arg(long)]
    backward: bool,
    /// Follow `next` until the last page (the limit is then the page size).
    #[arg(long)]
    all_pages: bool,
}

/// The `--json` document: the events and where the next page starts (null: no more).
#[derive(Debug, Serialize)]
struct Document<'a> {
    /// The stream read, or `$all`.
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_id: Option<String>,
    /// The category read.
    #[serde(skip_serializing_if = "Option::is_none")]
    category: Option<String>,
    direction: &'static str,
    events: &'a [CanonicalEvent],
    next: Option<i64>,
}

pub(crate) async fn run(client: &Client, out: &Output, args: ReadArgs) -> anyhow::Result<()> {
    let source = Source::from_args(args.stream, args.category, None)?;
    if args.backward && source.by_position() {
        return Err(Failure::usage(
            "--backward reads a stream; $all and categories read forward",
        ));
    }
    let limit = args.limit.unwrap_or(if args.all_pages {
        MAX_LIMIT
    } else {
        DEFAULT_LIMIT
    });
    let (events, next) = if args.all_pages {
        let events = source.events(client, args.from, limit, args.backward);
        (events.try_collect().await.or_failure(client)?, None)
    } else {
        source
            .page(client, args.from, limit, args.backward)
            .await
            .or_failure(client)?
    };
    if out.json {
        return out.document(&Document {
            stream_id: match &source {
                Source::Stream(s) => Some(s.clone()),
                Source::All => Some(crate::source::ALL.to_owned()),
                Source::Category(_) => None,
            },
            category: match &source {
                Source::Category(c) => Some(c.clone()),
                _ => None,
            },
            direction: if args.backward { "backward" } else { "forward" },
            events: &events,
            next,
        });
    }
    if events.is_empty() {
        note(format!("no events in {}", source.label()));
        return Ok(());
    }
    out.print_table(&crate::events::table(out, &events))?;
    if let Some(next) = next {
        note(format!(
            "more after this page: --from {next} (or --all-pages)"
        ));
    }
    Ok(())
}

//! `esk tail`: prints events as they are indexed, from a subscription (Server-Sent Events,
//! `GET /subscriptions/...`) that esk-client resumes exactly after a dropped connection.
//!
//! Without `--from` it starts at what is indexed when it starts, found before it says
//! "following": the stream's last version, or the highest visible global position (global
//! positions become visible in order, so `/wait?timeout_ms=0` probes find it), so every event
//! indexed after that line is printed.

use std::time::Duration;

use clap::Args;
use esk_client::{Client, Filters};
use esk_model::wire::CanonicalEvent;
use futures::TryStreamExt;

use crate::exit::Failure;
use crate::http::OrFailure;
use crate::output::{note, Output};
use crate::source::Source;

/// Options of `esk tail`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  esk tail                      every new event ($all)
  esk tail Order-1 --from 0     the whole stream, then what comes
  esk tail --category Order --json | jq .type
  esk tail --types OrderPlaced,OrderPaid --categories Order,Invoice")]
pub(crate) struct TailArgs {
    /// Stream id, or `$all` [default: $all].
    stream: Option<String>,
    /// Follow a category instead: streams named `CATEGORY-…`.
    #[arg(long, short = 'c', conflicts_with = "stream")]
    category: Option<String>,
    /// Start here (a version for a stream, a global position otherwise) and print what is
    /// already stored from there first [default: only events that arrive from now on].
    #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
    from: Option<i64>,
    /// Only events of these types (comma-separated); not with a stream.
    #[arg(long, value_delimiter = ',', conflicts_with = "stream")]
    types: Vec<String>,
    /// Only events of the streams of these categories (comma-separated); not with a stream.
    #[arg(long, value_delimiter = ',', conflicts_with = "stream")]
    categories: Vec<String>,
    /// Accepted for scripts written when tail long-polled; a subscription has no poll.
    #[arg(long, hide = true, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    poll_ms: Option<u64>,
}

/// Where a follower starts.
#[derive(Debug)]
struct Follower<'a> {
    client: &'a Client,
    source: Source,
    /// First version (stream) or global position to print.
    cursor: i64,
}

pub(crate) async fn run(client: &Client, out: &Output, args: TailArgs) -> anyhow::Result<()> {
    let _ = args.poll_ms;
    let filtered = !args.types.is_empty() || !args.categories.is_empty();
    let source = Source::from_args(args.stream, args.category, Some(Source::All))?;
    let mut filters = Filters::all().types(args.types);
    filters.categories = args.categories;
    if let Source::Category(category) = &source {
        filters.categories.push(category.clone());
    }
    if filtered && matches!(source, Source::Stream(_)) {
        return Err(Failure::usage(
            "--types and --categories follow $all, not a stream",
        ));
    }
    let follower = Follower::start(client, source, args.from).await?;
    note(format!(
        "following {}{} from {} {} (Ctrl-C to stop)",
        follower.source.label(),
        if filtered { " (filtered)" } else { "" },
        if follower.source.by_position() {
            "position"
        } else {
            "version"
        },
        follower.cursor
    ));
    let mut events = match &follower.source {
        Source::Stream(stream) => client.subscribe_stream(stream, Some(follower.cursor)),
        Source::All | Source::Category(_) => client.subscribe_all(&filters, Some(follower.cursor)),
    };
    let print_all = async {
        while let Some(event) = events.try_next().await.or_failure(client)? {
            print(out, &event)?;
        }
        anyhow::Ok(())
    };
    tokio::select! {
        result = print_all => result,
        () = esk_runtime::telemetry::wait_for_signal() => Ok(()),
    }
}

impl<'a> Follower<'a> {
    async fn start(
        client: &'a Client,
        source: Source,
        from: Option<i64>,
    ) -> anyhow::Result<Follower<'a>> {
        let mut follower = Follower {
            client,
            source,
            cursor: from.unwrap_or(0),
        };
        if from.is_none() {
            follower.cursor = match &follower.source {
                Source::Stream(_) => {
                    let (last, _) = follower
                        .source
                        .page(client, None, 1, true)
                        .await
                        .or_failure(client)?;
                    last.first().map_or(0, |e| e.version + 1)
                }
                Source::All | Source::Category(_) => follower.find_head(0).await? + 1,
            };
        }
        Ok(follower)
    }

    async fn visible(&self, position: i64) -> anyhow::Result<bool> {
        self.client
            .wait_for_position(position, Duration::ZERO)
            .await
            .or_failure(self.client)
    }

    /// The highest visible global position, knowing `known` is visible (0: nothing known):
    /// doubling steps past it, then a binary search.
    async fn find_head(&self, known: i64) -> anyhow::Result<i64> {
        let mut low = known;
        let mut step = 1i64;
        let mut high = loop {
            let probe = low.saturating_add(step);
            if !self.visible(probe).await? {
                break probe;
            }
            low = probe;
            step = step.saturating_mul(2);
        };
        while high - low > 1 {
            let mid = low + (high - low) / 2;
            if self.visible(mid).await? {
                low = mid;
            } else {
                high = mid;
            }
        }
        Ok(low)
    }
}

fn print(out: &Output, event: &CanonicalEvent) -> anyhow::Result<()> {
    if out.json {
        out.json_line(event)
    } else {
        out.line(crate::events::line(out, event))
    }
}

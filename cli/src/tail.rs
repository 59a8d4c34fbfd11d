//! `esk tail`: prints events as they are indexed, long-polling `/wait` between reads.
//!
//! Global positions become visible in order (the indexer commits under the counter row lock),
//! so once position P is visible every position below it is too. A category follower uses
//! that: it learns the highest visible position (`head`) with `/wait?timeout_ms=0` probes,
//! reads the category up to there, and then waits for `head + 1`, so events of other
//! categories never make it poll in a loop.

use std::time::Duration;

use clap::Args;
use esk_client::Client;
use esk_model::wire::CanonicalEvent;
use futures::TryStreamExt;

use crate::exit::{classify, Exit};
use crate::http::OrFailure;
use crate::output::{note, Output};
use crate::source::Source;

/// Events per read while catching up.
const PAGE: u32 = 1000;
/// Longest pause between retries while ingest is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Options of `esk tail`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  esk tail                      every new event ($all)
  esk tail Order-1 --from 0     the whole stream, then what comes
  esk tail --category Order --json | jq .type")]
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
    /// How long one long-poll may wait on the server, in milliseconds.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    poll_ms: u64,
}

/// Where a follower is.
#[derive(Debug)]
struct Follower<'a> {
    client: &'a Client,
    source: Source,
    /// Next version (stream) or global position to print.
    cursor: i64,
    /// A global position known to be visible (0: none known).
    head: i64,
    poll: Duration,
}

pub(crate) async fn run(client: &Client, out: &Output, args: TailArgs) -> anyhow::Result<()> {
    let source = Source::from_args(args.stream, args.category, Some(Source::All))?;
    let poll = Duration::from_millis(args.poll_ms);
    let mut follower = Follower::start(client, source, args.from, poll).await?;
    note(format!(
        "following {} from {} {} (Ctrl-C to stop)",
        follower.source.label(),
        if follower.source.by_position() {
            "position"
        } else {
            "version"
        },
        follower.cursor
    ));
    tokio::select! {
        result = follower.follow(out) => result,
        () = esk_runtime::telemetry::wait_for_signal() => Ok(()),
    }
}

impl<'a> Follower<'a> {
    async fn start(
        client: &'a Client,
        source: Source,
        from: Option<i64>,
        poll: Duration,
    ) -> anyhow::Result<Follower<'a>> {
        let mut follower = Follower {
            client,
            source,
            cursor: from.unwrap_or(0),
            head: 0,
            poll,
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
                Source::All | Source::Category(_) => {
                    follower.head = follower.find_head(0).await?;
                    follower.head + 1
                }
            };
        }
        Ok(follower)
    }

    /// Prints, waits, prints...: returns only on an error that retrying cannot fix.
    async fn follow(&mut self, out: &Output) -> anyhow::Result<()> {
        let mut failures = 0u32;
        loop {
            let step = match self.drain(out).await {
                Ok(()) => self.wait().await,
                Err(e) => Err(e),
            };
            match step {
                Ok(()) => {
                    if failures > 0 {
                        note(format!("{} answers again", self.client.base_url()));
                    }
                    failures = 0;
                }
                Err(e) if classify(&e) == Some(Exit::Unavailable) => {
                    if failures == 0 {
                        note(format!("{e}; retrying"));
                    }
                    failures = failures.saturating_add(1);
                    let backoff = Duration::from_millis(250)
                        .saturating_mul(1 << failures.min(5))
                        .min(MAX_BACKOFF);
                    tokio::time::sleep(backoff).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Prints everything stored from the cursor on.
    async fn drain(&mut self, out: &Output) -> anyhow::Result<()> {
        let mut events = self
            .source
            .events(self.client, Some(self.cursor), PAGE, false);
        while let Some(event) = events.try_next().await.or_failure(self.client)? {
            print(out, &event)?;
            self.cursor = self.source.after(&event);
        }
        if let Source::Category(_) = self.source {
            // Everything up to `head` was visible when the category was read.
            self.cursor = self.cursor.max(self.head + 1);
        }
        Ok(())
    }

    /// Long-polls until there may be something new (or the poll times out).
    async fn wait(&mut self) -> anyhow::Result<()> {
        let client = self.client;
        match &self.source {
            Source::Stream(stream) => {
                client
                    .wait_for_version(stream, self.cursor, self.poll)
                    .await
                    .or_failure(client)?;
            }
            Source::All => {
                client
                    .wait_for_position(self.cursor.max(1), self.poll)
                    .await
                    .or_failure(client)?;
            }
            Source::Category(_) => {
                let reached = client
                    .wait_for_position(self.head + 1, self.poll)
                    .await
                    .or_failure(client)?;
                if reached {
                    self.head = self.find_head(self.head + 1).await?;
                }
            }
        }
        Ok(())
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

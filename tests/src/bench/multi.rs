//! multi: atomic multi-stream appends against single-stream ones, in events per second. The same
//! loadgen workload with every append writing [`ANCHOR_BATCH`] events to each of
//! [`STREAMS`] streams at once (`POST /appends`), and with every append writing
//! [`ANCHOR_BATCH`] events to one stream, alternating over [`ROUNDS`] rounds, each run on a
//! fresh database and fresh topics.

use anyhow::Context;

use super::{emit, report, say, Bench, ANCHOR_BATCH};

/// Runs of each side.
const ROUNDS: usize = 2;
/// Streams per multi-stream append.
const STREAMS: usize = 2;

impl Bench {
    /// Prints one line per run (`ingest-multi-2x5`, `ingest-single-5`), then
    /// `{"bench": "multi-vs-single", "ratio_events_per_s": multi/single, ...}` over the sums.
    pub(crate) async fn multi_vs_single(&mut self) -> anyhow::Result<()> {
        let mut rates = report::OnOff::default();
        let streams = STREAMS.to_string();
        for round in 0..ROUNDS {
            for is_multi in report::OnOff::sides(round) {
                let (name, extra) = if is_multi {
                    (
                        format!("ingest-multi-{STREAMS}x{ANCHOR_BATCH}"),
                        vec!["--streams-per-append", streams.as_str()],
                    )
                } else {
                    (format!("ingest-single-{ANCHOR_BATCH}"), vec![])
                };
                say(&format!("{name} (round {}/{ROUNDS})", round + 1));
                let mut line = self
                    .loadgen_on_fresh_ingest(
                        "esk_bench_multi",
                        &format!("multi-{round}-{is_multi}"),
                        self.settings.auth,
                        "bench-multi.log",
                        &extra,
                    )
                    .await?;
                line.set("bench", name.as_str());
                emit(&line.to_text());
                let rate = line
                    .number("events_per_s")
                    .context("loadgen printed no events_per_s")?;
                rates.add(is_multi, rate);
            }
        }
        emit(&rates.cost("multi-vs-single").to_text());
        Ok(())
    }
}

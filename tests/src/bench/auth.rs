//! auth: what checking bearer tokens costs ingest. The same loadgen run against ingest with
//! authentication on (each append carries an admin token) and off (`--insecure-no-auth`),
//! alternating on/off and off/on over [`ROUNDS`] rounds so drift on a noisy machine falls on
//! both sides, each run on a fresh database and fresh topics.

use anyhow::Context;

use super::line::Line;
use super::{emit, report, say, Bench};

/// Runs of each side.
const ROUNDS: usize = 3;

impl Bench {
    /// Prints one line per run (`ingest-auth-on`, `ingest-auth-off`) and then
    /// `{"bench": "auth-on-vs-off", "ratio_events_per_s": on/off, ...}` over the sums.
    pub(crate) async fn auth_cost(&mut self) -> anyhow::Result<()> {
        let mut rates = report::OnOff::default();
        for round in 0..ROUNDS {
            for auth in report::OnOff::sides(round) {
                let line = self.ingest_run(round, auth).await?;
                let name = if auth {
                    "ingest-auth-on"
                } else {
                    "ingest-auth-off"
                };
                // loadgen's own line, named for its side (its "bench" key is replaced in place).
                let mut named = line.clone();
                named.set("bench", name);
                emit(&named.to_text());
                let rate = line
                    .number("events_per_s")
                    .context("loadgen printed no events_per_s")?;
                rates.add(auth, rate);
            }
        }
        emit(&rates.cost("auth-on-vs-off").to_text());
        Ok(())
    }

    /// One loadgen run (16 writers, `ESK_BENCH_INGEST_IN_FLIGHT` appends in flight each: the
    /// most requests per second, where a per-request check weighs most) against a fresh
    /// ingest with authentication `auth`.
    async fn ingest_run(&mut self, round: usize, auth: bool) -> anyhow::Result<Line> {
        let side = if auth { "on" } else { "off" };
        say(&format!("auth {side} (round {}/{ROUNDS})", round + 1));
        self.loadgen_on_fresh_ingest(
            "esk_bench_auth",
            &format!("auth-{round}-{side}"),
            auth,
            "bench-auth.log",
            &[],
        )
        .await
    }
}

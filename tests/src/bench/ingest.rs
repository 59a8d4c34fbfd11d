//! 1. ingest: our ingest over HTTP, driven by loadgen with the anchor's workload, then with
//!    several appends in flight per writer.

use anyhow::Context;

use super::line::Line;
use super::services::{run, Service};
use super::{emit, env_of, say, Bench, ANCHOR_BATCH, ANCHOR_CLIENTS};

impl Bench {
    /// Ingest alone on a fresh database `database` and fresh topics `<run id>-<tag>-*`,
    /// checking tokens or not (`auth`), logging to `$ESK_STATE_DIR/<log>`; returns once healthy.
    pub(crate) async fn start_ingest(
        &mut self,
        database: &str,
        tag: &str,
        auth: bool,
        log: &str,
    ) -> anyhow::Result<Service> {
        let (_, _, mut env) = self.fresh_store_with_auth(database, tag, auth).await?;
        env.extend(env_of(&[
            (
                "ESK_INGEST_GROUP",
                &format!("{}-{tag}", self.settings.run_id),
            ),
            ("RUST_LOG", "warn"),
        ]));
        let mut ingest = Service::start(
            "ingest",
            &self.settings.binary("ingest"),
            &env,
            crate::process::INGEST,
            self.settings.state_dir.join(log),
        )?;
        say(&format!(
            "started ingest on {} (log: {})",
            ingest.url(),
            ingest.log().display()
        ));
        ingest.wait_healthy().await?;
        Ok(ingest)
    }

    /// Prints and returns loadgen's lines: the anchor's workload, and (if loadgen printed one)
    /// the same writers with `ESK_BENCH_INGEST_IN_FLIGHT` appends in flight each.
    pub(crate) async fn ingest(&mut self) -> anyhow::Result<(Line, Option<Line>)> {
        let auth = self.settings.auth;
        let mut ingest = self
            .start_ingest("esk_bench_ingest", "ingest", auth, "bench-ingest.log")
            .await?;

        let seconds = self.settings.seconds.clone();
        let loadgen = self.settings.binary("loadgen");
        let mut args = vec![
            "--url".to_owned(),
            ingest.url().to_owned(),
            "--seconds".into(),
            seconds.clone(),
            "--writers".into(),
            ANCHOR_CLIENTS.to_string(),
            "--batch".into(),
            ANCHOR_BATCH.to_string(),
        ];
        say(&format!(
            "loadgen: {seconds}s (after a warm-up), {ANCHOR_CLIENTS} writers, batch {ANCHOR_BATCH}"
        ));
        let plain = run(&loadgen, &args, &self.loadgen_env()).await?;
        if !plain.status.success() {
            self.fail(&format!("loadgen exited with {}", plain.status));
        }
        // The same writers, each keeping several appends in flight on streams of its own.
        let in_flight = self.settings.ingest_in_flight;
        say(&format!(
            "loadgen: the same, with {in_flight} appends in flight per writer"
        ));
        args.extend(["--in-flight".to_owned(), in_flight.to_string()]);
        let pipelined = run(&loadgen, &args, &self.loadgen_env()).await?;
        if !pipelined.status.success() {
            self.fail(&format!(
                "loadgen (in flight) exited with {}",
                pipelined.status
            ));
        }
        if !ingest.check_alive() {
            self.failed = true;
        }
        ingest.stop().await?;
        let plain = plain.last_line.context("loadgen printed no result")?;
        emit(&plain);
        let pipelined = match pipelined.last_line {
            Some(text) => {
                emit(&text);
                Some(Line::parse(&text)?)
            }
            None => None,
        };
        Ok((Line::parse(&plain)?, pipelined))
    }

    /// One loadgen run ([`ANCHOR_CLIENTS`] writers, `ESK_BENCH_INGEST_IN_FLIGHT` appends in
    /// flight each, [`ANCHOR_BATCH`] events per stream per append, plus `extra` arguments)
    /// against a fresh ingest on `database` and topics tagged `tag`, checking tokens or not;
    /// returns loadgen's line.
    pub(crate) async fn loadgen_on_fresh_ingest(
        &mut self,
        database: &str,
        tag: &str,
        auth: bool,
        log: &str,
        extra: &[&str],
    ) -> anyhow::Result<Line> {
        let mut ingest = self.start_ingest(database, tag, auth, log).await?;
        let in_flight = self.settings.ingest_in_flight;
        say(&format!(
            "loadgen {}s, {ANCHOR_CLIENTS} writers, {in_flight} in flight each {extra:?}",
            self.settings.seconds
        ));
        let mut args = vec![
            "--url".to_owned(),
            ingest.url().to_owned(),
            "--seconds".into(),
            self.settings.seconds.clone(),
            "--writers".into(),
            ANCHOR_CLIENTS.to_string(),
            "--batch".into(),
            ANCHOR_BATCH.to_string(),
            "--in-flight".into(),
            in_flight.to_string(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let output = run(&self.settings.binary("loadgen"), &args, &self.loadgen_env()).await?;
        if !output.status.success() {
            self.fail(&format!("loadgen exited with {}", output.status));
        }
        if !ingest.check_alive() {
            self.failed = true;
        }
        ingest.stop().await?;
        Line::parse(&output.last_line.context("loadgen printed no result")?)
    }
}

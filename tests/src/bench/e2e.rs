//! 4. end to end and 5. live projection lag: ingest + indexer (+ projector) under loadgen.

use std::time::Instant;

use anyhow::{bail, Context};
use sqlx::PgPool;

use super::cpu::Sample;
use super::database::{self, poll_until, Poll};
use super::line::Line;
use super::prometheus::Scrape;
use super::services::{run, Service};
use super::{emit, env_of, report, say, Bench, ANCHOR_BATCH, DRAIN_TIMEOUT, STREAM_EVENTS};

/// Seconds of load before the lag (or the latency curve) is measured.
pub(crate) const LAG_WARMUP_SECONDS: u32 = 5;
/// Accepted events so far, from the ledger.
const ACCEPTED_SQL: &str =
    "SELECT coalesce(sum(event_count), 0) FROM append_ledger WHERE status = 'accepted'";
/// Events indexed so far.
const INDEXED_SQL: &str = "SELECT last_position FROM global_position_counter";
/// Events applied by both built-in projections (each stream starts at version 0).
const PROJECTED_SQL: &str = "SELECT least(
  (SELECT coalesce(sum(count), 0) FROM projection_category_type_counts WHERE projection = 'counts'),
  (SELECT coalesce(sum(version + 1), 0) FROM projection_stream_summary WHERE projection = 'stream-summary'))";

/// The services of an end-to-end variant (`e2e`, or `e2e-core` without the projector) on their
/// own database and topics.
#[derive(Debug)]
pub(crate) struct E2e {
    ingest: Service,
    indexer: Service,
    projector: Option<Service>,
    pool: PgPool,
}

impl E2e {
    pub(crate) async fn accepted(&self) -> anyhow::Result<i64> {
        database::value(&self.pool, ACCEPTED_SQL).await
    }

    /// Polls until `target` events are indexed, watching the indexer.
    async fn indexed(&mut self, target: i64, start: Instant) -> anyhow::Result<Poll> {
        let indexer = Some(&mut self.indexer.process);
        poll_until(
            &self.pool,
            INDEXED_SQL,
            target,
            start,
            DRAIN_TIMEOUT,
            indexer,
        )
        .await
    }

    /// The projector's and the indexer's `/metrics`, merged: the histograms of acknowledgement
    /// → projected and → indexed.
    pub(crate) async fn lag_scrape(&self) -> anyhow::Result<Scrape> {
        let projector = self.projector()?.scrape().await;
        Ok(projector.merged(self.indexer.scrape().await))
    }

    /// Polls until `target` events are projected by both projections (None without projector).
    pub(crate) async fn projected(
        &mut self,
        target: i64,
        start: Instant,
    ) -> anyhow::Result<Option<Poll>> {
        let Some(projector) = self.projector.as_mut() else {
            return Ok(None);
        };
        let watched = Some(&mut projector.process);
        let poll = poll_until(
            &self.pool,
            PROJECTED_SQL,
            target,
            start,
            DRAIN_TIMEOUT,
            watched,
        );
        Ok(Some(poll.await?))
    }

    /// Waits until everything accepted so far is indexed and projected (no timing).
    pub(crate) async fn drain(&mut self) -> anyhow::Result<()> {
        let accepted = self.accepted().await?;
        let start = Instant::now();
        if !self.indexed(accepted, start).await?.reached {
            bail!("the e2e indexer did not index the {accepted} accepted events");
        }
        if self
            .projected(accepted, start)
            .await?
            .is_some_and(|p| !p.reached)
        {
            bail!("the e2e projector did not apply the {accepted} accepted events");
        }
        Ok(())
    }

    pub(crate) fn projector(&self) -> anyhow::Result<&Service> {
        self.projector
            .as_ref()
            .context("the lag and curve benchmarks need the projector")
    }
}

/// loadgen's arguments for `rate` appends per second over `seconds`, measured from the start.
pub(crate) fn paced(rate: &str, seconds: &str) -> Vec<String> {
    [
        "--rate",
        rate,
        "--seconds",
        seconds,
        "--warmup-seconds",
        "0",
    ]
    .map(str::to_owned)
    .to_vec()
}

impl Bench {
    /// Starts ingest, the indexer (publishing) and, unless `variant` is `e2e-core`, the
    /// projector, on a fresh database `esk_bench_<variant>` and fresh topics.
    pub(crate) async fn start_e2e(&mut self, variant: &str) -> anyhow::Result<E2e> {
        let database = format!("esk_bench_{}", variant.replace('-', "_"));
        let run_id = self.settings.run_id.clone();
        let (url, _, mut env) = self.fresh_store(&database, variant).await?;
        env.extend(env_of(&[("RUST_LOG", "warn")]));
        let log = |service: &str| {
            self.settings
                .state_dir
                .join(format!("bench-{variant}-{service}.log"))
        };
        let with = |extra: &[(&str, &str)]| {
            let mut env = env.clone();
            env.extend(env_of(extra));
            env
        };
        let mut ingest = Service::start(
            "ingest",
            &self.settings.binary("ingest"),
            &with(&[("ESK_INGEST_GROUP", &format!("{run_id}-{variant}-ingest"))]),
            crate::process::INGEST,
            log("ingest"),
        )?;
        let mut indexer = Service::start(
            "indexer",
            &self.settings.binary("indexer"),
            &with(&[
                ("ESK_INDEXER_GROUP", &format!("{run_id}-{variant}-indexer")),
                ("ESK_PUBLISH", "true"),
            ]),
            crate::process::INDEXER,
            log("indexer"),
        )?;
        let mut projector = if variant == "e2e-core" {
            None
        } else {
            let prefix = format!("{run_id}-{variant}-projection");
            Some(Service::start(
                "projector",
                &self.settings.binary("projector"),
                &with(&[("ESK_PROJECTOR_GROUP_PREFIX", &prefix)]),
                crate::process::PROJECTOR,
                log("projector"),
            )?)
        };
        say(&format!(
            "started ingest {}, indexer {}{} (logs: {})",
            ingest.url(),
            indexer.url(),
            projector
                .as_ref()
                .map(|p| format!(", projector {}", p.url()))
                .unwrap_or_default(),
            log("*").display()
        ));
        ingest.wait_healthy().await?;
        indexer.wait_healthy().await?;
        if let Some(projector) = projector.as_mut() {
            projector.wait_healthy().await?;
        }
        Ok(E2e {
            ingest,
            indexer,
            projector,
            pool: database::connect(&url).await?,
        })
    }

    /// Stops the services (a service that died during the run is a failure).
    pub(crate) async fn stop_e2e(&mut self, mut e2e: E2e) -> anyhow::Result<()> {
        let alive = [
            e2e.ingest.check_alive(),
            e2e.indexer.check_alive(),
            e2e.projector.as_mut().is_none_or(Service::check_alive),
        ];
        if alive.contains(&false) {
            self.failed = true;
        }
        if let Some(projector) = e2e.projector {
            projector.stop().await?;
        }
        e2e.indexer.stop().await?;
        e2e.ingest.stop().await?;
        e2e.pool.close().await;
        Ok(())
    }

    /// Runs loadgen against `e2e`'s ingest with `writers` writers and `args`.
    pub(crate) async fn loadgen(
        &self,
        e2e: &E2e,
        writers: u32,
        args: &[String],
    ) -> anyhow::Result<super::services::Finished> {
        self.loadgen_against(&e2e.ingest, writers, args).await
    }

    /// Runs loadgen against `ingest` with `writers` writers and `args`.
    pub(crate) async fn loadgen_against(
        &self,
        ingest: &Service,
        writers: u32,
        args: &[String],
    ) -> anyhow::Result<super::services::Finished> {
        let mut all = vec![
            "--url".to_owned(),
            ingest.url().to_owned(),
            "--writers".into(),
            writers.to_string(),
            "--batch".into(),
            ANCHOR_BATCH.to_string(),
            "--stream-events".into(),
            STREAM_EVENTS.to_string(),
        ];
        all.extend_from_slice(args);
        run(&self.settings.binary("loadgen"), &all, &self.loadgen_env()).await
    }

    /// loadgen for `ESK_BENCH_SECONDS`, then until everything accepted is indexed (and
    /// projected): prints the `name` line, its indexer metrics and ingest metrics; returns the
    /// first.
    pub(crate) async fn end_to_end(&mut self, e2e: &mut E2e, name: &str) -> anyhow::Result<Line> {
        e2e.drain().await?;
        if e2e.accepted().await? != 0 {
            bail!("the {name} database is not empty before its benchmark");
        }
        let (seconds, writers) = (self.settings.seconds.clone(), self.settings.e2e_writers);
        say(&format!(
            "{name}: loadgen {seconds}s (after a warm-up), {writers} writers; then until all is indexed"
        ));
        let watched = self.watched(&[("ingest", &e2e.ingest), ("indexer", &e2e.indexer)]);
        let cpu = Sample::take(&watched);
        let start = Instant::now();
        let args = [
            "--seconds".to_owned(),
            seconds,
            "--in-flight".into(),
            self.settings.e2e_in_flight.to_string(),
        ];
        let finished = self.loadgen(e2e, writers, &args).await?;
        if !finished.status.success() {
            self.fail(&format!("loadgen exited with {}", finished.status));
        }
        let load = finished.last_line.context("loadgen printed no result")?;
        let accepted = e2e.accepted().await?;
        say(&format!("loadgen: {load}"));
        say(&format!(
            "waiting until the {accepted} accepted events are indexed and projected"
        ));
        let indexed = e2e.indexed(accepted, start).await?;
        if !indexed.reached {
            self.fail(&format!("not all indexed: {}", indexed.describe()));
        }
        let cpu_line = cpu.report(&format!("{name}-cpu"), accepted, indexed.seconds);
        let projected = e2e.projected(accepted, start).await?;
        if let Some(p) = projected.as_ref().filter(|p| !p.reached) {
            self.fail(&format!("not all projected: {}", p.describe()));
        }
        let rows = database::value(&e2e.pool, "SELECT count(*) FROM events").await?;
        if rows != accepted {
            self.fail(&format!(
                "events has {rows} rows, the ledger {accepted} accepted events"
            ));
        }
        let load = Line::parse(&load)?;
        let line = report::end_to_end(name, &load, accepted, &indexed, projected.as_ref());
        emit(&line.to_text());
        emit(&cpu_line.to_text());
        let indexer_metrics = e2e.indexer.scrape().await;
        let metrics_name = format!("{name}-indexer-metrics");
        emit(&report::indexer_metrics(&metrics_name, &indexer_metrics, 0.0).to_text());
        let ingest_metrics = e2e.ingest.scrape().await;
        let averages_name = format!("{name}-ingest-metrics");
        emit(&report::ingest_averages(&averages_name, &ingest_metrics, None).to_text());
        Ok(line)
    }

    /// loadgen at `ESK_BENCH_LAG_RATE` appends/s after a warm-up: prints the projector's event
    /// lag quantiles over the run and the ingest's averages over it.
    pub(crate) async fn live_lag(&mut self, e2e: &mut E2e) -> anyhow::Result<()> {
        let (rate, rate_value) = self.settings.lag_rate.clone();
        let writers = self.settings.lag_writers;
        let paced = |seconds: String| paced(&rate, &seconds);
        e2e.drain().await?;
        say(&format!(
            "live lag: warm-up at {rate} appends/s for {LAG_WARMUP_SECONDS}s (not measured)"
        ));
        let warmup = self
            .loadgen(e2e, writers, &paced(LAG_WARMUP_SECONDS.to_string()))
            .await?;
        if !warmup.status.success() {
            say(&format!("warm-up loadgen exited with {}", warmup.status));
        }
        e2e.drain().await?;
        let before = e2e.lag_scrape().await?;
        let ingest_before = e2e.ingest.scrape().await;
        let seconds = self.settings.seconds.clone();
        say(&format!(
            "live lag: loadgen at {rate} appends/s ({writers} writers) for {seconds}s"
        ));
        let watched = self.watched(&[
            ("ingest", &e2e.ingest),
            ("indexer", &e2e.indexer),
            ("projector", e2e.projector()?),
        ]);
        let cpu = Sample::take(&watched);
        let start = Instant::now();
        let finished = self.loadgen(e2e, writers, &paced(seconds)).await?;
        let elapsed = start.elapsed().as_secs_f64();
        if !finished.status.success() {
            self.fail(&format!("loadgen exited with {}", finished.status));
        }
        let load = finished.last_line.context("loadgen printed no result")?;
        say(&format!("loadgen: {load}"));
        let ingest_after = e2e.ingest.scrape().await;
        e2e.drain().await?;
        let after = e2e.lag_scrape().await?;
        let load = Line::parse(&load)?;
        let line = report::lag(&load, rate_value, &before, &after);
        emit(&line.to_text());
        let averages = report::ingest_averages(
            "projector-live-lag-ingest-metrics",
            &ingest_after,
            Some(&ingest_before),
        );
        emit(&averages.to_text());
        let cpu_line = cpu.report("projector-live-lag-cpu", load.events(), elapsed);
        emit(&cpu_line.to_text());
        Ok(())
    }

    /// The lag benchmark's load on ingest alone (fresh database and topics, nothing consuming
    /// them): its append latency and stages at that rate, and the broker's CPU, beside the
    /// full pipeline's (`live_lag`). What the consumers' fetches cost the producers shows in
    /// the difference.
    pub(crate) async fn lag_ingest_alone(&mut self) -> anyhow::Result<()> {
        let (rate, _) = self.settings.lag_rate.clone();
        let writers = self.settings.lag_writers;
        let auth = self.settings.auth;
        let mut ingest = self
            .start_ingest(
                "esk_bench_lag_ingest_alone",
                "lag-ingest-alone",
                auth,
                "bench-lag-ingest-alone.log",
            )
            .await?;
        say(&format!(
            "lag, ingest alone: warm-up at {rate} appends/s for {LAG_WARMUP_SECONDS}s (not measured)"
        ));
        let warmup = paced(&rate, &LAG_WARMUP_SECONDS.to_string());
        let warmup = self.loadgen_against(&ingest, writers, &warmup).await?;
        if !warmup.status.success() {
            say(&format!("warm-up loadgen exited with {}", warmup.status));
        }
        let seconds = self.settings.seconds.clone();
        say(&format!(
            "lag, ingest alone: loadgen at {rate} appends/s ({writers} writers) for {seconds}s"
        ));
        let before = ingest.scrape().await;
        let cpu = Sample::take(&self.watched(&[("ingest", &ingest)]));
        let start = Instant::now();
        let finished = self
            .loadgen_against(&ingest, writers, &paced(&rate, &seconds))
            .await?;
        let elapsed = start.elapsed().as_secs_f64();
        let after = ingest.scrape().await;
        if !finished.status.success() {
            self.fail(&format!("loadgen exited with {}", finished.status));
        }
        let load = Line::parse(&finished.last_line.context("loadgen printed no result")?)?;
        // Read before ingest stops: its CPU time goes with its process.
        let cpu_line = cpu.report("lag-ingest-alone-cpu", load.events(), elapsed);
        if !ingest.check_alive() {
            self.failed = true;
        }
        ingest.stop().await?;
        let mut line = Line::bench("lag-ingest-alone");
        line.set("writers", load.value("writers"))
            .set("achieved_appends_per_s", load.value("appends_per_s"))
            .set("rate_events_per_s", load.value("events_per_s"))
            .set("seconds", load.value("seconds"))
            .set("append_p50_ms", load.value("p50_ms"))
            .set("append_p99_ms", load.value("p99_ms"))
            .set("errors", load.value("errors"));
        emit(&line.to_text());
        let averages =
            report::ingest_averages("lag-ingest-alone-ingest-metrics", &after, Some(&before));
        emit(&averages.to_text());
        emit(&cpu_line.to_text());
        Ok(())
    }
}

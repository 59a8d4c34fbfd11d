//! 2. indexer alone on a full ingest-log, and 3. projector catch-up on what it indexed.

use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::Value;

use super::cpu::Sample;
use super::database::{self, poll_until};
use super::line::Line;
use super::services::{run, run_ok, Service};
use super::{emit, env_of, report, say, Bench, ANCHOR_BATCH, DRAIN_TIMEOUT, STREAM_EVENTS};

/// What the indexer benchmark leaves for the projector benchmark.
#[derive(Debug, Clone)]
pub(crate) struct Indexed {
    database_url: String,
    events_topic: String,
}

/// The opt-in index of type reads, as the README gives it (there `CONCURRENTLY`).
const TYPE_INDEX: &str =
    "CREATE INDEX events_type_position ON events (event_type, global_position)";

impl Bench {
    /// Fills ingest-log with `ESK_BENCH_INDEXER_EVENTS` committed events (not timed), then times
    /// the indexer from its start until all are indexed. Prints the indexer and
    /// indexer-metrics lines; returns the first.
    pub(crate) async fn indexer(&mut self) -> anyhow::Result<(Line, Indexed)> {
        self.indexer_run("indexer", "indexer", false).await
    }

    /// What the opt-in type index (README, "Type reads") costs the indexer: the indexer
    /// benchmark with the index (created after the migrations) and without it, alternating over two rounds so that
    /// drift on the machine falls on both sides; prints each run and `type-index-on-vs-off`.
    pub(crate) async fn type_index_cost(&mut self) -> anyhow::Result<()> {
        let mut rates = report::OnOff::default();
        for round in 0..2 {
            for with_index in report::OnOff::sides(round) {
                let (name, tag) = if with_index {
                    ("indexer-type-index-on", format!("type-index-{round}-on"))
                } else {
                    ("indexer-type-index-off", format!("type-index-{round}-off"))
                };
                let (line, _) = self.indexer_run(name, &tag, with_index).await?;
                let rate = line
                    .number("steady_events_per_s")
                    .or_else(|| line.number("events_per_s"))
                    .context("the indexer run printed no rate")?;
                rates.add(with_index, rate);
            }
        }
        emit(&rates.cost("type-index-on-vs-off").to_text());
        Ok(())
    }

    /// One indexer benchmark on fresh topics `<run id>-<tag>-*`, printed as `name` (and
    /// `name-cpu`, `name-metrics`), with or without the type index.
    async fn indexer_run(
        &mut self,
        name: &str,
        tag: &str,
        type_index: bool,
    ) -> anyhow::Result<(Line, Indexed)> {
        let events = self.settings.indexer_events;
        let run_id = self.settings.run_id.clone();
        let (url, topics, mut env) = self.fresh_store("esk_bench_indexer", tag).await?;
        let pool = database::connect(&url).await?;
        if type_index {
            database::execute(&pool, TYPE_INDEX).await?;
        }

        say(&format!(
            "fill_ingest_log: {events} committed events (batch {ANCHOR_BATCH}, {STREAM_EVENTS} per stream) into {} (not timed)",
            topics.ingest_log
        ));
        let args = [
            "--database-url",
            &url,
            "--brokers",
            &self.settings.brokers,
            "--topic",
            &topics.ingest_log,
            "--events",
            &events.to_string(),
            "--batch",
            &ANCHOR_BATCH.to_string(),
            "--streams-every",
            &STREAM_EVENTS.to_string(),
        ]
        .map(str::to_owned);
        let fill = self.settings.binary("fill_ingest_log");
        let broker = Sample::take(&self.watched(&[]));
        let fill_started = Instant::now();
        let filled = run_ok("fill_ingest_log", &fill, &args, &env).await?;
        say(&format!("fill: {}", filled.last_line.unwrap_or_default()));
        let target = i64::try_from(events).context("ESK_BENCH_INDEXER_EVENTS is too large")?;
        let fill_seconds = fill_started.elapsed().as_secs_f64();
        emit(
            &broker
                .report("fill-ingest-log-cpu", target, fill_seconds)
                .to_text(),
        );
        // Statistics as a long-running store would have them (autovacuum may not have run yet).
        database::execute(&pool, "VACUUM ANALYZE append_ledger, event_claims, streams").await?;

        env.extend(env_of(&[
            ("ESK_INDEXER_GROUP", &format!("{run_id}-{tag}")),
            ("ESK_PUBLISH", "false"),
            ("RUST_LOG", "warn"),
        ]));
        let log = self.settings.state_dir.join("bench-indexer.log");
        let start = Instant::now();
        let mut indexer = Service::start(
            "indexer",
            &self.settings.binary("indexer"),
            &env,
            crate::process::INDEXER,
            log,
        )?;
        let cpu = Sample::take(&self.watched(&[("indexer", &indexer)]));
        say(&format!(
            "started the indexer (publishing off) on {} (log: {}); timing until {events} are indexed",
            indexer.url(),
            indexer.log().display()
        ));
        let poll = poll_until(
            &pool,
            "SELECT last_position FROM global_position_counter",
            target,
            start,
            DRAIN_TIMEOUT,
            Some(&mut indexer.process),
        )
        .await?;
        let cpu_line = cpu.report(&format!("{name}-cpu"), target, poll.seconds);
        let metrics = indexer.scrape().await;
        if !indexer.check_alive() {
            self.failed = true;
        }
        indexer.stop().await?;
        pool.close().await;
        if !poll.reached {
            self.failed = true;
            bail!(
                "the indexer did not index {events} events: {}",
                poll.describe()
            );
        }
        let mut line = report::indexer(events, &poll);
        line.set("bench", name);
        emit(&line.to_text());
        emit(&cpu_line.to_text());
        let steady = poll.seconds - poll.first.as_ref().map_or(0.0, |f| f.seconds);
        emit(&report::indexer_metrics(&format!("{name}-metrics"), &metrics, steady).to_text());
        let indexed = Indexed {
            database_url: url,
            events_topic: topics.events,
        };
        Ok((line, indexed))
    }

    /// `projector rebuild counts` over the indexer benchmark's events, as the store is then;
    /// and again once `events` has statistics if it had none (the replay's page query can pick
    /// a plan that reads the whole remaining range per page without them).
    pub(crate) async fn projector(&mut self, indexed: &Indexed) -> anyhow::Result<()> {
        let pool = database::connect(&indexed.database_url).await?;
        self.rebuild_counts("projector-catch-up", indexed, &pool)
            .await?;
        if !database::events_analyzed(&pool).await? {
            say("ANALYZE events, then the rebuild again");
            database::execute(&pool, "ANALYZE events").await?;
            self.rebuild_counts("projector-catch-up-analyzed", indexed, &pool)
                .await?;
        }
        pool.close().await;
        Ok(())
    }

    /// One `projector rebuild counts`, printed as the bench line `name`.
    async fn rebuild_counts(
        &mut self,
        name: &str,
        indexed: &Indexed,
        pool: &sqlx::PgPool,
    ) -> anyhow::Result<()> {
        let analyzed = database::events_analyzed(pool).await?;
        say(&format!(
            "projector rebuild counts over the {} events of esk_bench_indexer (events analyzed: {analyzed})",
            self.settings.indexer_events
        ));
        let env = env_of(&[
            ("ESK_DATABASE_URL", &indexed.database_url),
            ("ESK_KAFKA_BROKERS", &self.settings.brokers),
            ("ESK_TOPIC_EVENTS", &indexed.events_topic),
            ("ESK_PROJECTOR_ADMIN_ADDR", "127.0.0.1:0"),
            ("RUST_LOG", "warn"),
        ]);
        let args = ["rebuild".to_owned(), "counts".to_owned()];
        let finished = run(&self.settings.binary("projector"), &args, &env).await?;
        let result = finished.last_line.unwrap_or_default();
        let parsed = Line::parse(&result);
        match parsed {
            Ok(parsed) if finished.status.success() => {
                let mut extra = Line::default();
                extra.set("events_analyzed", Value::Bool(analyzed));
                emit(&report::wrap(name, &parsed, &extra).to_text());
            }
            _ => self.fail(&format!(
                "projector rebuild failed ({}): {result}",
                finished.status
            )),
        }
        Ok(())
    }
}

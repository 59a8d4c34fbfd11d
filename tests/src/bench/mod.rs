//! The benchmarks of `deploy/local/bench` (run by `src/bin/bench.rs`): esk beside the anchor
//! benchmarks (`../shared/anchors`) in the same run, on the same Postgres of the local stack, so
//! the figures compare as ratios (absolute numbers drift on noisy machines). Prints JSON lines on
//! stdout (progress goes to stderr):
//!
//! - `ingest` (the anchors first, on a quiet machine):
//!   - `{"anchor": "seed-template-2", ...}` the seed's append logic, straight to Postgres
//!   - `{"anchor": "emmett", ..., "library": "emmett-postgresql-0.42.0", "verified": true}` and
//!     `{"anchor": "eventsourcing", ...}`: the peer event stores the anchors' README lists
//!     (`run_emmett.sh`, `run_eventsourcing.sh`: Node's Emmett, Python's `eventsourcing`), same
//!     workload, each on a fresh database of its own (esk_bench_emmett,
//!     esk_bench_eventsourcing), checked with `--verify`; the first run installs them into
//!     `~/.cache/esk-anchors` (npm, pip). One that cannot run (no `node`, no network for the
//!     install, a failed verification) prints `{"anchor": "emmett", "error": "<why>"}` and the
//!     run carries on (its ratio is null)
//!   - `{"bench": "ingest-http", ...}` our ingest, driven over HTTP by loadgen (16 writers);
//!     then the same line of a second loadgen run with `ESK_BENCH_INGEST_IN_FLIGHT` appends in
//!     flight per writer
//!   - `{"bench": "ingest-vs-seed", "ratio_events_per_s": ..}`, `ingest-vs-emmett`,
//!     `ingest-vs-eventsourcing` (the first loadgen run: the anchors' workload) and
//!     `{"bench": "ingest-in-flight-vs-seed", "ratio_events_per_s": ..}`
//! - `auth`: ingest with authentication on and off, alternating over 3 rounds on fresh
//!   databases, loadgen with 16 writers and `ESK_BENCH_INGEST_IN_FLIGHT` in flight each:
//!   - `{"bench": "ingest-auth-on", ...}` and `{"bench": "ingest-auth-off", ...}` per run
//!   - `{"bench": "auth-on-vs-off", "ratio_events_per_s": .., "cost_percent": ..,
//!     "on_events_per_s": [..], "off_events_per_s": [..]}` over the sums of the runs
//! - `indexer`:
//!   - `{"bench": "indexer", "events": N, "seconds": .., "events_per_s": ..,
//!     "steady_events_per_s": .., "first_row_s": ..}` the indexer alone on an ingest-log that
//!     fill_ingest_log filled with N committed events: from process start (group join
//!     included) until all N are indexed, and "steady" from the first indexed row to the last
//!   - `{"bench": "indexer-metrics", ...}` averages from the indexer's /metrics histograms
//!   - `{"bench": "fill-ingest-log-cpu", "events": N, "broker_us_per_event": .., ...}` the
//!     broker's CPU while fill_ingest_log writes the N events (the database part included;
//!     `ESK_FILL_INGEST_LOG_FORMAT=1` makes it write one-event records, the earlier format)
//!   - `{"bench": "indexer-cpu", "events": N, "indexer_us_per_event": .., "broker_us_per_event":
//!     .., ...}` CPU per event (user + system, /proc) of the indexer and the stack's broker
//!     (Tansu) from the indexer's start until all N are indexed; also `<name>_cpu_s`,
//!     `<name>_cores`
//!   - `{"anchor": "pg-copy-limit", ...}` bare COPY loop into the seeds' schema (the ceiling)
//!   - `{"bench": "indexer-vs-copy", "ratio_events_per_s": .., "ratio_steady_events_per_s": ..}`
//! - `projector`:
//!   - `{"bench": "projector-catch-up", ...}` `projector rebuild counts` over the indexer
//!     bench's events (implies indexer), with `events_analyzed`: whether Postgres had
//!     statistics on events by then
//!   - `{"bench": "projector-catch-up-analyzed", ...}` the same after `ANALYZE events`, when it
//!     had none
//! - `e2e-core` (runs before `e2e`; both print the copy anchor first if `indexer` did not):
//!   - `{"bench": "end-to-end-ingest-indexer", ...}` ingest + indexer (publishing) under
//!     loadgen, without the projector: what issue #5 names end to end (accepted and indexed,
//!     the canonical topic published), with ingest, indexer, broker and loadgen sharing the
//!     cores; `events_per_s` = accepted events / (loadgen start → all indexed)
//!   - `{"bench": "end-to-end-ingest-indexer-cpu", ...}` CPU per accepted event of ingest, the
//!     indexer (publishing included) and the broker, from loadgen's start until all is indexed
//!   - `{"bench": "end-to-end-ingest-indexer-indexer-metrics", ...}` the indexer's /metrics
//!     averages
//!   - `{"bench": "end-to-end-ingest-indexer-ingest-metrics", ...}` the ingest's (stages of an
//!     attempt)
//!   - `{"bench": "end-to-end-ingest-indexer-vs-copy", "ratio_events_per_s": ..}`
//! - `e2e`: the same with the projector running its two projections:
//!   `{"bench": "end-to-end", ...}` (with `projected_seconds`, `projected_events_per_s`),
//!   `end-to-end-indexer-metrics`, `end-to-end-ingest-metrics`, `end-to-end-vs-copy` (both
//!   rates: indexed, and applied by both projections)
//! - `lag`:
//!   - `{"bench": "projector-live-lag", "rate_events_per_s": .., "p50_s": .., "p99_s": ..,
//!     "ack_to_indexed_p50_s": .., "ack_to_indexed_p99_s": .., "append_p99_ms": ..}` p50/p99 of
//!     `esk_projector_event_lag_seconds` (acceptance at ingest → applied by a live projection)
//!     and of `esk_indexer_ack_to_indexed_seconds` (ingest's produce of the record, just before
//!     the acknowledgement → indexed) over a run of loadgen at a fixed rate
//!   - `{"bench": "projector-live-lag-ingest-metrics", ...}` ingest's averages (and p50/p99 of
//!     each stage) over that run, and `{"bench": "projector-live-lag-cpu", ...}` the cores
//!     ingest, the indexer, the projector and the broker used during it
//!   - first, on a quiet machine: `{"bench": "lag-ingest-alone", "append_p50_ms": ..,
//!     "append_p99_ms": .., ...}` the same load on ingest alone (a fresh database and topics
//!     that nothing consumes), with its `-ingest-metrics` and `-cpu` lines: what the
//!     consumers' fetches cost appends shows in the difference (on Tansu 0.6's memory engine
//!     every fetch that returns records lists every batch its partition ever took)
//! - `curve` (on services and topics of its own, like `e2e` and `lag`: the in-memory broker
//!   lists every batch a partition ever took on each fetch, so leftovers of an earlier run
//!   would slow it; about 5 × `ESK_BENCH_SECONDS` plus a warm-up and the drains):
//!   - `{"bench": "latency-curve-max", "source": "end-to-end", "events_per_s": ..}` the maximum
//!     the steps take fractions of: the `end-to-end` line's `projected_events_per_s` when `e2e`
//!     ran; otherwise `"source": "closed-loop"`, a loadgen run like `e2e`'s of at most 10 s,
//!     accepted events over the time until all of them were projected
//!   - per step, at 10, 25, 50, 75 and 90% of it: `{"bench": "latency-curve", "fraction": 0.1,
//!     "rate_events_per_s": .., "achieved_events_per_s": .., "append_p50_ms": ..,
//!     "append_p99_ms": .., "ack_to_projected_p50_ms": .., "ack_to_projected_p99_ms": ..,
//!     "ack_to_indexed_p50_ms": .., "ack_to_indexed_p99_ms": .., ...}`:
//!     open-loop load (loadgen `--rate` with `ESK_BENCH_LAG_WRITERS` writers and enough
//!     appends in flight that answers taking up to 0.5 s do not slow the offered rate down, up
//!     to as many in all as the closed-loop run had); append latency is loadgen's, acceptance →
//!     projected is `esk_projector_event_lag_seconds` between scrapes before and after the step
//!     (interpolated within its buckets: 5, 10, 15, 20, 30, 40, 50, 75, 100, 150, 250 ms, ...),
//!     and acknowledgement → indexed from `esk_indexer_ack_to_indexed_seconds` likewise
//!   - the curve as a PNG: `ESK_BENCH_CURVE_PNG` [`$ESK_STATE_DIR/latency-curve.png`]
//! - `reads` (`reads.rs`): filtered reads over HTTP on a store of `ESK_BENCH_READS_EVENTS`
//!   events written straight into `events` (89% `Common`, 10% `Uncommon`, 1% `Rare`; a quarter
//!   of the streams in `Invoice`), each following `next` with pages of 1,000 up to 100,000
//!   events: `{"bench": "reads-all" | "reads-type-rare" | "reads-type-common" |
//!   "reads-all-types-uncommon-rare" | "reads-all-category-invoice", "events": N, "pages": ..,
//!   "seconds": .., "events_per_s": .., "page_p50_ms": .., "page_p99_ms": ..}` and each filtered
//!   read's `{"bench": "<name>-vs-all", "ratio_events_per_s": ..}` against the unfiltered one
//! - `type-index` (`indexer.rs`): the indexer benchmark with the opt-in type index and
//!   without it, alternating over two rounds: `indexer-type-index-on|off` lines (and their
//!   `-cpu`, `-metrics`), then `{"bench": "type-index-on-vs-off", "ratio_events_per_s": ..,
//!   "cost_percent": .., "on_events_per_s": [..], "off_events_per_s": [..]}` over the steady
//!   rates
//! - multi: atomic multi-stream appends (2 streams x 5 events, `POST /appends`) against single
//!   appends of 5 events, ingest alone, alternating over two rounds: `ingest-multi-2x5` and
//!   `ingest-single-5` lines, then `{"bench": "multi-vs-single", "ratio_events_per_s": ..}`
//!
//! Environment (defaults in brackets):
//! - `ESK_BENCH_SECONDS` measured seconds per benchmark [15]
//! - `ESK_BENCH_WHICH` benchmarks to run, comma or space separated: ingest, indexer, projector,
//!   auth, e2e, e2e-core, lag, curve, reads, type-index, multi [all of them]
//! - `ESK_BENCH_INDEXER_EVENTS` events in ingest-log for the indexer benchmark [1000000]
//! - `ESK_BENCH_READS_EVENTS` events in the store of the reads benchmark [500000]
//! - `ESK_BENCH_E2E_WRITERS` loadgen writers of the end-to-end benchmark [16, like the anchor]
//! - `ESK_BENCH_INGEST_IN_FLIGHT` appends in flight per writer in the second ingest run [32]
//! - `ESK_BENCH_E2E_IN_FLIGHT` appends in flight per writer in the end-to-end run [32]
//! - `ESK_BENCH_LAG_RATE` appends per second (5 events each) of the lag benchmark [400]
//! - `ESK_BENCH_LAG_WRITERS` loadgen writers of the lag benchmark: enough that the rate is
//!   reached even when appends are slow (a writer waits for its answer) [64]; the curve's
//!   steps use as many, with more appends in flight each when their rate needs them
//! - `ESK_BENCH_CURVE_PNG` where the latency curve's PNG goes (relative: from the current
//!   directory) [`$ESK_STATE_DIR/latency-curve.png`]
//! - `ESK_ANCHORS_DIR` where the anchor scripts live [<repo root>/../shared/anchors]
//! - `ESK_STATE_DIR` the local stack's state dir [<repo root>/.stack]
//! - `ESK_PARTITIONS` partitions of the bench topics [6]
//! - `ESK_BENCH_KEEP_TOPICS` 1 = keep the bench topics on the broker afterwards [0]
//! - `ESK_BENCH_AUTH` on = ingest checks bearer tokens (each bench database gets an admin
//!   token, which loadgen sends); off = ingest runs with `--insecure-no-auth` [on]
//! - `ESK_DATABASE_URL`, `ESK_KAFKA_BROKERS`: the stack's (from its env file)
//!
//! Databases it (re)creates and leaves for inspection: esk_bench_anchor, esk_bench_emmett,
//! esk_bench_eventsourcing, esk_bench_ingest, esk_bench_indexer, esk_bench_e2e,
//! esk_bench_e2e_core, esk_bench_lag, esk_bench_lag_ingest_alone, esk_bench_curve,
//! esk_bench_reads. Service logs:
//! `$ESK_STATE_DIR/bench-*.log`. The services and tools it runs are the release binaries next
//! to its own executable (`deploy/local/bench` builds them).

mod anchors;
mod auth;
mod cpu;
mod curve;
mod database;
mod e2e;
mod indexer;
mod ingest;
mod line;
mod multi;
mod peers;
mod plot;
mod prometheus;
mod python;
mod reads;
mod report;
mod services;
mod settings;
mod topics;

use std::io::Write;
use std::time::Instant;

use anyhow::bail;
use sqlx::PgPool;

use self::line::Line;
use self::python::Python;
use self::settings::Benchmark;
pub use self::settings::Settings;
use self::topics::BenchTopics;

/// Writers of the anchor workload (and of the ingest benchmark's loadgen).
const ANCHOR_CLIENTS: u32 = 16;
/// Events per append in every workload.
const ANCHOR_BATCH: u32 = 5;
/// Events per stream before loadgen moves to a new stream.
const STREAM_EVENTS: u32 = 50;
/// Longest wait for a backlog to be indexed or projected after the load stopped.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(900);

/// A progress message on stderr.
pub(crate) fn say(message: &str) {
    eprintln!("bench: {message}");
}

/// A result line on stdout.
fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (`| head`) is no reason to stop a benchmark half way.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A run of the benchmarks.
#[derive(Debug)]
pub struct Bench {
    settings: Settings,
    python: Python,
    /// On the stack's own database, to drop and create the bench databases.
    admin: PgPool,
    anchor_database_url: String,
    topics: BenchTopics,
    /// Whether a benchmark reported a failure it could carry on after.
    failed: bool,
    /// The copy anchor's line, once it ran.
    anchor_copy: Option<Line>,
    started: Instant,
    /// The bearer token of the newest bench database (auth on), which loadgen sends.
    token: Option<String>,
}

impl Bench {
    /// Finds the anchors' Python, connects to the stack and recreates `esk_bench_anchor`.
    pub async fn prepare(settings: Settings) -> anyhow::Result<Self> {
        let started = Instant::now();
        let python = Python::ensure(&settings.state_dir)?;
        let admin = database::connect(&settings.admin_database_url).await?;
        let anchor_database_url =
            database::url_for(&settings.admin_database_url, "esk_bench_anchor")?;
        database::recreate(&admin, "esk_bench_anchor").await?;
        Ok(Bench {
            settings,
            python,
            admin,
            anchor_database_url,
            topics: BenchTopics::default(),
            failed: false,
            token: None,
            anchor_copy: None,
            started,
        })
    }

    /// Runs the benchmarks `ESK_BENCH_WHICH` asks for; fails if one could not run or reported
    /// a failure.
    pub async fn run(&mut self) -> anyhow::Result<()> {
        let wants = |b| self.settings.wants(b);
        let auth = wants(Benchmark::Auth);
        let (ingest, indexer, projector) = (
            wants(Benchmark::Ingest),
            wants(Benchmark::Indexer),
            wants(Benchmark::Projector),
        );
        let (e2e_core, e2e, lag, curve) = (
            wants(Benchmark::E2eCore),
            wants(Benchmark::E2e),
            wants(Benchmark::Lag),
            wants(Benchmark::Curve),
        );
        let (reads, type_index, multi) = (
            wants(Benchmark::Reads),
            wants(Benchmark::TypeIndex),
            wants(Benchmark::Multi),
        );
        if ingest {
            // The anchors run on a quiet machine, before our ingest starts.
            let seed = self.anchor_seed().await?;
            let peers = self.anchor_peers().await;
            let (plain, in_flight) = self.ingest().await?;
            emit(&report::ratio("ingest-vs-seed", &plain, &seed, &["events_per_s"]).to_text());
            for (peer, line) in &peers {
                let name = format!("ingest-vs-{}", peer.name);
                emit(&report::ratio(&name, &plain, line, &["events_per_s"]).to_text());
            }
            if let Some(in_flight) = in_flight {
                let ratio = report::ratio(
                    "ingest-in-flight-vs-seed",
                    &in_flight,
                    &seed,
                    &["events_per_s"],
                );
                emit(&ratio.to_text());
            }
        }
        if auth {
            self.auth_cost().await?;
        }
        let mut indexed = None;
        if indexer {
            let (line, replay) = self.indexer().await?;
            let copy = self.anchor_copy().await?;
            let fields = ["events_per_s", "steady_events_per_s"];
            emit(&report::ratio("indexer-vs-copy", &line, &copy, &fields).to_text());
            self.anchor_copy = Some(copy);
            indexed = Some(replay);
        }
        if let (true, Some(replay)) = (projector, &indexed) {
            self.projector(replay).await?;
        }
        if (e2e || e2e_core) && self.anchor_copy.is_none() {
            // The anchor runs on a quiet machine, before the services start.
            self.anchor_copy = Some(self.anchor_copy().await?);
        }
        let copy = self.anchor_copy.clone().unwrap_or_default();
        if e2e_core {
            let mut services = self.start_e2e("e2e-core").await?;
            let line = self
                .end_to_end(&mut services, "end-to-end-ingest-indexer")
                .await?;
            let ratio = report::ratio(
                "end-to-end-ingest-indexer-vs-copy",
                &line,
                &copy,
                &["events_per_s"],
            );
            emit(&ratio.to_text());
            self.stop_e2e(services).await?;
        }
        if lag {
            // Before the pipeline's services start: ingest alone, with nothing else running.
            self.lag_ingest_alone().await?;
        }
        // Each on services of its own, with fresh topics: Tansu's in-memory broker keeps every
        // batch and lists them all on each fetch, so a run after another one's half a million
        // events would measure what the broker carries, not the load at hand.
        let mut end_to_end = None;
        if e2e {
            let mut services = self.start_e2e("e2e").await?;
            let line = self.end_to_end(&mut services, "end-to-end").await?;
            let fields = ["events_per_s", "projected_events_per_s"];
            let ratio = report::ratio("end-to-end-vs-copy", &line, &copy, &fields);
            emit(&ratio.to_text());
            end_to_end = Some(line);
            self.stop_e2e(services).await?;
        }
        if lag {
            let mut services = self.start_e2e("lag").await?;
            self.live_lag(&mut services).await?;
            self.stop_e2e(services).await?;
        }
        if curve {
            let mut services = self.start_e2e("curve").await?;
            self.latency_curve(&mut services, end_to_end.as_ref())
                .await?;
            self.stop_e2e(services).await?;
        }
        if reads {
            self.reads().await?;
        }
        if type_index {
            self.type_index_cost().await?;
        }
        if multi {
            self.multi_vs_single().await?;
        }
        say(&format!("done in {}s", self.started.elapsed().as_secs()));
        if self.failed {
            bail!("a benchmark reported failures (see above)");
        }
        Ok(())
    }

    /// Deletes this run's topics unless `ESK_BENCH_KEEP_TOPICS` keeps them. The databases and
    /// logs stay for inspection.
    pub async fn clean_up(&mut self) {
        if self.settings.keep_topics {
            return;
        }
        self.topics
            .delete(&self.settings.state_dir, &self.settings.brokers)
            .await;
    }

    /// Remembers a failure the run carries on after.
    fn fail(&mut self, message: &str) {
        self.failed = true;
        say(message);
    }

    /// `services` and the local stack's broker, for CPU per event.
    fn watched(&self, services: &[(&'static str, &services::Service)]) -> Vec<cpu::Watched> {
        let mut watched: Vec<cpu::Watched> = services
            .iter()
            .map(|(name, service)| cpu::Watched::new(name, service.process.pid()))
            .collect();
        watched.extend(cpu::Watched::broker(&self.settings.state_dir));
        watched
    }

    /// `esk setup --partitions P` with `env` (topics and migrations).
    async fn esk_setup(
        &self,
        database: &str,
        tag: &str,
        env: &[(String, String)],
    ) -> anyhow::Result<()> {
        let partitions = self.settings.partitions;
        say(&format!(
            "esk setup: topics {}-{tag}-* ({partitions} partitions), migrations on {database}",
            self.settings.run_id
        ));
        services::run_to_stderr(
            "esk setup",
            &self.settings.binary("esk"),
            &[
                "setup".into(),
                "--partitions".into(),
                partitions.to_string(),
            ],
            env,
        )
        .await
    }

    /// A fresh database `name` and fresh topics `<run id>-<tag>-*`, set up by `esk setup`;
    /// returns its URL and the environment pointing services at both.
    async fn fresh_store(
        &mut self,
        name: &str,
        tag: &str,
    ) -> anyhow::Result<(String, esk_runtime::config::Topics, Vec<(String, String)>)> {
        self.fresh_store_with_auth(name, tag, self.settings.auth)
            .await
    }

    /// Like [`Bench::fresh_store`], with ingest checking tokens (`auth`) or not.
    async fn fresh_store_with_auth(
        &mut self,
        name: &str,
        tag: &str,
        auth: bool,
    ) -> anyhow::Result<(String, esk_runtime::config::Topics, Vec<(String, String)>)> {
        let url = database::url_for(&self.settings.admin_database_url, name)?;
        let topics = self.topics.make(&self.settings.run_id, tag);
        let mut env = vec![
            ("ESK_DATABASE_URL".to_owned(), url.clone()),
            (
                "ESK_KAFKA_BROKERS".to_owned(),
                self.settings.brokers.clone(),
            ),
        ];
        env.extend(topics::env(&topics));
        database::recreate(&self.admin, name).await?;
        self.esk_setup(name, tag, &env).await?;
        self.token = None;
        if auth {
            let pool = database::connect(&url).await?;
            let scopes = vec!["admin".parse::<esk_runtime::scope::Scope>()?];
            let token = esk_runtime::tokens::create(&pool, "bench", &scopes, None).await?;
            pool.close().await;
            env.push(("ESK_TOKEN".to_owned(), token.clone()));
            self.token = Some(token);
        } else {
            env.push(("ESK_INSECURE_NO_AUTH".to_owned(), "true".to_owned()));
        }
        Ok((url, topics, env))
    }

    /// The environment loadgen needs besides its arguments: the token, when auth is on.
    fn loadgen_env(&self) -> Vec<(String, String)> {
        self.token
            .iter()
            .map(|token| ("ESK_TOKEN".to_owned(), token.clone()))
            .collect()
    }
}

/// `(key, value)` pairs as an environment.
fn env_of(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

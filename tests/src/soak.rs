//! The chaos soak: a mixed HTTP + Kafka append workload against two ingest processes, two
//! indexers and the projector (built-in SQL projections), while processes are killed -9 and
//! restarted, Postgres restarts once and the broker is paused once. Every append is recorded in
//! a [`History`]; once the load is over and everything is indexed, [`crate::history::check`]
//! compares it with the store. Shared by `src/bin/soak.rs` and `tests/soak.rs`.
//!
//! The workload: writers each own a few streams (so each knows its streams' exact versions)
//! and, in a loop, append 1–3 events with the exact expected version, or on purpose with a
//! stale exact version (must be rejected `wrong_expected_version`), or re-send an append that
//! already has an outcome (must get the same outcome). Over HTTP a 503, 408, 5xx, timeout or
//! connection error is retried with the same body (same append id and event ids) on either
//! ingest; over Kafka each request has a unique `request_id` and results are deduplicated on
//! it. A stream whose last append has no definite outcome is retired (its version is unknown).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::history::{
    self, AppendFigures, AppendRecord, History, Outcome, PollObservation, Via, Violation,
};
use crate::process::Process;
use crate::{indexer, ingest, kafka, projector, TestContext};

/// How long an HTTP append is retried before its outcome counts as unknown.
const HTTP_RETRY_FOR: Duration = Duration::from_secs(45);
/// One HTTP request's timeout (longer than a broker pause, so a paused append can finish).
const HTTP_TIMEOUT: Duration = Duration::from_secs(40);
/// How long a writer waits for a Kafka append's result before it moves on.
const KAFKA_WAIT: Duration = Duration::from_secs(60);
/// Streams each writer keeps open at once.
const STREAMS_PER_WRITER: usize = 6;
/// A stream is retired once it reaches this version.
const STREAM_LENGTH: i64 = 24;
/// Appends each writer remembers for duplicate submissions.
const REMEMBERED: usize = 256;
const CATEGORIES: [&str; 4] = ["Order", "Cart", "Invoice", "Shipment"];
const TYPES: [&str; 4] = ["Created", "Updated", "Noted", "Closed"];

/// A soak's settings.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// How long the load (and the faults) run.
    pub load: Duration,
    /// Concurrent writers.
    pub writers: usize,
    /// Share of appends (and duplicate submissions) sent over Kafka, in percent.
    pub kafka_percent: u64,
    /// Share of appends sent with a stale exact expected version, in percent.
    pub stale_percent: u64,
    /// Share of iterations that re-send an append with an outcome, in percent.
    pub duplicate_percent: u64,
    /// Pause between a writer's appends (a random time up to this).
    pub pace: Duration,
    /// Time between a restart and the next kill (random in this range).
    pub kill_every: (Duration, Duration),
    /// Time a killed process stays down (random in this range).
    pub down_for: (Duration, Duration),
    /// When Postgres restarts, as a fraction of the load.
    pub postgres_restart_at: f64,
    /// When the broker is paused, as a fraction of the load.
    pub broker_pause_at: f64,
    /// How long the broker stays paused.
    pub broker_pause: Duration,
    /// Seed of every random choice (the processes' timing is not reproducible).
    pub seed: u64,
    /// The soak's database is `{database_prefix}soak_{random}` (`esk_t_` in the test suite,
    /// whose runner drops those; `deploy/local/soak` uses `esk_soak_` and drops those).
    pub database_prefix: String,
}

impl SoakConfig {
    /// The defaults for a load of `load`.
    pub fn new(load: Duration) -> Self {
        SoakConfig {
            load,
            writers: 12,
            kafka_percent: 30,
            stale_percent: 10,
            duplicate_percent: 8,
            pace: Duration::from_millis(20),
            kill_every: (Duration::from_secs(3), Duration::from_secs(7)),
            down_for: (Duration::from_millis(500), Duration::from_millis(2500)),
            postgres_restart_at: 0.3,
            broker_pause_at: 0.55,
            broker_pause: Duration::from_secs_f64((load.as_secs_f64() / 6.0).clamp(10.0, 20.0)),
            seed: Uuid::new_v4().as_u64_pair().0,
            database_prefix: "esk_t_".into(),
        }
    }

    /// The defaults, with `ESK_SOAK_SECONDS` (else `default_seconds`), `ESK_SOAK_WRITERS`,
    /// `ESK_SOAK_SEED` and `ESK_SOAK_DATABASE_PREFIX` from the environment.
    pub fn from_env(default_seconds: u64) -> anyhow::Result<Self> {
        fn var<T: std::str::FromStr>(name: &str) -> anyhow::Result<Option<T>> {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| anyhow::anyhow!("{name} must be a number, got {v:?}")),
                Err(_) => Ok(None),
            }
        }
        let seconds: u64 = var("ESK_SOAK_SECONDS")?.unwrap_or(default_seconds);
        anyhow::ensure!(seconds >= 10, "ESK_SOAK_SECONDS must be at least 10");
        let mut config = SoakConfig::new(Duration::from_secs(seconds));
        if let Some(writers) = var("ESK_SOAK_WRITERS")? {
            config.writers = writers;
        }
        if let Some(seed) = var("ESK_SOAK_SEED")? {
            config.seed = seed;
        }
        if let Ok(prefix) = std::env::var("ESK_SOAK_DATABASE_PREFIX") {
            anyhow::ensure!(
                !prefix.is_empty()
                    && prefix
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "ESK_SOAK_DATABASE_PREFIX must be lowercase letters, digits and _"
            );
            config.database_prefix = prefix;
        }
        Ok(config)
    }
}

/// One fault injected (or a process that exited on its own).
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    /// `kill`, `postgres_restart`, `broker_pause` or `exited`.
    pub kind: String,
    /// The process, for `kill` and `exited`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Seconds since the load started.
    pub at_s: f64,
    /// How long it lasted (until the process was healthy again, Postgres answered, the broker
    /// was resumed).
    pub duration_s: f64,
    /// The exit code, for `exited`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// Duplicate submissions made and how they were answered.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DuplicateFigures {
    /// Re-sent appends that already had an outcome.
    pub sent: u64,
    /// Answered with the original outcome.
    pub matched: u64,
}

/// Kafka-side figures.
#[derive(Debug, Default, Clone, Serialize)]
pub struct KafkaFigures {
    /// Requests produced.
    pub requests: u64,
    /// Produces that failed (the request may still have arrived).
    pub produce_errors: u64,
    /// Results delivered more than once (deduplicated on `request_id`).
    pub result_repeats: u64,
}

/// A soak's result: one JSON line.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// The seed of the random choices.
    pub seed: u64,
    /// The soak's own database.
    pub database: String,
    /// Whole run, setup and checks included.
    pub duration_s: f64,
    /// The load part.
    pub load_s: f64,
    /// The appends.
    pub appends: AppendFigures,
    /// Appends sent with a stale exact expected version on purpose.
    pub conflicts_sent: u64,
    /// Duplicate submissions.
    pub duplicates: DuplicateFigures,
    /// HTTP re-sends of the same body.
    pub http_retries: u64,
    /// Kafka requests and results.
    pub kafka: KafkaFigures,
    /// Faults injected.
    pub faults: Vec<Fault>,
    /// Processes that exited on their own (restarted like killed ones).
    pub exits: Vec<Fault>,
    /// Rows in `events` at the end.
    pub events_indexed: i64,
    /// What the live `global_position > X` poller saw.
    pub poller: PollObservation,
    /// Every failed check (empty: the run kept every invariant).
    pub violations: Vec<Violation>,
}

impl SoakReport {
    /// How many faults of `kind` were injected.
    pub fn faults_of(&self, kind: &str) -> usize {
        self.faults.iter().filter(|f| f.kind == kind).count()
    }
}

// ---------------------------------------------------------------------------------------------
// The local stack: where its state lives, restarting Postgres, pausing the broker.
// ---------------------------------------------------------------------------------------------

/// The repository root (the parent of this crate's manifest directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The stack's state directory, as `deploy/local/stack` finds it: `ESK_STATE_DIR` (a relative
/// path is taken from the repository root, where the scripts run) or `<repo>/.stack`.
pub fn state_dir() -> PathBuf {
    match std::env::var_os("ESK_STATE_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                repo_root().join(dir)
            }
        }
        None => repo_root().join(".stack"),
    }
}

/// `deploy/local/stack restart-postgres` (a fast restart: every connection is cut).
pub async fn restart_postgres() -> anyhow::Result<()> {
    let root = repo_root();
    let output = tokio::process::Command::new(root.join("deploy/local/stack"))
        .arg("restart-postgres")
        .current_dir(&root)
        .env("ESK_STATE_DIR", state_dir())
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "restart-postgres failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// The broker's process id, from the stack's `tansu.pid`.
pub fn broker_pid() -> anyhow::Result<u32> {
    let path = state_dir().join("tansu.pid");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    text.trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{} holds no pid: {text:?}", path.display()))
}

/// The pid of a broker this process paused and has not resumed yet (0: none).
static PAUSED_BROKER: AtomicU32 = AtomicU32::new(0);

fn signal(name: &str, pid: u32) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill -{name} {pid} failed: {status}");
    Ok(())
}

/// Sends SIGCONT to a broker paused by [`BrokerPause`] and not resumed yet. Safe to call any
/// time (a Ctrl-C handler calls it).
pub fn resume_paused_broker() {
    let pid = PAUSED_BROKER.swap(0, Ordering::SeqCst);
    if pid != 0 {
        if let Err(e) = signal("CONT", pid) {
            eprintln!("soak: could not resume the broker (pid {pid}): {e}");
        }
    }
}

/// The broker stopped with SIGSTOP; SIGCONT is sent when this is dropped (also on a panic or
/// an early return).
#[derive(Debug)]
pub struct BrokerPause {
    _private: (),
}

impl BrokerPause {
    /// SIGSTOPs `pid`.
    pub fn start(pid: u32) -> anyhow::Result<Self> {
        // Recorded first, so that whatever happens next a resume follows.
        PAUSED_BROKER.store(pid, Ordering::SeqCst);
        let pause = BrokerPause { _private: () };
        signal("STOP", pid)?;
        Ok(pause)
    }
}

impl Drop for BrokerPause {
    fn drop(&mut self) {
        resume_paused_broker();
    }
}

// ---------------------------------------------------------------------------------------------
// The processes.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Ingest(usize),
    Indexer,
    Projector,
}

#[derive(Debug)]
struct Member {
    name: String,
    role: Role,
    process: Option<Process>,
}

/// The five processes; ingest addresses are published to the writers as they come and go.
#[derive(Debug)]
struct Cluster {
    ctx: Arc<TestContext>,
    members: Vec<Member>,
    ingest_urls: Arc<RwLock<Vec<Option<String>>>>,
}

impl Cluster {
    fn new(ctx: Arc<TestContext>) -> Self {
        let member = |name: &str, role| Member {
            name: name.to_owned(),
            role,
            process: None,
        };
        Cluster {
            ctx,
            members: vec![
                member("ingest-1", Role::Ingest(0)),
                member("ingest-2", Role::Ingest(1)),
                member("indexer-1", Role::Indexer),
                member("indexer-2", Role::Indexer),
                member("projector", Role::Projector),
            ],
            ingest_urls: Arc::new(RwLock::new(vec![None, None])),
        }
    }

    fn set_url(&self, slot: usize, url: Option<String>) {
        if let Ok(mut urls) = self.ingest_urls.write() {
            urls[slot] = url;
        }
    }

    /// Starts member `i`, retrying (a start can fail while Postgres or the broker is away).
    async fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let spawned = match self.members[i].role {
                Role::Ingest(_) => ingest::spawn(&self.ctx, &[]).await,
                Role::Indexer => indexer::spawn(&self.ctx, &[]).await,
                Role::Projector => projector::spawn(&self.ctx, None, &[]).await,
            };
            match spawned {
                Ok(process) => {
                    if let Role::Ingest(slot) = self.members[i].role {
                        self.set_url(slot, Some(process.http.clone()));
                    }
                    self.members[i].process = Some(process);
                    return Ok(());
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!(
                        "soak: {} did not start, retrying: {}",
                        self.members[i].name,
                        first_line(&e.to_string())
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e.context(format!("{} never started", self.members[i].name))),
            }
        }
    }

    fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Role::Ingest(slot) = self.members[i].role {
            self.set_url(slot, None);
        }
        if let Some(mut process) = self.members[i].process.take() {
            process.kill9()?;
        }
        Ok(())
    }

    /// Members that exited on their own since the last call: name, exit code, log tail.
    fn reap(&mut self) -> Vec<(usize, Option<i32>, String)> {
        let mut exited = Vec::new();
        for (i, member) in self.members.iter_mut().enumerate() {
            if let Some(process) = member.process.as_mut() {
                if let Some(status) = process.exit_status() {
                    let log = process.log_text();
                    let tail: Vec<&str> = log.lines().rev().take(5).collect();
                    exited.push((i, status.code(), tail.join(" | ")));
                    member.process = None;
                }
            }
        }
        for (i, _, _) in &exited {
            if let Role::Ingest(slot) = self.members[*i].role {
                self.set_url(slot, None);
            }
        }
        exited
    }

    /// Restarts whatever is down (killed, or exited on its own).
    async fn restart_all(&mut self, shared: &Shared) -> anyhow::Result<()> {
        self.record_exits(shared);
        for i in 0..self.members.len() {
            if self.members[i].process.is_none() {
                self.start(i).await?;
            }
        }
        Ok(())
    }

    fn record_exits(&mut self, shared: &Shared) {
        for (i, code, tail) in self.reap() {
            let name = self.members[i].name.clone();
            eprintln!("soak: {name} exited on its own (code {code:?}): {tail}");
            shared.push_exit(Fault {
                kind: "exited".into(),
                target: Some(name),
                at_s: shared.elapsed(),
                duration_s: 0.0,
                exit_code: code,
            });
        }
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Shared state of a run.
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
enum Purpose {
    /// An append's first submission: its result is its outcome.
    Original,
    /// A re-sent append: its result must equal this.
    Duplicate(Outcome),
}

#[derive(Debug)]
struct Pending {
    append_id: Uuid,
    purpose: Purpose,
    delivered: bool,
    waiter: Option<oneshot::Sender<Outcome>>,
}

#[derive(Debug, Default)]
struct Counters {
    conflicts_sent: AtomicU64,
    duplicates_sent: AtomicU64,
    duplicates_matched: AtomicU64,
    http_retries: AtomicU64,
    kafka_requests: AtomicU64,
    produce_errors: AtomicU64,
    result_repeats: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

struct Shared {
    config: SoakConfig,
    started: Instant,
    history: History,
    http: reqwest::Client,
    /// The `authorization` header of every append request it produces.
    kafka_auth: rdkafka::message::OwnedHeaders,
    ingest_urls: Arc<RwLock<Vec<Option<String>>>>,
    producer: FutureProducer,
    appends_topic: String,
    pending: Mutex<HashMap<String, Pending>>,
    answered: Mutex<HashMap<String, Outcome>>,
    faults: Mutex<Vec<Fault>>,
    exits: Mutex<Vec<Fault>>,
    counters: Counters,
    stop_load: AtomicBool,
    stop_results: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("history", &self.history)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn elapsed(&self) -> f64 {
        round(self.started.elapsed().as_secs_f64())
    }

    fn push_fault(&self, fault: Fault) {
        if let Ok(mut f) = self.faults.lock() {
            f.push(fault);
        }
    }

    fn push_exit(&self, fault: Fault) {
        if let Ok(mut f) = self.exits.lock() {
            f.push(fault);
        }
    }

    fn faults(&self) -> Vec<Fault> {
        self.faults.lock().map(|f| f.clone()).unwrap_or_default()
    }

    fn pick_ingest(&self, rng: &mut Rng) -> Option<String> {
        let urls = self.ingest_urls.read().ok()?;
        let up: Vec<&String> = urls.iter().flatten().collect();
        if up.is_empty() {
            return None;
        }
        Some(up[rng.below(up.len() as u64) as usize].clone())
    }

    /// Kafka appends sent (delivered) and not answered yet.
    fn unanswered_originals(&self) -> usize {
        self.pending
            .lock()
            .map(|p| {
                p.values()
                    .filter(|p| p.delivered && matches!(p.purpose, Purpose::Original))
                    .count()
            })
            .unwrap_or(0)
    }

    /// One record of `append-results`.
    fn on_result(&self, value: &Value) {
        let Some(request_id) = value["request_id"].as_str() else {
            self.history
                .violation("result_without_request_id", value.to_string());
            return;
        };
        let outcome = Outcome::from_result(value);
        let Ok(mut answered) = self.answered.lock() else {
            return;
        };
        if let Some(first) = answered.get(request_id) {
            bump(&self.counters.result_repeats);
            if *first != outcome {
                self.history.violation(
                    "result_repeat_differs",
                    format!("request {request_id}: first {first:?}, then {outcome:?}"),
                );
            }
            return;
        }
        let pending = self
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.remove(request_id));
        let Some(pending) = pending else {
            self.history
                .violation("result_for_unknown_request", value.to_string());
            return;
        };
        answered.insert(request_id.to_owned(), outcome.clone());
        drop(answered);
        let append_id = value["append_id"]
            .as_str()
            .and_then(|s| s.parse::<Uuid>().ok());
        if append_id.is_some_and(|id| id != pending.append_id) {
            self.history.violation(
                "result_append_id_mismatch",
                format!(
                    "request {request_id} sent append {}, result {value}",
                    pending.append_id
                ),
            );
        }
        match &pending.purpose {
            Purpose::Original => self.history.resolve(pending.append_id, outcome.clone()),
            Purpose::Duplicate(expected) => {
                self.compare_duplicate(pending.append_id, expected, &outcome)
            }
        }
        if let Some(waiter) = pending.waiter {
            let _ = waiter.send(outcome);
        }
    }

    fn compare_duplicate(&self, append_id: Uuid, expected: &Outcome, got: &Outcome) {
        if !got.is_definite() {
            return;
        }
        if got == expected {
            bump(&self.counters.duplicates_matched);
        } else {
            self.history.violation(
                "duplicate_outcome_differs",
                format!("append {append_id}: first {expected:?}, re-sent got {got:?}"),
            );
        }
    }

    /// Sends an append over HTTP, retrying the same body until a definite answer or
    /// [`HTTP_RETRY_FOR`].
    async fn send_http(&self, rng: &mut Rng, stream: &str, body: &Value) -> Outcome {
        let deadline = Instant::now() + HTTP_RETRY_FOR;
        let path = format!("/streams/{}/events", ingest::urlencode(stream));
        let mut first = true;
        loop {
            if !first {
                bump(&self.counters.http_retries);
            }
            first = false;
            if let Some(base) = self.pick_ingest(rng) {
                let sent = self
                    .http
                    .post(format!("{base}{path}"))
                    .json(body)
                    .timeout(HTTP_TIMEOUT)
                    .send()
                    .await;
                if let Ok(response) = sent {
                    let status = response.status().as_u16();
                    if let Ok(bytes) = response.bytes().await {
                        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        if let Some(outcome) = Outcome::from_http(status, &value) {
                            return outcome;
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                return Outcome::Unknown;
            }
            tokio::time::sleep(Duration::from_millis(100 + rng.below(300))).await;
        }
    }

    /// Sends an append request over Kafka and waits (at most [`KAFKA_WAIT`]) for its result.
    async fn send_kafka(
        &self,
        stream: &str,
        append_id: Uuid,
        body: &Value,
        purpose: Purpose,
    ) -> Outcome {
        let request_id = format!("soak-{}", Uuid::new_v4());
        let mut request = body.clone();
        request["schema_version"] = json!(1);
        request["request_id"] = json!(request_id);
        request["reply_to"] = json!("soak");
        request["stream_id"] = json!(stream);
        let Ok(payload) = serde_json::to_vec(&request) else {
            return Outcome::Unknown;
        };
        let (waiter, answer) = oneshot::channel();
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(
                request_id.clone(),
                Pending {
                    append_id,
                    purpose,
                    delivered: false,
                    waiter: Some(waiter),
                },
            );
        }
        bump(&self.counters.kafka_requests);
        let produced = self
            .producer
            .send(
                FutureRecord::to(&self.appends_topic)
                    .key(stream)
                    .payload(&payload)
                    .headers(self.kafka_auth.clone()),
                Duration::from_secs(30),
            )
            .await;
        match produced {
            Ok(_) => {
                if let Ok(mut pending) = self.pending.lock() {
                    if let Some(p) = pending.get_mut(&request_id) {
                        p.delivered = true;
                    }
                }
            }
            // It may still have arrived: a late result still settles the append.
            Err(_) => bump(&self.counters.produce_errors),
        }
        match tokio::time::timeout(KAFKA_WAIT, answer).await {
            Ok(Ok(outcome)) => outcome,
            _ => Outcome::Unknown,
        }
    }
}

fn round(seconds: f64) -> f64 {
    (seconds * 10.0).round() / 10.0
}

// ---------------------------------------------------------------------------------------------
// Randomness (no dependency: SplitMix64).
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    fn between(&mut self, (low, high): (Duration, Duration)) -> Duration {
        let span = high.saturating_sub(low).as_millis() as u64;
        low + Duration::from_millis(self.below(span + 1))
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------------------------
// Writers.
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct OpenStream {
    id: String,
    version: Option<i64>,
}

/// An append with a definite outcome, kept for duplicate submissions.
#[derive(Debug)]
struct Decided {
    stream: String,
    append_id: Uuid,
    body: Value,
    outcome: Outcome,
}

struct Writer {
    shared: Arc<Shared>,
    w: usize,
    rng: Rng,
    streams: Vec<OpenStream>,
    opened: usize,
    decided: Vec<Decided>,
    event_n: u64,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("w", &self.w).finish()
    }
}

impl Writer {
    fn new(shared: Arc<Shared>, w: usize, seed: u64) -> Self {
        let mut writer = Writer {
            shared,
            w,
            rng: Rng::new(seed),
            streams: Vec::new(),
            opened: 0,
            decided: Vec::new(),
            event_n: 0,
        };
        for _ in 0..STREAMS_PER_WRITER {
            let stream = writer.new_stream();
            writer.streams.push(stream);
        }
        writer
    }

    fn new_stream(&mut self) -> OpenStream {
        let category = self.rng.pick(&CATEGORIES);
        self.opened += 1;
        OpenStream {
            id: format!("{category}-w{}s{}", self.w, self.opened),
            version: None,
        }
    }

    fn retire(&mut self, s: usize) {
        self.streams[s] = self.new_stream();
    }

    async fn run(mut self) {
        let config = self.shared.config.clone();
        while !self.shared.stop_load.load(Ordering::SeqCst) {
            if !self.decided.is_empty() && self.rng.percent(config.duplicate_percent) {
                self.duplicate().await;
            } else {
                let s = self.rng.below(self.streams.len() as u64) as usize;
                let stale = self.streams[s].version.is_some_and(|v| v >= 1)
                    && self.rng.percent(config.stale_percent);
                self.append(s, stale).await;
            }
            let pace = self.rng.below(config.pace.as_millis() as u64 + 1);
            tokio::time::sleep(Duration::from_millis(pace)).await;
        }
    }

    fn via(&mut self) -> Via {
        if self.rng.percent(self.shared.config.kafka_percent) {
            Via::Kafka
        } else {
            Via::Http
        }
    }

    async fn append(&mut self, s: usize, stale: bool) {
        let stream = self.streams[s].id.clone();
        let version = self.streams[s].version;
        let expected = match (version, stale) {
            (Some(v), true) => json!(v - 1),
            (Some(v), false) => json!(v),
            (None, _) => json!("no_stream"),
        };
        let count = 1 + self.rng.below(3) as usize;
        let mut events = Vec::with_capacity(count);
        let mut event_ids = Vec::with_capacity(count);
        for _ in 0..count {
            let id = Uuid::new_v4();
            self.event_n += 1;
            event_ids.push(id);
            events.push(json!({"id": id, "type": self.rng.pick(&TYPES),
                "data": {"writer": self.w, "n": self.event_n},
                "metadata": {"correlation_id": format!("soak-{}-{}", self.w, self.event_n)}}));
        }
        let append_id = Uuid::new_v4();
        let body = json!({"expected_version": expected, "append_id": append_id, "events": events});
        let via = self.via();
        self.shared.history.record(AppendRecord {
            append_id,
            stream_id: stream.clone(),
            event_ids,
            expected_version: expected,
            via,
            stale,
            outcome: Outcome::Unknown,
        });
        if stale {
            bump(&self.shared.counters.conflicts_sent);
        }
        let outcome = match via {
            Via::Http => {
                let outcome = self.shared.send_http(&mut self.rng, &stream, &body).await;
                self.shared.history.resolve(append_id, outcome.clone());
                outcome
            }
            Via::Kafka => {
                self.shared
                    .send_kafka(&stream, append_id, &body, Purpose::Original)
                    .await
            }
        };
        let want_first = version.map_or(0, |v| v + 1);
        match (&outcome, stale) {
            (
                Outcome::Accepted {
                    first_version,
                    last_version,
                },
                false,
            ) if *first_version == want_first && *last_version == want_first + count as i64 - 1 => {
                self.streams[s].version = Some(*last_version);
                if *last_version >= STREAM_LENGTH {
                    self.retire(s);
                }
            }
            (Outcome::Rejected { code }, true) if code == "wrong_expected_version" => {}
            (Outcome::Unknown, _) => self.retire(s),
            (other, _) => {
                // The writer alone appends to its streams and knows their exact versions.
                self.shared.history.violation(
                    "concurrency_broken",
                    format!(
                        "append {append_id} on {stream} (expected {}, {count} events, stale {stale}) got {other:?}",
                        body["expected_version"]
                    ),
                );
                self.retire(s);
            }
        }
        if outcome.is_definite() {
            let decided = Decided {
                stream,
                append_id,
                body,
                outcome,
            };
            if self.decided.len() < REMEMBERED {
                self.decided.push(decided);
            } else {
                let i = self.rng.below(REMEMBERED as u64) as usize;
                self.decided[i] = decided;
            }
        }
    }

    /// Re-sends an append that has an outcome: the answer must be that outcome.
    async fn duplicate(&mut self) {
        let i = self.rng.below(self.decided.len() as u64) as usize;
        let (stream, append_id, body, expected) = {
            let d = &self.decided[i];
            (
                d.stream.clone(),
                d.append_id,
                d.body.clone(),
                d.outcome.clone(),
            )
        };
        bump(&self.shared.counters.duplicates_sent);
        match self.via() {
            Via::Http => {
                let got = self.shared.send_http(&mut self.rng, &stream, &body).await;
                self.shared.compare_duplicate(append_id, &expected, &got);
            }
            Via::Kafka => {
                // The results reader compares (also a late answer).
                self.shared
                    .send_kafka(&stream, append_id, &body, Purpose::Duplicate(expected))
                    .await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Background tasks: results reader, poller, faults, progress.
// ---------------------------------------------------------------------------------------------

/// Reads `append-results` from the beginning on a thread of its own until told to stop.
fn results_reader(
    shared: Arc<Shared>,
    brokers: String,
    topic: String,
) -> std::thread::JoinHandle<anyhow::Result<()>> {
    std::thread::spawn(move || {
        let consumer = kafka::reader_from_beginning(&brokers, &topic)?;
        while !shared.stop_results.load(Ordering::SeqCst) {
            // An error or nothing: the broker is away (paused) and the client reconnects.
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
                match message.payload().map(serde_json::from_slice::<Value>) {
                    Some(Ok(value)) => shared.on_result(&value),
                    _ => shared.history.violation(
                        "result_unreadable",
                        format!(
                            "append-results {}:{}",
                            message.partition(),
                            message.offset()
                        ),
                    ),
                }
            }
        }
        let _ = consumer.unassign();
        Ok(())
    })
}

/// Polls `events` for `global_position > last` in order, through every fault, until `stop`.
async fn poller(
    database_url: String,
    observation: Arc<Mutex<PollObservation>>,
    stop: Arc<AtomicBool>,
) {
    let mut pool = None;
    while !stop.load(Ordering::SeqCst) {
        if pool.is_none() {
            pool = esk_runtime::db::connect(&database_url, 1).await.ok();
        }
        let Some(db) = pool.as_ref() else {
            if let Ok(mut o) = observation.lock() {
                o.errors += 1;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        let last = observation.lock().map(|o| o.last).unwrap_or(0);
        let rows: Result<Vec<i64>, sqlx::Error> = sqlx::query_scalar(
            "SELECT global_position FROM events WHERE global_position > $1 ORDER BY global_position LIMIT 5000",
        )
        .bind(last)
        .fetch_all(db)
        .await;
        match rows {
            Ok(rows) => {
                let empty = rows.is_empty();
                if let Ok(mut o) = observation.lock() {
                    for position in rows {
                        o.observe(position);
                    }
                }
                if empty {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Err(_) => {
                if let Ok(mut o) = observation.lock() {
                    o.errors += 1;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Sleeps `duration`; true if `stop` was raised first.
async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, duration: Duration) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(duration) => false,
        _ = stop.wait_for(|s| *s) => true,
    };
    stopped || *stop.borrow()
}

/// Kills a random process every few seconds and restarts it shortly after; restarts any that
/// exited on its own. Returns the cluster when told to stop (the process it was restarting is
/// up again by then).
async fn killer(
    shared: Arc<Shared>,
    mut cluster: Cluster,
    mut stop: watch::Receiver<bool>,
    mut rng: Rng,
) -> anyhow::Result<Cluster> {
    let config = shared.config.clone();
    loop {
        let gap = rng.between(config.kill_every);
        if sleep_or_stop(&mut stop, gap).await {
            return Ok(cluster);
        }
        cluster.restart_all(&shared).await?;
        let i = rng.below(cluster.members.len() as u64) as usize;
        let name = cluster.members[i].name.clone();
        let at = shared.elapsed();
        let killed = Instant::now();
        cluster.kill(i)?;
        eprintln!("soak: {at:>6.1}s kill -9 {name}");
        let down = rng.between(config.down_for);
        sleep_or_stop(&mut stop, down).await;
        cluster.start(i).await?;
        shared.push_fault(Fault {
            kind: "kill".into(),
            target: Some(name),
            at_s: at,
            duration_s: round(killed.elapsed().as_secs_f64()),
            exit_code: None,
        });
    }
}

/// Restarts Postgres once and pauses the broker once, at their times in the load.
/// Both happen even when a slow Postgres restart pushes the pause past the nominal end of the
/// load: the load goes on until this returns.
async fn disruptor(shared: Arc<Shared>) -> anyhow::Result<()> {
    let config = shared.config.clone();
    let load = config.load;
    let pg_at = load.mul_f64(config.postgres_restart_at);
    let pause_at = load.mul_f64(config.broker_pause_at);
    let mut events = [(pg_at, "postgres_restart"), (pause_at, "broker_pause")];
    events.sort_by_key(|(at, _)| *at);
    let begin = Instant::now();
    for (at, kind) in events {
        tokio::time::sleep(at.saturating_sub(begin.elapsed())).await;
        let at_s = shared.elapsed();
        let started = Instant::now();
        if kind == "postgres_restart" {
            eprintln!("soak: {at_s:>6.1}s restarting Postgres");
            restart_postgres().await?;
        } else {
            let pid = broker_pid()?;
            eprintln!(
                "soak: {at_s:>6.1}s pausing the broker (pid {pid}) for {:.0}s",
                config.broker_pause.as_secs_f64()
            );
            let pause = BrokerPause::start(pid)?;
            tokio::time::sleep(config.broker_pause).await;
            drop(pause);
            eprintln!("soak: {:>6.1}s broker resumed", shared.elapsed());
        }
        shared.push_fault(Fault {
            kind: kind.into(),
            target: None,
            at_s,
            duration_s: round(started.elapsed().as_secs_f64()),
            exit_code: None,
        });
    }
    Ok(())
}

fn progress_line(shared: &Shared) -> String {
    let f = shared.history.figures();
    let faults = shared.faults();
    let rejected: u64 = f.rejected.values().sum();
    format!(
        "soak: {:>6.1}s appends {} (accepted {}, rejected {rejected}, unknown {}), duplicates {}, retries {}, faults {} (kills {})",
        shared.elapsed(),
        f.total,
        f.accepted,
        f.unknown,
        read(&shared.counters.duplicates_sent),
        read(&shared.counters.http_retries),
        faults.len(),
        faults.iter().filter(|f| f.kind == "kill").count(),
    )
}

async fn progress(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        eprintln!("{}", progress_line(&shared));
    }
}

/// A task aborted when dropped (an early return stops everything, and a broker pause in it is
/// resumed by its guard).
#[derive(Debug)]
struct Task<T>(Option<JoinHandle<T>>);

impl<T> Task<T> {
    fn spawn<F>(future: F) -> Self
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        Task(Some(tokio::spawn(future)))
    }

    async fn join(mut self) -> anyhow::Result<T> {
        match self.0.take() {
            Some(handle) => Ok(handle.await?),
            None => anyhow::bail!("task already joined"),
        }
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

/// Stops the results reader thread when dropped.
#[derive(Debug)]
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop_results.store(true, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// The run.
// ---------------------------------------------------------------------------------------------

/// Runs a soak on its own database and topics of the running stack and checks its history.
/// An `Err` is a failure to run it (the stack is unreachable, a process never started); the
/// invariants' failures are the report's violations.
pub async fn run(config: SoakConfig) -> anyhow::Result<SoakReport> {
    let run_started = Instant::now();
    let ctx = Arc::new(TestContext::with_database_prefix("soak", &config.database_prefix).await?);
    eprintln!(
        "soak: database {}{}, topics t-{}-*, seed {}, load {}s, {} writers",
        config.database_prefix,
        ctx.name,
        ctx.name,
        config.seed,
        config.load.as_secs(),
        config.writers
    );
    let mut cluster = Cluster::new(ctx.clone());
    for i in 0..cluster.members.len() {
        cluster.start(i).await?;
    }
    let shared = Arc::new(Shared {
        config: config.clone(),
        started: Instant::now(),
        history: History::default(),
        http: ctx.http()?,
        kafka_auth: ctx.kafka_auth(),
        ingest_urls: cluster.ingest_urls.clone(),
        producer: kafka::producer(&ctx.brokers)?,
        appends_topic: ctx.topics.appends.clone(),
        pending: Mutex::new(HashMap::new()),
        answered: Mutex::new(HashMap::new()),
        faults: Mutex::new(Vec::new()),
        exits: Mutex::new(Vec::new()),
        counters: Counters::default(),
        stop_load: AtomicBool::new(false),
        stop_results: AtomicBool::new(false),
    });
    let stop_results = StopOnDrop(shared.clone());
    let reader = results_reader(
        shared.clone(),
        ctx.brokers.clone(),
        ctx.topics.append_results.clone(),
    );
    let observation = Arc::new(Mutex::new(PollObservation::default()));
    let stop_poller = Arc::new(AtomicBool::new(false));
    let poll_task = Task::spawn(poller(
        ctx.database_url.clone(),
        observation.clone(),
        stop_poller.clone(),
    ));
    let _progress = Task::spawn(progress(shared.clone()));

    let mut seeds = Rng::new(config.seed);
    let (stop_faults, stop_rx) = watch::channel(false);
    let killer_task = Task::spawn(killer(
        shared.clone(),
        cluster,
        stop_rx,
        Rng::new(seeds.next()),
    ));
    let disruptor_task = Task::spawn(disruptor(shared.clone()));
    let writers: Vec<Task<()>> = (0..config.writers)
        .map(|w| Task::spawn(Writer::new(shared.clone(), w, seeds.next()).run()))
        .collect();

    tokio::time::sleep(config.load).await;
    disruptor_task.join().await??;
    resume_paused_broker();
    let load_s = shared.elapsed();
    eprintln!("soak: {load_s:>6.1}s load over; stopping faults, draining writers");
    shared.stop_load.store(true, Ordering::SeqCst);
    let _ = stop_faults.send(true);
    let mut cluster = killer_task.join().await??;
    cluster.restart_all(&shared).await?;
    for writer in writers {
        writer.join().await?;
    }

    // Late Kafka results (after the rebalances the kills caused).
    let deadline = Instant::now() + Duration::from_secs(90);
    while shared.unanswered_originals() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("{}", progress_line(&shared));
    // A process may have died since; everything must be up for the catch-up.
    cluster.restart_all(&shared).await?;

    let mut violations = shared.history.take_violations();
    let events_indexed = match indexer::wait_indexed(&ctx, 0, Duration::from_secs(180)).await {
        Ok(n) => n,
        Err(e) => {
            violations.add("not_indexed", e.to_string());
            indexer::event_count(&ctx).await?
        }
    };
    eprintln!(
        "soak: {:>6.1}s indexed {events_indexed} events; checking",
        shared.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while observation.lock().map(|o| o.last).unwrap_or(0) < events_indexed
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_poller.store(true, Ordering::SeqCst);
    poll_task.join().await?;
    let poll = observation.lock().map(|o| o.clone()).unwrap_or_default();
    eprintln!(
        "soak: {:>6.1}s the poller saw {} rows",
        shared.elapsed(),
        poll.rows_seen
    );

    let records = shared.history.records();
    violations.extend(
        history::check(
            &ctx,
            &records,
            &poll,
            events_indexed,
            Duration::from_secs(90),
        )
        .await?,
    );
    // Anything the results reader saw while the checks ran.
    violations.extend(shared.history.take_violations());
    drop(stop_results);
    match reader.join() {
        Ok(result) => result?,
        Err(_) => anyhow::bail!("the results reader panicked"),
    }
    drop(cluster);

    let exits = shared.exits.lock().map(|e| e.clone()).unwrap_or_default();
    Ok(SoakReport {
        seed: config.seed,
        database: format!("{}{}", config.database_prefix, ctx.name),
        duration_s: round(run_started.elapsed().as_secs_f64()),
        load_s,
        appends: shared.history.figures(),
        conflicts_sent: read(&shared.counters.conflicts_sent),
        duplicates: DuplicateFigures {
            sent: read(&shared.counters.duplicates_sent),
            matched: read(&shared.counters.duplicates_matched),
        },
        http_retries: read(&shared.counters.http_retries),
        kafka: KafkaFigures {
            requests: read(&shared.counters.kafka_requests),
            produce_errors: read(&shared.counters.produce_errors),
            result_repeats: read(&shared.counters.result_repeats),
        },
        faults: shared.faults(),
        exits,
        events_indexed,
        poller: poll,
        violations: violations.into_list(),
    })
}

/// Counts by kind (for a summary line).
pub fn violation_kinds(report: &SoakReport) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for v in &report.violations {
        *kinds.entry(v.kind.clone()).or_default() += 1;
    }
    kinds
}

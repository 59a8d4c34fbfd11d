//! `loadgen`: a load generator for the ingest HTTP API, running the same workload as the anchor
//! benchmark `seed_template_bench.py` so the two compare as a ratio.
//!
//! Workload: `--writers` concurrent writers, each owning its own streams
//! (`Order-<run id>-<writer>-<n>`, with a random run id so repeated runs never collide), append
//! `--batch` `ItemAdded` events at a time with an exact expected version (`"no_stream"` for a
//! stream's first append, then the stream's last version), and roll to a fresh stream every
//! `--stream-events` events.
//!
//! Responses: 201 is a success; 409 is a conflict (counted; the writer moves to a new stream);
//! 503 is retried with the very same body (same event ids, so the retry is idempotent) after a
//! short sleep and counted as a retry; anything else, or a transport failure, is counted as an
//! error and the writer moves to a new stream.
//!
//! `--in-flight K` lets each writer keep K appends in flight, each on a different stream it owns
//! (one sequential lane per in-flight append); the default 1 is the anchor's workload exactly.
//!
//! `--rate N` caps the total appends started per second across all writers: a token bucket shared
//! by the writers, filled at N per second and holding at most `--writers` tokens, so sends are
//! evenly spaced and, after a stall in which every writer waited for an answer, at most one
//! append per writer is sent at once to make up for it. Without it each writer sends as fast as it
//! gets answers. A 503 retry re-sends the same append and takes no token.
//!
//! `--streams-per-append K` (K > 1) makes every append an atomic multi-stream append
//! (`POST /appends`) of `--batch` events to each of K streams the writer owns, with an exact
//! expected version for each; a 409 moves the writer to K fresh streams.
//!
//! The first `--warmup-seconds` run the workload but are not measured. Throughput and latency
//! (first send of an append to its final response, retries included) cover the appends sent after
//! the warm-up; conflicts, retries and errors are counted over the whole run. The result is one
//! JSON line on stdout. The exit status is non-zero if there was any error or no measured append
//! succeeded.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use esk_client::{Client, ClientError, EncodedAppend, StatusCode};
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

/// Pause before re-sending an append that was answered 503.
const RETRY_SLEEP: Duration = Duration::from_millis(50);
/// How long after the end of the run a 503 is still retried before it counts as an error.
const RETRY_GRACE: Duration = Duration::from_secs(30);
/// Timeout of one HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Error messages printed to stderr per writer (the rest are only counted).
const ERRORS_REPORTED_PER_WRITER: u64 = 3;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "Drive the ingest HTTP API with the anchor workload and print one JSON line"
)]
struct Args {
    /// Base URL of the ingest HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Bearer token sent with every request (`esk token create`).
    #[arg(long, env = "ESK_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Concurrent writers, each with its own streams.
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// Measured duration, in seconds (after the warm-up).
    #[arg(long, default_value_t = 15.0)]
    seconds: f64,
    /// Events per append.
    #[arg(long, default_value_t = 5)]
    batch: usize,
    /// Events per stream before a writer moves to a new stream.
    #[arg(long, default_value_t = 50)]
    stream_events: usize,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 2.0)]
    warmup_seconds: f64,
    /// Runtime threads of the load generator itself (1 = single-threaded, like the anchor).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Total appends per second across all writers (default: as fast as answers come).
    #[arg(long)]
    rate: Option<f64>,
    /// Appends each writer keeps in flight, each on a different stream it owns (1: one at a
    /// time, like the anchor's writers).
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// Streams per append: above 1, each append is one atomic multi-stream append
    /// (`POST /appends`) of `--batch` events to each stream.
    #[arg(long, default_value_t = 1)]
    streams_per_append: usize,
}

/// The token bucket shared by all writers, for `--rate`, kept as the time at which the next
/// token is due: one token every `interval`, at most `burst` of them saved up.
#[derive(Debug)]
struct Pacer {
    interval: Duration,
    burst: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    fn new(rate: f64, burst: usize, start: Instant) -> anyhow::Result<Self> {
        let interval = Duration::try_from_secs_f64(1.0 / rate).context("--rate")?;
        let burst = interval.saturating_mul(u32::try_from(burst).unwrap_or(u32::MAX));
        Ok(Pacer {
            interval,
            burst,
            next: Mutex::new(start),
        })
    }

    /// Takes a token, waiting until it is due; false, without waiting, when it is due at `end`
    /// or later (so the run ends on time instead of sleeping for tokens it will not use).
    async fn wait(&self, end: Instant) -> bool {
        let due = {
            let mut next = match self.next.lock() {
                Ok(next) => next,
                Err(poisoned) => poisoned.into_inner(),
            };
            let now = Instant::now();
            // Tokens not taken for a while are kept, up to `burst` of them.
            let due = match now.checked_sub(self.burst) {
                Some(oldest) => (*next).max(oldest),
                None => *next,
            };
            *next = due + self.interval;
            due
        };
        if due >= end {
            return false;
        }
        tokio::time::sleep_until(due.into()).await;
        true
    }
}

/// When the phases of the run end.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    /// Appends sent from here on are measured.
    measure_from: Instant,
    /// No append is started after this.
    end: Instant,
}

/// What one writer saw.
#[derive(Debug, Default)]
struct WriterStats {
    /// Latency of each measured successful append, in milliseconds.
    latencies_ms: Vec<f64>,
    /// Events in measured successful appends.
    events: u64,
    conflicts: u64,
    retries_503: u64,
    errors: u64,
}

/// How one append ended.
#[derive(Debug)]
enum Outcome {
    /// 201, with each stream's new last version (in request order).
    Appended { last_versions: Vec<i64> },
    /// 409.
    Conflict,
    /// Anything else (after retrying 503s).
    Failed(String),
}

/// The JSON line printed at the end (fields in this order).
#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    writers: usize,
    streams_per_append: usize,
    in_flight_per_writer: usize,
    batch: usize,
    seconds: f64,
    events_per_s: u64,
    appends_per_s: u64,
    p50_ms: f64,
    p99_ms: f64,
    conflicts: u64,
    retries_503: u64,
    errors: u64,
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    anyhow::ensure!(args.writers > 0, "--writers must be at least 1");
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    anyhow::ensure!(
        args.streams_per_append > 0,
        "--streams-per-append must be at least 1"
    );
    anyhow::ensure!(args.stream_events > 0, "--stream-events must be at least 1");
    if let Some(rate) = args.rate {
        anyhow::ensure!(
            rate.is_finite() && rate > 0.0,
            "--rate must be a positive number of appends per second"
        );
    }
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let measured = Duration::try_from_secs_f64(args.seconds).context("--seconds")?;
    let warmup = Duration::try_from_secs_f64(args.warmup_seconds).context("--warmup-seconds")?;
    let lanes = args.in_flight.max(1);
    // One client for every writer: they share its connections.
    let mut builder = Client::builder(&args.url)
        .pool_max_idle_per_host(args.writers * lanes)
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(REQUEST_TIMEOUT);
    if let Some(token) = &args.token {
        builder = builder.token(token);
    }
    let client = Sender {
        client: builder.build().context("building the HTTP client")?,
        multi: multi_client(&args)?,
        token: args.token.clone(),
    };
    let run_id = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let payload = Arc::new(event_payloads(args.batch));

    let start = Instant::now();
    let pacer = match args.rate {
        Some(rate) => Some(Arc::new(Pacer::new(rate, args.writers * lanes, start)?)),
        None => None,
    };
    let schedule = Schedule {
        measure_from: start + warmup,
        end: start + warmup + measured,
    };
    let mut tasks = Vec::with_capacity(args.writers * lanes);
    // A writer with several appends in flight runs one sequential lane per in-flight append,
    // each on streams of its own, so expected versions stay exact.
    for (writer, lane) in (0..args.writers).flat_map(|w| (0..lanes).map(move |l| (w, l))) {
        let client = client.clone();
        let payload = Arc::clone(&payload);
        let prefix = format!("Order-{run_id}-{writer}-{lane}");
        let stream_events = args.stream_events;
        let streams = args.streams_per_append;
        let pacer = pacer.clone();
        tasks.push(tokio::spawn(async move {
            run_writer(
                &client,
                &prefix,
                streams,
                &payload,
                stream_events,
                schedule,
                pacer.as_deref(),
            )
            .await
        }));
    }
    let mut total = WriterStats::default();
    for task in futures::future::join_all(tasks).await {
        let stats = task.context("a writer task panicked")?;
        total.latencies_ms.extend(stats.latencies_ms);
        total.events += stats.events;
        total.conflicts += stats.conflicts;
        total.retries_503 += stats.retries_503;
        total.errors += stats.errors;
    }
    let elapsed = schedule.measure_from.elapsed().as_secs_f64();

    let mut latencies = total.latencies_ms;
    latencies.sort_by(f64::total_cmp);
    let appends = latencies.len() as f64;
    let report = Report {
        bench: if args.streams_per_append > 1 {
            "ingest-http-multi"
        } else {
            "ingest-http"
        },
        writers: args.writers,
        streams_per_append: args.streams_per_append,
        in_flight_per_writer: lanes,
        batch: args.batch,
        seconds: round2(elapsed),
        events_per_s: per_second(total.events as f64, elapsed),
        appends_per_s: per_second(appends, elapsed),
        p50_ms: round2(percentile(&latencies, 0.5)),
        p99_ms: round2(percentile(&latencies, 0.99)),
        conflicts: total.conflicts,
        retries_503: total.retries_503,
        errors: total.errors,
    };
    println!("{}", serde_json::to_string(&report)?);

    if report.errors > 0 {
        eprintln!("loadgen: {} append(s) failed", report.errors);
        return Ok(ExitCode::FAILURE);
    }
    if latencies.is_empty() {
        eprintln!("loadgen: no measured append succeeded");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The `data` of the events of one append, as JSON text: `{"sku": "sku-i", "qty": i,
/// "note": "xxx…"}`. Serialised once; every request embeds the same text.
fn event_payloads(batch: usize) -> Vec<String> {
    let note = "x".repeat(100);
    (0..batch)
        .map(|i| json!({"sku": format!("sku-{i}"), "qty": i, "note": note}).to_string())
        .collect()
}

/// One writer: appends to its own streams (`streams` at a time) until the schedule ends.
async fn run_writer(
    client: &Sender,
    prefix: &str,
    streams: usize,
    payload: &[String],
    stream_events: usize,
    schedule: Schedule,
    pacer: Option<&Pacer>,
) -> WriterStats {
    let mut stats = WriterStats::default();
    let mut stream = 0_u64;
    // Each stream's last version; `None` until its first append succeeded.
    let mut versions: Vec<Option<i64>> = vec![None; streams];
    let mut stream_len = 0_usize;
    let mut reported = 0_u64;
    loop {
        if let Some(pacer) = pacer {
            if !pacer.wait(schedule.end).await {
                break;
            }
        }
        let sent = Instant::now();
        if sent >= schedule.end {
            break;
        }
        if stream_len >= stream_events {
            (stream, stream_len) = (stream + 1, 0);
            versions.fill(None);
        }
        let stream_ids: Vec<String> = if streams == 1 {
            vec![format!("{prefix}-{stream}")]
        } else {
            (0..streams)
                .map(|k| format!("{prefix}-{stream}-s{k}"))
                .collect()
        };
        let (outcome, retries) = client
            .send(&stream_ids, &versions, payload, schedule.end)
            .await;
        let latency = sent.elapsed();
        stats.retries_503 += retries;
        match outcome {
            Outcome::Appended { last_versions } => {
                for (version, last) in versions.iter_mut().zip(last_versions) {
                    *version = Some(last);
                }
                stream_len += payload.len();
                if sent >= schedule.measure_from {
                    stats.latencies_ms.push(latency.as_secs_f64() * 1000.0);
                    stats.events += (payload.len() * streams) as u64;
                }
            }
            Outcome::Conflict => {
                stats.conflicts += 1;
                stream_len = stream_events;
            }
            Outcome::Failed(message) => {
                stats.errors += 1;
                if reported < ERRORS_REPORTED_PER_WRITER {
                    reported += 1;
                    eprintln!("loadgen: append to {stream_ids:?}: {message}");
                }
                // The streams' versions are unknown now: move on to fresh ones, after a pause so
                // a dead server is not hammered in a tight loop.
                stream_len = stream_events;
                tokio::time::sleep(RETRY_SLEEP).await;
            }
        }
    }
    stats
}

/// Sends appends: single-stream ones through the client crate, multi-stream ones as
/// `POST /appends`.
#[derive(Clone)]
struct Sender {
    client: Client,
    /// For multi-stream appends (`--streams-per-append` > 1).
    multi: Option<reqwest::Client>,
    token: Option<String>,
}

/// The HTTP client for multi-stream appends, when they are asked for.
fn multi_client(args: &Args) -> anyhow::Result<Option<reqwest::Client>> {
    if args.streams_per_append <= 1 {
        return Ok(None);
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.writers * args.in_flight.max(1))
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    Ok(Some(client))
}

impl Sender {
    /// Sends one append of `payload` to each of `stream_ids` (one stream: a plain append),
    /// re-sending the same body while the answer is 503. Returns the outcome and the number of
    /// retries.
    async fn send(
        &self,
        stream_ids: &[String],
        versions: &[Option<i64>],
        payload: &[String],
        end: Instant,
    ) -> (Outcome, u64) {
        match (&self.multi, stream_ids) {
            (Some(http), _) if stream_ids.len() > 1 => {
                let body = multi_body(stream_ids, versions, payload);
                self.send_multi(http, &body, end).await
            }
            _ => {
                let stream_id = stream_ids.first().map(String::as_str).unwrap_or_default();
                let body = append_body(versions.first().copied().flatten(), payload);
                send_append(&self.client, stream_id, &body, end).await
            }
        }
    }

    async fn send_multi(&self, http: &reqwest::Client, body: &str, end: Instant) -> (Outcome, u64) {
        let url = format!("{}/appends", self.client.base_url());
        let mut retries = 0;
        loop {
            let mut request = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.to_owned());
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(error) => {
                    return (Outcome::Failed(format!("request failed: {error}")), retries)
                }
            };
            let status = response.status().as_u16();
            match status {
                201 => {
                    let parsed = response.json::<MultiAppended>().await;
                    return match parsed {
                        Ok(appended) => (
                            Outcome::Appended {
                                last_versions: appended
                                    .results
                                    .iter()
                                    .map(|r| r.last_version)
                                    .collect(),
                            },
                            retries,
                        ),
                        Err(error) => (
                            Outcome::Failed(format!(
                                "201 with a body that does not parse: {error}"
                            )),
                            retries,
                        ),
                    };
                }
                409 => return (Outcome::Conflict, retries),
                503 if Instant::now() < end + RETRY_GRACE => {
                    retries += 1;
                    tokio::time::sleep(RETRY_SLEEP).await;
                }
                _ => {
                    let text = response.text().await.unwrap_or_default();
                    return (Outcome::Failed(format!("{status}: {text}")), retries);
                }
            }
        }
    }
}

/// The answer to an accepted multi-stream append, as far as the writer needs it.
#[derive(Debug, serde::Deserialize)]
struct MultiAppended {
    results: Vec<MultiResult>,
}

/// One stream's versions in a multi-stream answer.
#[derive(Debug, serde::Deserialize)]
struct MultiResult {
    last_version: i64,
}

/// The JSON body of one multi-stream append: `payload` (fresh event ids) to each stream.
fn multi_body(stream_ids: &[String], versions: &[Option<i64>], payload: &[String]) -> String {
    let appends: Vec<serde_json::Value> = stream_ids
        .iter()
        .zip(versions)
        .map(|(stream_id, version)| {
            let expected = match version {
                None => json!("no_stream"),
                Some(v) => json!(v),
            };
            let events: Vec<serde_json::Value> = payload
                .iter()
                .map(|data| {
                    let data: serde_json::Value =
                        serde_json::from_str(data).unwrap_or(serde_json::Value::Null);
                    json!({"id": Uuid::new_v4(), "type": "ItemAdded", "data": data})
                })
                .collect();
            json!({"stream_id": stream_id, "expected_version": expected, "events": events})
        })
        .collect();
    json!({ "appends": appends }).to_string()
}

/// The JSON body of one append (fresh event ids), written once so retries send identical
/// bytes. Built as text: the loadgen shares the machine with what it measures.
fn append_body(version: Option<i64>, payload: &[String]) -> EncodedAppend {
    use std::fmt::Write as _;
    let mut body = String::with_capacity(64 + payload.iter().map(|d| d.len() + 80).sum::<usize>());
    match version {
        None => body.push_str(r#"{"expected_version":"no_stream","events":["#),
        Some(v) => {
            let _ = write!(body, r#"{{"expected_version":{v},"events":["#);
        }
    }
    for (i, data) in payload.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        // Writing into a String cannot fail.
        let _ = write!(
            body,
            r#"{{"id":"{}","type":"ItemAdded","data":{data}}}"#,
            Uuid::new_v4()
        );
    }
    body.push_str("]}");
    EncodedAppend::from_json(body)
}

/// Sends one append, re-sending the same body while the answer is 503. Returns the outcome and
/// the number of retries.
async fn send_append(
    client: &Client,
    stream_id: &str,
    body: &EncodedAppend,
    end: Instant,
) -> (Outcome, u64) {
    let mut retries = 0;
    loop {
        let error = match client.append_encoded(stream_id, body).await {
            Ok(appended) => {
                let last_versions = vec![appended.last_version.get()];
                return (Outcome::Appended { last_versions }, retries);
            }
            Err(error) => error,
        };
        // By status, whatever the body: a proxy's 503 is retried too.
        match error.status() {
            Some(StatusCode::CONFLICT) => return (Outcome::Conflict, retries),
            Some(StatusCode::SERVICE_UNAVAILABLE) if Instant::now() < end + RETRY_GRACE => {
                retries += 1;
                tokio::time::sleep(RETRY_SLEEP).await;
            }
            _ => return (Outcome::Failed(failure(&error)), retries),
        }
    }
}

/// How a failed append is reported.
fn failure(error: &ClientError) -> String {
    match error {
        // As before the client: the transport error with its causes.
        ClientError::Transport { source, .. } => {
            let mut message = format!("request failed: {source}");
            let mut cause = std::error::Error::source(source);
            while let Some(inner) = cause {
                message.push_str(&format!(": {inner}"));
                cause = inner.source();
            }
            message
        }
        ClientError::Unexpected {
            status,
            reason,
            body,
            ..
        } => format!("{status}: {reason}: {body}"),
        _ => match error.status() {
            Some(status) => format!("{status}: {error}"),
            None => error.to_string(),
        },
    }
}

/// The anchor's percentile: `sorted[min(n - 1, floor(q * n))]`; 0 when there are no samples.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((q * sorted.len() as f64) as usize).min(sorted.len() - 1);
    sorted[index]
}

fn per_second(count: f64, seconds: f64) -> u64 {
    if seconds > 0.0 {
        (count / seconds).round() as u64
    } else {
        0
    }
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// mimalloc: measurably faster than glibc malloc on the allocation-heavy paths (JSON, records).
#[global_allocator]
static GLOBAL_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pacer_gives_no_token_due_after_the_end() -> anyhow::Result<()> {
        let start = Instant::now();
        // 10 per second, none saved up: tokens due at 0, 100 and 200 ms before an end at 250.
        let pacer = Pacer::new(10.0, 1, start)?;
        let end = start + Duration::from_millis(250);
        let mut taken = 0;
        while pacer.wait(end).await {
            taken += 1;
        }
        assert_eq!(taken, 3);
        // The refused token is not waited for: the run ends on time.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(290), "{elapsed:?}");
        Ok(())
    }
}

//! `fill_ingest_log`: leaves behind exactly what committed ingest attempts would, without running
//! ingest, so the indexer can be timed alone on a full `ingest-log`.
//!
//! For `--events` events (`ItemAdded`, data `{"sku": "sku-i", "qty": i, "note": "xxx…"}` with i
//! the event's place in its append, like `loadgen`), in streams of `--streams-every` events
//! (`<prefix>-<n>`, versions from 0) split into appends of `--batch` events, `--attempt-appends`
//! appends per attempt id:
//! - Postgres (one transaction, COPY): an `append_ledger` row per append (status `accepted`, its
//!   first and last versions; append id and fingerprint are the UUIDv5 that ingest derives from
//!   the stream and event ids), an `event_claims` row per event, and a `streams` row per stream
//!   at its final version;
//! - then every attempt's events to the `--topic` (ingest-log) topic as ingest writes them: one
//!   format-2 record (`esk_model::ingest_log`) per partition the attempt writes to, placed by
//!   [`esk_runtime::kafka::partition_for_key`] of the stream id, with the same headers ingest
//!   sets, through the idempotent producer of [`esk_runtime::kafka::producer_config`] with many
//!   records in flight.
//!
//! The database must already have the schema (`esk setup` or `esk migrate`). Prints one JSON line.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Parser;
use esk_model::event::derived_append_id;
use esk_model::ingest_log::{BatchEncoder, BatchEventRef};
use esk_model::wire::IngestLogEventRef;
use esk_runtime::kafka::partition_for_key;
use esk_runtime::records::{ingest_log_batch_headers, ingest_log_headers};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use serde::Serialize;
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use uuid::Uuid;

/// Bytes of COPY data sent to Postgres at a time.
const COPY_CHUNK_BYTES: usize = 1 << 20;
/// Largest record events share: ingest's default (`ESK_INGEST_LOG_RECORD_BYTES`).
const RECORD_BYTES: usize = 1 << 20;
/// How long a record may wait in the producer's queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(60);

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "fill_ingest_log",
    about = "Write committed appends to Postgres and their events to ingest-log, for indexer benchmarks"
)]
struct Args {
    /// Postgres connection string (the database must have the schema).
    #[arg(
        long,
        env = "ESK_DATABASE_URL",
        default_value = "postgres://esk:esk@127.0.0.1:5433/esk"
    )]
    database_url: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "ESK_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The ingest-log topic (must exist).
    #[arg(long, env = "ESK_TOPIC_INGEST_LOG", default_value = "ingest-log")]
    topic: String,
    /// Events to write.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Events per append.
    #[arg(long, default_value_t = 5)]
    batch: u64,
    /// Events per stream (a new stream every this many events).
    #[arg(long, default_value_t = 50)]
    streams_every: u64,
    /// Appends per attempt id.
    #[arg(long, default_value_t = 100)]
    attempt_appends: u64,
    /// Stream id prefix [default: `Order-fill<random>`].
    #[arg(long)]
    stream_prefix: Option<String>,
    /// Records awaited as one group (producing does not wait for each delivery).
    #[arg(long, default_value_t = 50_000)]
    in_flight: usize,
    /// Record format: 2 (what ingest writes) or 1 (one event per record, the earlier format;
    /// to compare the two, or to check an indexer on what an older ingest left).
    #[arg(long, env = "ESK_FILL_INGEST_LOG_FORMAT", default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    format: u8,
}

/// One append of the plan.
#[derive(Debug)]
struct PlannedAppend {
    append_id: Uuid,
    attempt: usize,
    stream: usize,
    first_version: i64,
    /// Index of its first event in the event id list.
    first_event: usize,
    count: usize,
}

/// Everything that gets written, decided up front.
#[derive(Debug)]
struct Plan {
    streams: Vec<String>,
    /// Final version of each stream.
    stream_versions: Vec<i64>,
    event_ids: Vec<Uuid>,
    appends: Vec<PlannedAppend>,
    /// (attempt id, created_at) per attempt.
    attempts: Vec<(Uuid, DateTime<Utc>)>,
}

/// The JSON line printed at the end.
#[derive(Debug, Serialize)]
struct Report {
    tool: &'static str,
    topic: String,
    events: u64,
    appends: usize,
    streams: usize,
    attempts: usize,
    db_seconds: f64,
    produce_seconds: f64,
    produce_events_per_s: u64,
    seconds: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.events > 0, "--events must be at least 1");
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    anyhow::ensure!(args.streams_every > 0, "--streams-every must be at least 1");
    anyhow::ensure!(
        args.attempt_appends > 0,
        "--attempt-appends must be at least 1"
    );
    anyhow::ensure!(args.in_flight > 0, "--in-flight must be at least 1");
    let started = Instant::now();
    let prefix = args
        .stream_prefix
        .clone()
        .unwrap_or_else(|| format!("Order-fill{}", &Uuid::new_v4().simple().to_string()[..8]));
    let plan = make_plan(&args, &prefix);

    let db_started = Instant::now();
    write_database(&args.database_url, &plan)
        .await
        .context("writing the ledger, claims and streams")?;
    let db_seconds = db_started.elapsed().as_secs_f64();

    let produce_started = Instant::now();
    produce(&args, &plan)
        .await
        .with_context(|| format!("producing to {}", args.topic))?;
    let produce_seconds = produce_started.elapsed().as_secs_f64();

    let report = Report {
        tool: "fill_ingest_log",
        topic: args.topic.clone(),
        events: plan.event_ids.len() as u64,
        appends: plan.appends.len(),
        streams: plan.streams.len(),
        attempts: plan.attempts.len(),
        db_seconds: round2(db_seconds),
        produce_seconds: round2(produce_seconds),
        produce_events_per_s: if produce_seconds > 0.0 {
            (plan.event_ids.len() as f64 / produce_seconds).round() as u64
        } else {
            0
        },
        seconds: round2(started.elapsed().as_secs_f64()),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Streams of `streams_every` events (the last may be shorter), each cut into appends of at most
/// `batch` events; `attempt_appends` consecutive appends share an attempt id.
fn make_plan(args: &Args, prefix: &str) -> Plan {
    let total = args.events as usize;
    let per_stream = args.streams_every as usize;
    let batch = args.batch as usize;
    let per_attempt = args.attempt_appends as usize;
    let event_ids: Vec<Uuid> = (0..total).map(|_| Uuid::new_v4()).collect();
    let mut streams = Vec::new();
    let mut stream_versions = Vec::new();
    let mut appends = Vec::new();
    let mut attempts = Vec::new();
    let mut next_event = 0;
    while next_event < total {
        let stream = streams.len();
        let name = format!("{prefix}-{stream}");
        let length = per_stream.min(total - next_event);
        let mut version = 0;
        while version < length {
            let count = batch.min(length - version);
            let first_event = next_event + version;
            if appends.len() % per_attempt == 0 {
                attempts.push((Uuid::new_v4(), Utc::now()));
            }
            let ids = event_ids[first_event..first_event + count].iter().copied();
            appends.push(PlannedAppend {
                append_id: derived_append_id(&name, ids),
                attempt: attempts.len() - 1,
                stream,
                first_version: version as i64,
                first_event,
                count,
            });
            version += count;
        }
        streams.push(name);
        stream_versions.push(length as i64 - 1);
        next_event += length;
    }
    Plan {
        streams,
        stream_versions,
        event_ids,
        appends,
        attempts,
    }
}

/// The ledger, the claims and the stream index, in one transaction (what the attempts committed).
async fn write_database(url: &str, plan: &Plan) -> anyhow::Result<()> {
    let options: PgConnectOptions = url.parse().context("parsing the database url")?;
    let mut conn = options.connect().await.context("connecting to Postgres")?;
    let mut tx = conn.begin().await?;

    let ledger = plan.appends.iter().map(|a| {
        let stream = &plan.streams[a.stream];
        let last = a.first_version + a.count as i64 - 1;
        let (attempt_id, _) = plan.attempts[a.attempt];
        // Fingerprint = the derived append id: the same UUIDv5 over stream and event ids.
        format!(
            "{id}\t{attempt_id}\t{stream}\t{id}\t{count}\taccepted\t{first}\t{last}\n",
            id = a.append_id,
            count = a.count,
            first = a.first_version,
        )
    });
    copy_text(
        &mut tx,
        "COPY append_ledger (append_id, attempt_id, stream_id, fingerprint, event_count, status, \
         first_version, last_version) FROM STDIN",
        ledger,
    )
    .await
    .context("COPY append_ledger")?;

    let claims = plan.appends.iter().flat_map(|a| {
        plan.event_ids[a.first_event..a.first_event + a.count]
            .iter()
            .map(move |id| format!("{id}\t{}\n", a.append_id))
    });
    copy_text(
        &mut tx,
        "COPY event_claims (event_id, append_id) FROM STDIN",
        claims,
    )
    .await
    .context("COPY event_claims")?;

    let streams = plan
        .streams
        .iter()
        .zip(&plan.stream_versions)
        .map(|(stream, version)| format!("{stream}\t{version}\n"));
    copy_text(
        &mut tx,
        "COPY streams (stream_id, version) FROM STDIN",
        streams,
    )
    .await
    .context("COPY streams")?;

    tx.commit().await?;
    conn.close().await?;
    Ok(())
}

/// Streams text-format COPY lines (the values hold no tabs, newlines or backslashes).
async fn copy_text(
    conn: &mut PgConnection,
    statement: &str,
    lines: impl Iterator<Item = String>,
) -> anyhow::Result<u64> {
    let mut copy = conn.copy_in_raw(statement).await?;
    let mut buf = Vec::with_capacity(COPY_CHUNK_BYTES + 4096);
    for line in lines {
        buf.extend_from_slice(line.as_bytes());
        if buf.len() >= COPY_CHUNK_BYTES {
            if let Err(error) = copy.send(std::mem::take(&mut buf)).await {
                let _ = copy.abort("send failed").await;
                return Err(error.into());
            }
            buf.reserve(COPY_CHUNK_BYTES + 4096);
        }
    }
    if !buf.is_empty() {
        if let Err(error) = copy.send(buf).await {
            let _ = copy.abort("send failed").await;
            return Err(error.into());
        }
    }
    Ok(copy.finish().await?)
}

/// Produces every event in append order, without waiting for each delivery: deliveries are
/// awaited in groups of `--in-flight`, or early when the producer's queue is full.
async fn produce(args: &Args, plan: &Plan) -> anyhow::Result<()> {
    let producer: FutureProducer =
        esk_runtime::kafka::producer_config(&esk_runtime::kafka::KafkaSettings::new(&args.brokers))
            .create()
            .context("creating the producer")?;
    let note = "x".repeat(100);
    let payloads: Vec<Box<serde_json::value::RawValue>> = (0..args.batch)
        .map(|i| {
            serde_json::value::to_raw_value(
                &json!({"sku": format!("sku-{i}"), "qty": i, "note": note}),
            )
        })
        .collect::<Result<_, _>>()?;
    let settings = esk_runtime::kafka::KafkaSettings::new(&args.brokers);
    let partitions = esk_runtime::kafka::existing_partitions(&settings, &args.topic).await?;
    let mut pending: Vec<DeliveryFuture> = Vec::with_capacity(args.in_flight);
    // The appends of one attempt are consecutive in the plan: each attempt's events go out as
    // ingest writes them, one format-2 record per partition (split at the record budget).
    let mut appends = plan.appends.iter().peekable();
    while let Some(first) = appends.next() {
        let (attempt_id, created_at) = plan.attempts[first.attempt];
        let mut attempt = vec![first];
        while let Some(next) = appends.next_if(|a| a.attempt == first.attempt) {
            attempt.push(next);
        }
        if args.format == 1 {
            produce_one_event_records(args, plan, &producer, &attempt, &payloads, &mut pending)
                .await?;
            continue;
        }
        let mut parts: BTreeMap<i32, (BatchEncoder, Vec<&str>)> = BTreeMap::new();
        for append in attempt {
            let stream = plan.streams[append.stream].as_str();
            let partition = partition_for_key(stream.as_bytes(), partitions);
            let (encoder, streams) = match parts.entry(partition) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert((
                    BatchEncoder::new(attempt_id, created_at, RECORD_BYTES)?,
                    Vec::new(),
                )),
            };
            for (k, data) in payloads.iter().take(append.count).enumerate() {
                encoder.push(&BatchEventRef {
                    event_id: plan.event_ids[append.first_event + k],
                    stream_id: stream,
                    version: append.first_version + k as i64,
                    event_type: "ItemAdded",
                    data,
                    metadata: None,
                    append_id: append.append_id,
                })?;
                streams.push(stream);
            }
        }
        let attempt_text = attempt_id.to_string();
        for (partition, (encoder, streams)) in parts {
            for batch in encoder.finish() {
                let key = streams.get(batch.first_event).copied().unwrap_or_default();
                let record = FutureRecord::to(&args.topic)
                    .key(key)
                    .partition(partition)
                    .payload(batch.value.as_slice())
                    .headers(ingest_log_batch_headers(&attempt_text, batch.events));
                enqueue(&producer, record, &mut pending, args.in_flight).await?;
            }
        }
    }
    await_deliveries(&mut pending).await?;
    producer
        .flush(QUEUE_TIMEOUT)
        .context("flushing the producer")?;
    Ok(())
}

/// The records of one attempt in the earlier format 1: one per event, keyed by stream id (the
/// client places it), for comparing the two formats and for indexer upgrade checks.
async fn produce_one_event_records(
    args: &Args,
    plan: &Plan,
    producer: &FutureProducer,
    attempt: &[&PlannedAppend],
    payloads: &[Box<serde_json::value::RawValue>],
    pending: &mut Vec<DeliveryFuture>,
) -> anyhow::Result<()> {
    for append in attempt {
        let stream = plan.streams[append.stream].as_str();
        let (attempt_id, created_at) = plan.attempts[append.attempt];
        for (k, data) in payloads.iter().take(append.count).enumerate() {
            let value = IngestLogEventRef {
                event_id: plan.event_ids[append.first_event + k],
                stream_id: stream,
                version: append.first_version + k as i64,
                event_type: "ItemAdded",
                data,
                metadata: None,
                append_id: append.append_id,
                attempt_id,
                created_at,
            };
            let payload = serde_json::to_vec(&value)?;
            let record = FutureRecord::to(&args.topic)
                .key(stream)
                .payload(payload.as_slice())
                .headers(ingest_log_headers(&value, None, None));
            enqueue(producer, record, pending, args.in_flight).await?;
        }
    }
    Ok(())
}

/// Enqueues `record`, waiting out a full local queue; awaits the deliveries once `in_flight`
/// are outstanding.
async fn enqueue(
    producer: &FutureProducer,
    mut record: FutureRecord<'_, str, [u8]>,
    pending: &mut Vec<DeliveryFuture>,
    in_flight: usize,
) -> anyhow::Result<()> {
    loop {
        match producer.send_result(record) {
            Ok(delivery) => {
                pending.push(delivery);
                break;
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                if pending.is_empty() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                } else {
                    await_deliveries(pending).await?;
                }
            }
            Err((error, _)) => return Err(error.into()),
        }
    }
    if pending.len() >= in_flight {
        await_deliveries(pending).await?;
    }
    Ok(())
}

/// Waits for every outstanding delivery; the first failure is the error.
async fn await_deliveries(pending: &mut Vec<DeliveryFuture>) -> anyhow::Result<()> {
    for result in futures::future::join_all(pending.drain(..)).await {
        match result {
            Ok(Ok(_)) => {}
            Ok(Err((error, _))) => return Err(anyhow::Error::new(error).context("delivery failed")),
            Err(_) => anyhow::bail!("the producer dropped a delivery"),
        }
    }
    Ok(())
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// mimalloc: measurably faster than glibc malloc on the allocation-heavy paths (JSON, records).
#[global_allocator]
static GLOBAL_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

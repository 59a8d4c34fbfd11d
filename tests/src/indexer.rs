//! Driving the indexer binary and checking the events table.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rdkafka::message::Headers;
use rdkafka::Message;
use uuid::Uuid;

use crate::process::Process;
use crate::{eventually, kafka, TestContext};

/// Starts `indexer` on the test's database and topics.
pub async fn spawn(ctx: &TestContext, extra_env: &[(&str, &str)]) -> anyhow::Result<Process> {
    let mut env = ctx.env();
    env.extend(
        extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    Process::spawn("indexer", &env, crate::process::INDEXER, &[]).await
}

/// Rows in `events`.
pub async fn event_count(ctx: &TestContext) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&ctx.pool)
        .await?)
}

/// Events accepted according to the ledger.
pub async fn accepted_event_count(ctx: &TestContext) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(sum(event_count), 0)::int8 FROM append_ledger WHERE status = 'accepted'",
    )
    .fetch_one(&ctx.pool)
    .await?)
}

/// Waits until `events` holds exactly what the ledger accepted (and at least `min` rows).
pub async fn wait_indexed(ctx: &TestContext, min: i64, timeout: Duration) -> anyhow::Result<i64> {
    let done = eventually(timeout, || async {
        let indexed = event_count(ctx).await.ok()?;
        let accepted = accepted_event_count(ctx).await.ok()?;
        (indexed >= min && indexed == accepted).then_some(indexed)
    })
    .await;
    match done {
        Some(n) => Ok(n),
        None => anyhow::bail!(
            "not indexed in {timeout:?}: {} of {} accepted",
            event_count(ctx).await?,
            accepted_event_count(ctx).await?
        ),
    }
}

/// Checks the table's invariants: event ids unique, versions contiguous from 0 per stream and
/// matching the stream index, global positions exactly 1..=N.
pub async fn check_table(ctx: &TestContext) -> anyhow::Result<()> {
    let (rows, distinct_ids, min_pos, max_pos): (i64, i64, Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT event_id), min(global_position), max(global_position) FROM events",
    )
    .fetch_one(&ctx.pool)
    .await?;
    anyhow::ensure!(
        rows == distinct_ids,
        "duplicate event ids: {rows} rows, {distinct_ids} ids"
    );
    if rows > 0 {
        anyhow::ensure!(
            min_pos == Some(1) && max_pos == Some(rows),
            "positions not 1..={rows}: {min_pos:?}..{max_pos:?}"
        );
    }
    let broken: Vec<(String, i64, i64, Option<i64>)> = sqlx::query_as(
        "SELECT e.stream_id, count(*), max(e.version), s.version
         FROM events e LEFT JOIN streams s USING (stream_id)
         GROUP BY e.stream_id, s.version
         HAVING count(*) <> max(e.version) + 1 OR min(e.version) <> 0 OR s.version IS DISTINCT FROM max(e.version)",
    )
    .fetch_all(&ctx.pool)
    .await?;
    anyhow::ensure!(
        broken.is_empty(),
        "streams with gaps or mismatched index: {broken:?}"
    );
    // Per stream, positions increase with versions.
    let disordered: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (
            SELECT global_position < lag(global_position) OVER (PARTITION BY stream_id ORDER BY version) AS bad
            FROM events) t WHERE bad",
    )
    .fetch_one(&ctx.pool)
    .await?;
    anyhow::ensure!(disordered == 0, "{disordered} events out of version order");
    Ok(())
}

/// What the canonical topic held, once checked.
#[derive(Debug, Default)]
pub struct CanonicalTopic {
    /// Records read, repeats included.
    pub records: usize,
    /// Distinct global positions.
    pub positions: HashSet<i64>,
    /// Distinct event ids.
    pub event_ids: HashSet<Uuid>,
}

/// Reads the canonical topic and checks it: every indexed event at least once, and per
/// partition, positions increase once repeats are removed (a crash may repeat, never reorder).
/// Reads until the topic is idle for 3 s (the read blocks this thread).
pub async fn check_canonical_topic(
    ctx: &TestContext,
    expected: i64,
) -> anyhow::Result<CanonicalTopic> {
    let records = kafka::read_topic_until_idle(
        &ctx.brokers,
        &ctx.topics.events,
        Duration::from_secs(3),
        Duration::from_secs(120),
    )?;
    let mut topic = CanonicalTopic {
        records: records.len(),
        ..CanonicalTopic::default()
    };
    let mut last_per_partition: HashMap<i32, i64> = HashMap::new();
    let mut versions_per_stream: HashMap<String, i64> = HashMap::new();
    for record in &records {
        let value = kafka::json_payload(record)?;
        let position = value["global_position"].as_i64().unwrap_or(-1);
        let header = record
            .headers()
            .and_then(|h| {
                h.iter()
                    .find(|h| h.key == "global_position")
                    .and_then(|h| h.value)
            })
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<i64>().ok());
        anyhow::ensure!(
            header == Some(position),
            "global_position header {header:?} for {position}"
        );
        if let Some(id) = value["event_id"].as_str().and_then(|s| s.parse().ok()) {
            topic.event_ids.insert(id);
        }
        let last = last_per_partition.entry(record.partition()).or_insert(0);
        if topic.positions.insert(position) {
            anyhow::ensure!(
                position > *last,
                "partition {} reordered: {position} after {last}",
                record.partition()
            );
            *last = position;
            let stream = value["stream_id"].as_str().unwrap_or_default().to_owned();
            let version = value["version"].as_i64().unwrap_or(-1);
            let prev = versions_per_stream.insert(stream.clone(), version);
            anyhow::ensure!(
                prev.map_or(version == 0, |p| version == p + 1),
                "stream {stream}: version {version} after {prev:?}"
            );
        }
    }
    anyhow::ensure!(
        topic.positions.len() as i64 == expected,
        "{} distinct events on the topic, {expected} indexed",
        topic.positions.len()
    );
    Ok(topic)
}

/// Scrapes a process's `/metrics` into name{labels} → value.
pub async fn metrics(process: &Process) -> anyhow::Result<HashMap<String, f64>> {
    let text = reqwest::get(format!("{}/metrics", process.admin))
        .await?
        .text()
        .await?;
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((name, value)) = line.rsplit_once(' ') {
            if let Ok(v) = value.parse::<f64>() {
                let base = name.split('{').next().unwrap_or(name).to_owned();
                *out.entry(base).or_insert(0.0) += v;
            }
        }
    }
    Ok(out)
}

/// Sleeps briefly; tests use it to let background work progress.
pub async fn pause(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

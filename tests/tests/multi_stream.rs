//! Atomic multi-stream appends end to end (issue #14 item 1, invariant I7): ingest, two indexers
//! (the leader killed with -9 and restarted mid-load), the events table, paged `$all` reads and
//! the canonical topic. Concurrent writers append to shared streams, multi-stream and single
//! appends mixed; while they run, a `global_position > X` poller and an HTTP reader paging `$all`
//! with tiny pages record what they saw. Afterwards a checker over those histories and the
//! final table decides: every acknowledged append exactly once, each multi-stream append's
//! events under one group with contiguous positions, no poll or page that saw part of a group,
//! and every canonical record of a group carrying its headers.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use esk_model::wire::header;
use esk_tests::indexer::{self, check_canonical_topic, check_table, wait_indexed};
use esk_tests::ingest;
use esk_tests::process::Process;
use esk_tests::{kafka, TestContext};
use serde_json::{json, Value};
use uuid::Uuid;

const HTTP_ONLY: &[(&str, &str)] = &[("ESK_INGEST_KAFKA_APPENDS", "false")];
/// Streams the writers share (so multi-stream appends overlap and contend).
const STREAMS: usize = 8;
/// Writers of multi-stream appends.
const MULTI_WRITERS: usize = 4;

/// Tells the background readers and writers to stop.
#[derive(Debug, Clone, Default)]
struct Stop(Arc<AtomicBool>);

impl Stop {
    fn new() -> Self {
        Self::default()
    }
    fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Ingest's base URL, which changes when the test restarts it.
#[derive(Debug, Clone)]
struct Endpoint(Arc<Mutex<String>>);

impl Endpoint {
    fn new(base: &str) -> Self {
        Endpoint(Arc::new(Mutex::new(base.to_owned())))
    }
    fn url(&self, path: &str) -> String {
        let base = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        format!("{base}{path}")
    }
    fn set(&self, base: &str) {
        if let Ok(mut current) = self.0.lock() {
            *current = base.to_owned();
        }
    }
}

/// An acknowledged append: its id and, per stream, the versions it got.
#[derive(Debug, Clone)]
struct Acknowledged {
    append_id: Uuid,
    /// (stream, first version, last version), in request order.
    parts: Vec<(String, i64, i64)>,
}

impl Acknowledged {
    fn events(&self) -> i64 {
        self.parts.iter().map(|(_, f, l)| l - f + 1).sum()
    }
}

/// A row of the events table as the checker needs it.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    global_position: i64,
    stream_id: String,
    version: i64,
    group_append_id: Option<Uuid>,
    group_first_position: Option<i64>,
    group_last_position: Option<i64>,
}

const ROW_COLUMNS: &str = "global_position, stream_id, version, group_append_id, \
    group_first_position, group_last_position";

fn stream(n: usize) -> String {
    format!("Acct-{n}")
}

/// Sends `body` to `path` until it gets a definite answer (201 or 409), re-sending the same body
/// (same append id: idempotent) while the answer is 503 or the connection fails (ingest killed
/// and restarted meanwhile). `None`: no definite answer in time.
async fn send_until_definite(
    http: &reqwest::Client,
    endpoint: &Endpoint,
    path: &str,
    body: &Value,
) -> Option<(u16, Value)> {
    for _ in 0..300 {
        if let Ok(response) = http.post(endpoint.url(path)).json(body).send().await {
            let status = response.status().as_u16();
            let value = response.json::<Value>().await.unwrap_or(Value::Null);
            if status == 201 || status == 409 {
                return Some((status, value));
            }
            assert_eq!(status, 503, "unexpected answer to {body}: {value}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// One writer of multi-stream appends: each over 2 or 3 of the shared streams (a varying
/// selection and order), 1 or 2 events per stream, expected version `any`.
async fn multi_writer(
    http: reqwest::Client,
    endpoint: Endpoint,
    writer: usize,
    acknowledged: Arc<Mutex<Vec<Acknowledged>>>,
    stop: Stop,
) {
    let mut i = 0;
    while !stop.is_cancelled() {
        i += 1;
        let width = 2 + (i + writer) % 2;
        let streams: Vec<String> = (0..width)
            .map(|k| stream((writer * 3 + i * 5 + k * 3) % STREAMS))
            .collect();
        let mut streams_unique = streams.clone();
        streams_unique.sort();
        streams_unique.dedup();
        if streams_unique.len() < 2 {
            continue;
        }
        let append_id = Uuid::new_v4();
        let appends: Vec<Value> = streams_unique
            .iter()
            .rev()
            .map(|s| {
                let events: Vec<Value> = (0..1 + (i % 2)).map(|_| ingest::event("Moved")).collect();
                json!({"stream_id": s, "expected_version": "any", "events": events})
            })
            .collect();
        let body = json!({"append_id": append_id, "appends": appends});
        let Some((status, answer)) = send_until_definite(&http, &endpoint, "/appends", &body).await
        else {
            continue;
        };
        assert_eq!(status, 201, "an `any` append is accepted: {answer}");
        let results = answer["results"].as_array().cloned().unwrap_or_default();
        assert_eq!(results.len(), appends.len(), "{answer}");
        let parts = results
            .iter()
            .map(|r| {
                (
                    r["stream_id"].as_str().unwrap_or_default().to_owned(),
                    r["first_version"].as_i64().unwrap_or(-1),
                    r["last_version"].as_i64().unwrap_or(-1),
                )
            })
            .collect();
        if let Ok(mut list) = acknowledged.lock() {
            list.push(Acknowledged { append_id, parts });
        }
    }
}

/// Single appends to the same streams, so groups interleave with ordinary events.
async fn single_writer(http: reqwest::Client, endpoint: Endpoint, stop: Stop) {
    let mut i = 0;
    while !stop.is_cancelled() {
        let path = format!("/streams/{}/events", stream(i % STREAMS));
        let body = json!({"append_id": Uuid::new_v4(), "expected_version": "any",
            "events": [ingest::event("Noted")]});
        let _ = send_until_definite(&http, &endpoint, &path, &body).await;
        i += 1;
    }
}

/// Polls `global_position > X` (no limit) and records each result's positions with its X.
async fn poller(ctx_pool: sqlx::PgPool, stop: Stop) -> Vec<(i64, Vec<i64>)> {
    let mut polls = Vec::new();
    let mut after = 0_i64;
    while !stop.is_cancelled() {
        let seen: Result<Vec<i64>, _> = sqlx::query_scalar(
            "SELECT global_position FROM events WHERE global_position > $1 ORDER BY global_position",
        )
        .bind(after)
        .fetch_all(&ctx_pool)
        .await;
        if let Ok(seen) = seen {
            if let Some(last) = seen.last() {
                let next = *last;
                polls.push((after, seen));
                after = next;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    polls
}

/// Pages `$all` over HTTP with pages of 1, 2 and 3 events in turn, following `next`, and
/// records each page's positions.
async fn pager(http: reqwest::Client, endpoint: Endpoint, stop: Stop) -> Vec<Vec<i64>> {
    let mut pages = Vec::new();
    let mut from = 1_i64;
    let mut limit = 1;
    while !stop.is_cancelled() {
        let url = endpoint.url(&format!("/streams/$all/events?from={from}&limit={limit}"));
        let page: Option<Value> = match http.get(&url).send().await {
            Ok(response) if response.status().is_success() => response.json().await.ok(),
            _ => None,
        };
        let Some(page) = page else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let positions: Vec<i64> = page["events"]
            .as_array()
            .map(|events| {
                events
                    .iter()
                    .filter_map(|e| e["global_position"].as_i64())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(last) = positions.last() {
            from = last + 1;
            pages.push(positions);
            limit = limit % 3 + 1;
        } else {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    pages
}

/// Positions of each group in the final table.
fn groups_of(rows: &[Row]) -> BTreeMap<i64, Vec<i64>> {
    let mut groups: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for row in rows {
        if let Some(first) = row.group_first_position {
            groups.entry(first).or_default().push(row.global_position);
        }
    }
    groups
}

/// Kills `process` with -9 and starts another indexer in its place.
async fn restart_indexer(ctx: &TestContext, process: &mut Process) -> anyhow::Result<Process> {
    process.kill9()?;
    indexer::spawn(ctx, &[]).await
}

#[tokio::test]
async fn multi_stream_appends_are_never_partly_visible_while_processes_are_killed(
) -> anyhow::Result<()> {
    let ctx = TestContext::new("multi_e2e").await?;
    let mut ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let mut first = indexer::spawn(&ctx, &[]).await?;
    let mut second = indexer::spawn(&ctx, &[]).await?;
    let http = ctx.http()?;
    let endpoint = Endpoint::new(&ingest_process.http);

    let stop = Stop::new();
    let polling = tokio::spawn(poller(ctx.pool.clone(), stop.clone()));
    let paging = tokio::spawn(pager(http.clone(), endpoint.clone(), stop.clone()));
    let singles = tokio::spawn(single_writer(http.clone(), endpoint.clone(), stop.clone()));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop_writers = Stop::new();
    let writers: Vec<_> = (0..MULTI_WRITERS)
        .map(|w| {
            tokio::spawn(multi_writer(
                http.clone(),
                endpoint.clone(),
                w,
                acknowledged.clone(),
                stop_writers.clone(),
            ))
        })
        .collect();

    // Kill each indexer once mid-load (one of them is the leader), each restarted at once;
    // then ingest, with multi-stream appends between produce and commit (their parts on
    // ingest-log become phantoms; the writers retry with the same append id).
    tokio::time::sleep(Duration::from_secs(2)).await;
    first = restart_indexer(&ctx, &mut first).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    second = restart_indexer(&ctx, &mut second).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    ingest_process.kill9()?;
    ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    endpoint.set(&ingest_process.http);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_writers.cancel();

    for writer in writers {
        writer.await?;
    }
    let acknowledged: Vec<Acknowledged> = acknowledged
        .lock()
        .map(|list| list.clone())
        .unwrap_or_default();
    assert!(
        acknowledged.len() >= 20,
        "multi-stream appends were acknowledged: {}",
        acknowledged.len()
    );
    // Let the readers see the tail, then stop them.
    let accepted = indexer::accepted_event_count(&ctx).await?;
    stop.cancel();
    singles.await?;
    let accepted_now = indexer::accepted_event_count(&ctx).await?.max(accepted);
    wait_indexed(&ctx, accepted_now, Duration::from_secs(120)).await?;
    let polls = polling.await?;
    let pages = paging.await?;
    check_table(&ctx).await?;

    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {ROW_COLUMNS} FROM events ORDER BY global_position"
    ))
    .fetch_all(&ctx.pool)
    .await?;
    let by_position: HashMap<i64, &Row> = rows.iter().map(|r| (r.global_position, r)).collect();
    let groups = groups_of(&rows);

    // Every acknowledged multi-stream append: its events exactly once, one group, contiguous
    // positions, each stream's versions as acknowledged.
    for ack in &acknowledged {
        let mine: Vec<&Row> = rows
            .iter()
            .filter(|r| r.group_append_id == Some(ack.append_id))
            .collect();
        assert_eq!(mine.len() as i64, ack.events(), "{ack:?}");
        let first_position = mine[0].group_first_position;
        let last_position = mine[0].group_last_position;
        for row in &mine {
            assert_eq!(row.group_first_position, first_position, "{row:?}");
            assert_eq!(row.group_last_position, last_position, "{row:?}");
        }
        let (Some(first_position), Some(last_position)) = (first_position, last_position) else {
            anyhow::bail!("group without positions: {ack:?}");
        };
        assert_eq!(
            last_position - first_position + 1,
            ack.events(),
            "contiguous: {ack:?}"
        );
        assert_eq!(mine[0].global_position, first_position);
        for (stream_id, first_version, last_version) in &ack.parts {
            let mut versions: Vec<i64> = mine
                .iter()
                .filter(|r| &r.stream_id == stream_id)
                .map(|r| r.version)
                .collect();
            versions.sort_unstable();
            let expected: Vec<i64> = (*first_version..=*last_version).collect();
            assert_eq!(versions, expected, "{stream_id} in {ack:?}");
        }
    }
    // No group in the table that no writer saw acknowledged, beyond the appends whose answer
    // never came (none expected here: a retry gets the original outcome).
    assert_eq!(
        groups.len(),
        acknowledged.len(),
        "one group per acknowledged append"
    );

    // The `global_position > X` poller never saw part of a group.
    let mut partial = Vec::new();
    for (after, seen) in &polls {
        let seen_set: std::collections::HashSet<i64> = seen.iter().copied().collect();
        for position in seen {
            let Some(row) = by_position.get(position) else {
                continue;
            };
            if let (Some(first), Some(last)) = (row.group_first_position, row.group_last_position) {
                let missing: Vec<i64> = (first.max(after + 1)..=last)
                    .filter(|p| !seen_set.contains(p))
                    .collect();
                if !missing.is_empty() {
                    partial.push((after, first, last, missing));
                }
            }
        }
    }
    assert!(
        partial.is_empty(),
        "polls saw part of a group: {:?}",
        &partial[..partial.len().min(5)]
    );
    assert!(polls.len() > 5, "the poller polled: {}", polls.len());

    // No `$all` page ends inside a group, and paging saw each position once, in order.
    let mut cut = Vec::new();
    let mut seen_pages = Vec::new();
    for page in &pages {
        let page_set: std::collections::HashSet<i64> = page.iter().copied().collect();
        for position in page {
            if let Some(row) = by_position.get(position) {
                if let (Some(first), Some(last)) =
                    (row.group_first_position, row.group_last_position)
                {
                    if (first..=last).any(|p| !page_set.contains(&p)) {
                        cut.push((page.clone(), first, last));
                    }
                }
            }
        }
        seen_pages.extend(page.iter().copied());
    }
    assert!(
        cut.is_empty(),
        "pages held part of a group: {:?}",
        &cut[..cut.len().min(5)]
    );
    let expected: Vec<i64> = (1..=seen_pages.len() as i64).collect();
    assert_eq!(
        seen_pages, expected,
        "paging saw every position once, in order"
    );
    assert!(pages.len() > 10, "the pager paged: {}", pages.len());

    // The canonical topic: every record of a group carries the group's headers.
    let canonical = check_canonical_topic(&ctx, rows.len() as i64).await?;
    assert!(canonical.records >= rows.len());
    let records = kafka::read_topic(
        &ctx.brokers,
        &ctx.topics.events,
        rows.len(),
        Duration::from_secs(60),
    )?;
    let mut grouped_records = 0;
    for record in &records {
        let headers = kafka::header_map(record);
        let position: i64 = headers
            .get(header::GLOBAL_POSITION)
            .and_then(|p| p.parse().ok())
            .unwrap_or(-1);
        let Some(row) = by_position.get(&position) else {
            anyhow::bail!("a canonical record at unknown position {position}");
        };
        match row.group_append_id {
            Some(append_id) => {
                grouped_records += 1;
                let want = |key: &str, value: String| {
                    assert_eq!(
                        headers.get(key),
                        Some(&value),
                        "header {key} at {position}: {headers:?}"
                    );
                };
                let (first, last) = (
                    row.group_first_position.unwrap_or(-1),
                    row.group_last_position.unwrap_or(-1),
                );
                want(header::GROUP_APPEND_ID, append_id.to_string());
                want(header::GROUP_FIRST_POSITION, first.to_string());
                want(header::GROUP_LAST_POSITION, last.to_string());
                want(header::GROUP_EVENTS, (last - first + 1).to_string());
            }
            None => assert!(
                !headers.contains_key(header::GROUP_APPEND_ID),
                "a single append's record names a group: {headers:?}"
            ),
        }
    }
    assert!(grouped_records > 0, "grouped records reached the topic");
    drop((first, second));
    Ok(())
}

//! Multi-stream appends on the read side (rule 7 of the multi-stream design: no reader ever
//! sees part of a group). The groups are fabricated: rows written straight into the test
//! database's `events` table with their group columns, as the indexer commits a multi-stream
//! append (contiguous positions, each stream's part contiguous), and canonical records produced
//! by hand with the group headers. Reads of every kind, paged with limits 1 to 3, hold each
//! group whole or not at all and see every row once; an SSE subscription does not end a batch
//! inside a group; the projector applies a group once and never part of it, live and in
//! catch-up.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use esk_model::wire::header;
use esk_tests::ingest::{self, Client};
use esk_tests::projector;
use esk_tests::{eventually, TestContext};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde_json::{json, Value};
use uuid::Uuid;

const HTTP_ONLY: &[(&str, &str)] = &[("ESK_INGEST_KAFKA_APPENDS", "false")];

/// One fabricated row of `events`.
#[derive(Debug, Clone)]
struct Row {
    position: i64,
    stream: String,
    version: i64,
    event_type: String,
    /// The group's append id and first and last positions, for rows of a multi-stream append.
    group: Option<(Uuid, i64, i64)>,
    /// Payload size in bytes (a string of that many `x`).
    size: usize,
}

impl Row {
    fn category(&self) -> &str {
        self.stream.split('-').next().unwrap_or_default()
    }

    fn envelope(&self) -> Value {
        json!({
            "event_id": event_id(self.position),
            "stream_id": self.stream,
            "version": self.version,
            "global_position": self.position,
            "type": self.event_type,
            "data": {"x": "x".repeat(self.size)},
            "metadata": null,
            "created_at": "2026-01-01T00:00:00Z",
        })
    }
}

fn event_id(position: i64) -> Uuid {
    Uuid::from_u128(0x6d73_0000_0000_0000_0000_0000_0000_0000 | position as u128)
}

/// A deterministic history: single appends and multi-stream appends of 2 to 4 events over 2 or 3
/// streams of the categories Order, Invoice and Ship, of the types A and B.
fn history(appends: usize) -> Vec<Row> {
    let streams = [
        "Order-1",
        "Order-2",
        "Invoice-1",
        "Invoice-2",
        "Ship-1",
        "Ship-2",
    ];
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n) as usize
    };
    let mut versions: BTreeMap<&str, i64> = BTreeMap::new();
    let mut rows = Vec::new();
    for _ in 0..appends {
        let grouped = next(2) == 0;
        // (stream, events) parts, distinct streams.
        let mut parts: Vec<(&str, usize)> = Vec::new();
        let part_count = if grouped { 2 + next(2) } else { 1 };
        while parts.len() < part_count {
            let stream = streams[next(streams.len() as u64)];
            if parts.iter().all(|(s, _)| *s != stream) {
                parts.push((stream, 1 + next(2)));
            }
        }
        let first = rows.len() as i64 + 1;
        let total: usize = parts.iter().map(|(_, n)| n).sum();
        let last = first + total as i64 - 1;
        let group = grouped.then(|| (Uuid::new_v4(), first, last));
        for (stream, n) in parts {
            for _ in 0..n {
                let version = versions.entry(stream).or_insert(0);
                rows.push(Row {
                    position: rows.len() as i64 + 1,
                    stream: stream.to_owned(),
                    version: *version,
                    event_type: if next(2) == 0 { "A" } else { "B" }.to_owned(),
                    group,
                    size: 8,
                });
                *version += 1;
            }
        }
    }
    rows
}

/// Writes `rows` into the events table as the indexer commits them, and moves the position
/// counter past them (the indexed head readers and subscriptions follow).
async fn fabricate(ctx: &TestContext, rows: &[Row]) -> anyhow::Result<()> {
    let mut tx = ctx.pool.begin().await?;
    for row in rows {
        sqlx::query(
            "INSERT INTO events (global_position, event_id, stream_id, category, event_type, data,
                 metadata, version, created_at, kafka_partition, kafka_offset,
                 group_append_id, group_first_position, group_last_position)
             VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, '2026-01-01T00:00:00Z', 0, $1, $8, $9, $10)",
        )
        .bind(row.position)
        .bind(event_id(row.position))
        .bind(&row.stream)
        .bind(row.category())
        .bind(&row.event_type)
        .bind(&row.envelope()["data"])
        .bind(row.version)
        .bind(row.group.map(|g| g.0))
        .bind(row.group.map(|g| g.1))
        .bind(row.group.map(|g| g.2))
        .execute(&mut *tx)
        .await?;
    }
    let head = rows.iter().map(|r| r.position).max().unwrap_or(0);
    sqlx::query("UPDATE global_position_counter SET last_position = greatest(last_position, $1)")
        .bind(head)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// One kind of read: its first path, how the next page's path follows from `next`, and which
/// rows it selects in which order.
struct ReadKind {
    name: &'static str,
    path: String,
    next: fn(&str, i64) -> String,
    selects: Box<dyn Fn(&Row) -> bool>,
    backward: bool,
}

fn positioned(path: &str, next: i64) -> String {
    format!("{path}&from={next}")
}

fn read_kinds() -> Vec<ReadKind> {
    let kind = |name, path: &str, selects: Box<dyn Fn(&Row) -> bool>| ReadKind {
        name,
        path: path.to_owned(),
        next: positioned,
        selects,
        backward: false,
    };
    vec![
        kind("$all", "/streams/$all/events?", Box::new(|_| true)),
        kind(
            "$all types=A",
            "/streams/$all/events?types=A",
            Box::new(|r| r.event_type == "A"),
        ),
        kind(
            "$all categories=Order,Ship",
            "/streams/$all/events?categories=Order,Ship",
            Box::new(|r| r.category() != "Invoice"),
        ),
        kind(
            "category Invoice",
            "/categories/Invoice/events?",
            Box::new(|r| r.category() == "Invoice"),
        ),
        kind(
            "type B",
            "/types/B/events?",
            Box::new(|r| r.event_type == "B"),
        ),
        kind(
            "stream Order-1 forward",
            "/streams/Order-1/events?",
            Box::new(|r| r.stream == "Order-1"),
        ),
        ReadKind {
            name: "stream Order-1 backward",
            path: "/streams/Order-1/events?direction=backward".to_owned(),
            next: positioned,
            selects: Box::new(|r| r.stream == "Order-1"),
            backward: true,
        },
    ]
}

/// Every page of `kind` with `limit`, as the global positions of its events.
async fn pages(client: &Client, kind: &ReadKind, limit: i64) -> anyhow::Result<Vec<Vec<i64>>> {
    let mut pages = Vec::new();
    let mut path = format!("{}&limit={limit}", kind.path);
    for _ in 0..10_000 {
        let reply = client.get(&path).await?;
        anyhow::ensure!(reply.status == 200, "{path}: {:?}", reply.body);
        let positions: Vec<i64> = reply.body["events"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["global_position"].as_i64())
                    .collect()
            })
            .unwrap_or_default();
        pages.push(positions);
        match reply.body["next"].as_i64() {
            Some(next) => path = (kind.next)(&format!("{}&limit={limit}", kind.path), next),
            None => return Ok(pages),
        }
    }
    anyhow::bail!("{}: paging never ended", kind.name)
}

/// Checks rule 7 over `pages` of `kind`: every group's selected rows are all in one page or in
/// none, and the pages together hold every selected row once, in order.
fn check_pages(rows: &[Row], kind: &ReadKind, limit: i64, pages: &[Vec<i64>]) {
    let by_position: BTreeMap<i64, &Row> = rows.iter().map(|r| (r.position, r)).collect();
    let mut groups: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
    for row in rows.iter().filter(|r| (kind.selects)(r)) {
        if let Some((_, first, _)) = row.group {
            groups.entry(first).or_default().insert(row.position);
        }
    }
    for (i, page) in pages.iter().enumerate() {
        let held: BTreeSet<i64> = page.iter().copied().collect();
        for (first, members) in &groups {
            let here: BTreeSet<i64> = members.intersection(&held).copied().collect();
            assert!(
                here.is_empty() || &here == members,
                "{} limit {limit}: page {i} {page:?} holds {here:?} of the group at {first}, \
                 whose selected rows are {members:?}",
                kind.name
            );
        }
    }
    let mut expected: Vec<i64> = rows
        .iter()
        .filter(|r| (kind.selects)(r))
        .map(|r| r.position)
        .collect();
    if kind.backward {
        expected.reverse();
    }
    let seen: Vec<i64> = pages.iter().flatten().copied().collect();
    assert_eq!(
        seen, expected,
        "{} limit {limit}: every selected row once, in order",
        kind.name
    );
    assert!(seen.iter().all(|p| by_position.contains_key(p)));
}

#[tokio::test]
async fn pages_of_every_read_hold_a_group_whole_or_not_at_all() -> anyhow::Result<()> {
    let ctx = TestContext::new("ms_reads").await?;
    let rows = history(60);
    assert!(
        rows.iter().filter(|r| r.group.is_some()).count() > 20,
        "the history has groups"
    );
    fabricate(&ctx, &rows).await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let client = Client::new(&ingest_process);
    for kind in read_kinds() {
        for limit in 1..=3 {
            let pages = pages(&client, &kind, limit).await?;
            check_pages(&rows, &kind, limit, &pages);
        }
    }
    Ok(())
}

/// A filtered page extended to the end of a group continues past that group, not inside it:
/// the group's rows the filter leaves out are not read again.
#[tokio::test]
async fn a_filtered_page_continues_past_the_group_it_ends_in() -> anyhow::Result<()> {
    let ctx = TestContext::new("ms_reads_next").await?;
    let group = Some((Uuid::new_v4(), 1, 3));
    let row = |position, stream: &str, event_type: &str| Row {
        position,
        stream: stream.to_owned(),
        version: 0,
        event_type: event_type.to_owned(),
        group,
        size: 8,
    };
    let rows = [
        row(1, "Order-1", "A"),
        row(2, "Invoice-1", "A"),
        row(3, "Ship-1", "B"),
    ];
    fabricate(&ctx, &rows).await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let client = Client::new(&ingest_process);
    let page = client.get("/streams/$all/events?types=A&limit=1").await?;
    let positions: Vec<i64> = page.body["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["global_position"].as_i64())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(positions, vec![1, 2], "extended to the group's other A");
    assert_eq!(page.body["next"], json!(4), "past the group's last row");
    Ok(())
}

/// One SSE message's id and whether it carried an event.
async fn next_event(
    response: &mut reqwest::Response,
    buffer: &mut String,
    within: Duration,
) -> anyhow::Result<i64> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut id = None;
            let mut data = false;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.parse::<i64>()?);
                }
                data |= line.starts_with("data: ");
            }
            if let (Some(id), true) = (id, data) {
                return Ok(id);
            }
        }
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .map_err(|_| anyhow::anyhow!("no SSE event within {within:?}"))??
            .ok_or_else(|| anyhow::anyhow!("the subscription ended"))?;
        buffer.push_str(std::str::from_utf8(&chunk)?);
    }
}

/// A catch-up batch cut inside a group (here by its byte budget, at a 4 MiB event) is extended
/// to the group's end when it is read: the rest of the group reaches the subscriber even if it
/// is gone by the time the next batch is read (as a hard delete's scavenger would make it). A
/// batch cut inside the group would leave the subscriber with part of it.
#[tokio::test]
async fn a_subscription_batch_is_never_cut_inside_a_group() -> anyhow::Result<()> {
    let ctx = TestContext::new("ms_sse").await?;
    let mut rows = history(40);
    // The group at 10..=12 whose first event fills the batch's byte budget alone.
    let group = Some((Uuid::new_v4(), 10, 12));
    for (i, position) in (10..=12).enumerate() {
        let row = &mut rows[position as usize - 1];
        row.group = group;
        row.stream = format!("Big-{i}");
        row.version = 0;
    }
    rows[9].size = 4 * 1024 * 1024;
    // Large events before it (3.6 MiB, under the budget), so that a subscriber that does not
    // read holds the feeder inside this first batch, whatever the sockets buffer.
    for row in &mut rows[4..8] {
        row.size = 900 * 1024;
    }
    // Rows 10..=12 were parts of other appends: their neighbours' group spans are cut to fit.
    for row in rows.iter_mut() {
        if let Some((id, first, last)) = row.group {
            if row.position < 10 && last >= 10 {
                row.group = Some((id, first, 9));
            } else if row.position > 12 && first <= 12 {
                row.group = Some((id, 13, last));
            }
        }
    }
    fabricate(&ctx, &rows).await?;
    let ingest_process = ingest::spawn(
        &ctx,
        &[
            HTTP_ONLY[0],
            ("ESK_INGEST_SUBSCRIPTION_BUFFER", "1"),
            ("ESK_INGEST_SUBSCRIPTION_SLOW_MS", "60000"),
        ],
    )
    .await?;
    let http = ctx.http()?;
    let mut response = http
        .get(format!("{}/subscriptions/$all?from=1", ingest_process.http))
        .send()
        .await?;
    anyhow::ensure!(response.status() == 200, "{}", response.status());
    let mut buffer = String::new();
    let mut ids = vec![next_event(&mut response, &mut buffer, Duration::from_secs(30)).await?];
    // The feeder now waits for room in its 1-message buffer, inside its first batch (1..=10,
    // extended to 12), behind the large events; the next batch has not been read. The rest of
    // the group goes away.
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("DELETE FROM events WHERE global_position IN (11, 12)")
        .execute(&ctx.pool)
        .await?;
    let expected: Vec<i64> = rows.iter().map(|r| r.position).collect();
    // Until the last position, or until nothing more comes (then the comparison says what
    // is missing).
    while ids.last() != expected.last() {
        match next_event(&mut response, &mut buffer, Duration::from_secs(15)).await {
            Ok(id) => ids.push(id),
            Err(_) => break,
        }
    }
    assert_eq!(
        ids, expected,
        "every position once, the group whole in the batch that reached it"
    );
    Ok(())
}

/// The records of a group for the canonical topic: its envelope and the group headers.
fn canonical_record(row: &Row) -> (String, OwnedHeaders) {
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: header::GLOBAL_POSITION,
            value: Some(&row.position.to_string()),
        })
        .insert(Header {
            key: header::STREAM_VERSION,
            value: Some(&row.version.to_string()),
        });
    if let Some((id, first, last)) = row.group {
        headers = headers
            .insert(Header {
                key: header::GROUP_APPEND_ID,
                value: Some(&id.to_string()),
            })
            .insert(Header {
                key: header::GROUP_FIRST_POSITION,
                value: Some(&first.to_string()),
            })
            .insert(Header {
                key: header::GROUP_LAST_POSITION,
                value: Some(&last.to_string()),
            })
            .insert(Header {
                key: header::GROUP_EVENTS,
                value: Some(&(last - first + 1).to_string()),
            });
    }
    (row.envelope().to_string(), headers)
}

async fn produce_to(
    ctx: &TestContext,
    producer: &rdkafka::producer::FutureProducer,
    partition: i32,
    row: &Row,
) -> anyhow::Result<i64> {
    let (payload, headers) = canonical_record(row);
    producer
        .send(
            FutureRecord::to(&ctx.topics.events)
                .partition(partition)
                .key(&row.stream)
                .payload(&payload)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map(|delivery| delivery.offset)
        .map_err(|(e, _)| anyhow::anyhow!("produce failed: {e}"))
}

/// The `counts` projection's count of category `Grp`, by event type.
async fn group_counts(ctx: &TestContext) -> anyhow::Result<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT event_type, count FROM projection_category_type_counts
         WHERE projection = 'counts' AND category = 'Grp'",
    )
    .fetch_all(&ctx.pool)
    .await?;
    Ok(rows.into_iter().collect())
}

async fn applied_groups(ctx: &TestContext) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM applied_groups WHERE projection = 'counts'")
            .fetch_one(&ctx.pool)
            .await?,
    )
}

#[tokio::test]
async fn a_live_projection_applies_a_group_whole_once_though_its_parts_arrive_apart(
) -> anyhow::Result<()> {
    let ctx = TestContext::new("ms_proj_live").await?;
    let mut running = projector::spawn(&ctx, None, &[]).await?;
    let live = eventually(Duration::from_secs(60), || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(DISTINCT projection) FROM projection_partitions")
                .fetch_one(&ctx.pool)
                .await
                .ok()?;
        (n == 2).then_some(())
    })
    .await;
    anyhow::ensure!(live.is_some(), "the built-in projections never went live");

    // A group over two streams: Grp-a's part (2 events) on partition 0, Grp-b's (1) on 1.
    let group = Some((Uuid::new_v4(), 1, 3));
    let row = |position, stream: &str, version| Row {
        position,
        stream: stream.to_owned(),
        version,
        event_type: "Grouped".to_owned(),
        group,
        size: 8,
    };
    let rows = [row(1, "Grp-a", 0), row(2, "Grp-a", 1), row(3, "Grp-b", 0)];
    let marker = Row {
        group: None,
        event_type: "Marker".to_owned(),
        ..row(4, "Grp-c", 0)
    };
    fabricate(&ctx, &rows).await?;
    fabricate(&ctx, std::slice::from_ref(&marker)).await?;
    let producer = esk_tests::kafka::producer(&ctx.brokers)?;
    produce_to(&ctx, &producer, 0, &rows[0]).await?;
    let a_last = produce_to(&ctx, &producer, 0, &rows[1]).await?;

    // Only Grp-a's part is on the topic: the projection applies all three or nothing.
    let observed = std::sync::Mutex::new(BTreeSet::new());
    let whole = eventually(Duration::from_secs(60), || async {
        let counts = group_counts(&ctx).await.ok()?;
        let grouped = counts.get("Grouped").copied().unwrap_or(0);
        observed.lock().ok()?.insert(grouped);
        (grouped > 0).then_some(grouped)
    })
    .await;
    let observed = observed.into_inner().unwrap_or_default();
    assert_eq!(
        whole,
        Some(3),
        "the whole group, before its part on partition 1 arrived"
    );
    assert!(
        observed.iter().all(|n| *n == 0 || *n == 3),
        "never part of the group: {observed:?}"
    );
    assert_eq!(applied_groups(&ctx).await?, 1, "the group is recorded");
    // The other SQL projection (its own consumer) too: its first non-empty state is the whole.
    let summary = eventually(Duration::from_secs(60), || async {
        let summary: Vec<(String, i64)> = sqlx::query_as(
            "SELECT stream_id, version FROM projection_stream_summary
             WHERE projection = 'stream-summary' ORDER BY stream_id",
        )
        .fetch_all(&ctx.pool)
        .await
        .ok()?;
        (!summary.is_empty()).then_some(summary)
    })
    .await;
    assert_eq!(
        summary,
        Some(vec![("Grp-a".to_owned(), 1), ("Grp-b".to_owned(), 0)]),
        "the other SQL projection applied it whole too"
    );

    // As the publisher would have recorded it: everything through the marker published,
    // partition 0 through Grp-a's part, partition 1 through the marker (offsets 0 and 1).
    sqlx::query("UPDATE published_through SET global_position = 4")
        .execute(&ctx.pool)
        .await?;
    sqlx::query(
        "INSERT INTO publisher_partitions (partition_id, last_offset, last_position)
         VALUES (0, $1, 2), (1, 1, 4)",
    )
    .bind(a_last)
    .execute(&ctx.pool)
    .await?;
    // The delayed part, then a marker behind it on the same partition.
    produce_to(&ctx, &producer, 1, &rows[2]).await?;
    produce_to(&ctx, &producer, 1, &marker).await?;
    let after = eventually(Duration::from_secs(60), || async {
        let counts = group_counts(&ctx).await.ok()?;
        counts.contains_key("Marker").then_some(counts)
    })
    .await;
    let after = after.ok_or_else(|| anyhow::anyhow!("the marker was never applied"))?;
    assert_eq!(
        after.get("Grouped"),
        Some(&3),
        "the late part was skipped, not applied again"
    );
    let pruned = eventually(Duration::from_secs(30), || async {
        (applied_groups(&ctx).await.ok()? == 0).then_some(())
    })
    .await;
    assert!(
        pruned.is_some(),
        "the group is forgotten once every partition passed it"
    );

    // A second group whose records are all on the topic before the projector (restarted)
    // reads them, on one partition (two streams may share one), so they come in one fetch and
    // one batch and are taken from the records themselves rather than read from the table:
    // applied whole, once, as well.
    running.kill9()?;
    let group = Some((Uuid::new_v4(), 5, 7));
    let second = [
        Row {
            group,
            ..row(5, "Grp-d", 0)
        },
        Row {
            group,
            ..row(6, "Grp-e", 0)
        },
        Row {
            group,
            ..row(7, "Grp-e", 1)
        },
    ];
    fabricate(&ctx, &second).await?;
    for record in &second {
        produce_to(&ctx, &producer, 2, record).await?;
    }
    let _running = projector::spawn(&ctx, None, &[]).await?;
    let observed = std::sync::Mutex::new(BTreeSet::new());
    let both = eventually(Duration::from_secs(60), || async {
        let grouped = group_counts(&ctx).await.ok()?.get("Grouped").copied()?;
        observed.lock().ok()?.insert(grouped);
        (grouped > 3).then_some(grouped)
    })
    .await;
    assert_eq!(both, Some(6), "the second group whole");
    let observed = observed.into_inner().unwrap_or_default();
    assert!(
        observed.iter().all(|n| *n == 3 || *n == 6),
        "never part of the second group: {observed:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        group_counts(&ctx).await?.get("Grouped"),
        Some(&6),
        "and nothing of it applied twice"
    );
    Ok(())
}

#[tokio::test]
async fn a_projection_replay_never_checkpoints_inside_a_group() -> anyhow::Result<()> {
    let ctx = TestContext::new("ms_proj_replay").await?;
    let rows = history(60);
    fabricate(&ctx, &rows).await?;
    // Every replay checkpoint, as written.
    sqlx::query("CREATE TABLE replay_log (projection TEXT, through BIGINT)")
        .execute(&ctx.pool)
        .await?;
    sqlx::query(
        "CREATE FUNCTION log_replay() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO replay_log VALUES (NEW.subscription, NEW.global_position); RETURN NEW; END $$",
    )
    .execute(&ctx.pool)
    .await?;
    sqlx::query(
        "CREATE TRIGGER log_replay AFTER INSERT OR UPDATE ON subscription_checkpoints
         FOR EACH ROW EXECUTE FUNCTION log_replay()",
    )
    .execute(&ctx.pool)
    .await?;
    let head = rows.len() as i64;
    sqlx::query("UPDATE published_through SET global_position = $1")
        .bind(head)
        .execute(&ctx.pool)
        .await?;
    // Windows of two positions: without rule 7 most groups would be split across two.
    let _projector = projector::spawn(&ctx, None, &[("ESK_PROJECTOR_REPLAY_BATCH", "2")]).await?;
    let done = eventually(Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM replay_log WHERE projection = 'counts' AND through = $1",
        )
        .bind(head)
        .fetch_one(&ctx.pool)
        .await
        .ok()?;
        (n > 0).then_some(())
    })
    .await;
    anyhow::ensure!(done.is_some(), "the replay never reached {head}");
    let log: Vec<(String, i64)> = sqlx::query_as("SELECT projection, through FROM replay_log")
        .fetch_all(&ctx.pool)
        .await?;
    assert!(log.len() > 10, "many replay pages: {log:?}");
    for (projection, through) in &log {
        for row in &rows {
            if let Some((_, first, last)) = row.group {
                assert!(
                    !(first..last).contains(through),
                    "{projection} checkpointed at {through}, inside the group {first}..={last}"
                );
            }
        }
    }
    // And it applied everything once.
    let counted: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(count), 0)::int8 FROM projection_category_type_counts
         WHERE projection = 'counts'",
    )
    .fetch_one(&ctx.pool)
    .await?;
    assert_eq!(counted, head);
    Ok(())
}

/// The global positions of each request a webhook receiver acknowledged.
fn requests(hook: &projector::Webhook) -> Vec<Vec<i64>> {
    hook.state
        .lock()
        .map(|s| {
            s.bodies
                .iter()
                .filter_map(|b| serde_json::from_slice::<Value>(b).ok())
                .map(|body| {
                    body["events"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|e| e["global_position"].as_i64())
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_webhook_gets_a_group_together_in_order_and_not_again_for_its_late_part(
) -> anyhow::Result<()> {
    let ctx = TestContext::new("ms_proj_hook").await?;
    let hook = projector::Webhook::start(projector::Receiver::default()).await?;
    let config = projector::write_webhook_config(&ctx, "hook", &hook.url, "")?;
    let _projector = projector::spawn(&ctx, Some(&config), &[]).await?;
    let live = eventually(Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_partitions")
            .fetch_one(&ctx.pool)
            .await
            .ok()?;
        (n > 0).then_some(())
    })
    .await;
    anyhow::ensure!(live.is_some(), "the webhook projection never went live");
    let group = Some((Uuid::new_v4(), 1, 3));
    let row = |position, stream: &str, version| Row {
        position,
        stream: stream.to_owned(),
        version,
        event_type: "Grouped".to_owned(),
        group,
        size: 8,
    };
    let rows = [row(1, "Hk-a", 0), row(2, "Hk-a", 1), row(3, "Hk-b", 0)];
    let marker = Row {
        group: None,
        ..row(4, "Hk-c", 0)
    };
    fabricate(&ctx, &rows).await?;
    fabricate(&ctx, std::slice::from_ref(&marker)).await?;
    let producer = esk_tests::kafka::producer(&ctx.brokers)?;
    produce_to(&ctx, &producer, 0, &rows[0]).await?;
    produce_to(&ctx, &producer, 0, &rows[1]).await?;
    let first = eventually(Duration::from_secs(60), || async {
        requests(&hook).into_iter().find(|r| !r.is_empty())
    })
    .await;
    assert_eq!(
        first,
        Some(vec![1, 2, 3]),
        "the whole group in one request, in order, before its part on partition 1 arrived"
    );
    produce_to(&ctx, &producer, 1, &rows[2]).await?;
    produce_to(&ctx, &producer, 1, &marker).await?;
    let all = eventually(Duration::from_secs(60), || async {
        let all: Vec<i64> = requests(&hook).into_iter().flatten().collect();
        all.contains(&4).then_some(all)
    })
    .await;
    assert_eq!(
        all,
        Some(vec![1, 2, 3, 4]),
        "the late part is not delivered again"
    );
    Ok(())
}

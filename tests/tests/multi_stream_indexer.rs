//! Atomic multi-stream appends, the indexer's side (design note `multi-stream.md`, rules 3-6 and
//! I7): hand-made grouped `ingest-log` records with fabricated ledger rows, checked from the
//! `events` table and the canonical topic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use esk_model::ingest_log::{BatchEncoder, BatchEventRef};
use esk_model::wire::header;
use esk_runtime::kafka::partition_for_key;
use esk_tests::indexer::{self, pause};
use esk_tests::process::Process;
use esk_tests::{eventually, kafka, TestContext, TEST_PARTITIONS};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::value::RawValue;
use uuid::Uuid;

/// A stream id of `prefix` that lands on `partition`.
fn stream_on(partition: i32, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|s| partition_for_key(s.as_bytes(), TEST_PARTITIONS) == partition)
        .unwrap_or_default()
}

/// One part of an attempt: `count` events of `stream` from `first_version`, all of `append`.
#[derive(Debug, Clone)]
struct Part {
    stream: String,
    first_version: i64,
    count: usize,
    append: Uuid,
}

impl Part {
    fn new(stream: &str, first_version: i64, count: usize, append: Uuid) -> Self {
        Part {
            stream: stream.to_owned(),
            first_version,
            count,
            append,
        }
    }
}

/// Writes `part` as one format-2 record of `attempt` to its stream's partition, with the group
/// headers when `group` is (append id, records of the attempt); returns (partition, offset).
async fn produce_part(
    ctx: &TestContext,
    producer: &FutureProducer,
    part: &Part,
    attempt: Uuid,
    group: Option<(Uuid, usize)>,
) -> anyhow::Result<(i32, i64)> {
    produce_typed(ctx, producer, part, "Manual", attempt, group).await
}

/// [`produce_part`] with events of type `event_type`.
async fn produce_typed(
    ctx: &TestContext,
    producer: &FutureProducer,
    part: &Part,
    event_type: &str,
    attempt: Uuid,
    group: Option<(Uuid, usize)>,
) -> anyhow::Result<(i32, i64)> {
    let data = RawValue::from_string(r#"{"n":1}"#.to_owned())?;
    let mut encoder = BatchEncoder::new(attempt, Utc::now(), 1 << 20)?;
    for i in 0..part.count {
        encoder.push(&BatchEventRef {
            event_id: Uuid::new_v4(),
            stream_id: &part.stream,
            version: part.first_version + i as i64,
            event_type,
            data: &data,
            metadata: None,
            append_id: part.append,
        })?;
    }
    let records = encoder.finish();
    anyhow::ensure!(records.len() == 1, "one record per part");
    let attempt_text = attempt.to_string();
    let count = part.count.to_string();
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: header::ATTEMPT_ID,
            value: Some(&attempt_text),
        })
        .insert(Header {
            key: header::EVENT_COUNT,
            value: Some(&count),
        });
    if let Some((append, records)) = group {
        let (append, records) = (append.to_string(), records.to_string());
        headers = headers
            .insert(Header {
                key: header::GROUP_APPEND_ID,
                value: Some(&append),
            })
            .insert(Header {
                key: header::GROUP_RECORDS,
                value: Some(&records),
            });
    }
    let partition = partition_for_key(part.stream.as_bytes(), TEST_PARTITIONS);
    let delivered = producer
        .send(
            FutureRecord::to(&ctx.topics.ingest_log)
                .partition(partition)
                .key(&part.stream)
                .payload(&records[0].value)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("produce failed: {e}"))?;
    Ok((delivered.partition, delivered.offset))
}

/// Records the ledger row of `append`: accepted by `attempt` (its parts' streams and versions),
/// or rejected.
async fn ledger(
    ctx: &TestContext,
    append: Uuid,
    attempt: Uuid,
    parts: &[&Part],
    accepted: bool,
) -> anyhow::Result<()> {
    let events: usize = parts.iter().map(|p| p.count).sum();
    let json: Vec<serde_json::Value> = parts
        .iter()
        .map(|p| {
            serde_json::json!({"stream_id": p.stream, "first_version": p.first_version,
                "last_version": p.first_version + p.count as i64 - 1})
        })
        .collect();
    sqlx::query(
        "INSERT INTO append_ledger (append_id, attempt_id, stream_id, fingerprint, event_count,
             status, first_version, last_version, parts)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(append)
    .bind(attempt)
    .bind(&parts[0].stream)
    .bind(Uuid::new_v4())
    .bind(events as i32)
    .bind(if accepted { "accepted" } else { "rejected" })
    .bind(parts[0].first_version)
    .bind(parts[0].first_version + parts[0].count as i64 - 1)
    .bind(serde_json::Value::Array(json))
    .execute(&ctx.pool)
    .await?;
    Ok(())
}

/// A multi-stream append accepted by one attempt: its ledger row, and the attempt's parts.
async fn accepted_group(ctx: &TestContext, parts: &[&Part]) -> anyhow::Result<(Uuid, Uuid)> {
    let append = parts[0].append;
    let attempt = Uuid::new_v4();
    ledger(ctx, append, attempt, parts, true).await?;
    Ok((append, attempt))
}

/// A single-stream append, accepted and produced.
async fn single(
    ctx: &TestContext,
    producer: &FutureProducer,
    stream: &str,
    version: i64,
) -> anyhow::Result<()> {
    let part = Part::new(stream, version, 1, Uuid::new_v4());
    let attempt = Uuid::new_v4();
    ledger(ctx, part.append, attempt, &[&part], true).await?;
    produce_part(ctx, producer, &part, attempt, None).await?;
    Ok(())
}

/// One row of `events` as the checker reads it.
#[derive(Debug, sqlx::FromRow)]
struct Row {
    global_position: i64,
    event_id: Uuid,
    stream_id: String,
    version: i64,
    group_append_id: Option<Uuid>,
    group_first_position: Option<i64>,
    group_last_position: Option<i64>,
}

async fn rows(ctx: &TestContext) -> anyhow::Result<Vec<Row>> {
    Ok(sqlx::query_as(
        "SELECT global_position, event_id, stream_id, version, group_append_id,
                group_first_position, group_last_position
         FROM events ORDER BY global_position",
    )
    .fetch_all(&ctx.pool)
    .await?)
}

/// Checks the table: positions 1..=N, event ids unique, per stream versions 0.. contiguous in
/// position order, and each group in `groups` (append id → events) whole, exactly once, on
/// contiguous positions that its rows name; no other row names a group.
fn check(rows: &[Row], groups: &HashMap<Uuid, usize>) -> anyhow::Result<()> {
    for (i, row) in rows.iter().enumerate() {
        anyhow::ensure!(
            row.global_position == i as i64 + 1,
            "positions not 1..=N at {row:?}"
        );
    }
    let ids: HashSet<Uuid> = rows.iter().map(|r| r.event_id).collect();
    anyhow::ensure!(ids.len() == rows.len(), "duplicate event ids");
    let mut versions: HashMap<&str, i64> = HashMap::new();
    for row in rows {
        let next = versions.entry(&row.stream_id).or_insert(0);
        anyhow::ensure!(
            row.version == *next,
            "stream {}: version {} where {} was due (position order)",
            row.stream_id,
            row.version,
            next
        );
        *next += 1;
    }
    let mut by_group: BTreeMap<Uuid, Vec<&Row>> = BTreeMap::new();
    for row in rows {
        if let Some(append) = row.group_append_id {
            by_group.entry(append).or_default().push(row);
        }
    }
    for (append, members) in &by_group {
        let expected = groups.get(append).copied();
        anyhow::ensure!(
            expected == Some(members.len()),
            "group {append}: {} rows, expected {expected:?}",
            members.len()
        );
        let first = members[0].global_position;
        let last = members[members.len() - 1].global_position;
        anyhow::ensure!(
            last - first + 1 == members.len() as i64,
            "group {append} not contiguous: {first}..={last} for {} rows",
            members.len()
        );
        for row in members {
            anyhow::ensure!(
                row.group_first_position == Some(first) && row.group_last_position == Some(last),
                "group {append}: row {row:?} names the wrong span {first}..={last}"
            );
        }
    }
    for append in groups.keys() {
        anyhow::ensure!(by_group.contains_key(append), "group {append} missing");
    }
    Ok(())
}

/// Checks the canonical topic against the table: every grouped row's record names its group
/// and span in the four group headers, other records carry none; returns how many grouped
/// records it saw (repeats included).
fn check_canonical_groups(ctx: &TestContext, table: &[Row]) -> anyhow::Result<usize> {
    // The canonical topic: each grouped record names its group and span.
    let spans: HashMap<Uuid, (i64, i64)> = table
        .iter()
        .filter_map(|r| {
            Some((
                r.group_append_id?,
                (r.group_first_position?, r.group_last_position?),
            ))
        })
        .collect();
    let records = kafka::read_topic_until_idle(
        &ctx.brokers,
        &ctx.topics.events,
        Duration::from_secs(3),
        Duration::from_secs(60),
    )?;
    let mut grouped = 0;
    for record in &records {
        let headers = kafka::header_map(record);
        let position: i64 = headers
            .get(header::GLOBAL_POSITION)
            .and_then(|p| p.parse().ok())
            .unwrap_or(-1);
        let row = table
            .iter()
            .find(|r| r.global_position == position)
            .ok_or_else(|| anyhow::anyhow!("no row at {position}"))?;
        match row.group_append_id {
            Some(append) => {
                grouped += 1;
                let (first, last) = spans[&append];
                assert_eq!(
                    headers.get(header::GROUP_APPEND_ID),
                    Some(&append.to_string())
                );
                assert_eq!(
                    headers.get(header::GROUP_FIRST_POSITION),
                    Some(&first.to_string())
                );
                assert_eq!(
                    headers.get(header::GROUP_LAST_POSITION),
                    Some(&last.to_string())
                );
                assert_eq!(
                    headers.get(header::GROUP_EVENTS),
                    Some(&(last - first + 1).to_string())
                );
            }
            None => {
                for name in [
                    header::GROUP_APPEND_ID,
                    header::GROUP_FIRST_POSITION,
                    header::GROUP_LAST_POSITION,
                    header::GROUP_EVENTS,
                ] {
                    assert!(
                        !headers.contains_key(name),
                        "{name} on a single append's record"
                    );
                }
            }
        }
    }
    Ok(grouped)
}

/// Waits until `events` holds `count` rows.
async fn wait_rows(ctx: &TestContext, count: i64, timeout: Duration) -> anyhow::Result<()> {
    let got = eventually(timeout, || async {
        let n = indexer::event_count(ctx).await.ok()?;
        (n >= count).then_some(n)
    })
    .await;
    anyhow::ensure!(
        got.is_some(),
        "{} of {count} rows after {timeout:?}",
        indexer::event_count(ctx).await?
    );
    Ok(())
}

/// `/health`'s status and body (`None` when it does not answer).
async fn health(process: &Process) -> Option<(u16, serde_json::Value)> {
    let response = reqwest::get(format!("{}/health", process.admin))
        .await
        .ok()?;
    let status = response.status().as_u16();
    let body = response.json().await.ok()?;
    Some((status, body))
}

/// The role `/health` shows.
async fn role(process: &Process) -> Option<String> {
    let body: serde_json::Value = reqwest::get(format!("{}/health", process.admin))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body["role"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn groups_in_opposite_orders_on_two_partitions_both_commit_whole() -> anyhow::Result<()> {
    let ctx = TestContext::new("ms_opposite").await?;
    let producer = kafka::producer(&ctx.brokers)?;
    let (a, c) = (stream_on(0, "A"), stream_on(0, "C"));
    let (b, d) = (stream_on(1, "B"), stream_on(1, "D"));
    let (g1, g2) = (Uuid::new_v4(), Uuid::new_v4());
    let g1_parts = [Part::new(&a, 1, 2, g1), Part::new(&b, 1, 3, g1)];
    let g2_parts = [Part::new(&c, 0, 2, g2), Part::new(&d, 1, 1, g2)];
    let (_, g1_attempt) = accepted_group(&ctx, &[&g1_parts[0], &g1_parts[1]]).await?;
    let (_, g2_attempt) = accepted_group(&ctx, &[&g2_parts[0], &g2_parts[1]]).await?;
    // Single appends before the groups on A, B and D, so the groups sit behind other records.
    single(&ctx, &producer, &a, 0).await?;
    single(&ctx, &producer, &b, 0).await?;
    single(&ctx, &producer, &d, 0).await?;
    // Partition 0: G1 then G2; partition 1: G2 then G1.
    produce_part(&ctx, &producer, &g1_parts[0], g1_attempt, Some((g1, 2))).await?;
    produce_part(&ctx, &producer, &g2_parts[0], g2_attempt, Some((g2, 2))).await?;
    produce_part(&ctx, &producer, &g2_parts[1], g2_attempt, Some((g2, 2))).await?;
    produce_part(&ctx, &producer, &g1_parts[1], g1_attempt, Some((g1, 2))).await?;
    single(&ctx, &producer, &a, 3).await?;
    single(&ctx, &producer, &b, 4).await?;
    // A batch cap of one record: the closed frontier must read past it.
    let _indexer = indexer::spawn(&ctx, &[("ESK_INDEXER_MAX_BATCH", "1")]).await?;
    wait_rows(&ctx, 13, Duration::from_secs(60)).await?;
    let table = rows(&ctx).await?;
    assert_eq!(table.len(), 13);
    check(&table, &HashMap::from([(g1, 5), (g2, 3)]))?;

    let grouped = check_canonical_groups(&ctx, &table)?;
    assert!(
        grouped >= 8,
        "every grouped event was published ({grouped})"
    );
    Ok(())
}

#[tokio::test]
async fn a_group_missing_a_part_waits_while_other_partitions_keep_indexing() -> anyhow::Result<()> {
    let ctx = TestContext::new("ms_missing").await?;
    let producer = kafka::producer(&ctx.brokers)?;
    // A short stall limit: held records turn /health unhealthy after 2 s.
    let indexer = indexer::spawn(&ctx, &[("ESK_STALL_AFTER_SECS", "2")]).await?;
    let (a, after_a) = (stream_on(0, "A"), stream_on(0, "After"));
    let (b, x) = (stream_on(1, "B"), stream_on(2, "X"));
    let g = Uuid::new_v4();
    let parts = [Part::new(&a, 0, 2, g), Part::new(&b, 0, 2, g)];
    let (_, attempt) = accepted_group(&ctx, &[&parts[0], &parts[1]]).await?;
    produce_part(&ctx, &producer, &parts[0], attempt, Some((g, 2))).await?;
    single(&ctx, &producer, &after_a, 0).await?;
    for version in 0..5 {
        single(&ctx, &producer, &x, version).await?;
    }
    // Partition 2 keeps indexing; partition 0 waits at the group's part, behind which the
    // single append waits too.
    wait_rows(&ctx, 5, Duration::from_secs(60)).await?;
    pause(1500).await;
    let table = rows(&ctx).await?;
    assert_eq!(table.len(), 5, "only partition 2's appends: {table:?}");
    assert!(table.iter().all(|r| r.stream_id == x));
    // Held past the stall limit, the waiting partition shows in /health.
    let unhealthy = eventually(Duration::from_secs(30), || async {
        health(&indexer).await.filter(|(status, _)| *status == 503)
    })
    .await;
    let held = unhealthy
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    assert!(
        held.contains("partition 0 at offset"),
        "held records make /health unhealthy, naming the partition: {held:?}"
    );
    // The missing part arrives: the group commits whole, then what waited behind it.
    produce_part(&ctx, &producer, &parts[1], attempt, Some((g, 2))).await?;
    wait_rows(&ctx, 10, Duration::from_secs(60)).await?;
    let healthy = eventually(Duration::from_secs(30), || async {
        health(&indexer).await.filter(|(status, _)| *status == 200)
    })
    .await;
    assert!(healthy.is_some(), "healthy again once the group committed");
    let table = rows(&ctx).await?;
    assert_eq!(table.len(), 10);
    check(&table, &HashMap::from([(g, 4)]))?;
    let after = table.iter().find(|r| r.stream_id == after_a);
    let group_last = table
        .iter()
        .filter_map(|r| r.group_last_position)
        .max()
        .unwrap_or(0);
    assert!(
        after.is_some_and(|r| r.global_position > group_last),
        "the append behind the group's part comes after it"
    );
    Ok(())
}

#[tokio::test]
async fn phantom_groups_and_orphaned_parts_are_skipped_without_blocking() -> anyhow::Result<()> {
    let ctx = TestContext::new("ms_phantoms").await?;
    let producer = kafka::producer(&ctx.brokers)?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    let (a, b) = (stream_on(0, "A"), stream_on(1, "B"));
    // A phantom group (no ledger row: its attempt died) of which one part ever arrives.
    let phantom = Uuid::new_v4();
    let phantom_part = Part::new(&a, 0, 1, phantom);
    produce_part(
        &ctx,
        &producer,
        &phantom_part,
        Uuid::new_v4(),
        Some((phantom, 2)),
    )
    .await?;
    // A rejected group: its ledger row says so, and a part of it arrives anyway.
    let rejected = Uuid::new_v4();
    let rejected_part = Part::new(&b, 0, 1, rejected);
    let rejected_attempt = Uuid::new_v4();
    ledger(&ctx, rejected, rejected_attempt, &[&rejected_part], false).await?;
    produce_part(
        &ctx,
        &producer,
        &rejected_part,
        rejected_attempt,
        Some((rejected, 2)),
    )
    .await?;
    // An append whose first attempt crashed after producing one part; its retry committed both.
    // The orphaned part of the first attempt lands late, after the retry's part.
    let m = Uuid::new_v4();
    let m_parts = [Part::new(&a, 0, 1, m), Part::new(&b, 0, 2, m)];
    let first_attempt = Uuid::new_v4();
    let (_, retry) = accepted_group(&ctx, &[&m_parts[0], &m_parts[1]]).await?;
    produce_part(&ctx, &producer, &m_parts[0], retry, Some((m, 2))).await?;
    produce_part(&ctx, &producer, &m_parts[1], retry, Some((m, 2))).await?;
    produce_part(&ctx, &producer, &m_parts[1], first_attempt, Some((m, 2))).await?;
    // Appends behind all of them on both partitions.
    single(&ctx, &producer, &a, 1).await?;
    single(&ctx, &producer, &b, 2).await?;
    wait_rows(&ctx, 5, Duration::from_secs(60)).await?;
    pause(1000).await;
    let table = rows(&ctx).await?;
    assert_eq!(
        table.len(),
        5,
        "the retry's 3 events and 2 singles: {table:?}"
    );
    check(&table, &HashMap::from([(m, 3)]))?;
    let phantoms: f64 = eventually(Duration::from_secs(10), || async {
        let metrics = indexer::metrics(&_indexer).await.ok()?;
        metrics
            .get("esk_indexer_phantoms_dropped_total")
            .copied()
            .filter(|n| *n >= 4.0)
    })
    .await
    .unwrap_or(0.0);
    assert!(
        phantoms >= 4.0,
        "phantom, rejected and orphaned events counted: {phantoms}"
    );
    Ok(())
}

/// Groups over pairs of partitions, in turning orders, with single appends between them;
/// returns each group's append id and event count. Produced slowly (for faults meanwhile).
async fn produce_groups(
    ctx: &TestContext,
    producer: &FutureProducer,
    prefix: &str,
    groups: usize,
) -> anyhow::Result<HashMap<Uuid, usize>> {
    let streams: Vec<String> = (0..TEST_PARTITIONS)
        .map(|p| stream_on(p, &format!("{prefix}{p}")))
        .collect();
    let mut versions = vec![0i64; streams.len()];
    let mut out = HashMap::new();
    for i in 0..groups {
        let (p, q) = (i % 3, (i + 1) % 3);
        let append = Uuid::new_v4();
        let parts = [
            Part::new(&streams[p], versions[p], 1 + i % 2, append),
            Part::new(&streams[q], versions[q], 1, append),
        ];
        versions[p] += parts[0].count as i64;
        versions[q] += 1;
        let (_, attempt) = accepted_group(ctx, &[&parts[0], &parts[1]]).await?;
        // Every other group's parts go out in the opposite order.
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            produce_part(ctx, producer, &parts[k], attempt, Some((append, 2))).await?;
        }
        out.insert(append, parts[0].count + 1);
        let r = (i + 2) % 3;
        single(ctx, producer, &streams[r], versions[r]).await?;
        versions[r] += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(out)
}

#[tokio::test]
async fn killed_mid_way_and_restarted_every_group_commits_exactly_once() -> anyhow::Result<()> {
    let ctx = Arc::new(TestContext::new("ms_kill").await?);
    let producer = kafka::producer(&ctx.brokers)?;
    let load = {
        let ctx = ctx.clone();
        tokio::spawn(async move { produce_groups(&ctx, &producer, "S", 120).await })
    };
    // Indexers that do not publish, killed mid-way: the last one publishes every group from
    // the table (its tail holds none of them).
    for round in 0..3 {
        let mut process = indexer::spawn(
            &ctx,
            &[("ESK_INDEXER_MAX_BATCH", "3"), ("ESK_PUBLISH", "false")],
        )
        .await?;
        pause(700 + 300 * round).await;
        process.kill9()?;
    }
    let groups = load.await??;
    let expected: usize = groups.values().sum::<usize>() + 120;
    let mut last = indexer::spawn(&ctx, &[("ESK_PUBLISH", "false")]).await?;
    wait_rows(&ctx, expected as i64, Duration::from_secs(90)).await?;
    last.kill9()?;
    let _final = indexer::spawn(&ctx, &[]).await?;
    wait_rows(&ctx, expected as i64, Duration::from_secs(90)).await?;
    pause(500).await;
    let table = rows(&ctx).await?;
    assert_eq!(table.len(), expected);
    check(&table, &groups)?;
    let published = eventually(Duration::from_secs(60), || async {
        let through: i64 = sqlx::query_scalar("SELECT global_position FROM published_through")
            .fetch_one(&ctx.pool)
            .await
            .ok()?;
        (through == expected as i64).then_some(())
    })
    .await;
    assert!(published.is_some(), "everything published");
    let grouped = check_canonical_groups(&ctx, &table)?;
    let grouped_rows = table.iter().filter(|r| r.group_append_id.is_some()).count();
    assert!(grouped >= grouped_rows, "every grouped event was published");
    Ok(())
}

#[tokio::test]
async fn the_standby_takes_over_when_the_leader_is_killed() -> anyhow::Result<()> {
    let ctx = TestContext::new("ms_standby").await?;
    let producer = kafka::producer(&ctx.brokers)?;
    let mut first = indexer::spawn(&ctx, &[("ESK_INDEXER_MAX_BATCH", "3")]).await?;
    let leader = eventually(Duration::from_secs(20), || async {
        (role(&first).await.as_deref() == Some("leader")).then_some(())
    })
    .await;
    assert!(leader.is_some(), "the first indexer leads");
    let second = indexer::spawn(&ctx, &[("ESK_INDEXER_MAX_BATCH", "3")]).await?;
    assert_eq!(role(&second).await.as_deref(), Some("standby"));
    let standby_metrics = indexer::metrics(&second).await?;
    assert_eq!(
        standby_metrics.get("esk_indexer_committer_leader").copied(),
        Some(0.0)
    );
    let before = produce_groups(&ctx, &producer, "S", 30).await?;
    first.kill9()?;
    let after = produce_groups(&ctx, &producer, "T", 30).await?;
    let expected: usize = before.values().chain(after.values()).sum::<usize>() + 60;
    wait_rows(&ctx, expected as i64, Duration::from_secs(90)).await?;
    let table = rows(&ctx).await?;
    assert_eq!(table.len(), expected);
    let mut groups = before;
    groups.extend(after);
    check(&table, &groups)?;
    assert_eq!(role(&second).await.as_deref(), Some("leader"));
    let metrics = indexer::metrics(&second).await?;
    assert_eq!(
        metrics.get("esk_indexer_committer_leader").copied(),
        Some(1.0)
    );
    Ok(())
}

/// Terminates the Postgres session holding the index committer's advisory lock.
async fn cut_the_committer_lock(ctx: &TestContext) -> anyhow::Result<u64> {
    // A bigint advisory key shows in pg_locks as classid (high half) and objid (low half).
    const KEY: i64 = 0x0065_736b_5f69_6478;
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND objsubid = 1
           AND classid::int8 = $1 AND objid::int8 = $2
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind(KEY >> 32)
    .bind(KEY & 0xffff_ffff)
    .fetch_all(&ctx.pool)
    .await?;
    Ok(terminated.into_iter().filter(|t| *t).count() as u64)
}

#[tokio::test]
async fn a_leader_that_loses_its_lock_connection_stands_by_and_one_leader_finishes(
) -> anyhow::Result<()> {
    let ctx = TestContext::new("ms_lock_lost").await?;
    let producer = kafka::producer(&ctx.brokers)?;
    let first = indexer::spawn(&ctx, &[("ESK_INDEXER_MAX_BATCH", "3")]).await?;
    let led = eventually(Duration::from_secs(20), || async {
        (role(&first).await.as_deref() == Some("leader")).then_some(())
    })
    .await;
    assert!(led.is_some(), "the first indexer leads");
    let second = indexer::spawn(&ctx, &[("ESK_INDEXER_MAX_BATCH", "3")]).await?;
    let before = produce_groups(&ctx, &producer, "S", 20).await?;
    assert_eq!(cut_the_committer_lock(&ctx).await?, 1, "one lock holder");
    let after = produce_groups(&ctx, &producer, "T", 20).await?;
    let expected: usize = before.values().chain(after.values()).sum::<usize>() + 40;
    wait_rows(&ctx, expected as i64, Duration::from_secs(90)).await?;
    let table = rows(&ctx).await?;
    assert_eq!(table.len(), expected);
    let mut groups = before;
    groups.extend(after);
    check(&table, &groups)?;
    // The old leader notices at its next lock check (within a couple of seconds; meanwhile the
    // offsets compare-and-set keeps two committers safe).
    let noticed = eventually(Duration::from_secs(15), || async {
        first
            .log_text()
            .contains("index committer stepping down")
            .then_some(())
    })
    .await;
    assert!(noticed.is_some(), "the leader noticed the lost lock");
    // Then exactly one leader, and each process says which it is in /health and the gauge.
    let one_leader = eventually(Duration::from_secs(15), || async {
        let mut leaders = 0.0;
        for process in [&first, &second] {
            let gauge = indexer::metrics(process)
                .await
                .ok()?
                .get("esk_indexer_committer_leader")
                .copied()?;
            let shown = role(process).await;
            let expected = if gauge == 1.0 { "leader" } else { "standby" };
            if shown.as_deref() != Some(expected) {
                return None;
            }
            leaders += gauge;
        }
        (leaders == 1.0).then_some(())
    })
    .await;
    assert!(one_leader.is_some(), "one committer, and /health agrees");
    for process in [&first, &second] {
        let health = reqwest::get(format!("{}/health", process.admin)).await?;
        assert!(health.status().is_success(), "a standby is healthy too");
    }
    Ok(())
}

/// Runs `esk indexer quarantine` against the test's database and topics; returns its exit code.
async fn quarantine(ctx: &TestContext, partition: i32, offset: i64) -> anyhow::Result<i32> {
    let output = tokio::process::Command::new(esk_tests::process::bin_dir()?.join("esk"))
        .envs(ctx.env())
        .args([
            "indexer",
            "quarantine",
            "--partition",
            &partition.to_string(),
            "--offset",
            &offset.to_string(),
        ])
        .output()
        .await?;
    Ok(output.status.code().unwrap_or(-1))
}

#[tokio::test]
async fn a_refused_part_halts_every_partition_of_its_group_and_quarantine_takes_the_group(
) -> anyhow::Result<()> {
    let ctx = TestContext::new("ms_refused").await?;
    let producer = kafka::producer(&ctx.brokers)?;
    let (a, after_a) = (stream_on(0, "A"), stream_on(0, "AfterA"));
    let (b, after_b) = (stream_on(1, "B"), stream_on(1, "AfterB"));
    let x = stream_on(2, "X");
    single(&ctx, &producer, &a, 0).await?;
    single(&ctx, &producer, &b, 0).await?;
    // A group whose part on partition 0 Postgres refuses (NUL in a text column); its part on
    // partition 1 is fine, and must not commit alone.
    let g = Uuid::new_v4();
    let parts = [Part::new(&a, 1, 1, g), Part::new(&b, 1, 2, g)];
    let (_, attempt) = accepted_group(&ctx, &[&parts[0], &parts[1]]).await?;
    let bad = produce_typed(
        &ctx,
        &producer,
        &parts[0],
        "Bad\u{0}Type",
        attempt,
        Some((g, 2)),
    )
    .await?;
    let good = produce_part(&ctx, &producer, &parts[1], attempt, Some((g, 2))).await?;
    single(&ctx, &producer, &after_a, 0).await?;
    single(&ctx, &producer, &after_b, 0).await?;
    for version in 0..5 {
        single(&ctx, &producer, &x, version).await?;
    }
    let process = indexer::spawn(&ctx, &[]).await?;
    // Partition 2 indexes; partitions 0 and 1 halt at the group's parts.
    let halted = eventually(Duration::from_secs(60), || async {
        let response = reqwest::get(format!("{}/health", process.admin))
            .await
            .ok()?;
        let text = response.text().await.ok()?;
        (text.contains(&format!("partition {} halted at offset {}", bad.0, bad.1))
            && text.contains(&format!("partition {} halted at offset {}", good.0, good.1)))
        .then_some(())
    })
    .await;
    assert!(
        halted.is_some(),
        "both partitions of the group halt: {}",
        process.log_text()
    );
    wait_rows(&ctx, 7, Duration::from_secs(30)).await?;
    pause(1500).await;
    let table = rows(&ctx).await?;
    assert_eq!(table.len(), 7, "a0, b0 and partition 2's five: {table:?}");
    assert!(
        table.iter().all(|r| r.group_append_id.is_none()),
        "no part of the group"
    );

    // Quarantining the refused part sets the whole group aside; both partitions go on.
    assert_eq!(quarantine(&ctx, bad.0, bad.1).await?, 0);
    wait_rows(&ctx, 9, Duration::from_secs(60)).await?;
    pause(1000).await;
    let table = rows(&ctx).await?;
    assert_eq!(table.len(), 9, "the appends behind the group: {table:?}");
    check(&table, &HashMap::new())?;
    let set_aside: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition_id, kafka_offset FROM indexer_quarantine
         WHERE topic = $1 AND quarantined_at IS NOT NULL AND payload IS NOT NULL
         ORDER BY partition_id",
    )
    .bind(&ctx.topics.ingest_log)
    .fetch_all(&ctx.pool)
    .await?;
    assert_eq!(
        set_aside,
        vec![bad, good],
        "both parts set aside, bytes kept"
    );
    let response = reqwest::get(format!("{}/health", process.admin)).await?;
    assert!(response.status().is_success());
    Ok(())
}

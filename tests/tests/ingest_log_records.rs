//! The `ingest-log` record format (`esk_model::ingest_log`): an attempt writes one record per
//! partition it touches, holding that partition's events in order, split at the record budget;
//! the indexer decodes them into rows in order, and still indexes the one-event records of the
//! earlier format.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use esk_runtime::kafka::partition_for_key;
use esk_tests::indexer::{self, check_table, wait_indexed};
use esk_tests::ingest::{self, Client};
use esk_tests::{kafka, TestContext, TEST_PARTITIONS};
use rdkafka::Message;
use serde_json::json;
use uuid::Uuid;

/// HTTP only, one append worker: concurrent appends queue up and share attempts.
const ONE_WORKER: &[(&str, &str)] = &[
    ("ESK_INGEST_KAFKA_APPENDS", "false"),
    ("ESK_INGEST_WORKERS", "1"),
];

/// Every record of `ingest-log` (`expected` events in all), as (partition, offset, events).
fn log_records(
    ctx: &TestContext,
    expected: usize,
) -> anyhow::Result<Vec<(i32, i64, Vec<esk_model::wire::IngestLogEvent>)>> {
    let records = kafka::read_topic_until_idle(
        &ctx.brokers,
        &ctx.topics.ingest_log,
        Duration::from_secs(3),
        Duration::from_secs(60),
    )?;
    let mut decoded = Vec::with_capacity(records.len());
    for record in &records {
        let events = kafka::ingest_log_events(std::slice::from_ref(record))?;
        decoded.push((record.partition(), record.offset(), events));
    }
    let events: usize = decoded.iter().map(|(_, _, e)| e.len()).sum();
    anyhow::ensure!(
        events == expected,
        "{events} events on ingest-log, not {expected}"
    );
    decoded.sort_by_key(|(partition, offset, _)| (*partition, *offset));
    Ok(decoded)
}

/// (partition, offset) of each indexed event.
async fn indexed_at(ctx: &TestContext) -> anyhow::Result<HashMap<Uuid, (i32, i64)>> {
    let rows: Vec<(Uuid, i32, i64)> =
        sqlx::query_as("SELECT event_id, kafka_partition, kafka_offset FROM events")
            .fetch_all(&ctx.pool)
            .await?;
    Ok(rows.into_iter().map(|(id, p, o)| (id, (p, o))).collect())
}

#[tokio::test]
async fn an_attempt_writes_one_record_per_partition_and_it_indexes_in_order() -> anyhow::Result<()>
{
    let ctx = TestContext::new("log_records").await?;
    let ingest_process = ingest::spawn(&ctx, ONE_WORKER).await?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    let client = Client::new(&ingest_process);
    let streams: Vec<String> = (0..60).map(|i| format!("Shared-{i}")).collect();
    let appends = streams.iter().map(|stream| {
        let client = client.clone();
        async move {
            let body = json!({"expected_version": "no_stream", "events": ingest::events(2)});
            client.append(stream, &body).await
        }
    });
    for reply in futures::future::join_all(appends).await {
        let reply = reply?;
        anyhow::ensure!(reply.status == 201, "{:?}", reply.body);
    }
    wait_indexed(&ctx, 120, Duration::from_secs(60)).await?;
    check_table(&ctx).await?;

    let records = log_records(&ctx, 120)?;
    assert!(
        records.len() < streams.len(),
        "fewer records ({}) than appends: attempts share records",
        records.len()
    );
    let mut shared = 0;
    let mut parts = HashSet::new();
    let at = indexed_at(&ctx).await?;
    for (partition, offset, events) in &records {
        let attempt = events[0].attempt_id;
        assert!(
            parts.insert((attempt, *partition)),
            "one record per (attempt, partition) under the default budget"
        );
        let mut last_version: HashMap<&str, i64> = HashMap::new();
        for event in events {
            assert_eq!(event.attempt_id, attempt, "one attempt per record");
            assert_eq!(
                partition_for_key(event.stream_id.as_bytes(), TEST_PARTITIONS),
                *partition,
                "{} in its stream's partition",
                event.stream_id
            );
            if let Some(previous) = last_version.insert(&event.stream_id, event.version) {
                assert_eq!(event.version, previous + 1, "a stream's events in order");
            }
            assert_eq!(
                at.get(&event.event_id),
                Some(&(*partition, *offset)),
                "indexed from this record"
            );
        }
        if last_version.len() > 1 {
            shared += 1;
        }
    }
    assert!(shared > 0, "some record holds several streams' events");

    // The partition ingest computes is the one the Kafka client picks for the same key, so a
    // stream's records of both formats share a partition.
    let producer = kafka::producer(&ctx.brokers)?;
    for stream in &streams {
        let (partition, _) = kafka::produce(&producer, &ctx.topics.appends, stream, b"{}").await?;
        assert_eq!(
            partition,
            partition_for_key(stream.as_bytes(), TEST_PARTITIONS),
            "{stream}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_partition_batch_beyond_the_record_budget_splits_in_order() -> anyhow::Result<()> {
    let ctx = TestContext::new("log_split").await?;
    let budget = 1500;
    let ingest_process = ingest::spawn(
        &ctx,
        &[
            ("ESK_INGEST_KAFKA_APPENDS", "false"),
            ("ESK_INGEST_LOG_RECORD_BYTES", "1500"),
        ],
    )
    .await?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    let client = Client::new(&ingest_process);
    let note = "n".repeat(300);
    let events: Vec<_> = (0..12)
        .map(|i| json!({"id": Uuid::new_v4(), "type": "Big", "data": {"i": i, "note": note}}))
        .collect();
    let reply = client
        .append(
            "Split-1",
            &json!({"expected_version": "no_stream", "events": events}),
        )
        .await?;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    wait_indexed(&ctx, 12, Duration::from_secs(60)).await?;
    check_table(&ctx).await?;

    let records = log_records(&ctx, 12)?;
    assert!(records.len() >= 3, "split into {} records", records.len());
    let raw = kafka::read_topic(
        &ctx.brokers,
        &ctx.topics.ingest_log,
        records.len(),
        Duration::from_secs(10),
    )?;
    for record in &raw {
        let size = record.payload().map_or(0, <[u8]>::len);
        assert!(size <= budget, "a record of {size} bytes");
    }
    // In offset order, the versions run 0..12 without a gap, each record after the last.
    let versions: Vec<i64> = records
        .iter()
        .flat_map(|(_, _, events)| events.iter().map(|e| e.version))
        .collect();
    assert_eq!(versions, (0..12).collect::<Vec<i64>>());
    let partitions: BTreeSet<i32> = records.iter().map(|(p, _, _)| *p).collect();
    assert_eq!(partitions.len(), 1);
    let data: Vec<String> = sqlx::query_scalar(
        "SELECT data::text FROM events WHERE stream_id = 'Split-1' ORDER BY global_position",
    )
    .fetch_all(&ctx.pool)
    .await?;
    for (i, text) in data.iter().enumerate() {
        assert_eq!(text, &format!(r#"{{"i":{i},"note":"{note}"}}"#));
    }
    Ok(())
}

#[tokio::test]
async fn one_event_records_of_the_earlier_format_still_index() -> anyhow::Result<()> {
    let ctx = TestContext::new("log_upgrade").await?;
    // What an earlier ingest left: a committed append of three events as three records of
    // the one-event format, keyed by stream id.
    let (append_id, attempt_id) = (Uuid::new_v4(), Uuid::new_v4());
    sqlx::query(
        "INSERT INTO append_ledger (append_id, attempt_id, stream_id, fingerprint, event_count, status, first_version, last_version)
         VALUES ($1, $2, 'Old-1', $1, 3, 'accepted', 0, 2)",
    )
    .bind(append_id)
    .bind(attempt_id)
    .execute(&ctx.pool)
    .await?;
    sqlx::query("INSERT INTO streams (stream_id, version) VALUES ('Old-1', 2)")
        .execute(&ctx.pool)
        .await?;
    let producer = kafka::producer(&ctx.brokers)?;
    let created_at = chrono::Utc::now();
    for version in 0..3 {
        let value = format!(
            r#"{{"event_id":"{}","stream_id":"Old-1","version":{version},"type":"Legacy","data":{{"v":{version}.50}},"append_id":"{append_id}","attempt_id":"{attempt_id}","created_at":{}}}"#,
            Uuid::new_v4(),
            serde_json::to_string(&created_at)?,
        );
        kafka::produce(&producer, &ctx.topics.ingest_log, "Old-1", value.as_bytes()).await?;
    }
    // The upgraded ingest appends to the same stream in the new format.
    let ingest_process = ingest::spawn(&ctx, &[("ESK_INGEST_KAFKA_APPENDS", "false")]).await?;
    let client = Client::new(&ingest_process);
    let reply = client
        .append(
            "Old-1",
            &json!({"expected_version": 2, "events": ingest::events(1)}),
        )
        .await?;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    let records = log_records(&ctx, 4)?;
    let partitions: BTreeSet<i32> = records.iter().map(|(p, _, _)| *p).collect();
    assert_eq!(
        partitions.len(),
        1,
        "both formats in the stream's partition"
    );

    let _indexer = indexer::spawn(&ctx, &[]).await?;
    wait_indexed(&ctx, 4, Duration::from_secs(60)).await?;
    check_table(&ctx).await?;
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT version, data::text FROM events WHERE stream_id = 'Old-1' ORDER BY global_position",
    )
    .fetch_all(&ctx.pool)
    .await?;
    let versions: Vec<i64> = rows.iter().map(|(v, _)| *v).collect();
    assert_eq!(versions, vec![0, 1, 2, 3]);
    for (version, data) in rows.iter().take(3) {
        assert_eq!(
            data,
            &format!(r#"{{"v":{version}.50}}"#),
            "payload as given"
        );
    }
    Ok(())
}

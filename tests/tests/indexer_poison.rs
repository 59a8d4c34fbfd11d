//! Defence in depth behind validation: a record that got onto ingest-log and that Postgres
//! refuses (here an event type with NUL, which a `text` column cannot hold) halts only its own
//! partition, at that record; every other partition keeps indexing; `/health` says where and
//! why; and `esk indexer quarantine` sets the record aside so the partition goes on, with
//! nothing acknowledged ever dropped on its own.

use std::collections::HashMap;
use std::time::Duration;

use esk_tests::indexer::{self, check_table, event_count};
use esk_tests::ingest::{self, Client};
use esk_tests::process::bin_dir;
use esk_tests::{eventually, kafka, TestContext};
use rdkafka::producer::FutureRecord;
use rdkafka::Message;
use serde_json::json;
use uuid::Uuid;

const HTTP_ONLY: &[(&str, &str)] = &[("ESK_INGEST_KAFKA_APPENDS", "false")];

async fn append_one(client: &Client, stream: &str) -> anyhow::Result<()> {
    let reply = client
        .append(
            stream,
            &json!({"expected_version": "no_stream", "events": [ingest::event("Fine")]}),
        )
        .await?;
    anyhow::ensure!(reply.status == 201, "{stream}: {:?}", reply.body);
    Ok(())
}

/// Runs `esk indexer quarantine` against the test's database and topics.
async fn quarantine(
    ctx: &TestContext,
    partition: i32,
    offset: i64,
) -> anyhow::Result<(i32, String)> {
    let output = tokio::process::Command::new(bin_dir()?.join("esk"))
        .envs(ctx.env())
        .env("NO_COLOR", "1")
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
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.code().unwrap_or(-1), text))
}

async fn health(process: &esk_tests::process::Process) -> anyhow::Result<(u16, String)> {
    let response = reqwest::get(format!("{}/health", process.admin)).await?;
    Ok((response.status().as_u16(), response.text().await?))
}

#[tokio::test]
async fn a_refused_record_halts_only_its_partition_until_quarantined() -> anyhow::Result<()> {
    let ctx = TestContext::new("idx_poison").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let indexer_process = indexer::spawn(&ctx, &[]).await?;
    let client = Client::new(&ingest_process);
    for i in 0..12 {
        append_one(&client, &format!("Before-{i}")).await?;
    }
    indexer::wait_indexed(&ctx, 12, Duration::from_secs(60)).await?;

    // An accepted append whose record Postgres will refuse (validation would have stopped it
    // at the door; this is what the indexer must survive if something ever gets past).
    let (append_id, attempt_id) = (Uuid::new_v4(), Uuid::new_v4());
    sqlx::query(
        "INSERT INTO append_ledger (append_id, attempt_id, stream_id, fingerprint, event_count, status, first_version, last_version)
         VALUES ($1, $2, 'Poison-1', $1, 1, 'accepted', 0, 0)",
    )
    .bind(append_id)
    .bind(attempt_id)
    .execute(&ctx.pool)
    .await?;
    let poison = serde_json::to_vec(&json!({"event_id": Uuid::new_v4(), "stream_id": "Poison-1",
        "version": 0, "type": "Bad\u{0}Type", "data": {"x": 1}, "append_id": append_id,
        "attempt_id": attempt_id, "created_at": chrono::Utc::now()}))?;
    let producer = kafka::producer(&ctx.brokers)?;
    let (halted_partition, halted_offset) = producer
        .send(
            FutureRecord::to(&ctx.topics.ingest_log)
                .key("Poison-1")
                .payload(&poison),
            Duration::from_secs(10),
        )
        .await
        .map(|d| (d.partition, d.offset))
        .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;

    for i in 0..30 {
        append_one(&client, &format!("After-{i}")).await?;
    }
    // Which of those share the halted partition (same key hashing as ingest's producer).
    let log = kafka::read_topic(
        &ctx.brokers,
        &ctx.topics.ingest_log,
        43,
        Duration::from_secs(30),
    )?;
    assert_eq!(log.len(), 43);
    let partition_of: HashMap<String, i32> = log
        .iter()
        .map(|r| {
            (
                String::from_utf8_lossy(r.key().unwrap_or_default()).into_owned(),
                r.partition(),
            )
        })
        .collect();
    let blocked = (0..30)
        .filter(|i| partition_of[&format!("After-{i}")] == halted_partition)
        .count() as i64;
    assert!(
        blocked > 0 && blocked < 30,
        "the streams spread over the partitions"
    );

    let healthy_indexed = 12 + 30 - blocked;
    let reached = eventually(Duration::from_secs(60), || async {
        (event_count(&ctx).await.ok()? == healthy_indexed).then_some(())
    })
    .await;
    assert!(
        reached.is_some(),
        "every other partition keeps indexing: {} of {healthy_indexed}",
        event_count(&ctx).await?
    );
    // The halted partition stays where it is: nothing after the refused record is indexed.
    indexer::pause(2000).await;
    assert_eq!(event_count(&ctx).await?, healthy_indexed);
    let stored: i64 = sqlx::query_scalar(
        "SELECT next_offset FROM indexer_offsets WHERE topic = $1 AND partition_id = $2",
    )
    .bind(&ctx.topics.ingest_log)
    .bind(halted_partition)
    .fetch_one(&ctx.pool)
    .await?;
    assert_eq!(
        stored, halted_offset,
        "the partition stands at the refused record"
    );

    let (status, body) = health(&indexer_process).await?;
    assert_eq!(status, 503, "{body}");
    for needle in [
        format!("partition {halted_partition} halted at offset {halted_offset}"),
        append_id.to_string(),
        "22021".to_owned(),
    ] {
        assert!(body.contains(&needle), "/health names {needle}: {body}");
    }
    let metrics = indexer::metrics(&indexer_process).await?;
    assert_eq!(
        metrics.get("esk_indexer_halted_partitions").copied(),
        Some(1.0)
    );

    // Only the record the partition stopped at can be quarantined.
    let (code, text) = quarantine(&ctx, halted_partition, halted_offset + 1).await?;
    assert_eq!(code, 1, "{text}");
    let (code, text) = quarantine(&ctx, halted_partition, halted_offset).await?;
    assert_eq!(code, 0, "{text}");

    let resumed = eventually(Duration::from_secs(60), || async {
        (event_count(&ctx).await.ok()? == 12 + 30).then_some(())
    })
    .await;
    assert!(
        resumed.is_some(),
        "the partition resumed after the quarantine: {}",
        indexer_process.log_text()
    );
    let (payload, at): (Option<Vec<u8>>, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
        "SELECT payload, quarantined_at FROM indexer_quarantine WHERE topic = $1 AND partition_id = $2 AND kafka_offset = $3",
    )
    .bind(&ctx.topics.ingest_log)
    .bind(halted_partition)
    .bind(halted_offset)
    .fetch_one(&ctx.pool)
    .await?;
    assert_eq!(
        payload.as_deref(),
        Some(poison.as_slice()),
        "the record's bytes are kept"
    );
    assert!(at.is_some());
    let poisoned: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id = 'Poison-1'")
            .fetch_one(&ctx.pool)
            .await?;
    assert_eq!(poisoned, 0);
    check_table(&ctx).await?;
    let (status, body) = health(&indexer_process).await?;
    assert_eq!(status, 200, "{body}");
    let metrics = indexer::metrics(&indexer_process).await?;
    assert_eq!(
        metrics.get("esk_indexer_halted_partitions").copied(),
        Some(0.0)
    );
    assert_eq!(
        metrics
            .get("esk_indexer_invariant_violations_total")
            .copied(),
        Some(0.0)
    );
    Ok(())
}

/// A record that says it is a batch of events (format 2) and does not decode may hold
/// acknowledged appends: it is not dead-lettered like shapeless garbage, its partition halts at
/// it with the decode error, every other partition goes on, and a quarantine sets it aside.
#[tokio::test]
async fn a_garbage_batch_record_halts_only_its_partition() -> anyhow::Result<()> {
    let ctx = TestContext::new("idx_garbage_batch").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let indexer_process = indexer::spawn(&ctx, &[]).await?;
    let client = Client::new(&ingest_process);
    // Every partition has a stored position first (the quarantine asks for it).
    for i in 0..12 {
        append_one(&client, &format!("Before-{i}")).await?;
    }
    indexer::wait_indexed(&ctx, 12, Duration::from_secs(60)).await?;
    let producer = kafka::producer(&ctx.brokers)?;
    let garbage = b"\x02{\"attempt_id\": \"not a uuid\", \"events\": [".to_vec();
    let (halted_partition, halted_offset) =
        kafka::produce(&producer, &ctx.topics.ingest_log, "Junk-2", &garbage).await?;
    for i in 0..30 {
        append_one(&client, &format!("Next-{i}")).await?;
    }
    let blocked = (0..30)
        .filter(|i| {
            esk_runtime::kafka::partition_for_key(
                format!("Next-{i}").as_bytes(),
                esk_tests::TEST_PARTITIONS,
            ) == halted_partition
        })
        .count() as i64;
    assert!(
        blocked > 0 && blocked < 30,
        "the streams spread over the partitions"
    );
    let reached = eventually(Duration::from_secs(60), || async {
        (event_count(&ctx).await.ok()? == 12 + 30 - blocked).then_some(())
    })
    .await;
    assert!(
        reached.is_some(),
        "every other partition keeps indexing: {}",
        event_count(&ctx).await?
    );
    indexer::pause(2000).await;
    assert_eq!(
        event_count(&ctx).await?,
        12 + 30 - blocked,
        "nothing past the record"
    );
    let (status, body) = health(&indexer_process).await?;
    assert_eq!(status, 503, "{body}");
    for needle in [
        format!("partition {halted_partition} halted at offset {halted_offset}"),
        "does not decode".to_owned(),
    ] {
        assert!(body.contains(&needle), "/health names {needle}: {body}");
    }
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&ctx.pool)
        .await?;
    assert_eq!(dead, 0, "a batch record is never dead-lettered");

    let (code, text) = quarantine(&ctx, halted_partition, halted_offset).await?;
    assert_eq!(code, 0, "{text}");
    let resumed = eventually(Duration::from_secs(60), || async {
        (event_count(&ctx).await.ok()? == 12 + 30).then_some(())
    })
    .await;
    assert!(
        resumed.is_some(),
        "the partition resumed after the quarantine: {}",
        indexer_process.log_text()
    );
    let payload: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT payload FROM indexer_quarantine WHERE topic = $1 AND partition_id = $2 AND kafka_offset = $3",
    )
    .bind(&ctx.topics.ingest_log)
    .bind(halted_partition)
    .bind(halted_offset)
    .fetch_one(&ctx.pool)
    .await?;
    assert_eq!(
        payload.as_deref(),
        Some(garbage.as_slice()),
        "its bytes are kept"
    );
    check_table(&ctx).await?;
    let (status, body) = health(&indexer_process).await?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}

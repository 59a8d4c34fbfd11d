//! The broker killed with -9 mid-load and started again on the same durable storage (a Tansu
//! built with its libsql engine: `deploy/local/stack durable-broker`, path in
//! `ESK_TANSU_DURABLE_BIN`). A private broker on its own port, so the shared one is untouched.
//! Writers retry 503s with the same body; any other answer (a false rejection) fails them.
//! Afterwards every acknowledged event is indexed exactly once, versions are contiguous, and
//! the canonical topic holds every position in order per partition (repeats allowed).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use esk_tests::broker::PrivateBroker;
use esk_tests::indexer::{self, check_table, wait_indexed};
use esk_tests::ingest::{self, Client};
use esk_tests::load::Load;
use esk_tests::process::free_port;
use esk_tests::{kafka, TestContext, TEST_PARTITIONS};
use rdkafka::Message;

#[tokio::test]
async fn survives_a_broker_kill_9_and_restart_with_durable_storage() -> anyhow::Result<()> {
    let bin = PrivateBroker::bin()?;
    let mut ctx = TestContext::without_topics("broker_restart").await?;
    let dir = std::env::temp_dir().join(format!("esk-durable-broker-{}", ctx.name));
    std::fs::create_dir_all(&dir)?;
    let mut broker = PrivateBroker::start(bin, dir, free_port()?, &[]).await?;
    ctx.brokers = format!("127.0.0.1:{}", broker.port);
    esk_runtime::kafka::create_topics(&ctx.kafka(), &ctx.topics.all(), TEST_PARTITIONS, 1).await?;

    let ingest_process = ingest::spawn(&ctx, &[("ESK_INGEST_KAFKA_APPENDS", "false")]).await?;
    let indexer_process = indexer::spawn(&ctx, &[]).await?;
    let client = Client::new(&ingest_process);
    let load = Load::start(&client, "Brk", 6, 3, usize::MAX);
    indexer::pause(3000).await;
    let before = load.accepted();
    assert!(before > 0, "appends acknowledged before the kill");

    broker.kill9()?;
    indexer::pause(3000).await;
    broker.launch().await?;
    indexer::pause(8000).await;
    let accepted = load.finish(true).await?;
    assert!(
        accepted > before,
        "appends acknowledged after the restart too ({before} before, {accepted} in all)"
    );
    wait_indexed(&ctx, accepted, Duration::from_secs(120)).await?;
    check_table(&ctx).await?;

    // The publisher has published everything (it advances published_through only after the
    // broker acknowledged every record), so what follows reads a finished topic.
    let published = esk_tests::eventually(Duration::from_secs(120), || async {
        let through: i64 = sqlx::query_scalar("SELECT global_position FROM published_through")
            .fetch_one(&ctx.pool)
            .await
            .ok()?;
        (through >= accepted).then_some(through)
    })
    .await;
    assert!(
        published.is_some(),
        "the publisher published every position"
    );

    // The canonical topic survived too: every indexed position, in order per partition.
    // Read for a fixed while rather than until a quiet spell: after the restart the broker
    // serves fetches from its storage, and an idle gap is not the end of the topic.
    let records = kafka::read_topic(
        &ctx.brokers,
        &ctx.topics.events,
        usize::MAX,
        Duration::from_secs(30),
    )?;
    let mut seen = HashSet::new();
    let mut last: HashMap<i32, i64> = HashMap::new();
    for record in &records {
        let position = kafka::json_payload(record)?["global_position"]
            .as_i64()
            .unwrap_or(-1);
        let previous = last.entry(record.partition()).or_insert(0);
        assert!(
            position >= *previous || seen.contains(&position),
            "partition {} went back from {previous} to {position}",
            record.partition()
        );
        *previous = (*previous).max(position);
        seen.insert(position);
    }
    let missing: Vec<i64> = (1..=accepted).filter(|p| !seen.contains(p)).collect();
    assert!(
        missing.is_empty(),
        "{} of {accepted} acknowledged positions are not on the canonical topic after the \
         restart ({} records read; per partition, highest position: {last:?}); first missing: {:?}",
        missing.len(),
        records.len(),
        &missing[..missing.len().min(20)]
    );

    for process in [&ingest_process, &indexer_process] {
        let health = reqwest::get(format!("{}/health", process.admin)).await?;
        assert!(health.status().is_success(), "{}", process.log_text());
    }
    Ok(())
}

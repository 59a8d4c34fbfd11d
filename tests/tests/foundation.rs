//! The foundation: schema migrations, the topics, and the local stack script.

use std::time::{Duration, Instant};

use esk_tests::{kafka, TestContext};
use rdkafka::Message;

#[tokio::test]
async fn migrations_apply_twice_without_error() -> anyhow::Result<()> {
    let ctx = TestContext::without_topics("migrate_twice").await?;
    // TestContext already migrated once.
    esk_runtime::db::migrate(&ctx.pool).await?;
    esk_runtime::db::migrate(&ctx.pool).await?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(&ctx.pool)
    .await?;
    for expected in [
        "append_ledger",
        "dead_letters",
        "event_claims",
        "events",
        "global_position_counter",
        "indexer_offsets",
        "published_through",
        "snapshots",
        "streams",
        "subscription_checkpoints",
    ] {
        assert!(
            tables.iter().any(|t| t == expected),
            "missing table {expected}: {tables:?}"
        );
    }
    let counter: i64 = sqlx::query_scalar("SELECT count(*) FROM global_position_counter")
        .fetch_one(&ctx.pool)
        .await?;
    assert_eq!(counter, 1, "the counter row is seeded exactly once");
    Ok(())
}

#[tokio::test]
async fn a_record_produced_to_each_topic_is_consumed_back() -> anyhow::Result<()> {
    let ctx = TestContext::new("topics_round_trip").await?;
    let producer = kafka::producer(&ctx.brokers)?;
    for topic in ctx.topics.all() {
        let payload = format!("{{\"topic\":\"{topic}\"}}");
        kafka::produce(&producer, topic, "key-1", payload.as_bytes()).await?;
        let messages = kafka::read_topic(&ctx.brokers, topic, 1, Duration::from_secs(20))?;
        assert_eq!(messages.len(), 1, "topic {topic}");
        assert_eq!(messages[0].key(), Some(&b"key-1"[..]));
        assert_eq!(messages[0].payload(), Some(payload.as_bytes()));
    }
    Ok(())
}

#[test]
fn stack_up_fails_fast_when_the_postgres_port_is_taken() -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let state = std::env::temp_dir().join(format!("esk-stack-test-{port}"));
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/stack");
    let started = Instant::now();
    let output = std::process::Command::new(script)
        .arg("up")
        .env("ESK_PG_PORT", port.to_string())
        .env("ESK_STATE_DIR", &state)
        .env("ESK_SKIP_SETUP", "1")
        .output()?;
    let elapsed = started.elapsed();
    let _ = std::fs::remove_dir_all(&state);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "stack up must fail: {stderr}");
    assert!(
        stderr.contains(&port.to_string()) && stderr.contains("in use"),
        "message must name the taken port: {stderr}"
    );
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    drop(listener);
    Ok(())
}

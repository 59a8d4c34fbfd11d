//! An append whose records the broker will never take (here: larger than the producers'
//! `message.max.bytes`, which a deployment may allow its events to exceed) gets a definite,
//! typed rejection instead of being retried for ever: over HTTP a 413, over Kafka a rejection
//! on `append-results`, so its partition is not pinned. Nothing of it is written, and the
//! appends after it go through.

use std::time::Duration;

use esk_tests::ingest::{self, Client};
use esk_tests::{kafka, TestContext};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use serde_json::{json, Value};
use uuid::Uuid;

const BIG: usize = 9 * 1024 * 1024;

#[tokio::test]
async fn records_the_broker_refuses_are_rejected_not_retried_for_ever() -> anyhow::Result<()> {
    let ctx = TestContext::new("broker_refusals").await?;
    let limit = (16 * 1024 * 1024).to_string();
    let ingest_process = ingest::spawn(
        &ctx,
        &[
            ("ESK_MAX_EVENT_BYTES", limit.as_str()),
            ("ESK_INGEST_MAX_BODY_BYTES", limit.as_str()),
        ],
    )
    .await?;
    let client = Client::new(&ingest_process);
    let big_event =
        || json!({"id": Uuid::new_v4(), "type": "Huge", "data": {"blob": "x".repeat(BIG)}});

    let reply = client
        .append(
            "Big-1",
            &json!({"expected_version": "any", "events": [big_event()]}),
        )
        .await?;
    assert_eq!(
        (reply.status, reply.code()),
        (413, Some("record_too_large")),
        "{:?}",
        reply.body
    );

    // Over Kafka, with a producer that may send records that large.
    let producer: FutureProducer = esk_runtime::kafka::producer_config(&ctx.kafka())
        .set("message.max.bytes", (32 * 1024 * 1024).to_string())
        .create()?;
    let request = json!({"schema_version": 1, "request_id": "big", "stream_id": "Big-2",
        "expected_version": "any", "events": [big_event()]})
    .to_string();
    producer
        .send(
            FutureRecord::to(&ctx.topics.appends)
                .key("Big-2")
                .payload(request.as_bytes())
                .headers(ctx.kafka_auth()),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
    let small = json!({"schema_version": 1, "request_id": "small", "stream_id": "Big-2",
        "expected_version": "any", "events": [ingest::event("T")]})
    .to_string();
    kafka::produce_append(
        &producer,
        &ctx.topics.appends,
        &ctx.token,
        "Big-2",
        small.as_bytes(),
    )
    .await?;
    let results = kafka::read_topic(
        &ctx.brokers,
        &ctx.topics.append_results,
        2,
        Duration::from_secs(60),
    )?;
    let outcome = |request: &str| {
        results
            .iter()
            .filter_map(|r| kafka::json_payload(r).ok())
            .find(|v| v["request_id"] == request)
            .map(|v| {
                let code = v
                    .pointer("/error/code")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                (v["outcome"].as_str().unwrap_or_default().to_owned(), code)
            })
    };
    assert_eq!(
        outcome("big"),
        Some(("rejected".to_owned(), Some("record_too_large".to_owned()))),
        "{:?}",
        results
            .iter()
            .map(|r| r.payload().map(<[u8]>::len))
            .collect::<Vec<_>>()
    );
    assert_eq!(outcome("small"), Some(("accepted".to_owned(), None)));

    assert_eq!(ingest::stream_version(&ctx, "Big-1").await?, None);
    assert_eq!(ingest::stream_version(&ctx, "Big-2").await?, Some(0));
    let ledger = ingest::ledger(&ctx).await?;
    assert_eq!(
        ledger.len(),
        1,
        "only the small append was recorded: {ledger:?}"
    );
    Ok(())
}

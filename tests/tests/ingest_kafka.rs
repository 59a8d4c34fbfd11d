//! Ingest over Kafka: requests on `appends`, exactly one outcome per request on
//! `append-results`, redeliveries answered from the ledger, offsets committed after outcomes.

use std::collections::HashMap;
use std::time::Duration;

use esk_tests::ingest::{self, events};
use esk_tests::{eventually, kafka, TestContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};

#[tokio::test]
async fn kafka_requests_get_one_outcome_each_and_redeliveries_are_idempotent() -> anyhow::Result<()>
{
    let ctx = TestContext::new("kafka_appends").await?;
    let _ingest = ingest::spawn(&ctx, &[]).await?;
    let producer = kafka::producer(&ctx.brokers)?;
    let accepted = json!({"schema_version": 1, "request_id": "r-ok", "reply_to": "client-a",
        "stream_id": "Kaf-1", "expected_version": "no_stream", "events": events(2)});
    let stale = json!({"schema_version": 1, "request_id": "r-stale", "reply_to": "client-a",
        "stream_id": "Kaf-1", "expected_version": 5, "events": events(1)});
    let requests: Vec<(&str, Vec<u8>)> = vec![
        ("Kaf-1", serde_json::to_vec(&accepted)?),
        ("Kaf-1", b"{not json".to_vec()),
        ("Kaf-1", serde_json::to_vec(&stale)?),
        (
            "Kaf-1",
            serde_json::to_vec(
                &json!({"schema_version": 1, "request_id": "r-bad", "stream_id": "Kaf-1", "expected_version": "whenever", "events": events(1)}),
            )?,
        ),
        // Redeliveries of the first and the third.
        ("Kaf-1", serde_json::to_vec(&accepted)?),
        ("Kaf-1", serde_json::to_vec(&stale)?),
    ];
    for (key, payload) in &requests {
        kafka::produce_append(&producer, &ctx.topics.appends, &ctx.token, key, payload).await?;
        // Sequential, so the redeliveries come after the originals were decided.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let results = kafka::read_topic(
        &ctx.brokers,
        &ctx.topics.append_results,
        requests.len(),
        Duration::from_secs(60),
    )?;
    assert_eq!(results.len(), requests.len(), "one outcome per request");
    let mut by_request: HashMap<String, Vec<Value>> = HashMap::new();
    for record in &results {
        let value = kafka::json_payload(record)?;
        let key = value["request_id"].as_str().unwrap_or("none").to_owned();
        if key != "none" {
            assert_eq!(
                record.key(),
                Some(&b"client-a"[..])
                    .filter(|_| key != "r-bad")
                    .or(Some(&b"Kaf-1"[..]))
            );
        }
        by_request.entry(key).or_default().push(value);
    }
    let ok = &by_request["r-ok"];
    assert_eq!(ok.len(), 2);
    for v in ok {
        assert_eq!(
            (
                v["outcome"].as_str(),
                v["first_version"].as_i64(),
                v["last_version"].as_i64()
            ),
            (Some("accepted"), Some(0), Some(1))
        );
    }
    let stale_results = &by_request["r-stale"];
    assert_eq!(stale_results.len(), 2);
    for v in stale_results {
        assert_eq!(v["outcome"], "rejected");
        assert_eq!(v["error"]["code"], "wrong_expected_version");
        assert_eq!(v["error"]["actual_version"], json!(1));
    }
    assert_eq!(
        by_request["r-bad"][0]["error"]["code"],
        "invalid_expected_version"
    );
    assert_eq!(by_request["none"][0]["error"]["code"], "malformed_json");

    assert_eq!(ingest::stream_version(&ctx, "Kaf-1").await?, Some(1));
    let ledger = ingest::ledger(&ctx).await?;
    assert_eq!(ledger.len(), 2, "one row per decided append: {ledger:?}");
    let log = kafka::read_topic(
        &ctx.brokers,
        &ctx.topics.ingest_log,
        3,
        Duration::from_secs(3),
    )?;
    assert_eq!(
        kafka::ingest_log_events(&log)?.len(),
        2,
        "the redelivery produced nothing"
    );

    // Offsets are committed once every outcome is out: exactly past the last request.
    let consumed = kafka::read_topic(
        &ctx.brokers,
        &ctx.topics.appends,
        requests.len(),
        Duration::from_secs(10),
    )?;
    let mut offsets: HashMap<i32, i64> = HashMap::new();
    for record in &consumed {
        let next = offsets.entry(record.partition()).or_default();
        *next = (*next).max(record.offset() + 1);
    }
    let group = format!("{}-ingest", ctx.name);
    // Auto-commit runs every 5 s and Tansu answers group requests slowly while the rest of the
    // suite loads the machine: allow a minute (the check is "eventually exactly these").
    let committed = eventually(Duration::from_secs(60), || {
        let brokers = ctx.brokers.clone();
        let group = group.clone();
        let topic = ctx.topics.appends.clone();
        let offsets = offsets.clone();
        async move {
            let reader: BaseConsumer =
                esk_runtime::kafka::base_config(&esk_runtime::kafka::KafkaSettings::new(&brokers))
                    .set("group.id", &group)
                    .create()
                    .ok()?;
            let mut tpl = TopicPartitionList::new();
            for p in 0..esk_tests::TEST_PARTITIONS {
                tpl.add_partition(&topic, p);
            }
            let got = reader.committed_offsets(tpl, Duration::from_secs(5)).ok()?;
            let all = offsets.iter().all(|(p, next)| {
                got.find_partition(&topic, *p).map(|e| e.offset()) == Some(Offset::Offset(*next))
            });
            all.then_some(())
        }
    })
    .await;
    assert!(
        committed.is_some(),
        "request offsets committed after their outcomes"
    );
    Ok(())
}

//! Kafka helpers for tests: produce, and read a whole topic back without a consumer group
//! (Tansu forms groups slowly; assignment is instant).

use std::time::Duration;

use esk_runtime::kafka::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

/// An idempotent producer on the test broker.
pub fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    Ok(esk_runtime::kafka::producer_config(&KafkaSettings::new(brokers)).create()?)
}

/// The `authorization` header an append request over Kafka carries its bearer token in.
pub fn bearer_headers(token: &str) -> OwnedHeaders {
    OwnedHeaders::new().insert(Header {
        key: "authorization",
        value: Some(format!("Bearer {token}").as_bytes()),
    })
}

/// Produces an append request to `topic` (the appends topic) with `token` in its
/// `authorization` header and waits for its delivery.
pub async fn produce_append(
    producer: &FutureProducer,
    topic: &str,
    token: &str,
    key: &str,
    payload: &[u8],
) -> anyhow::Result<(i32, i64)> {
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(bearer_headers(token)),
            Duration::from_secs(10),
        )
        .await
        .map(|d| (d.partition, d.offset))
        .map_err(|(e, _)| anyhow::anyhow!("produce to {topic} failed: {e}"))
}

/// Produces one record and waits for its delivery.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> anyhow::Result<(i32, i64)> {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(10),
        )
        .await
        .map(|d| (d.partition, d.offset))
        .map_err(|(e, _)| anyhow::anyhow!("produce to {topic} failed: {e}"))
}

/// Reads `topic` from the beginning of every partition until `count` records arrived (or
/// `timeout` passed) and returns them. Counting records, not end offsets, because Tansu
/// reports wrong end offsets for single multi-record batches.
pub fn read_topic(
    brokers: &str,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<OwnedMessage>> {
    let consumer = reader_from_beginning(brokers, topic)?;
    let deadline = std::time::Instant::now() + timeout;
    let mut messages = Vec::new();
    while messages.len() < count && std::time::Instant::now() < deadline {
        if let Some(result) = consumer.poll(Duration::from_millis(100)) {
            messages.push(result?.detach());
        }
    }
    Ok(messages)
}

/// The record's payload parsed as JSON.
pub fn json_payload(message: &OwnedMessage) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_slice(
        message.payload().unwrap_or_default(),
    )?)
}

/// The events of `ingest-log` records, in record order (either format, as the indexer reads
/// them); a record that does not decode is an error.
pub fn ingest_log_events(
    records: &[OwnedMessage],
) -> anyhow::Result<Vec<esk_model::wire::IngestLogEvent>> {
    let mut events = Vec::new();
    for record in records {
        let value = record.payload().unwrap_or_default();
        events.extend(esk_model::ingest_log::decode(value)?);
    }
    Ok(events)
}

/// Reads `topic` from the beginning until no record arrives for `idle` (or `limit` passes).
pub fn read_topic_until_idle(
    brokers: &str,
    topic: &str,
    idle: Duration,
    limit: Duration,
) -> anyhow::Result<Vec<OwnedMessage>> {
    let consumer = reader_from_beginning(brokers, topic)?;
    let started = std::time::Instant::now();
    let mut last = std::time::Instant::now();
    let mut messages = Vec::new();
    while last.elapsed() < idle && started.elapsed() < limit {
        if let Some(result) = consumer.poll(Duration::from_millis(100)) {
            messages.push(result?.detach());
            last = std::time::Instant::now();
        }
    }
    Ok(messages)
}

/// A group-less consumer assigned every partition of `topic` from its beginning.
pub fn reader_from_beginning(brokers: &str, topic: &str) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = esk_runtime::kafka::base_config(&KafkaSettings::new(brokers))
        .set("group.id", "esk-tests-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            assignment.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// A record's headers as text, by name.
pub fn header_map(message: &OwnedMessage) -> std::collections::BTreeMap<String, String> {
    use rdkafka::message::Headers;
    message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                    (h.key.to_owned(), value.into_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

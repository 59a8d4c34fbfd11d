//! Kafka client settings and topic administration. Only features that both Apache Kafka and
//! Tansu support are used: the idempotent producer, headers, consumer groups, pause/resume.
//! Every client is built from [`KafkaSettings`] by [`base_config`], [`producer_config`] or
//! [`consumer_config`], so the user's properties (TLS, SASL, any librdkafka property) reach
//! all of them.

mod connection;
mod properties;
mod settings;

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientContext;

pub use connection::{
    check_connection, check_connection_async, security_failure, watch_connection,
    KafkaConnectError, SecurityFailure, START_CHECK_TIMEOUT,
};
pub use properties::{
    KafkaProperty, PropertiesFile, PropertiesFileParser, PropertyError, PropertyList,
    PropertyParser,
};
pub use settings::{
    ClientBuilder, FetchTuning, KafkaSettings, DEFAULT_FETCH_MIN_BYTES, DEFAULT_FETCH_WAIT_MS,
};

/// Failures of topic administration.
#[derive(Debug, thiserror::Error)]
pub enum KafkaAdminError {
    /// The client could not be created or the request failed.
    #[error("kafka admin request failed: {0}")]
    Client(#[from] KafkaError),
    /// The broker refused to create a topic.
    #[error("cannot create topic {topic}: {code}")]
    CreateTopic {
        /// Topic name.
        topic: String,
        /// Broker error code.
        code: RDKafkaErrorCode,
    },
}

/// The partitions of `requested` that an offsets compare-and-set did not match (`matched`, the
/// partitions its `RETURNING` gave back): another consumer owns them now, so the caller rolls
/// back and re-reads them. Empty when every partition matched.
pub fn unmatched_partitions(requested: Vec<i32>, matched: &[i32]) -> Vec<i32> {
    requested
        .into_iter()
        .filter(|p| !matched.contains(p))
        .collect()
}

/// A record to produce: key, encoded value and headers.
#[derive(Debug)]
pub struct OutgoingRecord<'a> {
    /// Record key (the stream id on every esk topic; on `ingest-log`, that of its first event).
    pub key: &'a str,
    /// The partition, when the producer chose it ([`partition_for_key`]); `None`: the client's
    /// partitioner places the record by its key.
    pub partition: Option<i32>,
    /// Encoded value.
    pub payload: Vec<u8>,
    /// Record headers.
    pub headers: OwnedHeaders,
}

/// Enqueues every record to `topic` in order, then waits for all their delivery reports.
/// Returns each record's (partition, offset) in input order, or the first failure. A full local
/// queue is waited out for up to `queue_timeout`, as `FutureProducer::send` does.
///
/// One `send` future per record joined together cost the publisher an eighth of its CPU at
/// thousands of records per round; this enqueues synchronously (librdkafka copies key and
/// value) and awaits plain receivers. After a failure the records already enqueued may still be
/// delivered: callers treat them as not sent (ingest rolls back, so they are phantoms; the
/// publisher and topic projections send them again).
pub async fn send_all(
    producer: &FutureProducer,
    topic: &str,
    records: Vec<OutgoingRecord<'_>>,
    queue_timeout: Duration,
) -> Result<Vec<(i32, i64)>, KafkaError> {
    let mut pending = Vec::with_capacity(records.len());
    for OutgoingRecord {
        key,
        partition,
        payload,
        headers,
    } in records
    {
        let started = std::time::Instant::now();
        let mut record = FutureRecord::to(topic)
            .key(key)
            .payload(payload.as_slice())
            .headers(headers);
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if started.elapsed() < queue_timeout =>
                {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((error, _)) => return Err(error),
            }
        }
    }
    let mut delivered = Vec::with_capacity(pending.len());
    for delivery in pending {
        match delivery.await {
            Ok(Ok(delivery)) => delivered.push((delivery.partition, delivery.offset)),
            Ok(Err((error, _))) => return Err(error),
            Err(_) => return Err(KafkaError::Canceled),
        }
    }
    Ok(delivered)
}

/// Base settings for every client.
pub fn base_config(settings: &KafkaSettings) -> ClientBuilder {
    settings.builder()
}

/// Whether a produce failed for a reason no retry changes: the record is too large or invalid
/// for the broker (as opposed to the broker being unreachable, slow or electing a leader).
pub fn is_permanent_produce_error(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::MessageBatchTooLarge
        )
    )
}

/// Whether a permanent produce failure is about the record's size.
pub fn is_too_large(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageBatchTooLarge
        )
    )
}

/// Largest record a topic takes (`max.message.bytes`, set by `esk setup`): an event of the
/// largest allowed size with its envelope and headers on `ingest-log` and `events`, and the
/// largest HTTP body on `appends`. Producers are configured for the same size.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024 + 64 * 1024;

/// An idempotent, `acks=all` producer. No linger: a record goes out at once when the producer
/// is idle, and batches form by themselves while requests are in flight (up to 5 per
/// connection), so a quiet store pays no wait and a busy one still sends full batches. Measured
/// here, one attempt's records to two partitions: acknowledged in 0.7 ms at p50 without a linger
/// against 2.1 ms with `linger.ms=1` (docs/design.md, "Latency"). The Kafka properties setting
/// can set one.
pub fn producer_config(settings: &KafkaSettings) -> ClientBuilder {
    let mut config = base_config(settings);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0")
        .set("socket.nagle.disable", "true")
        .set("batch.num.messages", "10000")
        .set("batch.size", "1048576")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.kbytes", "262144")
        .set("delivery.timeout.ms", "30000")
        .set("message.max.bytes", MAX_MESSAGE_BYTES.to_string());
    config
}

/// A consumer in `group` that commits only what the caller stores. `session.timeout.ms` is kept
/// short: Tansu takes about 23 s to form a group at the default. Fetches are answered as
/// [`FetchTuning`] says: at once when there are records on Kafka, within a few milliseconds on
/// Tansu, so no hop holds a record back waiting for fuller fetches.
pub fn consumer_config(settings: &KafkaSettings, group: &str) -> ClientBuilder {
    let mut config = base_config(settings);
    let fetch = settings.fetch();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "300000")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("queued.max.messages.kbytes", "65536")
        .set("fetch.max.bytes", "16777216")
        .set("fetch.wait.max.ms", fetch.wait_ms.to_string())
        .set("fetch.min.bytes", fetch.min_bytes.max(1).to_string());
    config
}

/// Creates `topics` with `partitions` partitions and `replication` replicas each; existing topics are left as they are.
pub async fn create_topics(
    settings: &KafkaSettings,
    topics: &[&str],
    partitions: i32,
    replication: i32,
) -> Result<(), KafkaAdminError> {
    let admin: AdminClient<DefaultClientContext> = base_config(settings).create()?;
    let max_message_bytes = MAX_MESSAGE_BYTES.to_string();
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(t, partitions, TopicReplication::Fixed(replication))
                .set("max.message.bytes", &max_message_bytes)
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaAdminError::CreateTopic { topic, code }),
        }
    }
    Ok(())
}

/// A consumer context that records which partitions a rebalance moved, so the consuming task
/// can forget what it knew of them and re-read their positions.
#[derive(Debug, Default)]
pub struct RebalanceLog {
    changed: std::sync::Mutex<Vec<i32>>,
}

impl RebalanceLog {
    /// Partitions assigned or revoked since the last call.
    pub fn take_changed(&self) -> Vec<i32> {
        self.changed
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }
}

impl ClientContext for RebalanceLog {}

impl ConsumerContext for RebalanceLog {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (kind, list) = match rebalance {
            Rebalance::Assign(list) => ("assigned", *list),
            Rebalance::Revoke(list) => ("revoked", *list),
            Rebalance::Error(error) => {
                tracing::warn!(%error, "rebalance error");
                return;
            }
        };
        let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
        tracing::info!(?partitions, kind, "partitions {kind}");
        if let Ok(mut changed) = self.changed.lock() {
            changed.extend(partitions);
        }
    }
}

/// The partition of a record keyed `key` among `partitions`: what librdkafka's default
/// partitioner (`consistent_random`: CRC-32 of the key, modulo the partition count) picks for a
/// non-empty key. Ingest places `ingest-log` records itself with it, so a stream's events land
/// where its format-1 records (placed by the client by key) did.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    let partitions = partitions.max(1) as u32;
    // The remainder is below `partitions`, itself an i32.
    (crc32fast::hash(key) % partitions) as i32
}

/// Why a topic's partitions could not be counted.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The brokers did not answer the metadata request.
    #[error(transparent)]
    Metadata(#[from] KafkaError),
    /// The blocking metadata lookup did not finish.
    #[error(transparent)]
    Lookup(#[from] tokio::task::JoinError),
    /// The topic has no partitions: it does not exist.
    #[error("topic {0} does not exist")]
    Missing(String),
}

/// The number of partitions of `topic`, which must exist (the lookup runs on a blocking task).
pub async fn existing_partitions(settings: &KafkaSettings, topic: &str) -> Result<i32, TopicError> {
    let (settings, name) = (settings.clone(), topic.to_owned());
    let count = tokio::task::spawn_blocking(move || partition_count(&settings, &name)).await??;
    if count > 0 {
        Ok(count)
    } else {
        Err(TopicError::Missing(topic.to_owned()))
    }
}

/// The number of partitions of `topic` (blocking: call from a blocking task).
pub fn partition_count(settings: &KafkaSettings, topic: &str) -> Result<i32, KafkaError> {
    use rdkafka::consumer::Consumer;
    let consumer: BaseConsumer = base_config(settings).create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let count = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len());
    Ok(i32::try_from(count).unwrap_or(i32::MAX))
}

/// Pauses (or resumes) every partition of `topic` currently assigned to `consumer`: the
/// consumer keeps polling, so it stays in its group, but fetches nothing for them.
pub fn set_paused<C: ConsumerContext + 'static>(
    consumer: &rdkafka::consumer::StreamConsumer<C>,
    topic: &str,
    paused: bool,
) {
    use rdkafka::consumer::Consumer;
    let Ok(assignment) = consumer.assignment() else {
        return;
    };
    let mut partitions = rdkafka::TopicPartitionList::new();
    for element in assignment.elements_for_topic(topic) {
        partitions.add_partition(topic, element.partition());
    }
    let result = if paused {
        consumer.pause(&partitions)
    } else {
        consumer.resume(&partitions)
    };
    if let Err(error) = result {
        tracing::warn!(%error, topic, paused, "cannot pause/resume partitions");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::producer::BaseProducer;

    #[test]
    fn librdkafka_is_built_with_tls_and_every_sasl_mechanism() -> Result<(), KafkaError> {
        let features = rdkafka::ClientConfig::new()
            .create_native_config()?
            .get("builtin.features")?;
        for feature in [
            "ssl",
            "sasl",
            "sasl_plain",
            "sasl_scram",
            "sasl_oauthbearer",
            "sasl_gssapi",
        ] {
            assert!(
                features.split(',').any(|f| f == feature),
                "librdkafka lacks {feature}: {features}"
            );
        }
        Ok(())
    }

    #[test]
    fn a_sasl_ssl_client_can_be_created() -> Result<(), Box<dyn std::error::Error>> {
        let settings = KafkaSettings::new("127.0.0.1:1").with_properties([
            KafkaProperty::parse("security.protocol=SASL_SSL")?,
            KafkaProperty::parse("sasl.mechanism=SCRAM-SHA-512")?,
            KafkaProperty::parse("sasl.username=esk")?,
            KafkaProperty::parse("sasl.password=secret")?,
        ]);
        let _producer: BaseProducer = producer_config(&settings).create()?;
        Ok(())
    }
}

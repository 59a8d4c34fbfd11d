//! Producing accepted events to `ingest-log` (step 5) and waiting for every delivery report:
//! one format-2 record (`esk_model::ingest_log`) per partition the attempt writes to.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use esk_model::event::{Append, Version};
use esk_model::ingest_log::{BatchEncoder, BatchEventRef};
use esk_runtime::kafka::{
    existing_partitions, partition_for_key, send_all, KafkaSettings, OutgoingRecord, TopicError,
};
use esk_runtime::records::{ingest_log_batch_headers, with_group_headers};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::FutureProducer;
use tokio::sync::OnceCell;

use crate::config::IngestConfig;

/// The idempotent producer for `ingest-log`.
#[derive(Clone)]
pub(crate) struct IngestLog {
    producer: FutureProducer,
    topic: String,
    queue_timeout: Duration,
    kafka: KafkaSettings,
    /// The topic's partition count (fixed at creation), looked up by the first produce.
    partitions: Arc<OnceCell<i32>>,
    /// Largest record events share (`ESK_INGEST_LOG_RECORD_BYTES`).
    record_bytes: usize,
}

impl std::fmt::Debug for IngestLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestLog")
            .field("topic", &self.topic)
            .finish()
    }
}

/// One accepted append and the version of its first event.
#[derive(Debug)]
pub(crate) struct Accepted<'a> {
    pub(crate) append: &'a Append,
    pub(crate) first_version: Version,
}

/// The events of one attempt bound for one partition, in order.
struct Part<'a> {
    partition: i32,
    encoder: BatchEncoder,
    /// The subject stream of each event pushed, for the key of the record it starts.
    streams: Vec<&'a str>,
}

impl IngestLog {
    pub(crate) fn new(config: &IngestConfig) -> Result<Self, KafkaError> {
        let kafka = config.common.kafka();
        let mut client = esk_runtime::kafka::producer_config(&kafka);
        client.set(
            "delivery.timeout.ms",
            config.delivery_timeout_ms.to_string(),
        );
        Ok(IngestLog {
            producer: client.create()?,
            topic: config.common.topics.ingest_log.clone(),
            queue_timeout: Duration::from_millis(config.delivery_timeout_ms),
            kafka,
            partitions: Arc::new(OnceCell::new()),
            record_bytes: config.log_record_bytes.max(1),
        })
    }

    /// The producer, shared with the append-results path.
    pub(crate) fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Produces every event of `accepted`, one record per partition the attempt writes to
    /// (more when they exceed the record budget), each partition's events in arrival order;
    /// returns once all are acknowledged (acks=all), or with the first failure. For a
    /// multi-stream append (`group`: its append id) every record names the group and how many
    /// records the attempt produced.
    pub(crate) async fn produce(
        &self,
        accepted: &[Accepted<'_>],
        attempt_id: uuid::Uuid,
        created_at: DateTime<Utc>,
        group: Option<uuid::Uuid>,
    ) -> Result<(), ProduceError> {
        let partitions = *self
            .partitions
            .get_or_try_init(|| existing_partitions(&self.kafka, &self.topic))
            .await?;
        let mut parts: Vec<Part<'_>> = Vec::new();
        let mut part_of: HashMap<i32, usize> = HashMap::new();
        for item in accepted {
            let stream = item.append.stream_id.as_str();
            // A lifecycle change (on `$$<id>`) shares its subject's partition and key: the
            // indexer then commits it in order with that stream's events.
            let subject = item.append.subject();
            let partition = partition_for_key(subject.as_bytes(), partitions);
            let index = match part_of.get(&partition) {
                Some(index) => *index,
                None => {
                    parts.push(Part {
                        partition,
                        encoder: BatchEncoder::new(attempt_id, created_at, self.record_bytes)?,
                        streams: Vec::new(),
                    });
                    part_of.insert(partition, parts.len() - 1);
                    parts.len() - 1
                }
            };
            let part = &mut parts[index];
            for (offset, event) in item.append.events.iter().enumerate() {
                part.encoder.push(&BatchEventRef {
                    event_id: event.id,
                    stream_id: stream,
                    version: item.first_version.get() + offset as i64,
                    event_type: &event.event_type,
                    data: &event.data,
                    metadata: event.metadata.as_deref(),
                    append_id: item.append.append_id,
                })?;
                part.streams.push(subject);
            }
        }
        let attempt = attempt_id.to_string();
        let mut records = Vec::with_capacity(parts.len());
        for part in parts {
            for batch in part.encoder.finish() {
                records.push(OutgoingRecord {
                    key: part
                        .streams
                        .get(batch.first_event)
                        .copied()
                        .unwrap_or_default(),
                    partition: Some(part.partition),
                    payload: batch.value,
                    headers: ingest_log_batch_headers(&attempt, batch.events),
                });
            }
        }
        if let Some(group) = group {
            // The count is known only once every partition's records are split to size.
            let (group, count) = (group.to_string(), records.len());
            for record in &mut records {
                let headers = std::mem::replace(&mut record.headers, OwnedHeaders::new());
                record.headers = with_group_headers(headers, &group, count);
            }
        }
        send_all(&self.producer, &self.topic, records, self.queue_timeout).await?;
        Ok(())
    }
}

impl ProduceError {
    /// The broker will never take these records (too large, invalid): retrying is useless.
    pub(crate) fn permanent(&self) -> Option<&KafkaError> {
        match self {
            ProduceError::Kafka(error) if esk_runtime::kafka::is_permanent_produce_error(error) => {
                Some(error)
            }
            _ => None,
        }
    }
}

/// Why the events of an attempt were not all acknowledged.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProduceError {
    /// The broker did not acknowledge a record.
    #[error("{0}")]
    Kafka(#[from] KafkaError),
    /// A record could not be encoded (not expected: the payloads are parsed JSON).
    #[error("cannot encode an ingest-log record: {0}")]
    Encode(#[from] serde_json::Error),
    /// The topic's partition count is unknown (the brokers did not answer, or no topic).
    #[error("{0}")]
    Topic(#[from] TopicError),
}

//! Producing accepted events to `ingest-log` (step 5) and waiting for every delivery report.

use std::time::Duration;

use chrono::{DateTime, Utc};
use esk_model::event::{Append, Version};
use esk_model::wire::IngestLogEventRef;
use esk_runtime::kafka::{send_all, OutgoingRecord};
use esk_runtime::records::ingest_log_headers;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;

use crate::config::IngestConfig;

/// The idempotent producer for `ingest-log`.
#[derive(Clone)]
pub(crate) struct IngestLog {
    producer: FutureProducer,
    topic: String,
    queue_timeout: Duration,
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

impl IngestLog {
    pub(crate) fn new(config: &IngestConfig) -> Result<Self, KafkaError> {
        let mut client = esk_runtime::kafka::producer_config(&config.common.kafka());
        client.set(
            "delivery.timeout.ms",
            config.delivery_timeout_ms.to_string(),
        );
        Ok(IngestLog {
            producer: client.create()?,
            topic: config.common.topics.ingest_log.clone(),
            queue_timeout: Duration::from_millis(config.delivery_timeout_ms),
        })
    }

    /// The producer, shared with the append-results path.
    pub(crate) fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Produces every event of `accepted`; returns once all are acknowledged (acks=all), or
    /// with the first failure.
    pub(crate) async fn produce(
        &self,
        accepted: &[Accepted<'_>],
        attempt_id: uuid::Uuid,
        created_at: DateTime<Utc>,
    ) -> Result<(), ProduceError> {
        let mut records = Vec::new();
        for item in accepted {
            for (offset, event) in item.append.events.iter().enumerate() {
                let version = item.first_version.get() + offset as i64;
                let value = IngestLogEventRef {
                    event_id: event.id,
                    stream_id: &item.append.stream_id,
                    version,
                    event_type: &event.event_type,
                    data: &event.data,
                    metadata: event.metadata.as_deref(),
                    append_id: item.append.append_id,
                    attempt_id,
                    created_at,
                };
                records.push(OutgoingRecord {
                    // A lifecycle change shares its subject's partition: the indexer then
                    // commits it in order with that stream's events.
                    key: item.append.subject(),
                    payload: serde_json::to_vec(&value)?,
                    headers: ingest_log_headers(
                        &value,
                        event.correlation_id.as_deref(),
                        event.causation_id.as_deref(),
                    ),
                });
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
}

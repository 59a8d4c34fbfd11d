//! Producing accepted events to `ingest-log` (step 5) and waiting for every delivery report.

use std::time::Duration;

use chrono::{DateTime, Utc};
use esk_core::model::Append;
use esk_core::wire::{header, IngestLogEventRef};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

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
pub(crate) struct Accepted<'a> {
    pub(crate) append: &'a Append,
    pub(crate) first_version: i64,
}

impl IngestLog {
    pub(crate) fn new(config: &IngestConfig) -> Result<Self, KafkaError> {
        let mut client = esk_core::kafka::producer_config(&config.common.kafka_brokers);
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
    ) -> Result<(), KafkaError> {
        let attempt_text = attempt_id.to_string();
        let mut records = Vec::new();
        for item in accepted {
            let append_text = item.append.append_id.to_string();
            for (offset, event) in item.append.events.iter().enumerate() {
                let version = item.first_version + offset as i64;
                let value = IngestLogEventRef {
                    event_id: event.id,
                    stream_id: &item.append.stream_id,
                    version,
                    event_type: &event.event_type,
                    data: &event.data,
                    metadata: event.metadata.as_ref(),
                    append_id: item.append.append_id,
                    attempt_id,
                    created_at,
                };
                let payload = serde_json::to_vec(&value).map_err(|e| {
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::InvalidMessage)
                        .tap_log(&e)
                })?;
                let version_text = version.to_string();
                let event_id_text = event.id.to_string();
                let mut headers = OwnedHeaders::new_with_capacity(7)
                    .insert(Header {
                        key: header::EVENT_ID,
                        value: Some(event_id_text.as_str()),
                    })
                    .insert(Header {
                        key: header::EVENT_TYPE,
                        value: Some(event.event_type.as_str()),
                    })
                    .insert(Header {
                        key: header::STREAM_VERSION,
                        value: Some(version_text.as_str()),
                    })
                    .insert(Header {
                        key: header::APPEND_ID,
                        value: Some(append_text.as_str()),
                    })
                    .insert(Header {
                        key: header::ATTEMPT_ID,
                        value: Some(attempt_text.as_str()),
                    });
                if let Some(id) = event.correlation_id() {
                    headers = headers.insert(Header {
                        key: header::CORRELATION_ID,
                        value: Some(id),
                    });
                }
                if let Some(id) = event.causation_id() {
                    headers = headers.insert(Header {
                        key: header::CAUSATION_ID,
                        value: Some(id),
                    });
                }
                records.push((item.append.stream_id.as_str(), payload, headers));
            }
        }
        let deliveries = records
            .into_iter()
            .map(|(key, payload, headers)| async move {
                let record = FutureRecord::to(&self.topic)
                    .key(key)
                    .payload(&payload)
                    .headers(headers);
                self.producer.send(record, self.queue_timeout).await
            });
        for result in futures::future::join_all(deliveries).await {
            if let Err((error, _)) = result {
                return Err(error);
            }
        }
        Ok(())
    }
}

trait TapLog {
    fn tap_log(self, cause: &serde_json::Error) -> Self;
}

impl TapLog for KafkaError {
    fn tap_log(self, cause: &serde_json::Error) -> Self {
        tracing::error!(error = %cause, "cannot encode an ingest-log record");
        self
    }
}

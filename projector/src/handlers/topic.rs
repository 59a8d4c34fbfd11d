//! Topic handler: forwards events to a derived Kafka topic with the idempotent producer, same
//! key and envelope as the canonical topic; the checkpoint moves after every delivery report.

use std::time::Duration;

use esk_core::wire::canonical_headers;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::event::ProjectedEvent;

use super::DeliveryError;

pub(crate) struct TopicForwarder {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for TopicForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicForwarder")
            .field("topic", &self.topic)
            .finish()
    }
}

impl TopicForwarder {
    pub(crate) fn new(brokers: &str, topic: &str) -> anyhow::Result<Self> {
        Ok(TopicForwarder {
            producer: esk_core::kafka::producer_config(brokers).create()?,
            topic: topic.to_owned(),
        })
    }

    pub(crate) async fn deliver(&self, events: &[ProjectedEvent]) -> Result<(), DeliveryError> {
        let payloads: Vec<Vec<u8>> = events
            .iter()
            .map(|e| serde_json::to_vec(&e.event))
            .collect::<Result<_, _>>()
            .map_err(|e| DeliveryError(e.to_string()))?;
        let sends = events.iter().zip(&payloads).map(|(e, payload)| {
            let (correlation, causation) = e.event.trace_ids();
            let headers = canonical_headers(&e.event, correlation.as_deref(), causation.as_deref());
            self.producer.send(
                FutureRecord::to(&self.topic)
                    .key(e.event.stream_id.as_str())
                    .payload(payload.as_slice())
                    .headers(headers),
                Duration::from_secs(30),
            )
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(e, _)| DeliveryError(format!("produce to {}: {e}", self.topic)))?;
        }
        Ok(())
    }
}

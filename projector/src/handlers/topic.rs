//! Topic handler: forwards events to a derived Kafka topic with the idempotent producer, same
//! key and envelope as the canonical topic; the checkpoint moves after every delivery report.

use std::time::Duration;

use esk_runtime::kafka::send_all;
use esk_runtime::records::canonical_record;
use rdkafka::producer::FutureProducer;

use crate::event::ProjectedEvent;

use super::{HandlerError, HandlerSetupError};

/// The producer and derived topic of one projection.
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
    /// A forwarder to `topic` on the brokers of `kafka`.
    pub(crate) fn new(
        kafka: &esk_runtime::kafka::KafkaSettings,
        topic: &str,
    ) -> Result<Self, HandlerSetupError> {
        Ok(TopicForwarder {
            producer: esk_runtime::kafka::producer_config(kafka)
                .create()
                .map_err(HandlerSetupError::Producer)?,
            topic: topic.to_owned(),
        })
    }

    /// Produces `events` and waits for every delivery report.
    pub(crate) async fn deliver(&self, events: &[ProjectedEvent]) -> Result<(), HandlerError> {
        let records = events
            .iter()
            .map(|e| canonical_record(&e.event))
            .collect::<Result<Vec<_>, _>>()
            .map_err(HandlerError::encode)?;
        send_all(
            &self.producer,
            &self.topic,
            records,
            Duration::from_secs(30),
        )
        .await
        .map_err(|e| HandlerError::produce(&self.topic, e))?;
        Ok(())
    }
}

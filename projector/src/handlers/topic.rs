//! Topic handler: forwards events to a derived Kafka topic with the idempotent producer, same
//! key and envelope as the canonical topic; the checkpoint moves after every delivery report.

use std::time::Duration;

use esk_runtime::kafka::send_all;
use esk_runtime::records::canonical_record;
use rdkafka::producer::FutureProducer;

use crate::event::ProjectedEvent;

use super::HandlerError;

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
            producer: esk_runtime::kafka::producer_config(brokers).create()?,
            topic: topic.to_owned(),
        })
    }

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

//! Handlers: what a projection does with its events. A SQL projection writes a read model in the
//! projector's transaction; a webhook or a topic receives deliveries. Every failure is
//! classified once ([`HandlerError`]) as transient or rejected.

pub(crate) mod failure;
pub(crate) mod signature;
pub(crate) mod topic;
pub(crate) mod webhook;

pub(crate) use failure::HandlerError;

use crate::event::ProjectedEvent;
use crate::projections_file::{HandlerSpec, ProjectionSpec};
use crate::sql_projections::{self, SqlProjection};

/// A configured handler.
pub(crate) enum Handler {
    Sql(Box<dyn SqlProjection>),
    Webhook(webhook::Webhook),
    Topic(topic::TopicForwarder),
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Handler::Sql(_) => "Handler::Sql",
            Handler::Webhook(_) => "Handler::Webhook",
            Handler::Topic(_) => "Handler::Topic",
        })
    }
}

/// Why a declared handler could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HandlerSetupError {
    /// The SQL projection kind is not registered.
    #[error("unknown sql projection {0}")]
    UnknownSql(String),
    /// The webhook URL does not parse.
    #[error("webhook url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as declared.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error(transparent)]
    HttpClient(reqwest::Error),
    /// The topic's producer could not be created.
    #[error(transparent)]
    Producer(rdkafka::error::KafkaError),
}

impl Handler {
    /// The handler `spec` declares (`kafka` for a topic handler's producer).
    pub(crate) fn for_spec(
        spec: &ProjectionSpec,
        kafka: &esk_runtime::kafka::KafkaSettings,
    ) -> Result<Self, HandlerSetupError> {
        Ok(match &spec.handler {
            HandlerSpec::Sql { sql } => Handler::Sql(
                sql_projections::registered(sql)
                    .ok_or_else(|| HandlerSetupError::UnknownSql(sql.clone()))?,
            ),
            HandlerSpec::Webhook(settings) => {
                Handler::Webhook(webhook::Webhook::new(&spec.name, settings)?)
            }
            HandlerSpec::Topic { topic } => {
                Handler::Topic(topic::TopicForwarder::new(kafka, topic)?)
            }
        })
    }

    /// Whether replays must read payloads.
    pub(crate) fn needs_data(&self) -> bool {
        match self {
            Handler::Sql(h) => h.needs_data(),
            _ => true,
        }
    }

    /// Delivers `events` to a webhook or a topic; a SQL handler has nothing to deliver (it
    /// applies its events in the projector's transaction instead).
    pub(crate) async fn deliver(&self, events: &[ProjectedEvent]) -> Result<(), HandlerError> {
        match self {
            Handler::Webhook(w) => w.deliver(events).await,
            Handler::Topic(t) => t.deliver(events).await,
            Handler::Sql(_) => Ok(()),
        }
    }
}

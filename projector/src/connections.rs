//! What every projector operation opens first: the Postgres pool (migrated when `ESK_MIGRATE`
//! says so) and the canonical topic's partition count.

use esk_runtime::db::DbError;
use rdkafka::error::KafkaError;
use sqlx::PgPool;

use crate::config::ProjectorConfig;

/// Why the canonical topic's partitions could not be counted.
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

/// The projector's Postgres pool, with the schema migrated first if the tuning asks for it.
pub(crate) async fn open_database(config: &ProjectorConfig) -> Result<PgPool, DbError> {
    let pool =
        esk_runtime::db::connect(&config.common.database_url, config.tuning.pg_connections).await?;
    if config.tuning.migrate {
        esk_runtime::db::migrate(&pool).await?;
    }
    Ok(pool)
}

/// The number of partitions of the canonical topic (`ESK_TOPIC_EVENTS`).
pub(crate) async fn canonical_partitions(config: &ProjectorConfig) -> Result<i32, TopicError> {
    let kafka = config.common.kafka();
    let topic = config.common.topics.events.clone();
    let count =
        tokio::task::spawn_blocking(move || esk_runtime::kafka::partition_count(&kafka, &topic))
            .await??;
    if count > 0 {
        Ok(count)
    } else {
        Err(TopicError::Missing(config.common.topics.events.clone()))
    }
}

//! What every projector operation opens first: the Postgres pool (migrated when `ESK_MIGRATE`
//! says so) and the canonical topic's partition count.

use esk_runtime::db::DbError;
use sqlx::PgPool;

use crate::config::ProjectorConfig;

pub use esk_runtime::kafka::TopicError;

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
    esk_runtime::kafka::existing_partitions(&config.common.kafka(), &config.common.topics.events)
        .await
}

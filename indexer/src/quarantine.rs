//! The operator's way past a record Postgres refuses: the indexer halts an ingest-log partition
//! at such a record (nothing is skipped on its own); a quarantine request asks it to set that
//! one record aside in `indexer_quarantine` and go on. The index loop carries the request out
//! (`index_loop.rs::release_quarantined`).

use sqlx::PgPool;

/// Which record to set aside, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuarantineRequest {
    /// The ingest-log topic.
    pub topic: String,
    /// The partition that halted.
    pub partition: i32,
    /// The offset it halted at.
    pub offset: i64,
    /// Why (kept with the record).
    pub reason: String,
}

/// Why a quarantine request was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    /// The partition does not stand at that offset: the record is either indexed already or
    /// not reached yet, and skipping it would be silent loss.
    #[error("partition {partition} of {topic} {at}, not {offset}: only the record a halted partition stopped at can be quarantined", at = stored_at(*.stored))]
    NotAtOffset {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The offset asked for.
        offset: i64,
        /// Where the partition stands (none: never indexed).
        stored: Option<i64>,
    },
    /// Postgres failed.
    #[error("postgres: {0}")]
    Database(#[from] sqlx::Error),
}

fn stored_at(stored: Option<i64>) -> String {
    stored.map_or_else(
        || "has no stored position".to_owned(),
        |o| format!("is at offset {o}"),
    )
}

/// Records the request, if the partition stands at exactly that offset. The indexer that owns
/// the partition sets the record aside within seconds.
pub async fn request_quarantine(
    pool: &PgPool,
    request: &QuarantineRequest,
) -> Result<(), QuarantineError> {
    let stored: Option<i64> = sqlx::query_scalar(
        "SELECT next_offset FROM indexer_offsets WHERE topic = $1 AND partition_id = $2",
    )
    .bind(&request.topic)
    .bind(request.partition)
    .fetch_optional(pool)
    .await?;
    if stored != Some(request.offset) {
        return Err(QuarantineError::NotAtOffset {
            topic: request.topic.clone(),
            partition: request.partition,
            offset: request.offset,
            stored,
        });
    }
    sqlx::query(
        "INSERT INTO indexer_quarantine (topic, partition_id, kafka_offset, reason)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(&request.topic)
    .bind(request.partition)
    .bind(request.offset)
    .bind(&request.reason)
    .execute(pool)
    .await?;
    Ok(())
}

//! Where the indexer keeps its `ingest-log` offsets: `indexer_offsets`, one row per partition,
//! moved by the shared compare-and-set in the indexing transaction (`commit.rs`).

use std::sync::LazyLock;
use std::time::Duration;

use esk_runtime::partition_cursor::{MissingRow, OffsetStore, OffsetTable, Stored};
use sqlx::PgPool;

use crate::internal_events::StepFailed;
use crate::metrics::IndexerMetrics;
use esk_runtime::internal_event::InternalEvent;

/// `indexer_offsets`: a partition without a row is not pinned yet, and the first batch that
/// commits in it pins it at its own start.
pub(crate) static OFFSETS: LazyLock<OffsetStore> = LazyLock::new(|| {
    OffsetStore::new(OffsetTable {
        table: "indexer_offsets",
        scope_column: "topic",
        position_column: None,
        missing_row: MissingRow::Unpinned,
    })
});

/// The stored offset of `partition`, retried until Postgres answers: a record must not be
/// taken before its partition's position is known.
pub(crate) async fn load(
    pool: &PgPool,
    topic: &str,
    partition: i32,
    metrics: &IndexerMetrics,
) -> Stored {
    let mut backoff = esk_runtime::retry::until_stopped(Duration::from_secs(1));
    loop {
        match OFFSETS.load(pool, topic, partition).await {
            Ok(stored) => return stored.unwrap_or(Stored::UNPINNED),
            Err(error) => {
                StepFailed {
                    metrics,
                    stage: "load_offset",
                    error: &error,
                    partition: Some(partition),
                    message: "cannot read the stored offset; retrying",
                }
                .emit();
                tokio::time::sleep(
                    backoff
                        .next()
                        .unwrap_or(esk_runtime::retry::MAX_RETRY_DELAY),
                )
                .await;
            }
        }
    }
}

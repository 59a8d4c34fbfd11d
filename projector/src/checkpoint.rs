//! Where a projection stands: its replay position (`subscription_checkpoints`) and, once live,
//! its position per canonical-topic partition (`projection_partitions`, compare-and-set on the
//! batch's start offset so a consumer that lost a partition cannot move it).

use std::sync::LazyLock;

use esk_runtime::partition_cursor::{
    CasError, MissingRow, OffsetStore, OffsetTable, Spans, Stored,
};
use sqlx::{PgConnection, PgPool, Row};

/// `projection_partitions`: rows are written by the hand-over (a next offset of -1 when
/// nothing was published to the partition yet); no row means the projection is not live.
static PARTITIONS: LazyLock<OffsetStore> = LazyLock::new(|| {
    OffsetStore::new(OffsetTable {
        table: "projection_partitions",
        scope_column: "projection",
        position_column: Some("position"),
        missing_row: MissingRow::NoPosition,
    })
});

/// The progress a batch makes.
#[derive(Debug, Clone)]
pub(crate) enum Progress {
    /// Replayed from Postgres from one global position (exclusive) through another; a
    /// compare-and-set on `from`, so two replays of one projection cannot both apply a batch.
    Replay { from: i64, through: i64 },
    /// Consumed from the canonical topic: per partition, the batch's offsets (compare-and-set
    /// on its start) and the highest global position applied through it.
    Live { spans: Spans },
}

/// Why a checkpoint was not written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckpointError {
    /// Another consumer owns these partitions now.
    #[error("partitions {0:?} are owned by another consumer")]
    NotOwner(Vec<i32>),
    #[error("postgres: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<CasError> for CheckpointError {
    fn from(error: CasError) -> Self {
        match error {
            CasError::NotOwner(lost) => CheckpointError::NotOwner(lost.partitions),
            CasError::Database(error) => CheckpointError::Database(error),
        }
    }
}

/// Writes `progress` for `projection` on `conn` (the caller's transaction).
pub(crate) async fn write(
    conn: &mut PgConnection,
    projection: &str,
    progress: &Progress,
) -> Result<(), CheckpointError> {
    match progress {
        Progress::Replay { from, through } => {
            sqlx::query(
                "INSERT INTO subscription_checkpoints (subscription, global_position) VALUES ($1, 0)
                 ON CONFLICT (subscription) DO NOTHING",
            )
            .bind(projection)
            .execute(&mut *conn)
            .await?;
            let moved = sqlx::query(
                "UPDATE subscription_checkpoints SET global_position = $3, updated_at = now()
                 WHERE subscription = $1 AND global_position = $2",
            )
            .bind(projection)
            .bind(from)
            .bind(through)
            .execute(&mut *conn)
            .await?;
            if moved.rows_affected() != 1 {
                return Err(CheckpointError::NotOwner(Vec::new()));
            }
        }
        Progress::Live { spans } => {
            PARTITIONS.compare_and_set(conn, projection, spans).await?;
        }
    }
    Ok(())
}

/// The replay position (0 when the projection never ran).
pub(crate) async fn replay_position(pool: &PgPool, projection: &str) -> Result<i64, sqlx::Error> {
    Ok(sqlx::query_scalar(
        "SELECT global_position FROM subscription_checkpoints WHERE subscription = $1",
    )
    .bind(projection)
    .fetch_optional(pool)
    .await?
    .unwrap_or(0))
}

/// A partition's stored next offset and applied position, if the projection is live on it.
pub(crate) async fn partition(
    pool: &PgPool,
    projection: &str,
    partition: i32,
) -> Result<Option<Stored>, sqlx::Error> {
    PARTITIONS.load(pool, projection, partition).await
}

/// Whether the projection has handed over to Kafka.
pub(crate) async fn is_live(pool: &PgPool, projection: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM projection_partitions WHERE projection = $1)")
        .bind(projection)
        .fetch_one(pool)
        .await
}

/// The furthest position the projection has applied: its replay position before the hand-over,
/// the highest partition position after (an idle partition must not look like lag).
pub(crate) async fn furthest_applied(pool: &PgPool, projection: &str) -> Result<i64, sqlx::Error> {
    let live: Option<i64> =
        sqlx::query_scalar("SELECT max(position) FROM projection_partitions WHERE projection = $1")
            .bind(projection)
            .fetch_one(pool)
            .await?;
    match live {
        Some(p) => Ok(p),
        None => replay_position(pool, projection).await,
    }
}

/// Forgets every position of the projection (before a rebuild), in the caller's transaction.
pub(crate) async fn reset(conn: &mut PgConnection, projection: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM projection_partitions WHERE projection = $1")
        .bind(projection)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM subscription_checkpoints WHERE subscription = $1")
        .bind(projection)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The hand-over from a replay to Kafka: once the replay has reached `through` (at least
/// `published_through`), each partition starts right after the publisher's last record in it,
/// and records at or below `through` are skipped as already applied. Returns false when the
/// replay position moved under us (another replay runs) or the publisher got past `through`,
/// so the caller replays further first.
pub(crate) async fn hand_over(
    pool: &PgPool,
    projection: &str,
    through: i64,
    partitions: i32,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let current: Option<i64> = sqlx::query_scalar(
        "SELECT global_position FROM subscription_checkpoints WHERE subscription = $1 FOR UPDATE",
    )
    .bind(projection)
    .fetch_optional(&mut *tx)
    .await?;
    if current.unwrap_or(0) != through {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO projection_partitions (projection, partition_id, next_offset, position)
         SELECT $1, p, coalesce(pp.last_offset + 1, -1), $2
         FROM generate_series(0, $3 - 1) AS p
         LEFT JOIN publisher_partitions pp ON pp.partition_id = p
         -- One snapshot with the offsets: records past them are all above `through`.
         WHERE (SELECT global_position FROM published_through) <= $2
         ON CONFLICT (projection, partition_id) DO NOTHING",
    )
    .bind(projection)
    .bind(through)
    .bind(partitions)
    .execute(&mut *tx)
    .await?;
    let live: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM projection_partitions WHERE projection = $1)",
    )
    .bind(projection)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(live)
}

/// The head of the store and how far the publisher got, read together.
pub(crate) async fn heads(pool: &PgPool) -> Result<(i64, i64), sqlx::Error> {
    let row = sqlx::query(
        "SELECT (SELECT last_position FROM global_position_counter),
                (SELECT global_position FROM published_through)",
    )
    .fetch_one(pool)
    .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

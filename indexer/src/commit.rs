//! The indexing transaction: offsets compare-and-set, global positions from the locked counter,
//! binary COPY of the events and dead letters, all committed together.

use std::time::Instant;

use esk_runtime::partition_cursor::{CasError, Spans};
use sqlx::{PgPool, Row};

use crate::copy_batch::{self, EventRow};
use crate::metrics::IndexerMetrics;
use crate::offsets::OFFSETS;

/// An undecodable record, kept for inspection.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) payload: Vec<u8>,
    pub(crate) error: String,
}

/// A record an operator quarantined (`esk indexer quarantine`), set aside instead of indexed.
#[derive(Debug, Clone)]
pub(crate) struct Quarantined {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) payload: Vec<u8>,
}

/// What one transaction writes. `spans` holds, per partition, the batch's first offset and the
/// next offset after it.
#[derive(Debug, Default)]
pub(crate) struct BatchWrite<'a> {
    pub(crate) spans: Spans,
    pub(crate) rows: Vec<EventRow<'a>>,
    pub(crate) dead_letters: Vec<DeadLetter>,
    pub(crate) quarantined: Vec<Quarantined>,
}

/// Whether the transaction is kept or only tried (to find which record Postgres refuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Commit,
    TryOnly,
}

/// How a transaction ended without writing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommitError {
    /// These partitions' stored offsets did not match: another consumer owns them now.
    #[error("partitions {0:?} are owned by another consumer")]
    NotOwner(Vec<i32>),
    /// Postgres refused the data (SQLSTATE class 22 or 23: a unique violation is a broken
    /// invariant, anything else a record validation let through). The same records would be
    /// refused again: the offending record must be found and its partition halted.
    #[error("postgres refused the batch's data ({code}): {detail}")]
    Refused { code: String, detail: String },
    /// A record says it is a batch of events (format 2) and does not decode: it may hold
    /// acknowledged appends, so it is neither indexed nor dropped; like a refused record, it is
    /// found and its partition halted.
    #[error("partition {partition} offset {offset}: {error}")]
    Undecodable {
        partition: i32,
        offset: i64,
        error: String,
    },
    /// Anything else (connection lost, a timeout, the schema missing, ...): retry.
    #[error("postgres: {0}")]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for CommitError {
    fn from(error: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &error {
            if let Some(code) = db
                .code()
                .filter(|c| c.starts_with("22") || c.starts_with("23"))
            {
                return CommitError::Refused {
                    code: code.into_owned(),
                    detail: db.message().to_owned(),
                };
            }
        }
        CommitError::Database(error)
    }
}

impl From<CasError> for CommitError {
    fn from(error: CasError) -> Self {
        match error {
            CasError::NotOwner(lost) => CommitError::NotOwner(lost.partitions),
            CasError::Database(error) => error.into(),
        }
    }
}

impl CommitError {
    /// A refusal that means an invariant broke (a unique violation), not bad data.
    /// Whether the same records would be refused however often they are tried: the record
    /// at fault must be found and its partition halted.
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(
            self,
            CommitError::Refused { .. } | CommitError::Undecodable { .. }
        )
    }

    pub(crate) fn is_invariant_violation(&self) -> bool {
        matches!(self, CommitError::Refused { code, .. } if code == esk_runtime::db::UNIQUE_VIOLATION)
    }
}

/// Writes the batch in one transaction (in [`Mode::TryOnly`], rolls it back at the end).
pub(crate) async fn commit(
    pool: &PgPool,
    topic: &str,
    batch: &mut BatchWrite<'_>,
    metrics: &IndexerMetrics,
    mode: Mode,
) -> Result<(), CommitError> {
    let started = Instant::now();
    let mut tx = pool.begin().await?;
    // First, so a partition owned elsewhere costs no counter lock and no COPY.
    OFFSETS
        .compare_and_set(&mut tx, topic, &batch.spans)
        .await?;

    if !batch.rows.is_empty() {
        // The counter row stays locked until commit, so positions become visible in order.
        let count = batch.rows.len() as i64;
        let last: i64 = sqlx::query(
            "UPDATE global_position_counter SET last_position = last_position + $1
             RETURNING last_position",
        )
        .bind(count)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        copy_batch::assign_positions(&mut batch.rows, last - count + 1);
        let copy_started = Instant::now();
        copy_batch::copy_rows(&mut tx, &batch.rows).await?;
        metrics
            .copy_seconds
            .observe(copy_started.elapsed().as_secs_f64());
    }

    if !batch.dead_letters.is_empty() {
        let mut parts = Vec::new();
        let mut offsets = Vec::new();
        let mut payloads = Vec::new();
        let mut errors = Vec::new();
        for d in &batch.dead_letters {
            parts.push(d.partition);
            offsets.push(d.offset);
            payloads.push(d.payload.as_slice());
            errors.push(d.error.as_str());
        }
        sqlx::query(
            "INSERT INTO dead_letters (source, kafka_topic, kafka_partition, kafka_offset, payload, error)
             SELECT 'indexer', $1, p, o, b, e FROM unnest($2::int4[], $3::int8[], $4::bytea[], $5::text[]) AS t(p, o, b, e)",
        )
        .bind(topic)
        .bind(&parts)
        .bind(&offsets)
        .bind(&payloads)
        .bind(&errors)
        .execute(&mut *tx)
        .await?;
    }
    for q in &batch.quarantined {
        sqlx::query(
            "UPDATE indexer_quarantine SET payload = $4, quarantined_at = now()
             WHERE topic = $1 AND partition_id = $2 AND kafka_offset = $3",
        )
        .bind(topic)
        .bind(q.partition)
        .bind(q.offset)
        .bind(&q.payload)
        .execute(&mut *tx)
        .await?;
    }
    if mode == Mode::TryOnly {
        tx.rollback().await?;
        return Ok(());
    }
    tx.commit().await?;
    metrics
        .commit_seconds
        .observe(started.elapsed().as_secs_f64());
    Ok(())
}

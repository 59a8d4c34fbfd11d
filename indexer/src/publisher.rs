//! The publisher: one per deployment, elected with a session advisory lock. It takes the
//! committed rows past `published_through` in global-position order (from this process's
//! committed tail when that holds exactly the next position, from the table otherwise: both give
//! the same bytes, since `events` stores the JSON text as indexed), publishes them to the
//! canonical topic, and only then advances `published_through`. After a crash it may repeat
//! records, never reorder them. Every record of a multi-stream append carries the group headers
//! (append id, first and last position, number of events), so a consumer can apply it whole.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use esk_runtime::db::{canonical_event_from_row, EVENT_COLUMNS};
use esk_runtime::kafka::send_all;
use esk_runtime::records::canonical_record;
use esk_runtime::supervisor::Progress;
use futures::TryStreamExt;
use rdkafka::producer::FutureProducer;
use sqlx::{PgPool, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::committed_tail::{CommittedEvent, CommittedTail};
use crate::election::{Leadership, PUBLISHER_LOCK};
use crate::internal_events::StepFailed;
use crate::metrics::IndexerMetrics;
use esk_runtime::internal_event::InternalEvent;
use esk_runtime::pages::GroupSpan;
use esk_runtime::records::CanonicalGroup;

/// How often an idle publisher looks for rows committed by other indexer processes (its own
/// index loop wakes it at once).
const IDLE_POLL: Duration = Duration::from_millis(200);

pub(crate) struct Publisher {
    pub(crate) pool: PgPool,
    pub(crate) producer: FutureProducer,
    pub(crate) topic: String,
    pub(crate) batch: i64,
    pub(crate) batch_bytes: usize,
    pub(crate) metrics: Arc<IndexerMetrics>,
    pub(crate) indexed: Arc<Notify>,
    pub(crate) linger: Duration,
    /// What this process just committed; published from memory when it is next in line.
    pub(crate) tail: Arc<CommittedTail>,
    /// Tells the watchdog whether publishing moves.
    pub(crate) progress: Arc<Progress>,
}

/// What a publish round did.
#[derive(Debug, Clone, Copy)]
struct Round {
    /// Events published.
    published: usize,
    /// Whether it published everything indexed when it began: the next round waits for the
    /// index loop's wake-up (a commit after that read wakes it) instead of running at once.
    caught_up: bool,
}

#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error("postgres: {0}")]
    Database(#[from] sqlx::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("encoding: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("published_through moved under us; leadership lost")]
    LostLeadership,
}

impl Publisher {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        loop {
            let leader = tokio::select! {
                _ = shutdown.cancelled() => return,
                l = Leadership::try_acquire(&self.pool, PUBLISHER_LOCK) => l,
            };
            let Some(mut lock) = leader else {
                // Another process publishes: nothing for this one to do.
                self.progress.idle();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            };
            self.metrics.publisher_leader.set(1);
            tracing::info!("elected publisher");
            self.tail.set_active(true);
            let error = self.lead(&mut lock, &shutdown).await;
            self.tail.set_active(false);
            self.metrics.publisher_leader.set(0);
            lock.release().await;
            match error {
                Ok(()) => return,
                Err(error) => {
                    self.progress.blocked_by(&error);
                    StepFailed {
                        metrics: &self.metrics,
                        stage: "publish",
                        error: &error,
                        partition: None,
                        message: "publisher stepped down",
                    }
                    .emit();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    async fn lead(
        &self,
        lock: &mut Leadership,
        shutdown: &CancellationToken,
    ) -> Result<(), PublishError> {
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            // The lock lives as long as this connection; make sure it still does.
            self.progress.busy();
            lock.confirm().await?;
            let round = self.publish_round().await?;
            self.progress.progressed();
            if round.caught_up {
                self.progress.idle();
                // Woken by the index loop's commit (a commit during the round left a permit,
                // so none is missed); the timeout finds rows another indexer process committed.
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = self.indexed.notified() => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                }
            } else if (round.published as i64) < self.batch && !self.linger.is_zero() {
                // An optional linger for fuller rounds; by default none: under load, rounds
                // grow by themselves while the previous one is produced.
                tokio::time::sleep(self.linger).await;
            }
        }
    }

    /// The committed rows after `through`, in position order (at most one batch and about
    /// `batch_bytes`), with their groups, from the table: what the tail cannot supply (after a
    /// restart, or rows another indexer committed).
    async fn read_committed(&self, through: i64) -> Result<Vec<CommittedEvent>, PublishError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS}, group_append_id AS published_group_append_id,
                    group_first_position AS published_group_first,
                    group_last_position AS published_group_last
             FROM events WHERE global_position > $1 ORDER BY global_position LIMIT $2"
        );
        let mut rows = sqlx::query(&sql)
            .bind(through)
            .bind(self.batch)
            .fetch(&self.pool);
        let mut events = Vec::new();
        let mut bytes = 0usize;
        while let Some(row) = rows.try_next().await? {
            let event = canonical_event_from_row(&row)?;
            let group = match (
                // By (aliased) name: whatever EVENT_COLUMNS holds, these are the group's.
                row.try_get::<Option<Uuid>, _>("published_group_append_id")?,
                row.try_get::<Option<i64>, _>("published_group_first")?,
                row.try_get::<Option<i64>, _>("published_group_last")?,
            ) {
                (Some(append_id), Some(first), Some(last)) => Some(CanonicalGroup {
                    append_id,
                    span: GroupSpan { first, last },
                }),
                _ => None,
            };
            bytes += event.size_bytes();
            events.push(CommittedEvent { event, group });
            if bytes >= self.batch_bytes {
                break;
            }
        }
        Ok(events)
    }

    /// Publishes the next rows.
    async fn publish_round(&self) -> Result<Round, PublishError> {
        let through: i64 = sqlx::query_scalar("SELECT global_position FROM published_through")
            .fetch_one(&self.pool)
            .await?;
        let last_indexed: i64 =
            sqlx::query_scalar("SELECT last_position FROM global_position_counter")
                .fetch_one(&self.pool)
                .await?;
        self.metrics.publish_lag.set(last_indexed - through);
        let batch = usize::try_from(self.batch).unwrap_or(usize::MAX);
        let events = match self.tail.take_from(through + 1, batch, self.batch_bytes) {
            Some(events) => events,
            None => self.read_committed(through).await?,
        };
        let Some(last) = events.last().map(|e| e.event.global_position) else {
            return Ok(Round {
                published: 0,
                caught_up: true,
            });
        };
        let records = events
            .iter()
            .map(|e| {
                let mut record = canonical_record(&e.event)?;
                if let Some(group) = &e.group {
                    record.headers = group.add_headers(record.headers);
                }
                Ok::<_, serde_json::Error>(record)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let delivered = send_all(
            &self.producer,
            &self.topic,
            records,
            Duration::from_secs(30),
        )
        .await?;
        // The last record per partition, for projections handing over from a replay.
        let mut last_per_partition: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
        for ((partition, offset), event) in delivered.into_iter().zip(&events) {
            let entry = last_per_partition
                .entry(partition)
                .or_insert((offset, event.event.global_position));
            if offset >= entry.0 {
                *entry = (offset, event.event.global_position);
            }
        }
        let partitions: Vec<i32> = last_per_partition.keys().copied().collect();
        let offsets: Vec<i64> = last_per_partition.values().map(|(o, _)| *o).collect();
        let positions: Vec<i64> = last_per_partition.values().map(|(_, p)| *p).collect();
        let mut tx = self.pool.begin().await?;
        let advanced = sqlx::query(
            "UPDATE published_through SET global_position = $2 WHERE global_position = $1",
        )
        .bind(through)
        .bind(last)
        .execute(&mut *tx)
        .await?;
        if advanced.rows_affected() != 1 {
            return Err(PublishError::LostLeadership);
        }
        sqlx::query(
            "INSERT INTO publisher_partitions (partition_id, last_offset, last_position)
             SELECT * FROM unnest($1::int4[], $2::int8[], $3::int8[])
             ON CONFLICT (partition_id) DO UPDATE
             SET last_offset = EXCLUDED.last_offset, last_position = EXCLUDED.last_position",
        )
        .bind(&partitions)
        .bind(&offsets)
        .bind(&positions)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.metrics.published.inc_by(events.len() as u64);
        self.metrics.publish_lag.set(last_indexed - last);
        Ok(Round {
            published: events.len(),
            caught_up: last >= last_indexed,
        })
    }
}

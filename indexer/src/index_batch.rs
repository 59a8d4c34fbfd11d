//! One batch through the indexing transaction: decode, committed or phantom, the write
//! (`commit.rs`), then what a commit feeds (the publisher's tail, metrics, `/wait`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{SubsecRound, Utc};
use esk_model::event::category_of;
use esk_model::ingest_log;
use esk_model::wire::{CanonicalEvent, IngestLogEvent};
use esk_runtime::internal_event::InternalEvent;
use esk_runtime::partition_cursor::Spans;
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::classify;
use crate::commit::{self, BatchWrite, CommitError, DeadLetter, Mode, Quarantined};
use crate::committed_tail::{CommittedEvent, CommittedTail};
use crate::copy_batch::EventRow;
use crate::group::GroupTag;
use crate::internal_events::{PhantomDropped, UndecodableDeadLettered};
use crate::metrics::IndexerMetrics;
use crate::units::{self, UnitRecord};
use esk_runtime::pages::GroupSpan;
use esk_runtime::records::CanonicalGroup;

/// A record accepted into the batch.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    /// The record's Kafka timestamp (ms since the epoch): when ingest produced it, just before
    /// it acknowledged the append.
    pub(crate) produced_ms: Option<i64>,
    /// The record's value (of its headers only the group's are kept: the value carries
    /// everything else).
    pub(crate) payload: Vec<u8>,
    /// How many events the record says it holds (for the batch's event budget).
    pub(crate) events: usize,
    /// The multi-stream append group the record is a part of, if any.
    pub(crate) group: Option<GroupTag>,
}

/// Why a record of a batch is not an event to index.
#[derive(Debug)]
enum NotIndexed {
    /// Its value is in no format and does not decode as an event (format 1): dead-lettered.
    Undecodable(String),
    /// An operator quarantined it: set aside in `indexer_quarantine`.
    Quarantined,
}

/// What a kept transaction wrote.
#[derive(Debug)]
pub(crate) struct Indexed {
    /// Quarantined records set aside instead of indexed, as (partition, offset).
    pub(crate) set_aside: Vec<(i32, i64)>,
}

/// Indexes batches of `ingest-log` records, one transaction each.
#[derive(Debug)]
pub(crate) struct BatchIndexer {
    pub(crate) pool: PgPool,
    pub(crate) topic: String,
    pub(crate) metrics: Arc<IndexerMetrics>,
    /// Woken when events were indexed (the publisher waits on it).
    pub(crate) indexed: Arc<Notify>,
    /// Committed batches for this process's publisher.
    pub(crate) tail: Arc<CommittedTail>,
}

impl BatchIndexer {
    /// Indexes `batch` in one transaction ([`Mode::TryOnly`]: rolled back); the records in
    /// `quarantined` are set aside instead of indexed.
    pub(crate) async fn index(
        &self,
        batch: &[Pending],
        quarantined: &HashSet<(i32, i64)>,
        mode: Mode,
    ) -> Result<Indexed, CommitError> {
        let mut spans = Spans::default();
        for p in batch {
            spans.add(p.partition, p.offset);
        }
        // Each record's events (one in format 1, an attempt's run for the partition in format
        // 2). A batch record that does not decode is refused like a record Postgres refuses:
        // the caller narrows the batch down to it and halts its partition there.
        let mut decoded: Vec<Result<Vec<IngestLogEvent>, NotIndexed>> =
            Vec::with_capacity(batch.len());
        for p in batch {
            if quarantined.contains(&(p.partition, p.offset)) {
                decoded.push(Err(NotIndexed::Quarantined));
                continue;
            }
            match ingest_log::decode(&p.payload) {
                Ok(events) => decoded.push(Ok(events)),
                Err(error) if error.is_batch() => {
                    return Err(CommitError::Undecodable {
                        partition: p.partition,
                        offset: p.offset,
                        error: error.to_string(),
                    })
                }
                Err(error) => decoded.push(Err(NotIndexed::Undecodable(error.to_string()))),
            }
        }
        let pairs: HashSet<classify::AttemptPair> = decoded
            .iter()
            .filter_map(|d| d.as_ref().ok())
            .flatten()
            .map(|e| (e.append_id, e.attempt_id))
            .collect();
        let committed = if pairs.is_empty() {
            HashSet::new()
        } else {
            classify::committed(&self.pool, &pairs).await?
        };
        let mut write = BatchWrite {
            spans,
            ..Default::default()
        };
        let mut phantoms: Vec<&IngestLogEvent> = Vec::new();
        // The event of write.rows[i], for the publisher's tail.
        let mut row_events: Vec<&IngestLogEvent> = Vec::new();
        // When the record of write.rows[i] was produced (just before ingest acknowledged it).
        let mut row_produced_ms: Vec<Option<i64>> = Vec::new();
        let mut newest: HashMap<i32, chrono::DateTime<Utc>> = HashMap::new();
        // Each group's rows together, every stream in version order (units.rs).
        let unit_records: Vec<UnitRecord<'_>> = batch
            .iter()
            .zip(&decoded)
            .map(|(pending, decoded)| UnitRecord {
                group: pending.group.map(|g| g.key()),
                streams: decoded.as_ref().map_or_else(
                    |_| Vec::new(),
                    |events| events.iter().map(|e| e.stream_id.as_str()).collect(),
                ),
            })
            .collect();
        for index in units::row_order(&unit_records) {
            let (pending, decoded) = (&batch[index], &decoded[index]);
            match decoded {
                Ok(events) => {
                    for event in events {
                        if !committed.contains(&(event.append_id, event.attempt_id)) {
                            phantoms.push(event);
                            continue;
                        }
                        newest.insert(pending.partition, event.created_at);
                        row_events.push(event);
                        row_produced_ms.push(pending.produced_ms);
                        write.rows.push(EventRow {
                            global_position: 0,
                            event_id: event.event_id,
                            stream_id: &event.stream_id,
                            category: category_of(&event.stream_id),
                            event_type: &event.event_type,
                            data: event.data.get(),
                            metadata: event.metadata.as_deref().map(|m| m.get()),
                            version: event.version,
                            created_at: event.created_at,
                            kafka_partition: pending.partition,
                            kafka_offset: pending.offset,
                            group_append_id: pending
                                .group
                                .filter(|g| g.append_id == event.append_id)
                                .map(|g| g.append_id),
                            group_positions: None,
                        });
                    }
                }
                Err(NotIndexed::Quarantined) => {
                    write.quarantined.push(Quarantined {
                        partition: pending.partition,
                        offset: pending.offset,
                        payload: pending.payload.clone(),
                    });
                }
                Err(NotIndexed::Undecodable(error)) => {
                    write.dead_letters.push(DeadLetter {
                        partition: pending.partition,
                        offset: pending.offset,
                        payload: pending.payload.clone(),
                        error: error.clone(),
                    });
                }
            }
        }
        let rows = write.rows.len() as u64;
        commit::commit(&self.pool, &self.topic, &mut write, &self.metrics, mode).await?;
        let now = Utc::now();
        let indexed = Indexed {
            set_aside: write
                .quarantined
                .iter()
                .map(|q| (q.partition, q.offset))
                .collect(),
        };
        if mode == Mode::TryOnly {
            return Ok(indexed);
        }
        if self.tail.is_active() {
            let committed_events = write
                .rows
                .iter()
                .zip(&row_events)
                .map(|(row, event)| CommittedEvent {
                    event: CanonicalEvent {
                        event_id: event.event_id,
                        stream_id: event.stream_id.clone(),
                        version: event.version,
                        global_position: row.global_position,
                        event_type: event.event_type.clone(),
                        data: event.data.clone(),
                        metadata: event.metadata.clone(),
                        // As stored: Postgres keeps microseconds (so does the COPY encoding).
                        created_at: event.created_at.trunc_subsecs(6),
                    },
                    group: row.group_append_id.zip(row.group_positions).map(
                        |(append_id, (first, last))| CanonicalGroup {
                            append_id,
                            span: GroupSpan { first, last },
                        },
                    ),
                })
                .collect();
            self.tail.extend(committed_events);
        }
        if rows > 0 {
            // The publisher publishes as soon as it is woken (and was not busy).
            self.indexed.notify_one();
        }

        self.metrics.batches.inc();
        let events: usize = decoded
            .iter()
            .filter_map(|d| d.as_ref().ok())
            .map(Vec::len)
            .sum();
        self.metrics.batch_events.observe(events as f64);
        self.metrics.events_indexed.inc_by(rows);
        for event in phantoms {
            PhantomDropped {
                metrics: &self.metrics,
                event,
            }
            .emit();
        }
        for dead in &write.dead_letters {
            UndecodableDeadLettered {
                metrics: &self.metrics,
                partition: dead.partition,
                offset: dead.offset,
                error: &dead.error,
            }
            .emit();
        }
        let now_ms = now.timestamp_millis();
        for produced_ms in row_produced_ms.into_iter().flatten() {
            self.metrics
                .ack_to_indexed
                .observe((now_ms - produced_ms).max(0) as f64 / 1000.0);
        }
        for (partition, created_at) in newest {
            self.metrics
                .lag_seconds
                .with_label_values(&[&partition.to_string()])
                .set((now - created_at).num_seconds().max(0));
        }
        Ok(indexed)
    }
}

//! One partition cursor for every consumer whose offsets live in Postgres (the indexer on
//! `ingest-log`, each projection on `events`): which partitions it owns and the next offset of
//! each, the seek back to a stored offset, and (in [`OffsetStore`]) the compare-and-set that
//! moves the stored offsets inside the caller's transaction, failing with [`NotOwner`].
//!
//! The rules, each of which closed a model-checker counterexample (`protocol.md`):
//! - Postgres decides where a partition stands; the consumer's own position is only a hint. The
//!   first record of a partition the cursor does not know makes the caller load the stored
//!   offset ([`Admission::Untracked`]). Records below it were done already and are skipped; a
//!   record above it seeks the consumer back to it, once, and is skipped (nothing is skipped
//!   over). A failed seek is tried again on the next record.
//! - A rebalance (assigned or revoked) forgets what was known of the partitions it moved, so
//!   they are loaded again before their next record is taken.
//! - The stored offset moves only by compare-and-set on the batch's start offset, in the
//!   transaction that does the batch's work. A partition that did not match is owned by
//!   another consumer now (a rebalance zombie): the caller rolls back, forgets it, drops its
//!   records from the batch and retries the rest; it is re-read from the stored offset.
//! - Where a table keeps the highest position applied per partition, a record at or below it
//!   (before the batch, or earlier in the same batch) is a repeat and is not applied again.

mod offset_store;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::Offset;

pub use offset_store::{CasError, MissingRow, NotOwner, OffsetStore, OffsetTable};

/// How long a seek may block the consuming task.
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);

/// A partition's stored position, as loaded from its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The next offset to process; `None`: not pinned yet, the first record that comes is taken
    /// and the first write pins the partition there.
    pub next: Option<i64>,
    /// The highest position applied from the partition, for tables that keep one.
    pub applied_through: Option<i64>,
}

impl Stored {
    /// A partition not pinned yet, without an applied position.
    pub const UNPINNED: Stored = Stored {
        next: None,
        applied_through: None,
    };
}

/// What to do with a record the consumer delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The partition's next record: process it.
    Take,
    /// Not now: below the stored offset (done already), or above it while the consumer is
    /// sought back to it.
    Skip,
    /// The cursor does not know the partition (newly assigned, or forgotten): load its stored
    /// position, [`PartitionCursor::track`] it, and admit the record again.
    Untracked,
}

/// Moves a consumer to an offset of one partition: the seam that lets the cursor's rules be
/// tested without a broker.
pub trait Seek {
    /// Seeks `partition` of `topic` to `offset`.
    fn seek_to(&self, topic: &str, partition: i32, offset: i64) -> Result<(), KafkaError>;
}

impl<C: ConsumerContext + 'static> Seek for StreamConsumer<C> {
    fn seek_to(&self, topic: &str, partition: i32, offset: i64) -> Result<(), KafkaError> {
        self.seek(topic, partition, Offset::Offset(offset), SEEK_TIMEOUT)
    }
}

/// What the cursor knows of one owned partition.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    next: Option<i64>,
    /// A seek to `next` is under way: records past it are skipped until it lands.
    seeking: bool,
    applied_through: Option<i64>,
}

/// The partitions of one topic a consumer owns, as far as it knows, and where each stands.
#[derive(Debug)]
pub struct PartitionCursor {
    topic: String,
    partitions: HashMap<i32, Tracked>,
}

impl PartitionCursor {
    /// A cursor over `topic` that knows no partition yet.
    pub fn new(topic: impl Into<String>) -> Self {
        PartitionCursor {
            topic: topic.into(),
            partitions: HashMap::new(),
        }
    }

    /// The topic the cursor follows.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Starts following `partition` from its stored position.
    pub fn track(&mut self, partition: i32, stored: Stored) {
        self.partitions.insert(
            partition,
            Tracked {
                next: stored.next,
                seeking: false,
                applied_through: stored.applied_through,
            },
        );
    }

    /// Decides whether the record at `offset` of `partition` is the next one to process; seeks
    /// the consumer back to the stored offset (once per excursion) when it is past it.
    pub fn admit(&mut self, seek: &impl Seek, partition: i32, offset: i64) -> Admission {
        let Some(state) = self.partitions.get_mut(&partition) else {
            return Admission::Untracked;
        };
        match state.next {
            Some(next) if offset < next => Admission::Skip,
            Some(next) if offset > next => {
                if !state.seeking {
                    state.seeking = true;
                    tracing::info!(
                        partition,
                        from = offset,
                        to = next,
                        "seeking to the stored offset"
                    );
                    if let Err(error) = seek.seek_to(&self.topic, partition, next) {
                        tracing::warn!(%error, partition, "seek failed; will retry");
                        state.seeking = false;
                    }
                }
                Admission::Skip
            }
            _ => {
                state.seeking = false;
                state.next = Some(offset + 1);
                Admission::Take
            }
        }
    }

    /// Follows `partition` from `offset`, to which the caller has just sought the consumer
    /// (records past it are skipped until the seek lands).
    pub fn sought(&mut self, partition: i32, offset: i64) {
        let applied_through = self
            .partitions
            .get(&partition)
            .and_then(|p| p.applied_through);
        self.partitions.insert(
            partition,
            Tracked {
                next: Some(offset),
                seeking: true,
                applied_through,
            },
        );
    }

    /// Forgets `partitions` (moved by a rebalance, or found owned elsewhere): their stored
    /// positions are loaded again before their next record is taken.
    pub fn forget(&mut self, partitions: impl IntoIterator<Item = i32>) {
        for partition in partitions {
            self.partitions.remove(&partition);
        }
    }

    /// Whether the cursor follows `partition`.
    pub fn tracks(&self, partition: i32) -> bool {
        self.partitions.contains_key(&partition)
    }

    /// The highest position applied from `partition`, if known.
    pub fn applied_through(&self, partition: i32) -> Option<i64> {
        self.partitions
            .get(&partition)
            .and_then(|p| p.applied_through)
    }

    /// Adds the record at `offset` of `partition` to `spans`; a new span starts from the
    /// partition's applied position. A partition the cursor does not follow counts as applied
    /// through everything, so nothing of it is applied.
    pub fn extend<'s>(&self, spans: &'s mut Spans, partition: i32, offset: i64) -> &'s mut Span {
        let applied_through = self
            .partitions
            .get(&partition)
            .map_or(Some(i64::MAX), |p| p.applied_through);
        spans.add_from(partition, offset, applied_through)
    }

    /// Notes that the write of `spans` committed: their applied positions become the floor
    /// for repeats.
    pub fn committed(&mut self, spans: &Spans) {
        for (partition, span) in spans.iter() {
            if let (Some(state), Some(applied)) =
                (self.partitions.get_mut(&partition), span.applied_through)
            {
                state.applied_through =
                    Some(state.applied_through.map_or(applied, |a| a.max(applied)));
            }
        }
    }
}

/// A batch's records in one partition: the stored offset must be at `start` for the write to
/// move it to `next`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The batch's first offset in the partition.
    pub start: i64,
    /// The offset after the batch's last record in the partition.
    pub next: i64,
    /// The highest position applied from the partition through this batch, for tables that
    /// keep one.
    pub applied_through: Option<i64>,
}

impl Span {
    /// Whether a record at `position` was applied already (at or below the applied position,
    /// before the batch or earlier in it: a record and its repeat can arrive together). Notes
    /// the position otherwise.
    pub fn is_repeat(&mut self, position: i64) -> bool {
        match self.applied_through {
            Some(applied) if position <= applied => true,
            _ => {
                self.applied_through = Some(position);
                false
            }
        }
    }
}

/// A batch's spans by partition, in partition order (rows are then always written in one
/// order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spans(BTreeMap<i32, Span>);

impl Spans {
    /// Adds the record at `offset` of `partition` (records of a partition come in offset
    /// order).
    pub fn add(&mut self, partition: i32, offset: i64) -> &mut Span {
        self.add_from(partition, offset, None)
    }

    fn add_from(&mut self, partition: i32, offset: i64, applied_through: Option<i64>) -> &mut Span {
        let span = self.0.entry(partition).or_insert(Span {
            start: offset,
            next: offset + 1,
            applied_through,
        });
        span.next = offset + 1;
        span
    }

    /// The spans, in partition order.
    pub fn iter(&self) -> impl Iterator<Item = (i32, &Span)> {
        self.0.iter().map(|(p, s)| (*p, s))
    }

    /// The partitions, in order.
    pub fn partitions(&self) -> Vec<i32> {
        self.0.keys().copied().collect()
    }

    /// The span of `partition`, if the batch has records of it.
    pub fn get(&self, partition: i32) -> Option<&Span> {
        self.0.get(&partition)
    }

    /// Whether the batch has no records.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// Records every seek; fails the first `failures` of them.
    #[derive(Default)]
    struct FakeConsumer {
        seeks: RefCell<Vec<(i32, i64)>>,
        failures: RefCell<usize>,
    }

    impl Seek for FakeConsumer {
        fn seek_to(&self, _topic: &str, partition: i32, offset: i64) -> Result<(), KafkaError> {
            self.seeks.borrow_mut().push((partition, offset));
            let mut failures = self.failures.borrow_mut();
            if *failures > 0 {
                *failures -= 1;
                return Err(KafkaError::Seek("broker away".into()));
            }
            Ok(())
        }
    }

    fn at(next: i64) -> Stored {
        Stored {
            next: Some(next),
            applied_through: None,
        }
    }

    #[test]
    fn an_unknown_partition_must_be_loaded_first() {
        let consumer = FakeConsumer::default();
        let mut cursor = PartitionCursor::new("t");
        assert_eq!(cursor.admit(&consumer, 0, 5), Admission::Untracked);
        cursor.track(0, at(5));
        assert_eq!(cursor.admit(&consumer, 0, 5), Admission::Take);
        assert!(consumer.seeks.borrow().is_empty());
    }

    #[test]
    fn records_below_the_stored_offset_are_skipped_without_seeking() {
        let consumer = FakeConsumer::default();
        let mut cursor = PartitionCursor::new("t");
        cursor.track(0, at(10));
        assert_eq!(cursor.admit(&consumer, 0, 3), Admission::Skip);
        assert_eq!(cursor.admit(&consumer, 0, 9), Admission::Skip);
        assert_eq!(cursor.admit(&consumer, 0, 10), Admission::Take);
        assert_eq!(cursor.admit(&consumer, 0, 11), Admission::Take);
        assert!(consumer.seeks.borrow().is_empty());
    }

    #[test]
    fn a_record_past_the_stored_offset_seeks_back_once() {
        let consumer = FakeConsumer::default();
        let mut cursor = PartitionCursor::new("t");
        cursor.track(2, at(10));
        assert_eq!(cursor.admit(&consumer, 2, 15), Admission::Skip);
        assert_eq!(cursor.admit(&consumer, 2, 16), Admission::Skip);
        assert_eq!(
            *consumer.seeks.borrow(),
            vec![(2, 10)],
            "one seek per excursion"
        );
        // The seek landed: the stored offset comes round and is taken.
        assert_eq!(cursor.admit(&consumer, 2, 10), Admission::Take);
        // A later jump past the next offset seeks again.
        assert_eq!(cursor.admit(&consumer, 2, 20), Admission::Skip);
        assert_eq!(*consumer.seeks.borrow(), vec![(2, 10), (2, 11)]);
    }

    #[test]
    fn a_failed_seek_is_tried_again_on_the_next_record() {
        let consumer = FakeConsumer {
            failures: RefCell::new(1),
            ..Default::default()
        };
        let mut cursor = PartitionCursor::new("t");
        cursor.track(0, at(10));
        assert_eq!(cursor.admit(&consumer, 0, 12), Admission::Skip);
        assert_eq!(cursor.admit(&consumer, 0, 13), Admission::Skip);
        assert_eq!(cursor.admit(&consumer, 0, 14), Admission::Skip);
        assert_eq!(*consumer.seeks.borrow(), vec![(0, 10), (0, 10)]);
    }

    #[test]
    fn an_unpinned_partition_takes_whatever_comes_first_then_follows_it() {
        let consumer = FakeConsumer::default();
        let mut cursor = PartitionCursor::new("t");
        cursor.track(1, Stored::UNPINNED);
        assert_eq!(cursor.admit(&consumer, 1, 42), Admission::Take);
        assert_eq!(cursor.admit(&consumer, 1, 42), Admission::Skip);
        assert_eq!(cursor.admit(&consumer, 1, 43), Admission::Take);
    }

    #[test]
    fn a_forgotten_partition_is_loaded_again_and_others_are_kept() {
        let consumer = FakeConsumer::default();
        let mut cursor = PartitionCursor::new("t");
        cursor.track(0, at(1));
        cursor.track(1, at(1));
        cursor.forget([0]);
        assert!(!cursor.tracks(0));
        assert_eq!(cursor.admit(&consumer, 0, 1), Admission::Untracked);
        assert_eq!(cursor.admit(&consumer, 1, 1), Admission::Take);
    }

    #[test]
    fn a_partition_sought_by_its_owner_skips_until_the_seek_lands() {
        let consumer = FakeConsumer::default();
        let mut cursor = PartitionCursor::new("t");
        cursor.sought(0, 7);
        assert_eq!(cursor.admit(&consumer, 0, 9), Admission::Skip);
        assert!(
            consumer.seeks.borrow().is_empty(),
            "the seek is already under way"
        );
        assert_eq!(cursor.admit(&consumer, 0, 7), Admission::Take);
    }

    #[test]
    fn spans_run_from_the_first_record_to_after_the_last_per_partition() {
        let mut spans = Spans::default();
        spans.add(1, 10);
        spans.add(0, 4);
        spans.add(1, 11);
        spans.add(1, 12);
        assert_eq!(spans.partitions(), vec![0, 1]);
        assert_eq!(
            spans.get(1),
            Some(&Span {
                start: 10,
                next: 13,
                applied_through: None
            })
        );
        assert_eq!(spans.get(0).map(|s| (s.start, s.next)), Some((4, 5)));
    }

    #[test]
    fn repeats_are_found_before_the_batch_and_within_it() {
        let mut cursor = PartitionCursor::new("t");
        cursor.track(
            0,
            Stored {
                next: Some(0),
                applied_through: Some(100),
            },
        );
        let mut spans = Spans::default();
        assert!(
            cursor.extend(&mut spans, 0, 0).is_repeat(100),
            "applied before the batch"
        );
        assert!(!cursor.extend(&mut spans, 0, 1).is_repeat(101));
        assert!(
            cursor.extend(&mut spans, 0, 2).is_repeat(101),
            "a repeat in the same batch"
        );
        assert!(!cursor.extend(&mut spans, 0, 3).is_repeat(102));
        assert_eq!(spans.get(0).and_then(|s| s.applied_through), Some(102));
        // Not committed yet: the floor is still the stored one.
        assert_eq!(cursor.applied_through(0), Some(100));
        cursor.committed(&spans);
        assert_eq!(cursor.applied_through(0), Some(102));
    }

    #[test]
    fn an_untracked_partition_counts_as_applied_through_everything() {
        let cursor = PartitionCursor::new("t");
        let mut spans = Spans::default();
        assert!(cursor.extend(&mut spans, 5, 0).is_repeat(i64::MAX - 1));
    }

    #[test]
    fn committing_never_lowers_the_applied_position() {
        let mut cursor = PartitionCursor::new("t");
        cursor.track(
            0,
            Stored {
                next: Some(0),
                applied_through: Some(50),
            },
        );
        let mut spans = Spans::default();
        spans.add(0, 0).applied_through = Some(20);
        cursor.committed(&spans);
        assert_eq!(cursor.applied_through(0), Some(50));
    }
}

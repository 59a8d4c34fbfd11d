//! The newest committed events of this process, kept for the publisher so it can send what was
//! just indexed without reading it back from Postgres. The tail is always contiguous in global
//! position: a batch that does not follow it (another indexer committed in between) replaces it.
//! The publisher uses it only when it holds exactly the next position to publish, and reads
//! the table otherwise, so the tail is a shortcut, never a source of truth. Bounded (I6).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use esk_core::wire::CanonicalEvent;

#[derive(Debug)]
pub(crate) struct CommittedTail {
    events: Mutex<VecDeque<CanonicalEvent>>,
    capacity: usize,
    /// Only filled while this process is the elected publisher.
    active: AtomicBool,
}

impl CommittedTail {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            events: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            active: AtomicBool::new(false),
        }
    }

    /// Whether committed batches are worth keeping (this process publishes).
    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Starts or stops keeping batches; stopping forgets what was kept.
    pub(crate) fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::Relaxed);
        if !active {
            if let Ok(mut events) = self.events.lock() {
                events.clear();
            }
        }
    }

    /// Adds a committed batch, in ascending and gap-free global positions.
    pub(crate) fn extend(&self, batch: Vec<CanonicalEvent>) {
        let Some(first) = batch.first().map(|e| e.global_position) else {
            return;
        };
        let Ok(mut events) = self.events.lock() else {
            return;
        };
        if events
            .back()
            .is_some_and(|last| last.global_position + 1 != first)
        {
            events.clear();
        }
        events.extend(batch);
        while events.len() > self.capacity {
            events.pop_front();
        }
    }

    /// Takes up to `max` events starting exactly at position `next`, or None when the tail does
    /// not hold `next`. Everything before `next` is dropped (it is published).
    pub(crate) fn take_from(&self, next: i64, max: usize) -> Option<Vec<CanonicalEvent>> {
        let mut events = self.events.lock().ok()?;
        while events.front().is_some_and(|e| e.global_position < next) {
            events.pop_front();
        }
        if events.front()?.global_position != next {
            return None;
        }
        let n = events.len().min(max);
        Some(events.drain(..n).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::value::RawValue;
    use uuid::Uuid;

    fn event(position: i64) -> CanonicalEvent {
        CanonicalEvent {
            event_id: Uuid::new_v4(),
            stream_id: "s".into(),
            version: position,
            global_position: position,
            event_type: "t".into(),
            data: RawValue::from_string("{}".into()).unwrap_or_else(|_| unreachable!()),
            metadata: None,
            created_at: Utc::now(),
        }
    }

    fn positions(events: &[CanonicalEvent]) -> Vec<i64> {
        events.iter().map(|e| e.global_position).collect()
    }

    #[test]
    fn hands_out_only_what_follows_exactly() {
        let tail = CommittedTail::new(10);
        tail.extend((1..=4).map(event).collect());
        assert!(
            tail.take_from(0, 10).is_none(),
            "position 0 is not in the tail"
        );
        assert_eq!(
            tail.take_from(2, 2).map(|e| positions(&e)),
            Some(vec![2, 3])
        );
        assert_eq!(tail.take_from(4, 10).map(|e| positions(&e)), Some(vec![4]));
        assert!(tail.take_from(5, 10).is_none());
    }

    #[test]
    fn a_gap_replaces_the_tail_and_capacity_drops_the_oldest() {
        let tail = CommittedTail::new(3);
        tail.extend((1..=2).map(event).collect());
        tail.extend((5..=6).map(event).collect());
        assert!(
            tail.take_from(1, 10).is_none(),
            "1..2 were replaced after the gap"
        );
        tail.extend((7..=8).map(event).collect());
        assert!(tail.take_from(5, 10).is_none(), "5 fell out at capacity 3");
        assert_eq!(
            tail.take_from(6, 10).map(|e| positions(&e)),
            Some(vec![6, 7, 8])
        );
    }
}

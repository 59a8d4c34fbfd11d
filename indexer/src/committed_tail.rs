//! The newest committed events of this process, kept for the publisher so it can send what was
//! just indexed without reading it back from Postgres. The tail is always contiguous in global
//! position: a batch that does not follow it (another indexer committed in between) replaces it.
//! The publisher uses it only when it holds exactly the next position to publish, and reads
//! the table otherwise, so the tail is a shortcut, never a source of truth. Bounded (I6).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use esk_model::wire::CanonicalEvent;

use esk_runtime::records::CanonicalGroup;

/// A committed event and the group it belongs to (a multi-stream append), as published.
#[derive(Debug, Clone)]
pub(crate) struct CommittedEvent {
    pub(crate) event: CanonicalEvent,
    pub(crate) group: Option<CanonicalGroup>,
}

impl CommittedEvent {
    fn size_bytes(&self) -> usize {
        self.event.size_bytes()
    }

    fn global_position(&self) -> i64 {
        self.event.global_position
    }
}

#[derive(Debug)]
pub(crate) struct CommittedTail {
    events: Mutex<Held>,
    capacity: usize,
    /// Most bytes of events kept (events may be a MiB each: a count alone does not bound it).
    capacity_bytes: usize,
    /// Only filled while this process is the elected publisher.
    active: AtomicBool,
}

/// The events kept and their size.
#[derive(Debug, Default)]
struct Held {
    events: VecDeque<CommittedEvent>,
    bytes: usize,
}

impl Held {
    fn pop_front(&mut self) -> Option<CommittedEvent> {
        let event = self.events.pop_front()?;
        self.bytes = self.bytes.saturating_sub(event.size_bytes());
        Some(event)
    }

    fn clear(&mut self) {
        self.events.clear();
        self.bytes = 0;
    }
}

impl CommittedTail {
    pub(crate) fn new(capacity: usize, capacity_bytes: usize) -> Self {
        Self {
            events: Mutex::new(Held::default()),
            capacity: capacity.max(1),
            capacity_bytes: capacity_bytes.max(1),
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
    pub(crate) fn extend(&self, batch: Vec<CommittedEvent>) {
        let Some(first) = batch.first().map(CommittedEvent::global_position) else {
            return;
        };
        let Ok(mut events) = self.events.lock() else {
            return;
        };
        if events
            .events
            .back()
            .is_some_and(|last| last.global_position() + 1 != first)
        {
            events.clear();
        }
        events.bytes += batch.iter().map(CommittedEvent::size_bytes).sum::<usize>();
        events.events.extend(batch);
        while events.events.len() > self.capacity || events.bytes > self.capacity_bytes {
            events.pop_front();
        }
    }

    /// Takes up to `max` events, and up to `max_bytes` of them (at least one), starting
    /// exactly at position `next`, or None when the tail does not hold `next`. Everything
    /// before `next` is dropped (it is published).
    pub(crate) fn take_from(
        &self,
        next: i64,
        max: usize,
        max_bytes: usize,
    ) -> Option<Vec<CommittedEvent>> {
        let mut events = self.events.lock().ok()?;
        while events
            .events
            .front()
            .is_some_and(|e| e.global_position() < next)
        {
            events.pop_front();
        }
        if events.events.front()?.global_position() != next {
            return None;
        }
        let mut taken = Vec::new();
        let mut bytes = 0;
        while taken.len() < max && bytes < max_bytes {
            let Some(event) = events.pop_front() else {
                break;
            };
            bytes += event.size_bytes();
            taken.push(event);
        }
        Some(taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::value::RawValue;
    use uuid::Uuid;

    fn event(position: i64) -> CommittedEvent {
        let event = CanonicalEvent {
            event_id: Uuid::new_v4(),
            stream_id: "s".into(),
            version: position,
            global_position: position,
            event_type: "t".into(),
            data: RawValue::from_string("{}".into()).unwrap_or_else(|_| unreachable!()),
            metadata: None,
            created_at: Utc::now(),
        };
        CommittedEvent { event, group: None }
    }

    fn positions(events: &[CommittedEvent]) -> Vec<i64> {
        events.iter().map(CommittedEvent::global_position).collect()
    }

    #[test]
    fn hands_out_only_what_follows_exactly() {
        let tail = CommittedTail::new(10, usize::MAX);
        tail.extend((1..=4).map(event).collect());
        assert!(
            tail.take_from(0, 10, usize::MAX).is_none(),
            "position 0 is not in the tail"
        );
        assert_eq!(
            tail.take_from(2, 2, usize::MAX).map(|e| positions(&e)),
            Some(vec![2, 3])
        );
        assert_eq!(
            tail.take_from(4, 10, usize::MAX).map(|e| positions(&e)),
            Some(vec![4])
        );
        assert!(tail.take_from(5, 10, usize::MAX).is_none());
    }

    #[test]
    fn a_gap_replaces_the_tail_and_capacity_drops_the_oldest() {
        let tail = CommittedTail::new(3, usize::MAX);
        tail.extend((1..=2).map(event).collect());
        tail.extend((5..=6).map(event).collect());
        assert!(
            tail.take_from(1, 10, usize::MAX).is_none(),
            "1..2 were replaced after the gap"
        );
        tail.extend((7..=8).map(event).collect());
        assert!(
            tail.take_from(5, 10, usize::MAX).is_none(),
            "5 fell out at capacity 3"
        );
        assert_eq!(
            tail.take_from(6, 10, usize::MAX).map(|e| positions(&e)),
            Some(vec![6, 7, 8])
        );
    }

    #[test]
    fn bytes_bound_what_is_kept_and_what_is_taken() {
        let size = event(1).size_bytes();
        let tail = CommittedTail::new(100, size * 3);
        tail.extend((1..=5).map(event).collect());
        assert!(
            tail.take_from(2, 100, usize::MAX).is_none(),
            "1 and 2 fell out"
        );
        assert_eq!(
            tail.take_from(3, 100, size * 2).map(|e| positions(&e)),
            Some(vec![3, 4])
        );
        assert_eq!(
            tail.take_from(5, 100, 1).map(|e| positions(&e)),
            Some(vec![5]),
            "at least one event"
        );
    }
}

//! Which request offsets may be committed: a partition's offset advances only past requests
//! whose outcome was delivered, however out of order they finish.

use std::collections::{BTreeSet, HashMap};

/// Pending request offsets per partition.
#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    partitions: HashMap<i32, PartitionOffsets>,
}

#[derive(Debug, Default)]
struct PartitionOffsets {
    pending: BTreeSet<i64>,
    next: i64,
}

impl OffsetTracker {
    /// A request at `offset` started.
    pub(crate) fn begin(&mut self, partition: i32, offset: i64) {
        let p = self.partitions.entry(partition).or_default();
        p.pending.insert(offset);
        p.next = p.next.max(offset + 1);
    }

    /// A request's outcome was delivered. Returns the offset to commit (the next one to
    /// consume) when it moved.
    pub(crate) fn finish(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&partition)?;
        let was_lowest = p.pending.first() == Some(&offset);
        p.pending.remove(&offset);
        if !was_lowest {
            return None;
        }
        Some(p.pending.first().copied().unwrap_or(p.next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_past_contiguous_finished_requests() {
        let mut t = OffsetTracker::default();
        for o in 10..13 {
            t.begin(0, o);
        }
        assert_eq!(t.finish(0, 11), None);
        assert_eq!(t.finish(0, 10), Some(12));
        assert_eq!(t.finish(0, 12), Some(13));
        assert_eq!(t.finish(1, 5), None);
    }
}

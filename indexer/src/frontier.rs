//! The records read ahead and their closed frontier (rule 5 of the multi-stream design): per
//! partition, the largest prefix of the records read ahead in which every accepted group has all
//! of its records. Records past it
//! stay read ahead for a later batch. Phantom groups (no accepted ledger row for their
//! (append id, attempt id)) and records of no group never wait.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::group::GroupKey;
use crate::index_batch::Pending;

/// Records read ahead, per partition in offset order, and their size.
#[derive(Debug, Default)]
pub(crate) struct ReadAhead {
    pub(crate) buffers: BTreeMap<i32, VecDeque<Pending>>,
    /// Events held (by the records' `event_count`).
    pub(crate) events: usize,
    /// Bytes of record values held.
    pub(crate) bytes: usize,
}

impl ReadAhead {
    pub(crate) fn push(&mut self, record: Pending) {
        self.events += record.events;
        self.bytes += record.payload.len();
        self.buffers
            .entry(record.partition)
            .or_default()
            .push_back(record);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buffers.values().all(VecDeque::is_empty)
    }

    /// Takes the first `cut[p]` records of each partition, partition by partition.
    pub(crate) fn take(&mut self, cut: &BTreeMap<i32, usize>) -> Vec<Pending> {
        let mut batch = Vec::new();
        for (partition, buffer) in &mut self.buffers {
            let n = cut.get(partition).copied().unwrap_or(0).min(buffer.len());
            for record in buffer.drain(..n) {
                self.events = self.events.saturating_sub(record.events);
                self.bytes = self.bytes.saturating_sub(record.payload.len());
                batch.push(record);
            }
        }
        batch
    }
}

/// How many records of each partition's read-ahead the next batch may take: `accepted` holds
/// the groups the ledger accepted; records in `quarantined` are set aside, never waited for.
pub(crate) fn closed(
    buffers: &BTreeMap<i32, VecDeque<Pending>>,
    accepted: &HashSet<GroupKey>,
    quarantined: &HashSet<(i32, i64)>,
) -> BTreeMap<i32, usize> {
    // Each accepted group's records as (partition, index in its read-ahead), and how many it has.
    let mut parts: HashMap<GroupKey, (usize, Vec<(i32, usize)>)> = HashMap::new();
    for (&partition, buffer) in buffers {
        for (index, record) in buffer.iter().enumerate() {
            let Some(tag) = record.group else { continue };
            if !accepted.contains(&tag.key()) || quarantined.contains(&(partition, record.offset)) {
                continue;
            }
            let entry = parts.entry(tag.key()).or_insert((tag.records, Vec::new()));
            entry.1.push((partition, index));
        }
    }
    let mut cut: BTreeMap<i32, usize> = buffers.iter().map(|(p, b)| (*p, b.len())).collect();
    // A group that cannot commit whole cuts every partition before its first record there;
    // a cut can strand another group's record, so repeat until nothing moves (cuts only shrink).
    loop {
        let mut moved = false;
        for (needed, records) in parts.values() {
            let whole = records.len() >= *needed
                && records
                    .iter()
                    .all(|(p, i)| cut.get(p).is_some_and(|c| i < c));
            if whole {
                continue;
            }
            for (p, i) in records {
                if let Some(c) = cut.get_mut(p) {
                    if *i < *c {
                        *c = *i;
                        moved = true;
                    }
                }
            }
        }
        if !moved {
            return cut;
        }
    }
}

/// The groups named by the records read ahead (to ask the ledger which are accepted).
pub(crate) fn groups(buffers: &BTreeMap<i32, VecDeque<Pending>>) -> HashSet<GroupKey> {
    buffers
        .values()
        .flatten()
        .filter_map(|r| r.group.map(|g| g.key()))
        .collect()
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::group::GroupTag;

    fn record(partition: i32, offset: i64, group: Option<(GroupKey, usize)>) -> Pending {
        Pending {
            partition,
            offset,
            produced_ms: None,
            payload: Vec::new(),
            events: 1,
            group: group.map(|((append_id, attempt_id), records)| GroupTag {
                append_id,
                attempt_id,
                records,
            }),
        }
    }

    fn buffers(records: Vec<Pending>) -> BTreeMap<i32, VecDeque<Pending>> {
        let mut out: BTreeMap<i32, VecDeque<Pending>> = BTreeMap::new();
        for r in records {
            out.entry(r.partition).or_default().push_back(r);
        }
        out
    }

    fn key() -> GroupKey {
        (Uuid::new_v4(), Uuid::new_v4())
    }

    fn cuts(cut: &BTreeMap<i32, usize>) -> Vec<(i32, usize)> {
        cut.iter().map(|(p, c)| (*p, *c)).collect()
    }

    #[test]
    fn records_of_no_group_are_all_taken() {
        let b = buffers(vec![
            record(0, 0, None),
            record(0, 1, None),
            record(1, 0, None),
        ]);
        let cut = closed(&b, &HashSet::new(), &HashSet::new());
        assert_eq!(cuts(&cut), vec![(0, 2), (1, 1)]);
    }

    #[test]
    fn a_group_missing_a_part_stops_its_partition_but_not_the_others() {
        let g = key();
        let b = buffers(vec![
            record(0, 0, None),
            record(0, 1, Some((g, 2))),
            record(0, 2, None),
            record(1, 0, None),
            record(1, 1, None),
        ]);
        let cut = closed(&b, &HashSet::from([g]), &HashSet::new());
        assert_eq!(cuts(&cut), vec![(0, 1), (1, 2)]);
    }

    #[test]
    fn groups_in_opposite_orders_on_two_partitions_close_together() {
        let (g1, g2) = (key(), key());
        let b = buffers(vec![
            record(0, 0, Some((g1, 2))),
            record(0, 1, Some((g2, 2))),
            record(1, 0, Some((g2, 2))),
            record(1, 1, Some((g1, 2))),
        ]);
        let cut = closed(&b, &HashSet::from([g1, g2]), &HashSet::new());
        assert_eq!(cuts(&cut), vec![(0, 2), (1, 2)]);
    }

    #[test]
    fn a_cut_strands_a_group_behind_it_on_another_partition() {
        // g1 is whole but its part on partition 1 sits behind g2, which misses a part.
        let (g1, g2) = (key(), key());
        let b = buffers(vec![
            record(0, 0, Some((g1, 2))),
            record(0, 1, None),
            record(1, 0, Some((g2, 2))),
            record(1, 1, Some((g1, 2))),
        ]);
        let cut = closed(&b, &HashSet::from([g1, g2]), &HashSet::new());
        assert_eq!(cuts(&cut), vec![(0, 0), (1, 0)]);
    }

    #[test]
    fn phantom_groups_and_quarantined_parts_never_wait() {
        let (phantom, g) = (key(), key());
        let b = buffers(vec![
            record(0, 0, Some((phantom, 2))),
            record(0, 1, Some((g, 2))),
            record(0, 2, None),
        ]);
        let cut = closed(&b, &HashSet::from([g]), &HashSet::from([(0, 1)]));
        assert_eq!(cuts(&cut), vec![(0, 3)]);
    }
}

//! A batch's units (a record of no group, or every record of one group): the order of their rows
//! in the indexing transaction (rule 6 of the multi-stream design), and the blocks a refused
//! batch is narrowed over.
//!
//! Rows: each unit's rows are contiguous (a group's events get contiguous global positions), and
//! units follow a topological order of "same stream, earlier offset" edges, so every stream
//! keeps its version order (I5). A stream lives in one partition and ingest serialises the units
//! that share a stream, so the edges have no cycle; units on disjoint streams need no order, which
//! is what lets two groups whose parts landed in opposite orders on two partitions commit.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use crate::group::GroupKey;

/// Groups the records into units: the unit of each record, and each unit's records in order.
fn units(groups: impl Iterator<Item = Option<GroupKey>>) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut unit_of = Vec::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    let mut by_group: HashMap<GroupKey, usize> = HashMap::new();
    for (index, group) in groups.enumerate() {
        let unit = match group {
            Some(key) => *by_group.entry(key).or_insert_with(|| {
                members.push(Vec::new());
                members.len() - 1
            }),
            None => {
                members.push(Vec::new());
                members.len() - 1
            }
        };
        members[unit].push(index);
        unit_of.push(unit);
    }
    (unit_of, members)
}

/// A batch record as the row order sees it: its group and the streams of its events.
#[derive(Debug)]
pub(crate) struct UnitRecord<'a> {
    pub(crate) group: Option<GroupKey>,
    pub(crate) streams: Vec<&'a str>,
}

/// The order in which to write the records' rows (indices into `records`, which are in offset
/// order per partition). Without groups it is the records' own order.
pub(crate) fn row_order(records: &[UnitRecord<'_>]) -> Vec<usize> {
    let (unit_of, members) = units(records.iter().map(|r| r.group));
    let mut after: Vec<Vec<usize>> = vec![Vec::new(); members.len()];
    let mut waits_for = vec![0usize; members.len()];
    let mut last_unit: HashMap<&str, usize> = HashMap::new();
    for (index, record) in records.iter().enumerate() {
        let unit = unit_of[index];
        for stream in &record.streams {
            if let Some(previous) = last_unit.insert(stream, unit) {
                if previous != unit {
                    after[previous].push(unit);
                    waits_for[unit] += 1;
                }
            }
        }
    }
    // Kahn's algorithm, the earliest unit first among those ready.
    let mut ready: BinaryHeap<Reverse<(usize, usize)>> = members
        .iter()
        .enumerate()
        .filter(|(unit, _)| waits_for[*unit] == 0)
        .map(|(unit, m)| Reverse((m[0], unit)))
        .collect();
    let mut placed = vec![false; members.len()];
    let mut order = Vec::with_capacity(records.len());
    while let Some(Reverse((_, unit))) = ready.pop() {
        placed[unit] = true;
        order.extend_from_slice(&members[unit]);
        for &next in &after[unit] {
            waits_for[next] -= 1;
            if waits_for[next] == 0 {
                ready.push(Reverse((members[next][0], next)));
            }
        }
    }
    if order.len() < records.len() {
        // Only if ingest broke its serialisation of units that share a stream.
        tracing::error!(
            "units of the batch wait for each other over shared streams; writing the rest in offset order"
        );
        for (unit, m) in members.iter().enumerate() {
            if !placed[unit] {
                order.extend_from_slice(m);
            }
        }
    }
    order
}

/// The batch's records (partition and group of each, in offset order per partition) cut into
/// blocks that commit in order: every prefix of the blocks is a prefix of each partition and
/// holds whole groups. A block is one unit, or the units that must commit together (groups in
/// opposite orders on two partitions, and the records between their parts).
pub(crate) fn commit_blocks(records: &[(i32, Option<GroupKey>)]) -> Vec<Vec<usize>> {
    let (unit_of, members) = units(records.iter().map(|r| r.1));
    let mut by_partition: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    let mut rank = Vec::with_capacity(records.len());
    for (index, (partition, _)) in records.iter().enumerate() {
        let list = by_partition.entry(*partition).or_default();
        rank.push(list.len());
        list.push(index);
    }
    let mut head: BTreeMap<i32, usize> = by_partition.keys().map(|p| (*p, 0)).collect();
    let mut taken = vec![false; members.len()];
    let mut blocks = Vec::new();
    loop {
        let heads: Vec<usize> = by_partition
            .iter()
            .filter_map(|(p, list)| list.get(head[p]).copied())
            .collect();
        let Some(&first) = heads.first() else {
            return blocks;
        };
        // A unit with nothing before it on any partition is a block alone (so a refused group
        // halts at its own parts); the first head's unit otherwise, with every unit that has a
        // record before one of the block's records.
        let ready = |unit: usize| {
            members[unit].iter().all(|&m| {
                let list = &by_partition[&records[m].0];
                list[head[&records[m].0]..rank[m]]
                    .iter()
                    .all(|r| unit_of[*r] == unit)
            })
        };
        let start = heads
            .iter()
            .copied()
            .find(|r| ready(unit_of[*r]))
            .unwrap_or(first);
        let mut block_units = vec![unit_of[start]];
        taken[unit_of[start]] = true;
        let mut next = 0;
        while next < block_units.len() {
            for &record in &members[block_units[next]] {
                let partition = records[record].0;
                let list = &by_partition[&partition];
                for &before in &list[head[&partition]..rank[record]] {
                    let unit = unit_of[before];
                    if !taken[unit] {
                        taken[unit] = true;
                        block_units.push(unit);
                    }
                }
            }
            next += 1;
        }
        let mut block: Vec<usize> = block_units
            .iter()
            .flat_map(|u| members[*u].iter().copied())
            .collect();
        block.sort_unstable();
        for (partition, list) in &by_partition {
            if let Some(h) = head.get_mut(partition) {
                while list.get(*h).is_some_and(|r| taken[unit_of[*r]]) {
                    *h += 1;
                }
            }
        }
        blocks.push(block);
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn key() -> GroupKey {
        (Uuid::new_v4(), Uuid::new_v4())
    }

    fn rec<'a>(group: Option<GroupKey>, streams: &[&'a str]) -> UnitRecord<'a> {
        UnitRecord {
            group,
            streams: streams.to_vec(),
        }
    }

    #[test]
    fn without_groups_rows_keep_the_records_order() {
        let records = vec![rec(None, &["a"]), rec(None, &["b"]), rec(None, &["a"])];
        assert_eq!(row_order(&records), vec![0, 1, 2]);
    }

    #[test]
    fn a_groups_parts_are_contiguous_and_streams_keep_their_order() {
        // Partition 0: a0, G(a1); partition 1: b0, G(b1), b2 — records listed per partition.
        let g = key();
        let records = vec![
            rec(None, &["a"]),
            rec(Some(g), &["a"]),
            rec(None, &["b"]),
            rec(Some(g), &["b"]),
            rec(None, &["b"]),
        ];
        assert_eq!(row_order(&records), vec![0, 2, 1, 3, 4]);
    }

    #[test]
    fn opposite_orders_on_two_partitions_are_written_group_by_group() {
        // Partition 0: G1(a), G2(c); partition 1: G2(d), G1(b): disjoint streams.
        let (g1, g2) = (key(), key());
        let records = vec![
            rec(Some(g1), &["a"]),
            rec(Some(g2), &["c"]),
            rec(Some(g2), &["d"]),
            rec(Some(g1), &["b"]),
        ];
        assert_eq!(row_order(&records), vec![0, 3, 1, 2]);
    }

    #[test]
    fn a_group_behind_single_records_is_a_block_of_its_own() {
        let g = key();
        // Partition 0: x, G; partition 1: y, G.
        let records = vec![(0, None), (0, Some(g)), (1, None), (1, Some(g))];
        assert_eq!(commit_blocks(&records), vec![vec![0], vec![2], vec![1, 3]]);
    }

    #[test]
    fn blocks_are_units_unless_groups_cross() {
        let (g1, g2, g3) = (key(), key(), key());
        // Partition 0: x, G1, G2; partition 1: G2, G1, G3; partition 0 again: G3.
        let records = vec![
            (0, None),
            (0, Some(g1)),
            (0, Some(g2)),
            (1, Some(g2)),
            (1, Some(g1)),
            (1, Some(g3)),
            (0, Some(g3)),
        ];
        assert_eq!(
            commit_blocks(&records),
            vec![vec![0], vec![1, 2, 3, 4], vec![5, 6]]
        );
    }
}

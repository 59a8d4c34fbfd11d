//! Narrowing a batch Postgres refuses (or that holds a batch record that does not decode) down
//! to the block at fault (`units.rs`: a record, a whole group, or groups that must commit
//! together), in rolled-back transactions, so the blocks before it can commit and its
//! partitions halt exactly there. A group is never split.

use std::collections::HashSet;

use crate::commit::{CommitError, Mode};
use crate::index_batch::{BatchIndexer, Pending};

/// The records of the first `blocks` blocks, in the batch's order (a prefix of every
/// partition).
pub(crate) fn prefix(batch: &[Pending], blocks: &[Vec<usize>]) -> Vec<Pending> {
    let mut indices: Vec<usize> = blocks.iter().flatten().copied().collect();
    indices.sort_unstable();
    indices.into_iter().map(|i| batch[i].clone()).collect()
}

/// The index of the first block whose inclusion makes Postgres refuse `batch` (which it
/// refuses whole, with `refused`), found by bisecting block prefixes in rolled-back
/// transactions (`log2(blocks)` tries), with the refusal it got.
pub(crate) async fn first_refused(
    batches: &BatchIndexer,
    batch: &[Pending],
    blocks: &[Vec<usize>],
    quarantined: &HashSet<(i32, i64)>,
    refused: CommitError,
) -> Result<(usize, CommitError), CommitError> {
    let (mut accepted, mut refused_at) = (0, blocks.len());
    let mut refusal = refused;
    while refused_at - accepted > 1 {
        let mid = accepted + (refused_at - accepted) / 2;
        match batches
            .index(&prefix(batch, &blocks[..mid]), quarantined, Mode::TryOnly)
            .await
        {
            Ok(_) => accepted = mid,
            Err(error) if error.is_refusal() => {
                refused_at = mid;
                refusal = error;
            }
            Err(other) => return Err(other),
        }
    }
    Ok((refused_at.saturating_sub(1), refusal))
}

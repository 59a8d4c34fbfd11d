//! Narrowing a batch Postgres refuses (or that holds a batch record that does not decode) down
//! to the record at fault, in rolled-back
//! transactions, so the records before it can commit and the partition halts exactly there.

use std::collections::HashSet;

use crate::commit::{CommitError, Mode};
use crate::index_batch::{BatchIndexer, Pending};

/// The index of the first record whose inclusion makes Postgres refuse `records` (which it
/// refuses whole, with `refused`), found by bisecting prefixes in rolled-back transactions
/// (`log2(records)` tries), with the refusal it got.
pub(crate) async fn first_refused(
    batches: &BatchIndexer,
    records: &[Pending],
    quarantined: &HashSet<(i32, i64)>,
    refused: CommitError,
) -> Result<(usize, CommitError), CommitError> {
    let (mut accepted, mut refused_at) = (0, records.len());
    let mut refusal = refused;
    while refused_at - accepted > 1 {
        let mid = accepted + (refused_at - accepted) / 2;
        match batches
            .index(&records[..mid], quarantined, Mode::TryOnly)
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
    Ok((refused_at - 1, refusal))
}

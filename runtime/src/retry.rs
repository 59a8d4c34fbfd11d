//! Retrying transient failures (Postgres or the broker away for a while) in loops that run
//! until shutdown.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Longest pause between two tries of a loop that retries until it is stopped.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Exponential pauses from `min_delay` up to [`MAX_RETRY_DELAY`], never giving up: the caller's
/// loop ends on success or shutdown. `next()` always yields a delay.
pub fn until_stopped(min_delay: Duration) -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(min_delay)
        .with_max_delay(MAX_RETRY_DELAY)
        .without_max_times()
        .build()
}

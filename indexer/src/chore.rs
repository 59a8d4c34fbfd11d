//! The one loop behind the indexer's periodic chores (ledger upkeep, scavenging): a round every
//! interval until shutdown, a failed round reported (log line and error metric) and told to the
//! watchdog, so rounds that keep failing turn `/health` unhealthy instead of only counting.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use esk_runtime::internal_event::InternalEvent;
use esk_runtime::supervisor::Progress;
use tokio_util::sync::CancellationToken;

use crate::internal_events::StepFailed;
use crate::metrics::IndexerMetrics;

/// The shortest interval a chore runs at (a 0 in the settings means "often", not "spin").
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// A periodic chore and how its failures are reported.
pub(crate) struct Chore {
    /// The `stage` label of its errors, e.g. `scavenge`.
    pub(crate) stage: &'static str,
    /// The log line of a failed round.
    pub(crate) failed: &'static str,
    pub(crate) every: Duration,
    pub(crate) metrics: Arc<IndexerMetrics>,
    /// Its watchdog handle: busy from the start of a round until one succeeds.
    pub(crate) progress: Arc<Progress>,
}

impl Chore {
    /// Runs `round` every interval until `shutdown`. A round that fails leaves the chore busy
    /// and blocked by its error: once failures last longer than the watchdog's stall limit,
    /// `/health` names the chore and the error; the next round that succeeds clears it.
    pub(crate) async fn run<F, Fut, E>(self, shutdown: CancellationToken, mut round: F)
    where
        F: FnMut(Arc<Progress>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: std::error::Error,
    {
        let mut tick = tokio::time::interval(self.every.max(MIN_INTERVAL));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.progress.busy();
            match round(self.progress.clone()).await {
                Ok(()) => {
                    self.progress.progressed();
                    self.progress.idle();
                }
                Err(error) => {
                    self.progress.blocked_by(&error);
                    StepFailed {
                        metrics: &self.metrics,
                        stage: self.stage,
                        error: &error,
                        partition: None,
                        message: self.failed,
                    }
                    .emit();
                }
            }
        }
    }
}

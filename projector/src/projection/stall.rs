//! A projection waiting out a transient failure: capped exponential backoff until it recovers
//! or the process stops, shown on `/health` and `esk_projector_stalled` while it lasts.

use std::time::Instant;

use backon::ExponentialBackoff;
use esk_runtime::internal_event::{InternalEvent, Reason};
use tokio_util::sync::CancellationToken;

use super::{ProcessError, Projection};
use crate::internal_events::Retrying;

/// A projection waiting out a transient failure: its backoff, and the `/health` problem and
/// `esk_projector_stalled` gauge that show it while it lasts.
#[derive(Debug)]
pub(super) struct Stall<'a> {
    projection: &'a Projection,
    backoff: ExponentialBackoff,
    since: Option<Instant>,
}

impl<'a> Stall<'a> {
    /// A projection that is not stalled (yet).
    pub(super) fn new(projection: &'a Projection) -> Self {
        Stall {
            projection,
            backoff: esk_runtime::retry::until_stopped(projection.retry),
            since: None,
        }
    }

    /// Reports the stall, counts a retry, and sleeps the next backoff delay (or stops).
    pub(super) async fn wait(
        &mut self,
        error: &(dyn Reason + Sync),
        shutdown: &CancellationToken,
    ) -> Result<(), ProcessError> {
        let p = self.projection;
        let stalled_for = self.since.get_or_insert_with(Instant::now).elapsed();
        p.metrics.stalled.with_label_values(&[&p.name]).set(1);
        p.health.set_problem(
            &stall_key(&p.name),
            format!("projection {} stalled: {error}", p.name),
        );
        Retrying {
            metrics: &p.metrics,
            projection: &p.name,
            error,
            events: 0,
            attempt: 0,
            stalled_for: Some(stalled_for),
            message: "projection stalled on a transient failure; retrying",
        }
        .emit();
        pause(&mut self.backoff, shutdown).await
    }

    /// The failure passed: clears the report and starts the next backoff from the beginning.
    pub(super) fn recovered(&mut self) {
        if let Some(since) = self.since.take() {
            let p = self.projection;
            p.metrics.stalled.with_label_values(&[&p.name]).set(0);
            p.health.clear_problem(&stall_key(&p.name));
            self.backoff = esk_runtime::retry::until_stopped(p.retry);
            tracing::info!(projection = %p.name, stalled_for_s = since.elapsed().as_secs_f64(),
                "projection recovered");
        }
    }
}

/// Sleeps the next delay of `backoff`, or returns [`ProcessError::Stopped`] on shutdown.
pub(super) async fn pause(
    backoff: &mut ExponentialBackoff,
    shutdown: &CancellationToken,
) -> Result<(), ProcessError> {
    let delay = backoff
        .next()
        .unwrap_or(esk_runtime::retry::MAX_RETRY_DELAY);
    tokio::select! {
        _ = shutdown.cancelled() => Err(ProcessError::Stopped),
        _ = tokio::time::sleep(delay) => Ok(()),
    }
}

/// The `/health` problem key of a stalled projection.
fn stall_key(projection: &str) -> String {
    format!("projection-stalled:{projection}")
}

//! `GET /wait`: long-polls until a stream version or a global position is indexed. One poller
//! per process follows the indexed head (the committed `global_position_counter`, which moves
//! in the same transaction as the rows, so every position up to it is indexed) and wakes the
//! waiters it satisfies: a thousand waiters cost one query per change of the head, not a
//! thousand queries every 20 ms. The number of waiters is capped. Subscriptions
//! (`subscriptions.rs`) follow the same head: [`WaitHub::head`] is their wake-up, so idle
//! subscribers cost no queries either.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// How often the poller reads the indexed head.
const POLL: Duration = Duration::from_millis(20);

/// What a waiter waits for.
#[derive(Debug, Clone)]
pub(crate) enum WaitTarget {
    /// The stream has an event at this version.
    Version(String, i64),
    /// The store has an event at this global position.
    Position(i64),
}

/// Why a wait could not be served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WaitError {
    #[error("{0} requests are already waiting; retry later")]
    TooManyWaiters(usize),
    #[error("postgres: {0}")]
    Database(#[from] sqlx::Error),
}

type StreamWaiters = HashMap<String, Vec<(i64, oneshot::Sender<()>)>>;

/// The shared state of every `/wait` request of the process.
#[derive(Debug)]
pub(crate) struct WaitHub {
    pool: PgPool,
    head: watch::Sender<i64>,
    streams: Mutex<StreamWaiters>,
    slots: Arc<Semaphore>,
    max_waiters: usize,
}

impl WaitHub {
    pub(crate) fn new(pool: PgPool, max_waiters: usize) -> Arc<Self> {
        Arc::new(WaitHub {
            pool,
            head: watch::channel(0).0,
            streams: Mutex::default(),
            slots: Arc::new(Semaphore::new(max_waiters.max(1))),
            max_waiters: max_waiters.max(1),
        })
    }

    /// The indexed head as the poller last read it (it moves when the head does). The poller
    /// reads Postgres while any such receiver or any waiter exists.
    pub(crate) fn head(&self) -> watch::Receiver<i64> {
        self.head.subscribe()
    }

    /// Waits for `target` at most `timeout`; `Ok(true)` once it is indexed.
    pub(crate) async fn wait(
        &self,
        target: WaitTarget,
        timeout: Duration,
    ) -> Result<bool, WaitError> {
        let _slot: OwnedSemaphorePermit = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| WaitError::TooManyWaiters(self.max_waiters))?;
        match target {
            WaitTarget::Position(position) => {
                let mut head = self.head.subscribe();
                if *head.borrow() < position {
                    // The poller may not have read the head yet: ask once directly.
                    let indexed = indexed_head(&self.pool).await?;
                    if indexed >= position {
                        return Ok(true);
                    }
                }
                let reached =
                    tokio::time::timeout(timeout, head.wait_for(|h| *h >= position)).await;
                Ok(matches!(reached, Ok(Ok(_))))
            }
            WaitTarget::Version(stream, version) => {
                // Register first, then look: an event indexed in between is seen by the look,
                // one indexed later moves the head and the poller wakes us.
                let (wake, woken) = oneshot::channel();
                if let Ok(mut streams) = self.streams.lock() {
                    streams
                        .entry(stream.clone())
                        .or_default()
                        .push((version, wake));
                }
                let result = async {
                    if stream_version(&self.pool, &stream).await? >= Some(version) {
                        return Ok(true);
                    }
                    Ok(tokio::time::timeout(timeout, woken).await.is_ok())
                }
                .await;
                self.forget_closed(&stream);
                result
            }
        }
    }

    /// Drops the registrations whose waiter is gone (answered or timed out).
    fn forget_closed(&self, stream: &str) {
        if let Ok(mut streams) = self.streams.lock() {
            if let Some(waiters) = streams.get_mut(stream) {
                waiters.retain(|(_, wake)| !wake.is_closed());
                if waiters.is_empty() {
                    streams.remove(stream);
                }
            }
        }
    }

    /// Follows the indexed head until `shutdown`, waking the waiters it satisfies.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(POLL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            // Nobody waits or subscribes: nothing to read.
            if self.slots.available_permits() == self.max_waiters && self.head.receiver_count() == 0
            {
                continue;
            }
            if let Err(error) = self.advance().await {
                tracing::debug!(%error, "cannot read the indexed head; retrying");
            }
        }
    }

    async fn advance(&self) -> Result<(), sqlx::Error> {
        let head = indexed_head(&self.pool).await?;
        if head <= *self.head.borrow() {
            return Ok(());
        }
        let waited: Vec<String> = self
            .streams
            .lock()
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default();
        if !waited.is_empty() {
            let versions: Vec<(String, i64)> = sqlx::query_as(
                "SELECT s, (SELECT max(version) FROM events WHERE stream_id = s)
                 FROM unnest($1::text[]) AS t(s)
                 WHERE EXISTS (SELECT 1 FROM events WHERE stream_id = s)",
            )
            .bind(&waited)
            .fetch_all(&self.pool)
            .await?;
            if let Ok(mut streams) = self.streams.lock() {
                for (stream, indexed) in versions {
                    if let Some(waiters) = streams.get_mut(&stream) {
                        for (_, wake) in waiters.extract_if(.., |(v, _)| *v <= indexed) {
                            let _ = wake.send(());
                        }
                    }
                }
            }
        }
        self.head.send_replace(head);
        Ok(())
    }
}

/// The highest indexed global position: every position up to it is readable.
pub(crate) async fn indexed_head(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT last_position FROM global_position_counter")
        .fetch_one(pool)
        .await
}

/// A stream's highest indexed version.
pub(crate) async fn stream_version(
    pool: &PgPool,
    stream: &str,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT max(version) FROM events WHERE stream_id = $1")
        .bind(stream)
        .fetch_one(pool)
        .await
}

//! Supervised tasks and progress watchdogs, shared by every long-running process.
//!
//! Every task a process needs runs under a [`Supervisor`]: named, and expected to run until
//! shutdown. If one ends or panics before that, the supervisor says which and why (log and
//! `/health`), cancels the others and the process exits with [`EXIT_TASK_ENDED`], so systemd or
//! compose restarts it instead of it limping on without, say, its publisher.
//!
//! A loop that is alive can still be stuck. Each loop holds a [`Progress`] and says when it has
//! work and when it got something done; a [`Watchdog`] marks `/health` unhealthy while a loop
//! has had work for longer than its stall limit without progress.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::telemetry::Health;

/// The process exit code when a supervised task ended or panicked before shutdown (BSD
/// `EX_SOFTWARE`): restart the process.
pub const EXIT_TASK_ENDED: i32 = 70;

/// Fault injection for tests of the supervision itself: `ESK_FAILPOINT_PANIC=<task name>`
/// makes that task panic two seconds after it starts. Never set it in production.
pub const FAILPOINT_ENV: &str = "ESK_FAILPOINT_PANIC";

fn failpoint(task: &str) -> Option<Duration> {
    let target = std::env::var(FAILPOINT_ENV).ok()?;
    (target == task).then_some(Duration::from_secs(2))
}

/// How long tasks get to finish after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A task's failure, as it reports it.
pub type TaskError = Box<dyn std::error::Error + Send + Sync>;

/// Why a supervised process stopped early.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// A task returned before shutdown was requested.
    #[error("task `{task}` ended unexpectedly: {reason}")]
    TaskEnded {
        /// The task's name.
        task: String,
        /// What it returned.
        reason: String,
    },
    /// A task panicked.
    #[error("task `{task}` panicked: {reason}")]
    TaskPanicked {
        /// The task's name.
        task: String,
        /// The panic's message, when it had one.
        reason: String,
    },
}

/// Named tasks that must all run until shutdown.
#[derive(Debug)]
pub struct Supervisor {
    tasks: JoinSet<Result<(), TaskError>>,
    names: HashMap<Id, String>,
    shutdown: CancellationToken,
    health: Arc<Health>,
}

impl Supervisor {
    /// A supervisor whose tasks stop when `shutdown` is cancelled.
    pub fn new(shutdown: CancellationToken, health: Arc<Health>) -> Self {
        Supervisor {
            tasks: JoinSet::new(),
            names: HashMap::new(),
            shutdown,
            health,
        }
    }

    /// The token tasks watch to stop.
    pub fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs a task that only ends when shutdown is requested.
    pub fn spawn(
        &mut self,
        name: impl Into<String>,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        self.spawn_fallible(name, async move {
            task.await;
            Ok(())
        });
    }

    /// Runs a task that may also end with an error.
    pub fn spawn_fallible(
        &mut self,
        name: impl Into<String>,
        task: impl Future<Output = Result<(), TaskError>> + Send + 'static,
    ) {
        let name = name.into();
        let handle = match failpoint(&name) {
            Some(after) => self.tasks.spawn(async move {
                tokio::select! {
                    ended = task => ended,
                    _ = tokio::time::sleep(after) => panic!("failpoint {FAILPOINT_ENV}"),
                }
            }),
            None => self.tasks.spawn(task),
        };
        self.names.insert(handle.id(), name);
    }

    /// Supervises an already spawned task (a server started before the supervisor).
    pub fn watch<E>(
        &mut self,
        name: impl Into<String>,
        handle: tokio::task::JoinHandle<Result<(), E>>,
    ) where
        E: std::error::Error + Send + Sync + 'static,
    {
        self.spawn_fallible(name, async move {
            match handle.await {
                Ok(result) => result.map_err(|e| Box::new(e) as TaskError),
                Err(join) if join.is_panic() => Err("it panicked".into()),
                Err(_) => Err("it was cancelled".into()),
            }
        });
    }

    /// Waits until `shutdown` asks to stop (binaries cancel it on SIGINT and SIGTERM, see
    /// [`crate::service::cancel_on_signal`]), or until a task
    /// ends first. Then cancels the rest and waits for them (at most a grace period). Returns
    /// the first unexpected end, if there was one.
    pub async fn run_until_stopped(mut self) -> Result<(), SupervisorError> {
        let failure = tokio::select! {
            // Shutdown first: on SIGTERM the tasks see the same token and end at once, and a
            // task that ended because shutdown was asked for has not failed.
            biased;
            _ = self.shutdown.cancelled() => None,
            ended = self.tasks.join_next_with_id() => ended.map(|ended| self.failure(ended)),
        };
        if let Some(failure) = &failure {
            tracing::error!(error = %failure, "a supervised task ended before shutdown; stopping the process");
            self.health.set_problem("supervisor", failure.to_string());
        }
        self.shutdown.cancel();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await {
                Ok(Some(ended)) => {
                    if let Err(late) = ended_with_error(&self.names, ended) {
                        tracing::warn!(error = %late, "a task failed while stopping");
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    let left: Vec<&String> = self.names.values().collect();
                    tracing::warn!(
                        ?left,
                        "tasks did not stop within the grace period; aborting them"
                    );
                    self.tasks.abort_all();
                    break;
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    fn failure(
        &mut self,
        ended: Result<(Id, Result<(), TaskError>), tokio::task::JoinError>,
    ) -> SupervisorError {
        match ended_with_error(&self.names, ended) {
            Err(error) => error,
            Ok(task) => SupervisorError::TaskEnded {
                task,
                reason: "it returned".into(),
            },
        }
    }
}

/// The task's name if it ended cleanly, else what went wrong.
fn ended_with_error(
    names: &HashMap<Id, String>,
    ended: Result<(Id, Result<(), TaskError>), tokio::task::JoinError>,
) -> Result<String, SupervisorError> {
    let name = |id: &Id| names.get(id).cloned().unwrap_or_else(|| "unnamed".into());
    match ended {
        Ok((id, Ok(()))) => Ok(name(&id)),
        Ok((id, Err(error))) => Err(SupervisorError::TaskEnded {
            task: name(&id),
            reason: error.to_string(),
        }),
        Err(join) => {
            let task = name(&join.id());
            let reason = if join.is_panic() {
                let payload = join.into_panic();
                payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into())
            } else {
                "cancelled".into()
            };
            Err(SupervisorError::TaskPanicked { task, reason })
        }
    }
}

/// What one loop tells its watchdog: whether it has work, and when it last got some done.
#[derive(Debug)]
pub struct Progress {
    name: String,
    started: Instant,
    /// Milliseconds since `started` of the last progress (or of becoming busy).
    last_progress_ms: AtomicU64,
    busy: AtomicBool,
    detail: Mutex<Option<String>>,
}

impl Progress {
    fn new(name: String) -> Self {
        Progress {
            name,
            started: Instant::now(),
            last_progress_ms: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            detail: Mutex::new(None),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The loop has work in hand (a batch, a backlog). The stall clock starts now unless it
    /// was already running.
    pub fn busy(&self) {
        if !self.busy.swap(true, Ordering::SeqCst) {
            self.last_progress_ms.store(self.now_ms(), Ordering::SeqCst);
        }
    }

    /// The loop got something done (committed, published, answered).
    pub fn progressed(&self) {
        self.last_progress_ms.store(self.now_ms(), Ordering::SeqCst);
        if let Ok(mut detail) = self.detail.lock() {
            *detail = None;
        }
    }

    /// The loop has nothing to do: waiting is not a stall.
    pub fn idle(&self) {
        self.busy.store(false, Ordering::SeqCst);
        if let Ok(mut detail) = self.detail.lock() {
            *detail = None;
        }
    }

    /// Why the loop is not progressing, for `/health` if it stalls (the last error).
    pub fn blocked_by(&self, reason: impl std::fmt::Display) {
        if let Ok(mut detail) = self.detail.lock() {
            *detail = Some(reason.to_string());
        }
    }

    /// How long the loop has had work without progress (`None`: idle).
    fn stalled_for(&self) -> Option<Duration> {
        if !self.busy.load(Ordering::SeqCst) {
            return None;
        }
        let since = self.last_progress_ms.load(Ordering::SeqCst);
        Some(Duration::from_millis(self.now_ms().saturating_sub(since)))
    }
}

/// Marks `/health` unhealthy while a registered loop is stalled.
#[derive(Debug, Clone)]
pub struct Watchdog {
    loops: Arc<Mutex<Vec<Arc<Progress>>>>,
    stall_after: Duration,
    health: Arc<Health>,
}

impl Watchdog {
    /// A watchdog that calls a loop stalled after `stall_after` with work and no progress.
    pub fn new(stall_after: Duration, health: Arc<Health>) -> Self {
        Watchdog {
            loops: Arc::default(),
            stall_after,
            health,
        }
    }

    /// Registers a loop and returns its handle.
    pub fn register(&self, name: impl Into<String>) -> Arc<Progress> {
        let progress = Arc::new(Progress::new(name.into()));
        if let Ok(mut loops) = self.loops.lock() {
            loops.push(progress.clone());
        }
        progress
    }

    /// Checks every loop once.
    pub fn check(&self) {
        let loops = self.loops.lock().map(|l| l.clone()).unwrap_or_default();
        for progress in loops {
            let key = format!("stall:{}", progress.name);
            match progress.stalled_for() {
                Some(stalled) if stalled >= self.stall_after => {
                    let detail = progress
                        .detail
                        .lock()
                        .ok()
                        .and_then(|d| d.clone())
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default();
                    self.health.set_problem(
                        &key,
                        format!(
                            "{} has had work for {}s without progress{detail}",
                            progress.name,
                            stalled.as_secs()
                        ),
                    );
                }
                _ => self.health.clear_problem(&key),
            }
        }
    }

    /// Checks every second until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => self.check(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_task_to_end_stops_the_others_and_is_named() {
        let health = Arc::new(Health::default());
        let mut supervisor = Supervisor::new(CancellationToken::new(), health.clone());
        let token = supervisor.shutdown();
        supervisor.spawn("waits", async move { token.cancelled().await });
        supervisor.spawn_fallible("fails", async { Err("broker gone".into()) });
        let error = supervisor.run_until_stopped().await.expect_err("must fail");
        assert!(
            matches!(&error, SupervisorError::TaskEnded { task, reason } if task == "fails" && reason == "broker gone"),
            "{error}"
        );
        assert_eq!(health.problems().len(), 1);
    }

    #[tokio::test]
    async fn a_panic_is_caught_and_named() {
        let mut supervisor = Supervisor::new(CancellationToken::new(), Arc::new(Health::default()));
        supervisor.spawn("panics", async { panic!("boom") });
        let error = supervisor.run_until_stopped().await.expect_err("must fail");
        assert!(
            matches!(&error, SupervisorError::TaskPanicked { task, reason } if task == "panics" && reason == "boom"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn shutdown_is_not_a_failure() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(shutdown.clone(), Arc::new(Health::default()));
        let token = supervisor.shutdown();
        supervisor.spawn("waits", async move { token.cancelled().await });
        shutdown.cancel();
        assert!(supervisor.run_until_stopped().await.is_ok());
    }

    #[tokio::test]
    async fn a_task_that_ended_because_of_shutdown_is_not_a_failure() {
        // Both are ready when the supervisor looks: the signal's cancellation and the task that
        // returned on it. Unbiased, either could be taken; run it often enough to see.
        for _ in 0..64 {
            let shutdown = CancellationToken::new();
            let mut supervisor = Supervisor::new(shutdown.clone(), Arc::new(Health::default()));
            let token = supervisor.shutdown();
            supervisor.spawn("poller", async move { token.cancelled().await });
            shutdown.cancel();
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert!(supervisor.run_until_stopped().await.is_ok());
        }
    }

    #[test]
    fn a_busy_loop_without_progress_is_unhealthy_until_it_progresses() {
        let health = Arc::new(Health::default());
        let watchdog = Watchdog::new(Duration::ZERO, health.clone());
        let progress = watchdog.register("indexer");
        watchdog.check();
        assert!(health.problems().is_empty(), "idle is not stalled");
        progress.busy();
        progress.blocked_by("connection refused");
        watchdog.check();
        let problems = health.problems();
        assert!(problems[0].contains("indexer has had work"), "{problems:?}");
        assert!(problems[0].contains("connection refused"), "{problems:?}");
        progress.idle();
        watchdog.check();
        assert!(health.problems().is_empty());
    }
}

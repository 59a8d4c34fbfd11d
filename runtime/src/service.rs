//! What every esk service shares around its `run`: the error it stops with, the signals that
//! ask it to stop, and the exit code a binary gives for each ending.

use rdkafka::error::KafkaError;
use tokio_util::sync::CancellationToken;

use crate::db::DbError;
use crate::kafka::KafkaConnectError;
use crate::supervisor::{SupervisorError, EXIT_TASK_ENDED};
use crate::tls::TlsError;

/// Why a service's `run` returned an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Postgres could not be reached or migrated at start.
    #[error(transparent)]
    Database(#[from] DbError),
    /// A Kafka client could not be created or subscribed at start.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The TLS certificate or key of the HTTP listener cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The brokers refused the Kafka security settings (or a client could not be created
    /// with them) at start.
    #[error(transparent)]
    KafkaConnect(#[from] KafkaConnectError),
    /// The HTTP listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: String,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// A setting cannot be used (a file it names is unreadable, a required companion setting
    /// is missing, ...): found at start, before anything runs.
    #[error("{0}")]
    Settings(Box<dyn std::error::Error + Send + Sync>),
    /// The service started and then one of its tasks ended before shutdown was asked for.
    #[error(transparent)]
    Stopped(#[from] SupervisorError),
}

impl RunError {
    /// The error of binding `addr`, for `map_err` on a listener's bind.
    pub fn listen(addr: &str) -> impl FnOnce(std::io::Error) -> RunError + '_ {
        move |source| RunError::Listen {
            addr: addr.to_owned(),
            source,
        }
    }
}

/// Cancels `shutdown` on Ctrl-C or SIGTERM (a binary's wiring; libraries are stopped through
/// the token they are given).
pub fn cancel_on_signal(shutdown: CancellationToken) {
    tokio::spawn(async move {
        crate::telemetry::wait_for_signal().await;
        shutdown.cancel();
    });
}

/// Ends a binary after its service's `run`: a task that ended early exits the process with
/// [`EXIT_TASK_ENDED`] (after saying why on stderr); a start-up error is returned for the
/// binary to report (exit code 1).
pub fn exit_on_stop(result: Result<(), RunError>) -> Result<(), RunError> {
    match result {
        Err(RunError::Stopped(error)) => exit_task_ended(&error),
        other => other,
    }
}

/// Exits the process with [`EXIT_TASK_ENDED`] after saying on stderr which task ended early.
pub fn exit_task_ended(error: &SupervisorError) -> ! {
    eprintln!("stopping: {error}");
    std::process::exit(EXIT_TASK_ENDED);
}

//! The HTTP server every process runs its routes on: axum routes over hyper, with what
//! `axum::serve` does not bound: a deadline for a request's headers (a client that sends them
//! slowly is disconnected) and a cap on open connections (connections beyond it are closed at
//! once instead of queueing). Shutdown stops accepting and lets open requests finish.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use clap::Args;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How long open requests get to finish after shutdown starts.
const DRAIN: Duration = Duration::from_secs(10);

/// Limits of the HTTP listener, configurable per process.
#[derive(Debug, Clone, Args)]
pub struct ServerLimits {
    /// A client must send a request's headers within this many milliseconds, else its
    /// connection is closed (slow-header clients cannot hold connections open).
    #[arg(long, env = "ESK_HTTP_HEADER_TIMEOUT_MS", default_value_t = 5_000)]
    pub header_timeout_ms: u64,
    /// Most open connections; one more is closed as soon as it is accepted.
    #[arg(long, env = "ESK_HTTP_MAX_CONNECTIONS", default_value_t = 1_024)]
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_timeout_ms: 5_000,
            max_connections: 1_024,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled; `refused` counts the connections
/// closed because the cap was reached.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &ServerLimits,
    refused: prometheus::IntCounter,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_timeout_ms.max(1)));
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that goes away or times out ends its connection; nothing to report.
            let _ = connection.await;
            drop(slot);
        });
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open HTTP requests did not finish within {DRAIN:?}; closing them");
    }
    Ok(())
}

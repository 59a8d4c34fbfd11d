//! The HTTP server every process runs its routes on: axum routes over hyper, with what
//! `axum::serve` does not bound: a deadline for a request's headers (a client that sends them
//! slowly is disconnected) and a cap on open connections (connections beyond it are closed at
//! once instead of queueing). Shutdown stops accepting and lets open requests finish.
//!
//! With a [`TlsAcceptor`] the listener speaks HTTPS only. The handshake runs in the
//! connection's own task, holding one of the capped slots and bounded by the header deadline,
//! so a client that never finishes it is disconnected like a slow-header one.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use clap::Args;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How long open requests get to finish after shutdown starts.
const DRAIN: Duration = Duration::from_secs(10);

/// Limits of the HTTP listener, configurable per process.
#[derive(Debug, Clone, Args)]
pub struct ServerLimits {
    /// A client must send a request's headers within this many milliseconds, else its
    /// connection is closed (slow-header clients cannot hold connections open). Over TLS, the
    /// handshake before them has the same deadline.
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

/// Serves `app` on `listener` (over TLS when `tls` is given) until `shutdown` is cancelled;
/// `refused` counts the connections closed because the cap was reached.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &ServerLimits,
    tls: Option<TlsAcceptor>,
    refused: prometheus::IntCounter,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let header_timeout = Duration::from_millis(limits.header_timeout_ms.max(1));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
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
        let connection = Connection {
            builder: builder.clone(),
            app: app.clone(),
            // Taken now, so a shutdown that starts during a TLS handshake still waits for
            // (and then closes) this connection.
            watcher: graceful.watcher(),
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => connection.serve(stream, header_timeout).await,
                Some(acceptor) => {
                    if let Some(stream) = handshake(&acceptor, stream, header_timeout).await {
                        connection.serve(stream, header_timeout).await;
                    }
                }
            }
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

/// What one accepted connection is served with.
struct Connection {
    builder: Arc<Builder<TokioExecutor>>,
    app: Router,
    watcher: hyper_util::server::graceful::Watcher,
}

impl Connection {
    /// Serves HTTP on `io` until the client leaves, times out or shutdown closes it. A client
    /// whose first request has not begun within `first_request_within` is disconnected: the
    /// header deadline of HTTP/1 starts only once the protocol is known, and choosing it waits
    /// for bytes without a clock (a silent client, or one that stops after a few bytes or after
    /// an HTTP/2 preface, would hold its connection slot for ever).
    async fn serve<I>(self, io: I, first_request_within: Duration)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let first_request = Arc::new(tokio::sync::Notify::new());
        let began = first_request.clone();
        let app = self.app;
        let service = tower::service_fn(move |request| {
            began.notify_one();
            app.clone().oneshot(request)
        });
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service))
            .into_owned();
        let connection = self.watcher.watch(connection);
        tokio::pin!(connection);
        tokio::select! {
            // A client that goes away or times out ends its connection; nothing to report.
            _ = &mut connection => return,
            () = first_request.notified() => {}
            () = tokio::time::sleep(first_request_within) => {
                tracing::debug!("no request within {first_request_within:?}; closing the connection");
                return;
            }
        }
        let _ = connection.await;
    }
}

/// The TLS stream of `stream`, or `None` (logged at debug) when the client does not complete
/// a handshake within `deadline`: plain HTTP on the HTTPS port, an untrusted certificate, or
/// nothing at all.
async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    deadline: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let peer = stream.peer_addr().ok();
    match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            tracing::debug!(%error, ?peer, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(?peer, "TLS handshake not finished within {deadline:?}");
            None
        }
    }
}

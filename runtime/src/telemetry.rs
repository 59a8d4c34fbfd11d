//! Logging and metrics plumbing shared by the binaries: tracing setup, a Prometheus registry,
//! and the `/metrics` + `/health` router every long-running process serves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use esk_model::api::{HealthReport, HealthStatus, Readiness, ReadyReport};
use prometheus::{Encoder, Registry, TextEncoder};
use tracing_subscriber::EnvFilter;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::LogFormat;

/// Installs the global tracing subscriber (`RUST_LOG` filters; default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingStdout);
    // A second call (tests start several processes' logic in one) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Standard output with every URL's credentials redacted ([`crate::redact::redact_text`]):
/// whatever a log line quotes (an error that names a webhook or the database URL), no
/// password or token reaches the log.
#[derive(Debug, Clone, Copy)]
struct RedactingStdout;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingStdout {
    type Writer = Redacting<std::io::Stdout>;

    fn make_writer(&'a self) -> Self::Writer {
        Redacting(std::io::stdout())
    }
}

/// A writer that redacts each write: the fmt layer writes one whole event per call.
#[derive(Debug)]
struct Redacting<W>(W);

impl<W: std::io::Write> std::io::Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !buf.windows(3).any(|w| w == b"://") {
            return self.0.write(buf);
        }
        let text = String::from_utf8_lossy(buf);
        self.0
            .write_all(crate::redact::redact_text(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Liveness and readiness of a process, with the reasons it is unhealthy. Each problem has a
/// key (what it is about: a partition, a task) so that it can be cleared when that recovers.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    problems: Mutex<Vec<(String, String)>>,
    role: Mutex<Option<String>>,
}

impl Health {
    /// Marks the process ready to serve.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether the process said it is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Records a problem that makes the process unhealthy until restarted.
    pub fn report_problem(&self, problem: String) {
        self.set_problem(&problem.clone(), problem);
    }

    /// Makes the process unhealthy for `key` with `problem` (replacing an earlier problem of
    /// the same key) until [`Health::clear_problem`].
    pub fn set_problem(&self, key: &str, problem: String) {
        // /health is unauthenticated: a problem quoting a URL loses its credentials here.
        let problem = crate::redact::redact_text(&problem);
        if let Ok(mut problems) = self.problems.lock() {
            match problems.iter_mut().find(|(k, _)| k == key) {
                Some(entry) => entry.1 = problem,
                None => problems.push((key.to_owned(), problem)),
            }
        }
    }

    /// Withdraws the problem of `key`, if any.
    pub fn clear_problem(&self, key: &str) {
        if let Ok(mut problems) = self.problems.lock() {
            problems.retain(|(k, _)| k != key);
        }
    }

    /// Sets the role `/health` shows (for a process elected among several: `leader`,
    /// `standby`); a role is not a problem.
    pub fn set_role(&self, role: &str) {
        if let Ok(mut current) = self.role.lock() {
            *current = Some(role.to_owned());
        }
    }

    /// The role `/health` shows, if the process has one.
    pub fn role(&self) -> Option<String> {
        self.role.lock().ok().and_then(|r| r.clone())
    }

    /// Current problems.
    pub fn problems(&self) -> Vec<String> {
        self.problems
            .lock()
            .map(|p| p.iter().map(|(_, problem)| problem.clone()).collect())
            .unwrap_or_default()
    }
}

/// What the telemetry routes need.
#[derive(Debug, Clone)]
pub struct Telemetry {
    /// The process's metric registry.
    pub registry: Registry,
    /// The process's health.
    pub health: Arc<Health>,
    /// HTTP connections closed because the process's connection cap was reached.
    pub refused_connections: prometheus::IntCounter,
}

impl Telemetry {
    /// A fresh registry with a `process` label set and an empty health record.
    pub fn new(process: &str) -> Self {
        let labels = [("process".to_string(), process.to_string())]
            .into_iter()
            .collect();
        let registry = Registry::new_custom(Some("esk".into()), Some(labels))
            .unwrap_or_else(|_| Registry::new());
        let refused_connections = MetricFactory::new(&registry).counter(
            "http_refused_connections_total",
            "HTTP connections closed on accept because the connection cap was reached",
        );
        Telemetry {
            registry,
            health: Arc::new(Health::default()),
            refused_connections,
        }
    }

    /// Binds `addr` and serves [`Telemetry::router`] until `shutdown` is cancelled.
    pub async fn serve(
        &self,
        addr: &str,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> std::io::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let app = self.router();
        let refused = self.refused_connections.clone();
        Ok(tokio::spawn(async move {
            let limits = crate::http_server::ServerLimits::default();
            crate::http_server::serve(listener, app, &limits, None, refused, shutdown).await
        }))
    }

    /// `/metrics`, `/health` and `/ready`, documented for the OpenAPI document of a process
    /// that has one.
    pub fn routes(&self) -> OpenApiRouter {
        OpenApiRouter::new()
            .routes(routes!(metrics))
            .routes(routes!(health))
            .routes(routes!(ready))
            .with_state(self.clone())
    }

    /// The routes of [`Telemetry::routes`] as a plain router.
    pub fn router(&self) -> Router {
        self.routes().split_for_parts().0
    }
}

/// Prometheus metrics of the process.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "telemetry",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain"))
)]
async fn metrics(State(t): State<Telemetry>) -> Response {
    let mut buffer = Vec::new();
    match TextEncoder::new().encode(&t.registry.gather(), &mut buffer) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], buffer).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Whether the process can do its job; 503 names each problem.
#[utoipa::path(
    get,
    path = "/health",
    tag = "telemetry",
    responses(
        (status = 200, description = "Healthy", body = HealthReport),
        (status = 503, description = "Unhealthy: the problems say why", body = HealthReport),
    )
)]
async fn health(State(t): State<Telemetry>) -> Response {
    let problems = t.health.problems();
    let (status, health) = if problems.is_empty() {
        (StatusCode::OK, HealthStatus::Ok)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, HealthStatus::Unhealthy)
    };
    let report = HealthReport {
        status: health,
        problems,
        role: t.health.role(),
    };
    (status, axum::Json(report)).into_response()
}

/// Whether the process has started and is healthy.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "telemetry",
    responses(
        (status = 200, description = "Ready", body = ReadyReport),
        (status = 503, description = "Starting, stopping or unhealthy", body = ReadyReport),
    )
)]
async fn ready(State(t): State<Telemetry>) -> Response {
    let (status, readiness) = if t.health.is_ready() && t.health.problems().is_empty() {
        (StatusCode::OK, Readiness::Ready)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Readiness::NotReady)
    };
    (status, axum::Json(ReadyReport { status: readiness })).into_response()
}

/// Registers a collector, returning it; a name clash is a programming error caught by tests.
pub fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> C {
    if let Err(e) = registry.register(Box::new(collector.clone())) {
        tracing::error!(error = %e, "metric registration failed");
    }
    collector
}

/// Metric constructors over a registry. Names and help texts are literals, so a bad definition
/// is a programming error that the first test run reports.
#[derive(Debug, Clone)]
pub struct MetricFactory<'a> {
    registry: &'a Registry,
}

impl<'a> MetricFactory<'a> {
    /// Constructors registering into `registry`.
    pub fn new(registry: &'a Registry) -> Self {
        MetricFactory { registry }
    }

    /// A counter.
    pub fn counter(&self, name: &str, help: &str) -> prometheus::IntCounter {
        register(
            self.registry,
            prometheus::IntCounter::new(name, help).expect("valid counter definition"),
        )
    }

    /// A labelled counter.
    pub fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::IntCounterVec {
        register(
            self.registry,
            prometheus::IntCounterVec::new(prometheus::Opts::new(name, help), labels)
                .expect("valid counter definition"),
        )
    }

    /// A gauge.
    pub fn gauge(&self, name: &str, help: &str) -> prometheus::IntGauge {
        register(
            self.registry,
            prometheus::IntGauge::new(name, help).expect("valid gauge definition"),
        )
    }

    /// A labelled gauge.
    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> prometheus::IntGaugeVec {
        register(
            self.registry,
            prometheus::IntGaugeVec::new(prometheus::Opts::new(name, help), labels)
                .expect("valid gauge definition"),
        )
    }

    /// A labelled histogram with explicit buckets.
    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> prometheus::HistogramVec {
        register(
            self.registry,
            prometheus::HistogramVec::new(
                prometheus::HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
            .expect("valid histogram definition"),
        )
    }

    /// A histogram with explicit buckets.
    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> prometheus::Histogram {
        register(
            self.registry,
            prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            )
            .expect("valid histogram definition"),
        )
    }
}

/// Buckets for durations in seconds, 1 ms to 10 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets for latencies an event sees (an append's answer and its stages, acknowledged by
/// ingest → indexed, → projected), 0.5 ms to 30 s: fine-grained below 100 ms, where the targets
/// are.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets for batch sizes, 1 to 10,000.
pub const SIZE_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// Resolves on Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn log_lines_lose_url_credentials() -> std::io::Result<()> {
        let mut writer = Redacting(Vec::new());
        writer.write_all(
            b"WARN connect to postgres://esk:hunter2@db/esk?password=hunter2 failed\n",
        )?;
        writer.write_all(b"INFO nothing to hide\n")?;
        let written = String::from_utf8_lossy(&writer.0).to_string();
        assert!(!written.contains("hunter2"), "{written}");
        assert!(
            written.contains("postgres://esk:***@db/esk?password=***"),
            "{written}"
        );
        assert!(written.ends_with("INFO nothing to hide\n"), "{written}");
        Ok(())
    }

    #[test]
    fn health_problems_lose_url_credentials() {
        let health = Health::default();
        health.set_problem(
            "hook",
            "POST https://u:hunter2@h/x?token=hunter2 failed".into(),
        );
        let problems = health.problems().join(" ");
        assert!(!problems.contains("hunter2"), "{problems}");
    }
}

//! The projector's `/health` and `/ready`: the shared telemetry routes, plus the projections
//! stalled on a transient failure. The process is unhealthy while one is stalled (its name and
//! error are listed) and healthy again once it recovers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use esk_core::telemetry::{Health, Telemetry};

/// Projections waiting out a transient failure, with the last error of each.
#[derive(Debug, Default)]
pub(crate) struct Stalls {
    stalled: Mutex<BTreeMap<String, String>>,
}

impl Stalls {
    /// Marks `projection` stalled on `error` (replacing its previous error).
    pub(crate) fn set(&self, projection: &str, error: String) {
        if let Ok(mut stalled) = self.stalled.lock() {
            stalled.insert(projection.to_owned(), error);
        }
    }

    /// `projection` is moving again.
    pub(crate) fn clear(&self, projection: &str) {
        if let Ok(mut stalled) = self.stalled.lock() {
            stalled.remove(projection);
        }
    }

    /// One line per stalled projection.
    pub(crate) fn problems(&self) -> Vec<String> {
        self.stalled
            .lock()
            .map(|stalled| {
                stalled
                    .iter()
                    .map(|(projection, error)| format!("projection {projection} stalled: {error}"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Binds `addr` and serves the telemetry routes, with stalled projections reported by `/health`
/// and `/ready`, until `shutdown` resolves.
pub(crate) async fn serve(
    telemetry: &Telemetry,
    stalls: Arc<Stalls>,
    addr: &str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    let app = telemetry
        .router()
        .layer(axum::middleware::from_fn_with_state(
            (telemetry.health.clone(), stalls),
            report_stalls,
        ));
    Ok(tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    }))
}

async fn report_stalls(
    State((health, stalls)): State<(Arc<Health>, Arc<Stalls>)>,
    request: Request,
    next: Next,
) -> Response {
    let stalled = stalls.problems();
    if stalled.is_empty() {
        return next.run(request).await;
    }
    match request.uri().path() {
        "/health" => {
            let mut problems = health.problems();
            problems.extend(stalled);
            let body = serde_json::json!({"status": "unhealthy", "problems": problems});
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
        "/ready" => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not_ready"})),
        )
            .into_response(),
        _ => next.run(request).await,
    }
}

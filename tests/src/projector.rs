//! Driving the projector binary, and a webhook receiver for its webhook handler.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::process::{bin_dir, Process};
use crate::TestContext;

/// Writes a projections file for the test and returns its path.
pub fn write_config(ctx: &TestContext, toml: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("esk-projections-{}.toml", ctx.name));
    std::fs::write(&path, toml)?;
    Ok(path)
}

/// The secret [`write_webhook_config`] gives its projection.
pub const WEBHOOK_SECRET: &str = "test-webhook-secret-0123456789abcdef";

/// How old a signature's timestamp may be before a receiver refuses it, in seconds.
pub const SIGNATURE_TOLERANCE_SECS: i64 = 300;

/// Checks an `esk-signature` header (`t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`) as a
/// receiver should: the HMAC with `secret`, compared in constant time, and a timestamp at most
/// `tolerance_secs` from `now` (a replayed old request is refused).
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), String> {
    use hmac::Mac;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => signatures.push(v),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or("no timestamp")?;
    if (now - timestamp).abs() > tolerance_secs {
        return Err(format!("timestamp {timestamp} is too far from {now}"));
    }
    for signature in signatures {
        let Ok(expected) = hex::decode(signature) else {
            continue;
        };
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret)
            .map_err(|e| format!("bad key: {e}"))?;
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(body);
        if mac.verify_slice(&expected).is_ok() {
            return Ok(());
        }
    }
    Err("no v1 signature matches".into())
}

/// Writes a projections file with one webhook projection, `name`, posting to `url` and signing
/// with [`WEBHOOK_SECRET`]; `extra` adds lines of TOML to it (`category = "Hook"\n`,
/// `timeout_ms = 1000\n`).
pub fn write_webhook_config(
    ctx: &TestContext,
    name: &str,
    url: &str,
    extra: &str,
) -> anyhow::Result<PathBuf> {
    write_config(
        ctx,
        &format!(
            "[[projection]]\nname = \"{name}\"\nhandler = \"webhook\"\nurl = \"{url}\"\n\
             secret = \"{WEBHOOK_SECRET}\"\n{extra}"
        ),
    )
}

fn env_for(
    ctx: &TestContext,
    config: Option<&PathBuf>,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut env = ctx.env();
    env.push((
        "ESK_PROJECTOR_GROUP_PREFIX".into(),
        format!("{}-proj", ctx.name),
    ));
    if let Some(path) = config {
        env.push(("ESK_PROJECTOR_CONFIG".into(), path.display().to_string()));
    }
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// Starts `projector run` (built-in projections when `config` is None).
pub async fn spawn(
    ctx: &TestContext,
    config: Option<&PathBuf>,
    extra: &[(&str, &str)],
) -> anyhow::Result<Process> {
    Process::spawn(
        "projector",
        &env_for(ctx, config, extra),
        crate::process::PROJECTOR,
        &[],
    )
    .await
}

/// Runs a one-shot projector command (`rebuild NAME`, `dead-letters list NAME`, ...).
/// Async, so a webhook receiver on the test's runtime keeps answering meanwhile.
pub async fn command(
    ctx: &TestContext,
    config: Option<&PathBuf>,
    args: &[&str],
) -> anyhow::Result<std::process::Output> {
    let mut command = tokio::process::Command::new(bin_dir()?.join("projector"));
    command.args(args).envs(env_for(ctx, config, &[]));
    command.env("ESK_PROJECTOR_ADMIN_ADDR", "127.0.0.1:0");
    Ok(command.output().await?)
}

/// What a test webhook receiver saw and how it answers.
#[derive(Debug, Default)]
pub struct Receiver {
    /// Every event envelope received, in arrival order (repeats included).
    pub events: Vec<Value>,
    /// Every acknowledged request body, byte for byte.
    pub bodies: Vec<Bytes>,
    /// Requests received.
    pub requests: usize,
    /// Answer 500 to this many more requests.
    pub fail_next: usize,
    /// Answer this status to every request while set (an outage: 503, ...).
    pub fail_with: Option<u16>,
    /// Answer 400 (a rejection) to any batch holding an event of this type.
    pub poison_type: Option<String>,
    /// Sleep this long before answering.
    pub delay: Duration,
    /// Verify each request's `esk-signature` with this secret; answer 401 if it does not.
    pub verify_secret: Option<String>,
    /// Requests whose signature did not verify (answered 401).
    pub bad_signatures: usize,
    /// Answer every request with a 307 redirect to this URL.
    pub redirect_to: Option<String>,
    /// The `esk-signature` header of every acknowledged request, in the order of `bodies`.
    pub signatures: Vec<String>,
}

/// A running webhook receiver.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// `http://127.0.0.1:PORT/hook`.
    pub url: String,
    /// Shared state.
    pub state: Arc<Mutex<Receiver>>,
    addr: SocketAddr,
    server: Arc<Mutex<Option<Server>>>,
}

#[derive(Debug)]
struct Server {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Webhook {
    /// Starts a receiver on a free port.
    pub async fn start(receiver: Receiver) -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(receiver));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = Self::serve(listener, state.clone());
        Ok(Webhook {
            url: format!("http://{addr}/hook"),
            state,
            addr,
            server: Arc::new(Mutex::new(Some(server))),
        })
    }

    fn serve(listener: tokio::net::TcpListener, state: Arc<Mutex<Receiver>>) -> Server {
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(state);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        Server { stop, task }
    }

    /// Stops listening and closes its connections: requests are refused until [`Self::restart`].
    pub async fn stop(&self) -> anyhow::Result<()> {
        let server = self.server.lock().ok().and_then(|mut s| s.take());
        if let Some(server) = server {
            let _ = server.stop.send(());
            server.task.await??;
        }
        Ok(())
    }

    /// Listens again on the same address.
    pub async fn restart(&self) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(self.addr).await?;
        let server = Self::serve(listener, self.state.clone());
        if let Ok(mut slot) = self.server.lock() {
            *slot = Some(server);
        }
        Ok(())
    }

    /// Ids of the events received at least once, with their first arrival index.
    pub fn first_arrivals(&self) -> HashMap<String, usize> {
        let mut first = HashMap::new();
        if let Ok(state) = self.state.lock() {
            for (i, e) in state.events.iter().enumerate() {
                if let Some(id) = e["event_id"].as_str() {
                    first.entry(id.to_owned()).or_insert(i);
                }
            }
        }
        first
    }
}

async fn receive(
    State(state): State<Arc<Mutex<Receiver>>>,
    headers: HeaderMap,
    raw: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let redirect = state.lock().ok().and_then(|s| s.redirect_to.clone());
    if let Some(target) = redirect {
        if let Ok(mut s) = state.lock() {
            s.requests += 1;
        }
        return (
            StatusCode::TEMPORARY_REDIRECT,
            [(axum::http::header::LOCATION, target)],
        )
            .into_response();
    }
    answer(&state, &headers, raw).await.into_response()
}

async fn answer(state: &Arc<Mutex<Receiver>>, headers: &HeaderMap, raw: Bytes) -> StatusCode {
    let secret = state.lock().ok().and_then(|s| s.verify_secret.clone());
    if let Some(secret) = secret {
        let header = headers
            .get("esk-signature")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let now = chrono::Utc::now().timestamp();
        let verified = verify_signature(
            secret.as_bytes(),
            header,
            &raw,
            now,
            SIGNATURE_TOLERANCE_SECS,
        );
        if verified.is_err() {
            if let Ok(mut s) = state.lock() {
                s.requests += 1;
                s.bad_signatures += 1;
            }
            return StatusCode::UNAUTHORIZED;
        }
    }
    let Ok(body) = serde_json::from_slice::<Value>(&raw) else {
        return StatusCode::BAD_REQUEST;
    };
    let delay = state.lock().map(|s| s.delay).unwrap_or_default();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let Ok(mut s) = state.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR;
    };
    s.requests += 1;
    if let Some(status) = s.fail_with {
        return StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    }
    if s.fail_next > 0 {
        s.fail_next -= 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let events = body["events"].as_array().cloned().unwrap_or_default();
    if let Some(poison) = &s.poison_type {
        if events
            .iter()
            .any(|e| e["type"].as_str() == Some(poison.as_str()))
        {
            return StatusCode::BAD_REQUEST;
        }
    }
    s.events.extend(events);
    s.bodies.push(raw);
    let signature = headers
        .get("esk-signature")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_owned();
    s.signatures.push(signature);
    StatusCode::OK
}

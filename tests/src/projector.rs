//! Driving the projector binary, and a webhook receiver for its webhook handler.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;

use crate::process::{bin_dir, Process};
use crate::TestContext;

/// Writes a projections file for the test and returns its path.
pub fn write_config(ctx: &TestContext, toml: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("esk-projections-{}.toml", ctx.name));
    std::fs::write(&path, toml)?;
    Ok(path)
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
        "ESK_PROJECTOR_HTTP_ADDR",
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
    command.env("ESK_PROJECTOR_HTTP_ADDR", "127.0.0.1:0");
    Ok(command.output().await?)
}

/// What a test webhook receiver saw and how it answers.
#[derive(Debug, Default)]
pub struct Receiver {
    /// Every event envelope received, in arrival order (repeats included).
    pub events: Vec<Value>,
    /// Requests received.
    pub requests: usize,
    /// Answer 500 to this many more requests.
    pub fail_next: usize,
    /// Answer 500 to any batch holding an event of this type.
    pub poison_type: Option<String>,
    /// Sleep this long before answering.
    pub delay: Duration,
}

/// A running webhook receiver.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// `http://127.0.0.1:PORT/hook`.
    pub url: String,
    /// Shared state.
    pub state: Arc<Mutex<Receiver>>,
}

impl Webhook {
    /// Starts a receiver on a free port.
    pub async fn start(receiver: Receiver) -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(receiver));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Webhook { url, state })
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

async fn receive(State(state): State<Arc<Mutex<Receiver>>>, Json(body): Json<Value>) -> StatusCode {
    let delay = state.lock().map(|s| s.delay).unwrap_or_default();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let Ok(mut s) = state.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR;
    };
    s.requests += 1;
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
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
    }
    s.events.extend(events);
    StatusCode::OK
}

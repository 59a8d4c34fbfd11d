//! Service checks: `/health` on the admin listeners of ingest and the indexer. Unreachable is a warning (the doctor
//! may run where the services do not); a service that says it is unhealthy is a problem.

use std::time::Duration;

use serde_json::Value;

use super::{Section, Status};
use crate::exit::root_cause;

const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) async fn check(ingest_admin_url: &str, indexer_url: &str) -> Section {
    let mut section = Section::new("Services", "/health");
    let client = reqwest::Client::builder()
        .timeout(HEALTH_TIMEOUT)
        .connect_timeout(HEALTH_TIMEOUT)
        .build();
    let client = match client {
        Ok(client) => client,
        Err(e) => {
            section.warn("services", format!("cannot build an HTTP client: {e}"));
            return section;
        }
    };
    let (ingest, indexer) = tokio::join!(
        probe(&client, ingest_admin_url),
        probe(&client, indexer_url)
    );
    for (name, url, (status, detail)) in [
        ("ingest", ingest_admin_url, ingest),
        ("indexer", indexer_url, indexer),
    ] {
        section.add(name, status, format!("{url}: {detail}"));
    }
    section
}

async fn probe(client: &reqwest::Client, base: &str) -> (Status, String) {
    if !base.starts_with("http://") {
        return (Status::Warn, "not an http:// URL".to_owned());
    }
    let url = format!("{}/health", base.trim_end_matches('/'));
    let response = match client.get(&url).send().await {
        Ok(response) => response,
        Err(e) => return (Status::Warn, format!("unreachable ({})", root_cause(&e))),
    };
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return (Status::Ok, "healthy".to_owned());
    }
    let problems: Vec<&str> = body
        .get("problems")
        .and_then(Value::as_array)
        .map(|p| p.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if body.get("status").and_then(Value::as_str) == Some("unhealthy") {
        (Status::Fail, format!("unhealthy: {}", problems.join("; ")))
    } else {
        (
            Status::Warn,
            format!("/health answered HTTP {status}: is this an esk service?"),
        )
    }
}

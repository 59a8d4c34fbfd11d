//! Driving the ingest binary over HTTP: well-formed appends, reads and waits through
//! esk-client ([`Client::api`]); the raw requests here (any body, any content type, the status
//! and JSON of the answer as they are) are for tests that check the HTTP surface itself.

use std::sync::Arc;

use serde_json::{json, Value};
use uuid::Uuid;

use crate::process::Process;
use crate::TestContext;

/// Starts `ingest` on the test's database and topics.
pub async fn spawn(ctx: &TestContext, extra_env: &[(&str, &str)]) -> anyhow::Result<Process> {
    let mut env = ctx.env();
    env.extend(
        extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    Process::spawn("ingest", &env, crate::process::INGEST, &[]).await
}

/// A new event with a random id.
pub fn event(event_type: &str) -> Value {
    json!({"id": Uuid::new_v4(), "type": event_type, "data": {"n": 1}})
}

/// `n` new events.
pub fn events(n: usize) -> Vec<Value> {
    (0..n).map(|_| event("Happened")).collect()
}

/// An HTTP client for one ingest process.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    /// The typed client; a base URL it refuses is reported when it is first used.
    api: Result<esk_client::Client, Arc<esk_client::ClientError>>,
}

/// Status and JSON body of a response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Parsed body (Null when it is not JSON).
    pub body: Value,
}

impl Reply {
    /// The error code of an error body.
    pub fn code(&self) -> Option<&str> {
        self.body.pointer("/error/code").and_then(Value::as_str)
    }
}

impl Client {
    /// A client for the process's HTTP address, sending the token it was started with.
    pub fn new(process: &Process) -> Self {
        Self::with_token(&process.http, process.token.as_deref())
    }

    /// A client for a base URL, without a token.
    pub fn for_url(base: &str) -> Self {
        Self::with_token(base, None)
    }

    /// A client for a base URL sending `token` (`Authorization: Bearer`) with every request.
    pub fn with_token(base: &str, token: Option<&str>) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        let mut api = esk_client::Client::builder(base);
        if let Some(token) = token {
            if let Ok(value) = reqwest::header::HeaderValue::try_from(format!("Bearer {token}")) {
                headers.insert(reqwest::header::AUTHORIZATION, value);
            }
            api = api.token(token);
        }
        Client {
            http: reqwest::Client::builder()
                .default_headers(headers)
                // Ingest closes a connection idle for its header timeout (5 s): a pooled one
                // reused at that moment fails with "connection closed before message completed".
                .pool_idle_timeout(std::time::Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
            base: base.to_owned(),
            api: api.build().map_err(Arc::new),
        }
    }

    /// The typed client of the same ingest (esk-client), for well-formed requests.
    pub fn api(&self) -> anyhow::Result<&esk_client::Client> {
        self.api
            .as_ref()
            .map_err(|e| anyhow::anyhow!("no client for {}: {e}", self.base))
    }

    /// `POST /streams/{stream}/events` with a JSON body.
    pub async fn append(&self, stream: &str, body: &Value) -> anyhow::Result<Reply> {
        self.post_raw(
            &format!("/streams/{}/events", urlencode(stream)),
            "application/json",
            serde_json::to_vec(body)?,
        )
        .await
    }

    /// A POST with any body and content type.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Reply> {
        self.send_raw(reqwest::Method::POST, path, content_type, body)
            .await
    }

    /// A PUT with any body and content type.
    pub async fn put_raw(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Reply> {
        self.send_raw(reqwest::Method::PUT, path, content_type, body)
            .await
    }

    /// A request of `method` with any body and content type.
    async fn send_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Reply> {
        let response = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await?;
        Self::reply(response).await
    }

    /// `PUT /streams/{stream}/snapshot` with a JSON body given as text (sent as it is).
    pub async fn put_snapshot(&self, stream: &str, body: &str) -> anyhow::Result<Reply> {
        self.put_raw(
            &format!("/streams/{}/snapshot", urlencode(stream)),
            "application/json",
            body.as_bytes().to_vec(),
        )
        .await
    }

    /// `GET /streams/{stream}/snapshot`.
    pub async fn get_snapshot(&self, stream: &str) -> anyhow::Result<Reply> {
        self.get(&format!("/streams/{}/snapshot", urlencode(stream)))
            .await
    }

    /// A DELETE (no route accepts it).
    pub async fn delete(&self, path: &str) -> anyhow::Result<Reply> {
        let response = self
            .http
            .delete(format!("{}{}", self.base, path))
            .send()
            .await?;
        Self::reply(response).await
    }

    /// A GET.
    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        let response = self
            .http
            .get(format!("{}{}", self.base, path))
            .send()
            .await?;
        Self::reply(response).await
    }

    async fn reply(response: reqwest::Response) -> anyhow::Result<Reply> {
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Reply { status, body })
    }
}

/// Percent-encodes a path segment (RFC 3986 unreserved characters kept), as esk-client does.
pub fn urlencode(segment: &str) -> String {
    esk_client::encode_segment(segment)
}

/// A committed ledger row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LedgerRow {
    /// Append id.
    pub append_id: Uuid,
    /// Attempt that decided it.
    pub attempt_id: Uuid,
    /// Stream.
    pub stream_id: String,
    /// `accepted` or `rejected`.
    pub status: String,
    /// First version, when accepted.
    pub first_version: Option<i64>,
    /// Last version, when accepted.
    pub last_version: Option<i64>,
    /// Reason, when rejected.
    pub reject_code: Option<String>,
}

/// Every ledger row of the test's database.
pub async fn ledger(ctx: &TestContext) -> anyhow::Result<Vec<LedgerRow>> {
    Ok(sqlx::query_as(
        "SELECT append_id, attempt_id, stream_id, status, first_version, last_version, reject_code
         FROM append_ledger ORDER BY stream_id, first_version",
    )
    .fetch_all(&ctx.pool)
    .await?)
}

/// A stream's version in the stream index (None: no stream).
pub async fn stream_version(ctx: &TestContext, stream: &str) -> anyhow::Result<Option<i64>> {
    Ok(
        sqlx::query_scalar("SELECT version FROM streams WHERE stream_id = $1 AND version >= 0")
            .bind(stream)
            .fetch_optional(&ctx.pool)
            .await?,
    )
}

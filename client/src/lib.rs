//! The Rust client of the esk event store's HTTP API (the `ingest` service): typed appends,
//! reads of a stream, of `$all` and of a category (a page at a time, or as a [`Stream`] of
//! events that follows the pages), waits until a version or position is indexed, snapshots
//! ([`Client::load`]: the latest snapshot and the events after it), and subscriptions
//! ([`Client::subscribe_all`], [`Client::subscribe_stream`]: events as they are indexed, over
//! Server-Sent Events, resumed exactly after a dropped connection).
//!
//! Requests and answers are the types of [`esk_model::api`]; errors are [`ClientError`], which
//! tells a refusal by the server ([`ClientError::Api`], with its code) from no answer at all
//! ([`ClientError::Transport`]) and from an answer that is not the API's.
//!
//! ```no_run
//! use esk_client::{Client, ReadStream};
//! use esk_model::api::{AppendRequest, EventData};
//! use esk_model::event::ExpectedVersion;
//! use futures::TryStreamExt;
//! use serde_json::value::RawValue;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::new("http://127.0.0.1:8080")?;
//! let request = AppendRequest {
//!     expected_version: ExpectedVersion::NoStream,
//!     append_id: None,
//!     events: vec![EventData {
//!         id: uuid::Uuid::new_v4(),
//!         event_type: "OrderPlaced".into(),
//!         // Payloads are sent as written: number digits and key order are kept.
//!         data: RawValue::from_string(r#"{"sku":"a","price":1.50}"#.into())?,
//!         metadata: None,
//!     }],
//! };
//! match client.append("Order-1", &request).await {
//!     Ok(appended) => println!("at version {}", appended.last_version),
//!     Err(e) if e.is_conflict() => println!("someone wrote first: {e}"),
//!     Err(e) => return Err(e.into()),
//! }
//! // Reads see an append once it is indexed.
//! client
//!     .wait_for_version("Order-1", 0, std::time::Duration::from_secs(5))
//!     .await?;
//! let events: Vec<_> = client
//!     .stream_events("Order-1", ReadStream::forward())
//!     .try_collect()
//!     .await?;
//! println!("{} events", events.len());
//! # Ok(())
//! # }
//! ```

mod error;
mod subscribe;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use esk_model::api::{AppendRequest, AppendResponse, Direction, PositionedPage, StreamPage};
use esk_model::api::{MultiAppendRequest, MultiAppendResponse, WaitResponse};
use esk_model::api::{PutSnapshotRequest, PutSnapshotResponse, Snapshot};
use esk_model::event::ExpectedVersion;
use esk_model::lifecycle::{
    DeleteMode, DeleteStreamResponse, PutMetadataRequest, StreamMetadataResponse,
};
use esk_model::wire::CanonicalEvent;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use reqwest::{RequestBuilder, Response};
use serde::de::DeserializeOwned;

pub use crate::error::{ClientError, TransportKind, BODY_EXCERPT_CHARS};
pub use crate::subscribe::{Filters, DEFAULT_IDLE_TIMEOUT};
pub use esk_model::api;
pub use reqwest::StatusCode;

/// The name that reads every event, by global position.
pub const ALL: &str = "$all";

/// Time allowed for one request, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed to open a connection, by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How much longer than the wait itself a `/wait` request may take before it times out.
const WAIT_MARGIN: Duration = Duration::from_secs(10);

/// Characters left as they are in a path segment (RFC 3986 unreserved); everything else is
/// percent-encoded, so a stream id can hold `/`, `?`, `%` or spaces.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes one path segment (a stream id or a category).
pub fn encode_segment(raw: &str) -> String {
    utf8_percent_encode(raw, SEGMENT).to_string()
}

/// Events read page after page; ends after the last page, or after yielding an error.
pub type Events = BoxStream<'static, Result<CanonicalEvent, ClientError>>;

/// A client of one esk HTTP API. Cloning is cheap and clones share their connections: make
/// one and clone it where it is needed.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// The base URL without a trailing `/`.
    base: Arc<str>,
    timeout: Duration,
    /// A subscription silent this long is reconnected.
    idle_timeout: Duration,
}

/// Settings of a [`Client`], from [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    base: String,
    timeout: Duration,
    connect_timeout: Duration,
    idle_timeout: Duration,
    user_agent: String,
    pool_max_idle_per_host: Option<usize>,
    tcp_nodelay: bool,
    token: Option<String>,
    ca_file: Option<PathBuf>,
}

impl ClientBuilder {
    /// Time allowed for one request, answer included [default: 30 s]. Waits get their own
    /// timeout plus a margin instead.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Time allowed to open a connection [default: 5 s].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a subscription may go without a byte (events or the server's heartbeats)
    /// before the client drops the connection and resumes on a new one [default: 60 s].
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// The `User-Agent` header [default: `esk-client/<version>`].
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    /// Idle connections kept per host [default: reqwest's, unbounded]; a load generator sets
    /// its concurrency.
    pub fn pool_max_idle_per_host(mut self, max: usize) -> Self {
        self.pool_max_idle_per_host = Some(max);
        self
    }

    /// Whether sockets set `TCP_NODELAY` [default: true].
    pub fn tcp_nodelay(mut self, enabled: bool) -> Self {
        self.tcp_nodelay = enabled;
        self
    }

    /// The bearer token sent with every request (`Authorization: Bearer <token>`, from
    /// `esk token create`) [default: none].
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// A PEM file of CA certificates to trust for `https://` besides the usual public roots:
    /// the CA that signed a server's own certificate [default: public roots only].
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// The client; fails on a base URL that is not `http(s)://host[:port][/path]`, or a CA
    /// file that cannot be read or holds no certificate.
    pub fn build(self) -> Result<Client, ClientError> {
        let base = self.base.trim_end_matches('/');
        let invalid = |reason: String| ClientError::InvalidBaseUrl {
            url: self.base.clone(),
            reason,
        };
        let url = reqwest::Url::parse(base).map_err(|e| invalid(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "the scheme must be http or https, not {}",
                url.scheme()
            )));
        }
        if url.host().is_none() {
            return Err(invalid("there is no host".into()));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("a base URL has no query or fragment".into()));
        }
        let mut http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .user_agent(self.user_agent)
            .tcp_nodelay(self.tcp_nodelay);
        if let Some(max) = self.pool_max_idle_per_host {
            http = http.pool_max_idle_per_host(max);
        }
        if let Some(path) = &self.ca_file {
            for certificate in ca_certificates(path)? {
                http = http.add_root_certificate(certificate);
            }
        }
        if let Some(token) = &self.token {
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ClientError::InvalidToken);
            }
            let mut value = reqwest::header::HeaderValue::try_from(format!("Bearer {token}"))
                .map_err(|_| ClientError::InvalidToken)?;
            // Kept out of debug output.
            value.set_sensitive(true);
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, value);
            http = http.default_headers(headers);
        }
        Ok(Client {
            http: http.build().map_err(ClientError::Setup)?,
            base: base.into(),
            timeout: self.timeout,
            idle_timeout: self.idle_timeout,
        })
    }
}

/// The certificates of the PEM file at `path`; at least one.
fn ca_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, ClientError> {
    let refused = |reason: String| ClientError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| refused(e.to_string()))?;
    let certificates =
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| refused(e.to_string()))?;
    if certificates.is_empty() {
        return Err(refused("it holds no PEM certificate".into()));
    }
    Ok(certificates)
}

/// Where a read of one stream starts, how many events a page holds and which way it goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStream {
    /// The first version to read [default: the first; the last when reading backward].
    pub from: Option<i64>,
    /// Events per page, 1 to 1000 [default: the server's, 100].
    pub limit: Option<u32>,
    /// Which way to read.
    pub direction: Direction,
}

impl ReadStream {
    /// From the first version on.
    pub fn forward() -> Self {
        ReadStream::default()
    }

    /// From the last version down.
    pub fn backward() -> Self {
        ReadStream {
            direction: Direction::Backward,
            ..ReadStream::default()
        }
    }

    /// Starting at `version`.
    pub fn from(mut self, version: i64) -> Self {
        self.from = Some(version);
        self
    }

    /// At most `limit` events per page.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// An append request already encoded as its JSON body. Encoding once lets a retry send the
/// very same bytes (same append id and event ids, so it is written at most once) without
/// encoding again; cloning shares the bytes.
#[derive(Debug, Clone)]
pub struct EncodedAppend(Bytes);

impl EncodedAppend {
    /// Encodes `request`.
    pub fn new(request: &AppendRequest) -> Result<Self, ClientError> {
        serde_json::to_vec(request)
            .map(|body| EncodedAppend(body.into()))
            .map_err(ClientError::Encode)
    }

    /// A body the caller wrote itself, as the JSON text of an [`AppendRequest`]; sent as is
    /// and validated by the server (for callers that build bodies as text, or pass on events
    /// as they were written).
    pub fn from_json(body: impl Into<Bytes>) -> Self {
        EncodedAppend(body.into())
    }

    /// The body.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Client {
    /// A client of the API at `base_url` (`http://host:port`), with the default settings.
    pub fn new(base_url: &str) -> Result<Client, ClientError> {
        Client::builder(base_url).build()
    }

    /// Settings for a client of the API at `base_url`.
    pub fn builder(base_url: &str) -> ClientBuilder {
        ClientBuilder {
            base: base_url.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            user_agent: concat!("esk-client/", env!("CARGO_PKG_VERSION")).to_owned(),
            pool_max_idle_per_host: None,
            tcp_nodelay: true,
            token: None,
            ca_file: None,
        }
    }

    /// The base URL, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Appends `request`'s events to `stream_id` (`POST /streams/{stream_id}/events`).
    pub async fn append(
        &self,
        stream_id: &str,
        request: &AppendRequest,
    ) -> Result<AppendResponse, ClientError> {
        self.append_encoded(stream_id, &EncodedAppend::new(request)?)
            .await
    }

    /// Appends an encoded request; sending it again after a transport error or a 503 is safe.
    pub async fn append_encoded(
        &self,
        stream_id: &str,
        body: &EncodedAppend,
    ) -> Result<AppendResponse, ClientError> {
        let request = self
            .http
            .post(self.stream_url(stream_id))
            .header(CONTENT_TYPE, "application/json")
            .body(body.0.clone())
            .timeout(self.timeout);
        self.send(request).await
    }

    /// Appends to several streams at once, all or nothing (`POST /appends`): each part has its
    /// own expected version, and if one fails nothing is written (`ClientError` with code
    /// `wrong_expected_version` and the error's `streams`). Sending the same request again
    /// after a transport error or a 503 is safe: without an `append_id` the server derives one
    /// from every part's stream and event ids.
    pub async fn append_multi(
        &self,
        request: &MultiAppendRequest,
    ) -> Result<MultiAppendResponse, ClientError> {
        let body = serde_json::to_vec(request).map_err(ClientError::Encode)?;
        let request = self
            .http
            .post(format!("{}/appends", self.base))
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .timeout(self.timeout);
        self.send(request).await
    }

    /// One page of a stream (`GET /streams/{stream_id}/events`); `next` is where the next
    /// page starts. Read `$all` with [`Client::read_all`].
    pub async fn read_stream(
        &self,
        stream_id: &str,
        options: ReadStream,
    ) -> Result<StreamPage, ClientError> {
        let mut query = page_query(options.from, options.limit);
        if options.direction == Direction::Backward {
            query.push(("direction", options.direction.as_str().to_owned()));
        }
        let url = self.stream_url(stream_id);
        self.get(url, &query, self.timeout).await
    }

    /// One page of every event, from global position `from` on (`GET /streams/$all/events`).
    pub async fn read_all(
        &self,
        from: Option<i64>,
        limit: Option<u32>,
    ) -> Result<PositionedPage, ClientError> {
        let url = format!("{}/streams/{ALL}/events", self.base);
        self.get(url, &page_query(from, limit), self.timeout).await
    }

    /// One page of a category (the streams named `{category}-…`), from global position `from`
    /// on (`GET /categories/{category}/events`).
    pub async fn read_category(
        &self,
        category: &str,
        from: Option<i64>,
        limit: Option<u32>,
    ) -> Result<PositionedPage, ClientError> {
        let url = format!(
            "{}/categories/{}/events",
            self.base,
            utf8_percent_encode(category, SEGMENT)
        );
        self.get(url, &page_query(from, limit), self.timeout).await
    }

    /// A stream's events from `options.from` to its end (or start, backward), page after
    /// page of `options.limit`.
    pub fn stream_events(&self, stream_id: &str, options: ReadStream) -> Events {
        let client = self.clone();
        let stream_id: Arc<str> = stream_id.into();
        paged(options.from, move |from| {
            let (client, stream_id) = (client.clone(), Arc::clone(&stream_id));
            async move {
                let page = client
                    .read_stream(&stream_id, ReadStream { from, ..options })
                    .await?;
                Ok((page.events, page.next))
            }
        })
    }

    /// Every event from global position `from` to the current end, page after page.
    pub fn all_events(&self, from: Option<i64>, limit: Option<u32>) -> Events {
        let client = self.clone();
        paged(from, move |from| {
            let client = client.clone();
            async move {
                let page = client.read_all(from, limit).await?;
                Ok((page.events, page.next))
            }
        })
    }

    /// A category's events from global position `from` to the current end, page after page.
    pub fn category_events(&self, category: &str, from: Option<i64>, limit: Option<u32>) -> Events {
        let client = self.clone();
        let category: Arc<str> = category.into();
        paged(from, move |from| {
            let (client, category) = (client.clone(), Arc::clone(&category));
            async move {
                let page = client.read_category(&category, from, limit).await?;
                Ok((page.events, page.next))
            }
        })
    }

    /// Waits until `stream_id` has an event at `version`, at most `timeout` (the server allows
    /// up to 60 s): true once it is indexed (readable), false when the timeout passed first.
    pub async fn wait_for_version(
        &self,
        stream_id: &str,
        version: i64,
        timeout: Duration,
    ) -> Result<bool, ClientError> {
        let query = [
            ("stream_id", stream_id.to_owned()),
            ("version", version.to_string()),
            ("timeout_ms", millis(timeout)),
        ];
        self.wait(&query, timeout).await
    }

    /// Waits until the event at global position `position` (1 or more) is indexed, at most
    /// `timeout`: true once it is (with every position below it), false when the timeout
    /// passed first. A zero timeout asks whether it is indexed now.
    pub async fn wait_for_position(
        &self,
        position: i64,
        timeout: Duration,
    ) -> Result<bool, ClientError> {
        let query = [
            ("position", position.to_string()),
            ("timeout_ms", millis(timeout)),
        ];
        self.wait(&query, timeout).await
    }

    async fn wait(&self, query: &[(&str, String)], timeout: Duration) -> Result<bool, ClientError> {
        // The server holds the request for up to `timeout`: the request's own timeout must
        // outlast it.
        let answer: WaitResponse = self
            .get(
                format!("{}/wait", self.base),
                query,
                timeout.saturating_add(WAIT_MARGIN),
            )
            .await?;
        Ok(answer.reached)
    }

    /// Stores a snapshot of `stream_id`: its state as of `request.version`, a version the
    /// stream has and that is indexed (wait for it with [`Client::wait_for_version`] after the
    /// append; else the answer is a 409 `version_not_indexed`). A snapshot is never replaced by
    /// an older one: the answer says whether this one was stored and which is the stream's now.
    pub async fn put_snapshot(
        &self,
        stream_id: &str,
        request: &PutSnapshotRequest,
    ) -> Result<PutSnapshotResponse, ClientError> {
        let body = serde_json::to_vec(request).map_err(ClientError::Encode)?;
        let request = self
            .http
            .put(self.snapshot_url(stream_id))
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .timeout(self.timeout);
        self.send(request).await
    }

    /// The snapshot of `stream_id`, or `None` when it has none (`snapshot_not_found`).
    pub async fn get_snapshot(&self, stream_id: &str) -> Result<Option<Snapshot>, ClientError> {
        let url = self.snapshot_url(stream_id);
        match self.get(url, &[], self.timeout).await {
            Ok(snapshot) => Ok(Some(snapshot)),
            Err(e) if e.code() == Some("snapshot_not_found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// What a reader folds to get `stream_id`'s state, in one call: its latest snapshot (if
    /// any) and every event after it (all of them without a snapshot), following the pages.
    pub async fn load(&self, stream_id: &str) -> Result<Loaded, ClientError> {
        let snapshot = self.get_snapshot(stream_id).await?;
        let from = snapshot.as_ref().map_or(0, |s| s.version.get() + 1);
        let events = self
            .stream_events(stream_id, ReadStream::forward().from(from))
            .try_collect()
            .await?;
        Ok(Loaded { snapshot, events })
    }

    /// The metadata of `stream_id` (retention rules, custom data; `metadata_version` null and
    /// no rules when never set). A hard-deleted stream is an [`ClientError::Api`] 410
    /// `stream_deleted`.
    pub async fn get_metadata(
        &self,
        stream_id: &str,
    ) -> Result<StreamMetadataResponse, ClientError> {
        self.get(self.metadata_url(stream_id), &[], self.timeout)
            .await
    }

    /// Replaces the metadata of `stream_id` (fields left out are unset). Give
    /// `request.append_id` to make a retry safe: the same id gets the original outcome.
    pub async fn put_metadata(
        &self,
        stream_id: &str,
        request: &PutMetadataRequest,
    ) -> Result<StreamMetadataResponse, ClientError> {
        let body = serde_json::to_vec(request).map_err(ClientError::Encode)?;
        let request = self
            .http
            .put(self.metadata_url(stream_id))
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .timeout(self.timeout);
        self.send(request).await
    }

    /// Deletes `stream_id` (soft: hidden until the next append; hard: for good) if it is at
    /// `expected_version`. Give `append_id` to make a retry safe: the same id gets the
    /// original outcome.
    pub async fn delete_stream(
        &self,
        stream_id: &str,
        expected_version: ExpectedVersion,
        mode: DeleteMode,
        append_id: Option<uuid::Uuid>,
    ) -> Result<DeleteStreamResponse, ClientError> {
        let mut query = vec![
            ("expected_version", expected_version.to_string()),
            ("mode", mode.as_str().to_owned()),
        ];
        if let Some(id) = append_id {
            query.push(("append_id", id.to_string()));
        }
        let url = format!(
            "{}/streams/{}",
            self.base,
            utf8_percent_encode(stream_id, SEGMENT)
        );
        let request = self.http.delete(url).query(&query).timeout(self.timeout);
        self.send(request).await
    }

    fn metadata_url(&self, stream_id: &str) -> String {
        format!(
            "{}/streams/{}/metadata",
            self.base,
            utf8_percent_encode(stream_id, SEGMENT)
        )
    }

    fn snapshot_url(&self, stream_id: &str) -> String {
        format!(
            "{}/streams/{}/snapshot",
            self.base,
            utf8_percent_encode(stream_id, SEGMENT)
        )
    }

    /// The URL of a stream's events, built in one go (appends are the hot path).
    fn stream_url(&self, stream_id: &str) -> String {
        format!(
            "{}/streams/{}/events",
            self.base,
            utf8_percent_encode(stream_id, SEGMENT)
        )
    }

    async fn get<T: DeserializeOwned>(
        &self,
        url: String,
        query: &[(&str, String)],
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let request = self.http.get(url).query(query).timeout(timeout);
        self.send(request).await
    }

    async fn send<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, ClientError> {
        let response = request.send().await.map_err(ClientError::transport)?;
        let status = response.status();
        let url = without_query(&response);
        let retry_after = retry_after(&response);
        let body = response.bytes().await.map_err(ClientError::transport)?;
        if !status.is_success() {
            return Err(ClientError::from_answer(status, &url, &body).with_retry_after(retry_after));
        }
        serde_json::from_slice(&body)
            .map_err(|e| ClientError::unexpected(status, &url, &body, e.to_string()))
    }
}

/// A stream as [`Client::load`] reads it: the snapshot to start from and the events to fold
/// onto it.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The stream's latest snapshot; `None` when it has none.
    pub snapshot: Option<Snapshot>,
    /// The events after the snapshot's version (every event without a snapshot), in order.
    pub events: Vec<CanonicalEvent>,
}

/// `from` and `limit`, as given.
fn page_query(from: Option<i64>, limit: Option<u32>) -> Vec<(&'static str, String)> {
    let mut query = Vec::with_capacity(3);
    if let Some(limit) = limit {
        query.push(("limit", limit.to_string()));
    }
    if let Some(from) = from {
        query.push(("from", from.to_string()));
    }
    query
}

fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

fn without_query(response: &Response) -> String {
    let mut url = response.url().clone();
    url.set_query(None);
    url.to_string()
}

/// `Retry-After` in seconds (the server never sends the date form).
fn retry_after(response: &Response) -> Option<Duration> {
    response
        .headers()
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
        .map(Duration::from_secs)
}

/// The events of the pages `fetch` returns, from `first` on, following each page's `next`
/// until it is null.
fn paged<F, Fut>(first: Option<i64>, fetch: F) -> Events
where
    F: Fn(Option<i64>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(Vec<CanonicalEvent>, Option<i64>), ClientError>>
        + Send
        + 'static,
{
    // The state is the `from` of the page to fetch; None once the last page was read.
    stream::try_unfold(Some(first), move |from| {
        let page = from.map(&fetch);
        async move {
            let Some(page) = page else {
                return Ok(None);
            };
            let (events, next) = page.await?;
            Ok(Some((events, next.map(Some))))
        }
    })
    .map_ok(|events| stream::iter(events.into_iter().map(Ok)))
    .try_flatten()
    .boxed()
}

#[cfg(test)]
mod tests;

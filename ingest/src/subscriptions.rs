//! HTTP subscriptions as Server-Sent Events: `GET /subscriptions/$all` (optionally filtered by
//! types and categories) and `GET /subscriptions/streams/{stream_id}`. Each subscription has a
//! feeder task that reads pages from Postgres past its cursor (catch-up), then sleeps until the
//! indexed head moves past what it has read (live), and puts each event as one SSE message into
//! a bounded channel the response body drains. Wake-ups come from the one poller of
//! [`WaitHub`]: idle subscribers cost no queries, and no subscriber has a Kafka consumer.
//!
//! Exactly once across reconnects: every message's `id` is the event's global position (`$all`)
//! or version (a stream), ids increase, and a request with `Last-Event-ID: N` continues after
//! N. Id-only messages (no data, so not events) tell the client where it starts and how far a
//! filtered subscription has read past events it did not select. A client that does not drain its buffer (`--subscription-buffer` messages) within
//! `--subscription-slow-ms` is sent a `: closed slow_subscriber: …` comment and disconnected;
//! the feeder reads from Postgres only when there is room, so a slow client never makes the
//! process hold more than its buffer.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use esk_model::wire::{CanonicalEvent, ErrorEnvelope};
use esk_runtime::db::EVENT_COLUMNS;
use esk_runtime::pages::{self, Key, Page, Window};
use esk_runtime::scope::Need;
use esk_runtime::telemetry::MetricFactory;
use futures::Stream;
use prometheus::{IntCounterVec, IntGauge, Registry};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::ApiError;
use crate::filters::{self, EventFilter};
use crate::reads::{
    db_error, filter_error, int_param, params, reject_unknown, require, require_filter, segment,
    Params, ReadState, Visible,
};
use crate::wait::{indexed_head, stream_version};

/// Most events one catch-up query reads.
const PAGE: i64 = 100;
/// Most payload bytes one catch-up query holds (at least one event is read).
const PAGE_BYTES: usize = 4 * 1024 * 1024;
/// The resume header browsers' `EventSource` sends on reconnecting.
const LAST_EVENT_ID: &str = "last-event-id";

/// How subscriptions are served.
#[derive(Debug, Clone)]
pub(crate) struct SubscriptionSettings {
    /// An SSE comment (`: heartbeat`) is sent when nothing else was for this long.
    pub(crate) heartbeat: Duration,
    /// Messages buffered per subscriber.
    pub(crate) buffer: usize,
    /// A subscriber whose buffer stays full this long is disconnected.
    pub(crate) slow_after: Duration,
    /// Most subscriptions open at once in the process.
    pub(crate) max: usize,
}

/// The subscriptions of the process: their settings, their slots, and the shutdown that ends
/// them (an open subscription would otherwise hold the server's drain for its whole timeout).
#[derive(Debug)]
pub(crate) struct Subscriptions {
    settings: SubscriptionSettings,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
    metrics: Arc<SubscriptionMetrics>,
}

/// How many subscriptions are open, and how they ended.
#[derive(Debug)]
struct SubscriptionMetrics {
    open: IntGauge,
    ended: IntCounterVec,
}

impl SubscriptionMetrics {
    /// Every way a subscription ends, as the `reason` label: the server's close codes, and the
    /// client leaving.
    const REASONS: [&'static str; 4] = [
        "client_left",
        "slow_subscriber",
        "shutting_down",
        "unavailable",
    ];

    fn new(registry: &Registry) -> Self {
        let m = MetricFactory::new(registry);
        let metrics = SubscriptionMetrics {
            open: m.gauge("ingest_subscriptions_open", "SSE subscriptions open"),
            ended: m.counter_vec(
                "ingest_subscriptions_ended_total",
                "SSE subscriptions ended, by reason (client_left, or the server's close code)",
                &["reason"],
            ),
        };
        for reason in Self::REASONS {
            metrics.ended.with_label_values(&[reason]);
        }
        metrics
    }
}

impl Subscriptions {
    pub(crate) fn new(
        settings: SubscriptionSettings,
        registry: &Registry,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let slots = Arc::new(Semaphore::new(settings.max.max(1)));
        Arc::new(Subscriptions {
            settings,
            slots,
            shutdown,
            metrics: Arc::new(SubscriptionMetrics::new(registry)),
        })
    }

    /// The SSE response of a subscription to `source` after `cursor`, or 503 when the process
    /// has as many subscriptions as it may.
    fn start(&self, state: &ReadState, source: Source, cursor: i64) -> Result<Response, ApiError> {
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_subscriptions",
                format!(
                    "{} subscriptions are already open; retry later",
                    self.settings.max.max(1)
                ),
            )
            .retry_after(1)
        })?;
        let (tx, rx) = mpsc::channel(self.settings.buffer.max(1));
        let (closed_tx, closed_rx) = oneshot::channel();
        let feeder = Feeder {
            pool: state.pool.clone(),
            head: state.waits.head(),
            source,
            cursor,
            tx,
            slow_after: self.settings.slow_after,
            buffer: self.settings.buffer.max(1),
            shutdown: self.shutdown.clone(),
        };
        self.metrics.open.inc();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let reason = feeder.run(slot, closed_tx).await;
            metrics.open.dec();
            metrics.ended.with_label_values(&[reason]).inc();
        });
        let keep_alive = KeepAlive::new()
            .interval(self.settings.heartbeat)
            .text("heartbeat");
        Ok(Sse::new(body(rx, closed_rx))
            .keep_alive(keep_alive)
            .into_response())
    }
}

/// The subscription routes, documented.
pub(crate) fn routes() -> OpenApiRouter<ReadState> {
    OpenApiRouter::new()
        .routes(routes!(subscribe_all))
        .routes(routes!(subscribe_stream))
}

/// What a subscription follows.
#[derive(Debug)]
enum Source {
    /// Every event `filter` selects, by global position.
    All(EventFilter),
    /// One stream, by version.
    Stream(String),
}

/// Why the server ended a subscription: sent as the last message, a comment
/// `: closed <code>: <message>`.
#[derive(Debug)]
struct Closed {
    code: &'static str,
    message: String,
}

impl Closed {
    fn shutting_down() -> Self {
        Closed {
            code: "shutting_down",
            message: "the server is shutting down; reconnect with Last-Event-ID".into(),
        }
    }

    fn event(&self) -> Event {
        Event::default().comment(format!("closed {}: {}", self.code, self.message))
    }
}

/// How following ends.
#[derive(Debug)]
enum End {
    /// The response was dropped: the client went away.
    ClientLeft,
    /// The server ends it, and says why.
    Closed(Closed),
}

/// One subscription's reader: from Postgres into its bounded buffer.
#[derive(Debug)]
struct Feeder {
    pool: PgPool,
    head: watch::Receiver<i64>,
    source: Source,
    /// The last global position read (`$all`: filtered-out events included) or the last
    /// version sent (a stream); the next message comes after it.
    cursor: i64,
    tx: mpsc::Sender<Event>,
    slow_after: Duration,
    buffer: usize,
    shutdown: CancellationToken,
}

impl Feeder {
    /// Follows until the client leaves or the server ends it; then says why (holding `slot`
    /// until done). Returns how it ended: `client_left` or the server's close code.
    async fn run(
        mut self,
        slot: OwnedSemaphorePermit,
        closed: oneshot::Sender<Closed>,
    ) -> &'static str {
        let end = self.follow().await;
        // The buffer goes first: the body then sees the reason at once.
        drop(self);
        let code = match end {
            Err(End::Closed(reason)) => {
                tracing::debug!(code = reason.code, message = %reason.message, "subscription closed");
                let code = reason.code;
                let _ = closed.send(reason);
                code
            }
            Ok(()) | Err(End::ClientLeft) => "client_left",
        };
        drop(slot);
        code
    }

    async fn follow(&mut self) -> Result<(), End> {
        // Where it starts, as an id-only message (browsers and esk-client keep it as the last
        // event id): a reconnect before the first event resumes here, not at a new "now".
        let mut told = self.cursor;
        self.tell(told);
        loop {
            // Seen before the head is read: a head that moves after this wakes the wait below.
            self.head.borrow_and_update();
            let head = self.read(indexed_head(&self.pool)).await?;
            // A page is sent as one burst, a group whole within it.
            let page = self.read(self.page(head)).await?;
            for event in &page.events {
                self.send(event).await?;
                told = self.cursor;
            }
            if let (Source::All(_), Some(end)) = (&self.source, page.group_end) {
                // Past the rest of the group the page ended in (rows the filter left out).
                self.cursor = self.cursor.max(end);
            }
            if page.more {
                continue;
            }
            if let Source::All(_) = self.source {
                // Everything up to `head` was visible to the page and none of it was left.
                self.cursor = self.cursor.max(head);
            }
            if self.cursor > told {
                // Filtered-out events were passed: a resume need not scan them again.
                told = self.cursor;
                self.tell(told);
            }
            self.wait_past(head).await?;
        }
    }

    /// The events after the cursor, up to `head` (`$all`), whole groups only (rule 7: the
    /// same pages as reads).
    async fn page(&self, head: i64) -> Result<Page, sqlx::Error> {
        let after = self.cursor.saturating_add(1);
        let (selection, window) = match &self.source {
            Source::All(filter) => (
                Visible::Filtered(filter),
                Window {
                    high: head,
                    ..Window::forward(Key::Position, after, PAGE, PAGE_BYTES)
                },
            ),
            Source::Stream(stream) => (
                Visible::Stream(stream),
                Window::forward(Key::Version, after, PAGE, PAGE_BYTES),
            ),
        };
        pages::read_page(&self.pool, EVENT_COLUMNS, &selection, window).await
    }

    /// `query`'s answer, unless shutdown comes first or Postgres fails (then the subscription
    /// ends: the client resumes where it was).
    async fn read<T>(
        &self,
        query: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, End> {
        tokio::select! {
            () = self.shutdown.cancelled() => Err(End::Closed(Closed::shutting_down())),
            answer = query => answer.map_err(|error| {
                tracing::warn!(%error, "a subscription cannot read the store; closing it");
                End::Closed(Closed {
                    code: "unavailable",
                    message: "the store could not be read; reconnect with Last-Event-ID".into(),
                })
            }),
        }
    }

    /// Sends `id: <cursor>` alone (no data: not an event) if there is room for it; it is only
    /// a shortcut for a resume, so a full buffer skips it.
    fn tell(&self, cursor: i64) {
        let _ = self.tx.try_send(Event::default().id(cursor.to_string()));
    }

    /// Puts `event` in the buffer, waiting at most `slow_after` for room.
    async fn send(&mut self, event: &CanonicalEvent) -> Result<(), End> {
        let id = match self.source {
            Source::All(_) => event.global_position,
            Source::Stream(_) => event.version,
        };
        let message = message(id, event);
        let sent = tokio::select! {
            () = self.shutdown.cancelled() => return Err(End::Closed(Closed::shutting_down())),
            sent = tokio::time::timeout(self.slow_after, self.tx.send(message)) => sent,
        };
        match sent {
            Ok(Ok(())) => {
                self.cursor = id;
                Ok(())
            }
            Ok(Err(_)) => Err(End::ClientLeft),
            Err(_) => Err(End::Closed(Closed {
                code: "slow_subscriber",
                message: format!(
                    "the subscriber did not read its buffer of {} messages for {} ms; \
                     reconnect with Last-Event-ID {}",
                    self.buffer,
                    self.slow_after.as_millis(),
                    self.cursor
                ),
            })),
        }
    }

    /// Returns once the indexed head is past `head`.
    async fn wait_past(&mut self, head: i64) -> Result<(), End> {
        loop {
            if *self.head.borrow_and_update() > head {
                return Ok(());
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return Err(End::Closed(Closed::shutting_down())),
                () = self.tx.closed() => return Err(End::ClientLeft),
                changed = self.head.changed() => {
                    if changed.is_err() {
                        return Err(End::Closed(Closed::shutting_down()));
                    }
                }
            }
        }
    }
}

/// One SSE message: `id: <id>`, `event: <type>`, `data: <the canonical envelope>`.
fn message(id: i64, event: &CanonicalEvent) -> Event {
    let message = Event::default().id(id.to_string());
    // Appends refuse types with line breaks; an SSE field cannot carry one.
    let message = if event.event_type.contains(['\r', '\n']) {
        message
    } else {
        message.event(&event.event_type)
    };
    match serde_json::to_string(event) {
        Ok(data) => message.data(data),
        // An envelope of valid JSON always serializes; keep the id and type if not.
        Err(_) => message.data("null"),
    }
}

/// The response body: the buffered messages, then the reason the server ended it (sent as
/// soon as it is known, before what is still buffered: the client resumes after its last id).
fn body(
    rx: mpsc::Receiver<Event>,
    closed: oneshot::Receiver<Closed>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(Some((rx, closed)), |state| async move {
        let (mut rx, mut closed) = state?;
        tokio::select! {
            biased;
            reason = &mut closed => reason.ok().map(|r| (Ok(r.event()), None)),
            message = rx.recv() => match message {
                Some(message) => Some((Ok(message), Some((rx, closed)))),
                None => closed.await.ok().map(|r| (Ok(r.event()), None)),
            },
        }
    })
}

/// The `Last-Event-ID` header: the id of the last message the client has, if it sends one.
fn last_event_id(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(LAST_EVENT_ID) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("?").trim();
    if text.is_empty() {
        return Ok(None);
    }
    // -1: a stream subscription that started before the stream's first event.
    match text.parse::<i64>() {
        Ok(id) if id >= -1 => Ok(Some(id)),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            format!("Last-Event-ID must be an id this server sent (an integer of -1 or more), got {text:?}"),
        )),
    }
}

/// Every event the filter selects, as Server-Sent Events: those stored from `from` on
/// (catch-up), then each as it is indexed (live); without `from`, only new ones.
#[utoipa::path(
    get,
    path = "/subscriptions/$all",
    tag = "subscriptions",
    security(("bearer" = [])),
    params(
        ("from" = Option<i64>, Query, description = "First global position to send; default: only events indexed from now on"),
        ("types" = Option<String>, Query, description = "Event types, comma-separated (at most 100): only events of these types"),
        ("categories" = Option<String>, Query, description = "Categories, comma-separated (at most 100): only events of their streams. Read on each category suffices then, instead of `read:*`"),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume: the id of the last message received; the stream continues after it (`from` is then ignored)"),
    ),
    responses(
        (status = 200, description = "An SSE stream: per event `id: <global position>`, `event: <type>`, `data: <the canonical envelope, as read>`; a `: heartbeat` comment when idle; a last `: closed <code>: <reason>` comment when the server ends it (slow_subscriber, shutting_down, unavailable)", content_type = "text/event-stream", body = String),
        (status = 400, description = "invalid_parameter (an invalid or unknown parameter, a bad Last-Event-ID) or invalid_filter (an empty filter, an empty, too long or invalid name)", body = ErrorEnvelope),
        (status = 401, description = "unauthorized: no valid bearer token", body = ErrorEnvelope),
        (status = 403, description = "forbidden: the token cannot read every stream (`read:*`), nor every category named", body = ErrorEnvelope),
        (status = 503, description = "too_many_subscriptions, or the store could not be read; retry", body = ErrorEnvelope),
    )
)]
async fn subscribe_all(
    State(state): State<ReadState>,
    headers: HeaderMap,
    query: Params,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers).await?;
    let p = params(query)?;
    let filter = EventFilter::from_params(&p, &state.limits).map_err(|e| filter_error(&e))?;
    require_filter(&caller, &filter)?;
    reject_unknown(&p, &["from", filters::PARAMS[0], filters::PARAMS[1]])?;
    let from = int_param(&p, "from", 0, i64::MAX)?;
    let cursor = match (last_event_id(&headers)?, from) {
        (Some(last), _) => last,
        (None, Some(from)) => from.saturating_sub(1),
        (None, None) => indexed_head(&state.pool).await.map_err(db_error)?,
    };
    state
        .subscriptions
        .start(&state, Source::All(filter), cursor)
}

/// One stream's events as Server-Sent Events: those stored from version `from` on, then each
/// as it is indexed; without `from`, only new ones.
#[utoipa::path(
    get,
    path = "/subscriptions/streams/{stream_id}",
    tag = "subscriptions",
    security(("bearer" = [])),
    params(
        ("stream_id" = String, Path, description = "The stream"),
        ("from" = Option<i64>, Query, description = "First version to send; default: only events indexed from now on"),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume: the id (version) of the last message received; the stream continues after it (`from` is then ignored)"),
    ),
    responses(
        (status = 200, description = "An SSE stream: per event `id: <version>`, `event: <type>`, `data: <the canonical envelope, as read>`; a `: heartbeat` comment when idle; a last `: closed <code>: <reason>` comment when the server ends it (slow_subscriber, shutting_down, unavailable)", content_type = "text/event-stream", body = String),
        (status = 400, description = "invalid_parameter: an invalid or unknown parameter, a bad Last-Event-ID", body = ErrorEnvelope),
        (status = 401, description = "unauthorized: no valid bearer token", body = ErrorEnvelope),
        (status = 403, description = "forbidden: the token has no read scope for this stream (whether or not it exists)", body = ErrorEnvelope),
        (status = 404, description = "stream_not_found: the stream was soft-deleted (and not appended to since)", body = ErrorEnvelope),
        (status = 410, description = "stream_deleted: the stream was hard-deleted", body = ErrorEnvelope),
        (status = 503, description = "too_many_subscriptions, or the store could not be read; retry", body = ErrorEnvelope),
    )
)]
async fn subscribe_stream(
    State(state): State<ReadState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    query: Params,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers).await?;
    let stream_id = segment(path)?;
    require(&caller, Need::ReadStream(&stream_id))?;
    let p = params(query)?;
    reject_unknown(&p, &["from"])?;
    let from = int_param(&p, "from", 0, i64::MAX)?;
    // As for reads: a soft-deleted stream is 404, a hard-deleted one 410.
    crate::lifecycle::refuse_deleted(&state.pool, &stream_id).await?;
    let cursor = match (last_event_id(&headers)?, from) {
        (Some(last), _) => last,
        (None, Some(from)) => from.saturating_sub(1),
        (None, None) => stream_version(&state.pool, &stream_id)
            .await
            .map_err(db_error)?
            .unwrap_or(-1),
    };
    state
        .subscriptions
        .start(&state, Source::Stream(stream_id), cursor)
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn event(position: i64, version: i64) -> CanonicalEvent {
        serde_json::from_value(serde_json::json!({
            "global_position": position,
            "event_id": "00000000-0000-0000-0000-000000000001",
            "stream_id": "Order-1",
            "type": "OrderPlaced",
            "data": {"a": 1},
            "metadata": null,
            "version": version,
            "created_at": "2024-01-01T00:00:00Z",
        }))
        .expect("a canonical event")
    }

    /// The bytes of `message`, as the body writes them.
    async fn text(message: Event) -> String {
        let response =
            Sse::new(futures::stream::iter([Ok::<_, Infallible>(message)])).into_response();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("a body");
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn a_message_carries_the_id_the_type_and_the_envelope() {
        let text = text(message(7, &event(7, 3))).await;
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("id: 7"));
        assert_eq!(lines.next(), Some("event: OrderPlaced"));
        let data = lines.next().and_then(|l| l.strip_prefix("data: "));
        let data: serde_json::Value =
            serde_json::from_str(data.expect("a data line")).expect("JSON data");
        assert_eq!(data["global_position"], 7);
        assert_eq!(data["version"], 3);
    }

    #[tokio::test]
    async fn the_reason_comes_before_what_is_still_buffered_and_ends_the_body() {
        let (tx, rx) = mpsc::channel(4);
        let (closed_tx, closed_rx) = oneshot::channel();
        tx.send(Event::default().id("1")).await.expect("room");
        let _ = closed_tx.send(Closed {
            code: "slow_subscriber",
            message: "too slow".into(),
        });
        let all: Vec<_> = body(rx, closed_rx).collect().await;
        assert_eq!(all.len(), 1);
        let text = text(all.into_iter().next().expect("one").expect("ok")).await;
        assert_eq!(text, ": closed slow_subscriber: too slow\n\n");
    }

    #[test]
    fn last_event_id_must_be_an_id_the_server_sent() {
        let mut headers = HeaderMap::new();
        assert!(matches!(last_event_id(&headers), Ok(None)));
        for (value, ok) in [
            ("12", Some(12)),
            ("", None),
            (" 3 ", Some(3)),
            ("-1", Some(-1)),
        ] {
            headers.insert(LAST_EVENT_ID, value.parse().expect("header"));
            assert_eq!(last_event_id(&headers).ok(), Some(ok), "{value:?}");
        }
        for bad in ["-2", "x", "1.5"] {
            headers.insert(LAST_EVENT_ID, bad.parse().expect("header"));
            assert!(last_event_id(&headers).is_err(), "{bad:?}");
        }
    }
}

//! Reads from the authoritative `events` table: a stream forward or backward, `$all` by global
//! position (optionally filtered by types and categories), an event type, a category, and
//! `wait` (long-poll until a version or position is indexed).

use std::collections::HashMap;
use std::time::Duration;

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use esk_model::api::{Direction, PositionedPage, StreamPage, WaitResponse};
use esk_model::validate::Limits;
use esk_model::wire::ErrorEnvelope;
use esk_runtime::db::EVENT_COLUMNS;
use esk_runtime::pages::{self, Key, Page, PgQuery, Selection, Window};
use sqlx::PgPool;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{authorization, ApiError};
use crate::auth::{Auth, Principal};
use crate::filters::{self, EventFilter, InvalidFilter};
use crate::lifecycle::refuse_deleted;
use crate::wait::{WaitError, WaitHub, WaitTarget};
use esk_runtime::scope::Need;

const MAX_LIMIT: i64 = 1000;
/// The retention rules and deletes, applied at query time (migration 0009's `event_hidden`,
/// the same definition the scavenger deletes by).
pub(crate) const VISIBLE: &str = "NOT event_hidden(stream_id, version, created_at)";
const DEFAULT_LIMIT: i64 = 100;
const MAX_WAIT_MS: u64 = 60_000;

/// What the read routes share: their own pool (reads never take the appends' connections)
/// and the process's waiters.
#[derive(Debug, Clone)]
pub(crate) struct ReadState {
    pub(crate) pool: PgPool,
    pub(crate) auth: Arc<Auth>,
    pub(crate) waits: Arc<WaitHub>,
    /// A page stops once its events' payloads reach this many bytes (`next` then continues).
    pub(crate) max_page_bytes: usize,
    /// The name limits filters check type and category names against.
    pub(crate) limits: Limits,
    /// The process's subscriptions (`subscriptions.rs`).
    pub(crate) subscriptions: Arc<crate::subscriptions::Subscriptions>,
}

impl ReadState {
    /// Who sends these headers, or 401.
    pub(crate) async fn caller(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        self.auth
            .authenticate(authorization(headers))
            .await
            .map_err(|e| ApiError::auth(&e))
    }

    /// The page of `selection` in `window` (whole groups only: rule 7), up to the page's
    /// byte budget.
    async fn page(&self, selection: Visible<'_>, window: Window) -> Result<Page, ApiError> {
        let window = Window {
            max_bytes: self.max_page_bytes,
            ..window
        };
        pages::read_page(&self.pool, EVENT_COLUMNS, &selection, window)
            .await
            .map_err(db_error)
    }
}

/// The rows a reader may see of a stream or of a filter: the retention rules and deletes
/// applied ([`VISIBLE`]). The one selection of every read and subscription page.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Visible<'a> {
    /// The events a filter selects, across streams.
    Filtered(&'a EventFilter),
    /// One stream's events.
    Stream(&'a str),
}

impl Selection for Visible<'_> {
    fn sql(&self, first: usize) -> String {
        match self {
            Visible::Filtered(filter) => format!(" AND {VISIBLE}{}", filter.sql(first)),
            Visible::Stream(_) => format!(" AND {VISIBLE} AND stream_id = ${first}"),
        }
    }

    fn bind<'q>(&self, query: PgQuery<'q>) -> PgQuery<'q> {
        match self {
            Visible::Filtered(filter) => filter.bind(query),
            Visible::Stream(stream) => query.bind(stream.to_string()),
        }
    }
}

/// The read routes, documented.
pub(crate) fn routes() -> OpenApiRouter<ReadState> {
    OpenApiRouter::new()
        .routes(routes!(read_stream))
        .routes(routes!(read_category))
        .routes(routes!(read_type))
        .routes(routes!(wait))
}

/// Ok when `caller` may do `need`, else 403.
pub(crate) fn require(caller: &Principal, need: Need<'_>) -> Result<(), ApiError> {
    caller.require(need).map_err(|e| ApiError::auth(&e))
}

/// A path segment, or the JSON error body (axum's own rejection is plain text).
pub(crate) fn segment(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(segment)| segment)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", e.body_text()))
}

pub(crate) type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

pub(crate) fn params(query: Params) -> Result<HashMap<String, String>, ApiError> {
    query
        .map(|Query(p)| p)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", e.body_text()))
}

pub(crate) fn int_param(
    p: &HashMap<String, String>,
    name: &str,
    min: i64,
    max: i64,
) -> Result<Option<i64>, ApiError> {
    let Some(raw) = p.get(name) else {
        return Ok(None);
    };
    match raw.parse::<i64>() {
        Ok(v) if (min..=max).contains(&v) => Ok(Some(v)),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            format!("`{name}` must be an integer from {min} to {max}, got {raw:?}"),
        )),
    }
}

pub(crate) fn reject_unknown(p: &HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    match p.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            format!("unknown parameter `{k}`; known: {}", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// A refused filter: 400 `invalid_filter`.
pub(crate) fn filter_error(error: &InvalidFilter) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_filter", error.to_string())
}

/// Ok when `caller` may read everything `filter` selects, else 403.
pub(crate) fn require_filter(caller: &Principal, filter: &EventFilter) -> Result<(), ApiError> {
    filter
        .needs()
        .into_iter()
        .try_for_each(|need| require(caller, need))
}

pub(crate) fn db_error(error: sqlx::Error) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the store could not be read; retry",
    )
    .with_detail(format_args!("read failed: {error}"))
}

/// Reads a stream by version, forward or backward; `$all` as the stream id reads every event by
/// global position (then `from`, `limit`, `types` and `categories` apply). A page stops at
/// `limit` events or the page byte budget; `next` is the `from` of the next page.
#[utoipa::path(
    get,
    path = "/streams/{stream_id}/events",
    tag = "streams",
    security(("bearer" = [])),
    params(
        ("stream_id" = String, Path, description = "The stream, or `$all`"),
        ("from" = Option<i64>, Query, description = "First version (a global position for `$all`); default: the start, or the end when backward"),
        ("limit" = Option<i64>, Query, description = "Most events in the page, 1 to 1000; default 100"),
        ("direction" = Option<Direction>, Query, description = "forward (default) or backward; not for `$all`"),
        ("types" = Option<String>, Query, description = "`$all` only: event types, comma-separated (at most 100); only events of these types"),
        ("categories" = Option<String>, Query, description = "`$all` only: categories, comma-separated (at most 100); only events of their streams. Read on each category suffices then, instead of `read:*`"),
    ),
    responses(
        (status = 200, description = "A page of the stream (an empty page when it has no events)", body = StreamPage),
        (status = 200, description = "A page of `$all`", body = PositionedPage),
        (status = 400, description = "invalid_parameter (an invalid or unknown parameter) or invalid_filter (an empty filter, an empty, too long or invalid name)", body = ErrorEnvelope),
        (status = 401, description = "unauthorized: no valid bearer token", body = ErrorEnvelope),
        (status = 403, description = "forbidden: the token has no read scope for this (whether or not it exists)", body = ErrorEnvelope),
        (status = 404, description = "stream_not_found: the stream was soft-deleted (and not appended to since)", body = ErrorEnvelope),
        (status = 410, description = "stream_deleted: the stream was hard-deleted", body = ErrorEnvelope),
        (status = 503, description = "The store could not be read; retry", body = ErrorEnvelope),
    )
)]
async fn read_stream(
    State(state): State<ReadState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    query: Params,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers).await?;
    let stream_id = segment(path)?;
    if stream_id == "$all" {
        let known = ["from", "limit", filters::PARAMS[0], filters::PARAMS[1]];
        return read_filtered(&state, &caller, "$all", query, &known, |p| {
            EventFilter::from_params(p, &state.limits).map_err(|e| filter_error(&e))
        })
        .await;
    }
    // Before anything about the stream is looked at: a forbidden stream is 403 whether or not
    // it exists.
    require(&caller, Need::ReadStream(&stream_id))?;
    let p = params(query)?;
    reject_unknown(&p, &["from", "limit", "direction"])?;
    let limit = int_param(&p, "limit", 1, MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT);
    let from = int_param(&p, "from", 0, i64::MAX)?;
    let backward = match p.get("direction").map(String::as_str) {
        None | Some("forward") => false,
        Some("backward") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                format!("`direction` must be forward or backward, got {other:?}"),
            ))
        }
    };
    refuse_deleted(&state.pool, &stream_id).await?;
    let window = if backward {
        Window {
            backward: true,
            high: from.unwrap_or(i64::MAX),
            ..Window::forward(Key::Version, 0, limit, 0)
        }
    } else {
        Window::forward(Key::Version, from.unwrap_or(0), limit, 0)
    };
    let Page { events, more, .. } = state.page(Visible::Stream(&stream_id), window).await?;
    // A stream's part of a group is contiguous in versions: the page holds all of it, and the
    // next page starts past it.
    let next = match (events.last(), more) {
        (Some(last), true) if backward => (last.version > 0).then_some(last.version - 1),
        (Some(last), true) => Some(last.version + 1),
        _ => None,
    };
    Ok(Json(StreamPage {
        stream_id,
        direction: if backward {
            Direction::Backward
        } else {
            Direction::Forward
        },
        events,
        next,
    })
    .into_response())
}

/// The shape of every read by global position (`$all`, a type, a category), for `caller`: the
/// filter `build` makes of the path segment and the parameters (with `known` the parameters
/// taken), its scopes, then the page, named `name`.
async fn read_filtered(
    state: &ReadState,
    caller: &Principal,
    name: &str,
    query: Params,
    known: &[&str],
    build: impl FnOnce(&HashMap<String, String>) -> Result<EventFilter, ApiError>,
) -> Result<Response, ApiError> {
    let p = params(query)?;
    let filter = build(&p)?;
    require_filter(caller, &filter)?;
    reject_unknown(&p, known)?;
    let limit = int_param(&p, "limit", 1, MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT);
    let from = int_param(&p, "from", 0, i64::MAX)?.unwrap_or(0);
    let window = Window::forward(Key::Position, from, limit, 0);
    let page = state.page(Visible::Filtered(&filter), window).await?;
    // Past the end of a group the page was extended to: a filtered page's last event need not
    // be its group's last row, and the next page must not start inside the group.
    let next = page
        .more
        .then(|| page.covered_through().map(|p| p + 1))
        .flatten();
    Ok(Json(PositionedPage {
        source: name.to_owned(),
        events: page.events,
        next,
    })
    .into_response())
}

/// Reads the events of one type across every stream, by global position (`categories`
/// narrows them to some categories).
#[utoipa::path(
    get,
    path = "/types/{event_type}/events",
    tag = "streams",
    security(("bearer" = [])),
    params(
        ("event_type" = String, Path, description = "The event type (percent-encoded)"),
        ("from" = Option<i64>, Query, description = "First global position; default 0"),
        ("limit" = Option<i64>, Query, description = "Most events in the page, 1 to 1000; default 100"),
        ("categories" = Option<String>, Query, description = "Categories, comma-separated (at most 100): only events of their streams. Read on each category suffices then, instead of `read:*`"),
    ),
    responses(
        (status = 200, description = "A page of the type's events", body = PositionedPage),
        (status = 400, description = "invalid_parameter (an invalid or unknown parameter) or invalid_filter (a type or category name too long or invalid, an empty filter)", body = ErrorEnvelope),
        (status = 401, description = "unauthorized: no valid bearer token", body = ErrorEnvelope),
        (status = 403, description = "forbidden: the token cannot read every stream (`read:*`), nor every category named", body = ErrorEnvelope),
        (status = 503, description = "The store could not be read; retry", body = ErrorEnvelope),
    )
)]
async fn read_type(
    State(state): State<ReadState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    query: Params,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers).await?;
    let event_type = segment(path)?;
    let known = ["from", "limit", "categories"];
    read_filtered(&state, &caller, &event_type, query, &known, |p| {
        EventFilter::of_type(&event_type, p, &state.limits).map_err(|e| filter_error(&e))
    })
    .await
}

/// Reads the events of every stream of a category (`Order` or `Order-*` for `Order-…`), by
/// global position.
#[utoipa::path(
    get,
    path = "/categories/{category}/events",
    tag = "streams",
    security(("bearer" = [])),
    params(
        ("category" = String, Path, description = "The category: the part of a stream id before its first `-`"),
        ("from" = Option<i64>, Query, description = "First global position; default 0"),
        ("limit" = Option<i64>, Query, description = "Most events in the page, 1 to 1000; default 100"),
    ),
    responses(
        (status = 200, description = "A page of the category", body = PositionedPage),
        (status = 400, description = "An invalid or unknown parameter", body = ErrorEnvelope),
        (status = 401, description = "unauthorized: no valid bearer token", body = ErrorEnvelope),
        (status = 403, description = "forbidden: the token has no read scope for this (whether or not it exists)", body = ErrorEnvelope),
        (status = 503, description = "The store could not be read; retry", body = ErrorEnvelope),
    )
)]
async fn read_category(
    State(state): State<ReadState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    query: Params,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers).await?;
    let category = segment(path)?;
    // `Order-*` and `Order` name the same category.
    let name = category.strip_suffix("-*").unwrap_or(&category);
    // The category is the path, not a filter parameter: a bad one is `invalid_parameter`.
    read_filtered(&state, &caller, name, query, &["from", "limit"], |_| {
        EventFilter::of_category(&category, &state.limits)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", e.to_string()))
    })
    .await
}

/// `GET /wait?stream_id=S&version=N` or `GET /wait?position=P`, with `timeout_ms`: answers
/// once that version or position is indexed (`reached: true`) or the timeout passes.
#[utoipa::path(
    get,
    path = "/wait",
    tag = "streams",
    security(("bearer" = [])),
    params(
        ("stream_id" = Option<String>, Query, description = "With `version`: wait for this stream's event"),
        ("version" = Option<i64>, Query, description = "With `stream_id`: the version to wait for"),
        ("position" = Option<i64>, Query, description = "Alone: the global position to wait for (1 or more)"),
        ("timeout_ms" = Option<i64>, Query, description = "How long to wait, 0 to 60000; default 5000"),
    ),
    responses(
        (status = 200, description = "Whether it was indexed within the timeout", body = WaitResponse),
        (status = 400, description = "An invalid or unknown parameter", body = ErrorEnvelope),
        (status = 401, description = "unauthorized: no valid bearer token", body = ErrorEnvelope),
        (status = 403, description = "forbidden: the token has no read scope for this (whether or not it exists)", body = ErrorEnvelope),
        (status = 503, description = "Too many waiters, or the store could not be read; retry", body = ErrorEnvelope),
    )
)]
async fn wait(
    State(state): State<ReadState>,
    headers: HeaderMap,
    query: Params,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers).await?;
    let p = params(query)?;
    reject_unknown(&p, &["stream_id", "version", "position", "timeout_ms"])?;
    let timeout = int_param(&p, "timeout_ms", 0, MAX_WAIT_MS as i64)?.unwrap_or(5000) as u64;
    let target = match (
        p.get("stream_id"),
        int_param(&p, "version", 0, i64::MAX)?,
        int_param(&p, "position", 1, i64::MAX)?,
    ) {
        (Some(stream), Some(version), None) => {
            require(&caller, Need::ReadStream(stream))?;
            WaitTarget::Version(stream.clone(), version)
        }
        (None, None, Some(position)) => {
            require(&caller, Need::ReadAll)?;
            WaitTarget::Position(position)
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                "give either stream_id and version, or position",
            ))
        }
    };
    match state
        .waits
        .wait(target, Duration::from_millis(timeout))
        .await
    {
        Ok(reached) => Ok(Json(WaitResponse { reached }).into_response()),
        Err(WaitError::TooManyWaiters(limit)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_waiters",
            format!("{limit} requests are already waiting; retry later"),
        )
        .retry_after(1)),
        Err(WaitError::Database(error)) => Err(db_error(error)),
    }
}

//! The HTTP API: appends, the OpenAPI document, and JSON errors for everything that goes wrong
//! (axum's plain-text rejections are replaced).

use std::sync::Arc;

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use esk_model::api::{AppendRequest, AppendResponse};
use esk_model::event::{Append, Version};
use esk_model::validate::{
    parse_append_body, validate_trace_id, InvalidAppend, Limits, TraceDefaults,
};
use esk_model::wire::{ErrorBody, ErrorEnvelope};
use esk_runtime::scope::Need;
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Auth, AuthError, Principal};
use crate::metrics::IngestMetrics;
use crate::outcome::{AppendOutcome, Rejection, Unavailable};
use crate::pipeline::{AppendCommand, BytesHeld, Pipeline};

/// What the handlers share.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) pipeline: Pipeline,
    pub(crate) auth: Arc<Auth>,
    pub(crate) limits: Limits,
    pub(crate) metrics: Arc<IngestMetrics>,
    pub(crate) max_body_bytes: usize,
    pub(crate) body_timeout: std::time::Duration,
    /// Most streams in one multi-stream append.
    pub(crate) max_append_streams: usize,
}

/// The append route and the OpenAPI document's route, documented, behind load shedding (the
/// caller adds the state, the read routes and the JSON fallbacks).
pub(crate) fn routes(max_concurrency: usize) -> OpenApiRouter<AppState> {
    shed_load(
        OpenApiRouter::new()
            .routes(routes!(append))
            .routes(routes!(crate::group_api::append_multi))
            .routes(routes!(openapi_document)),
        max_concurrency,
    )
}

/// `router` answering 503 beyond `max_concurrency` requests in flight instead of queueing
/// their bodies in memory (I6).
pub(crate) fn shed_load<S>(router: OpenApiRouter<S>, max_concurrency: usize) -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    let shed = tower::ServiceBuilder::new()
        .layer(HandleErrorLayer::new(overloaded))
        .load_shed()
        .concurrency_limit(max_concurrency.max(1));
    router.layer(shed)
}

/// JSON bodies for unknown routes and methods (axum's own are plain text).
pub(crate) fn with_json_fallbacks(router: Router) -> Router {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// An HTTP error with a JSON body.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    /// Boxed: a multi-stream conflict lists streams, and every handler returns this type.
    body: Box<ErrorBody>,
    retry_after: Option<u32>,
    /// Close the connection after answering (the rest of the request is not read).
    close: bool,
    /// Add `WWW-Authenticate: Bearer` (a 401).
    challenge: bool,
    /// What went wrong inside, for the log only: a 5xx body carries an error id instead.
    detail: Option<String>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: Box::new(ErrorBody {
                code: code.into(),
                message: message.into(),
                actual_version: None,
                streams: None,
            }),
            retry_after: None,
            close: false,
            challenge: false,
            detail: None,
        }
    }

    /// A refusal of the caller: 401 (with the Bearer challenge), 403 or 503.
    pub(crate) fn auth(error: &AuthError) -> Self {
        let status = match error {
            AuthError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
            AuthError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut api = ApiError::new(status, error.code(), error.message());
        api.challenge = status == StatusCode::UNAUTHORIZED;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            api.retry_after = Some(1);
        }
        api
    }

    /// Asks for the connection to be closed after the answer.
    fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// Records the cause of a failure for the log (never sent: see [`IntoResponse`]).
    pub(crate) fn with_detail(mut self, detail: impl std::fmt::Display) -> Self {
        self.detail = Some(detail.to_string());
        self
    }

    /// Adds the stream's version to the body (`actual_version`).
    pub(crate) fn with_actual_version(mut self, version: esk_model::event::StreamVersion) -> Self {
        self.body.actual_version = Some(version);
        self
    }

    /// Adds a `Retry-After` header (seconds).
    pub(crate) fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The answer to an append the store rejected (`body`: its error object).
    pub(crate) fn rejected(rejection: &Rejection, body: ErrorBody) -> Self {
        let status = match rejection {
            Rejection::WrongExpectedVersion { .. }
            | Rejection::DuplicateEventId
            | Rejection::AppendIdReused
            | Rejection::AppendExpired => StatusCode::CONFLICT,
            Rejection::StreamDeleted => StatusCode::GONE,
            Rejection::StreamNotFound => StatusCode::NOT_FOUND,
            Rejection::RefusedByBroker {
                too_large: true, ..
            } => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::RefusedByBroker { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let mut error = ApiError::new(status, "", "");
        error.body = Box::new(body);
        error
    }

    /// 503: the store could not decide now; retry with the same append id.
    pub(crate) fn unavailable(unavailable: &Unavailable) -> Self {
        let mut error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "", "");
        error.body = Box::new(unavailable.to_error_body());
        error.retry_after = Some(1);
        error.detail = Some(unavailable.message.clone());
        error
    }

    /// 503: the pipeline's queue is full; nothing was written.
    pub(crate) fn queue_full(state: &AppState) -> Self {
        state
            .metrics
            .unavailable
            .with_label_values(&["overloaded"])
            .inc();
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "ingest is at capacity; nothing was written: retry with the same append id",
        )
        .retry_after(1)
    }

    /// 503: ingest stopped before answering.
    pub(crate) fn shutting_down() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "ingest is shutting down; retry with the same append id",
        )
    }

    /// The answer to an append refused before it reached the store.
    pub(crate) fn invalid(error: &InvalidAppend) -> Self {
        let status = match error.innermost() {
            InvalidAppend::MalformedJson(_) => StatusCode::BAD_REQUEST,
            InvalidAppend::EventTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, error.code(), error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(mut self) -> Response {
        if self.status.is_server_error() {
            // The cause may quote a URL, a host or a database message: it goes to the log, and
            // the client gets an id to quote that finds it there.
            let error_id = uuid::Uuid::new_v4();
            let detail = self.detail.as_deref().map(esk_runtime::redact::redact_text);
            match &detail {
                Some(detail) => tracing::warn!(
                    %error_id,
                    code = %self.body.code,
                    status = self.status.as_u16(),
                    %detail,
                    "request failed"
                ),
                None => tracing::debug!(
                    %error_id,
                    code = %self.body.code,
                    status = self.status.as_u16(),
                    "request refused"
                ),
            }
            self.body.message = format!("{} (error id {error_id})", self.body.message);
        }
        let mut response = (self.status, Json(ErrorEnvelope { error: *self.body })).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.close {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Appends events to a stream with optimistic concurrency. All or nothing is written; a retry
/// with the same append id gets the first answer.
#[utoipa::path(
    post,
    path = "/streams/{stream_id}/events",
    tag = "streams",
    security(("bearer" = [])),
    params(
        ("stream_id" = String, Path, description = "The stream; its category is the part before the first `-`"),
        ("x-correlation-id" = Option<String>, Header, description = "Correlation id for events whose metadata has none (printable ASCII, at most 256 bytes)"),
        ("x-causation-id" = Option<String>, Header, description = "Causation id for events whose metadata has none"),
    ),
    request_body(content = AppendRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Accepted", body = AppendResponse),
        (status = 400, description = "Malformed JSON, path or header", body = ErrorEnvelope),
        (status = 401, description = "unauthorized: no valid bearer token (missing, malformed, unknown, expired or revoked, or a JWT that fails verification; the message says which check failed); nothing was written", body = ErrorEnvelope),
        (status = 403, description = "forbidden: the token has no append scope for this stream; nothing was written", body = ErrorEnvelope),
        (status = 408, description = "The body did not arrive in time; nothing was written", body = ErrorEnvelope),
        (status = 409, description = "wrong_expected_version (with actual_version), append_id_reused, append_expired or duplicate_event_id", body = ErrorEnvelope),
        (status = 410, description = "stream_deleted: the stream was hard-deleted; nothing was written", body = ErrorEnvelope),
        (status = 413, description = "An event or the body is too large", body = ErrorEnvelope),
        (status = 415, description = "The body is not application/json", body = ErrorEnvelope),
        (status = 422, description = "The body is JSON but invalid, or the broker refused the events", body = ErrorEnvelope),
        (status = 503, description = "Overloaded or outcome unknown: all or nothing was written; retry with the same append id", body = ErrorEnvelope),
    )
)]
async fn append(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Path(stream_id) = path
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_stream_id", e.body_text()))?;
    let Admitted {
        trace, body, _held, ..
    } = admit(&state, &headers, body, Some(&stream_id)).await?;
    let append = parse_append_body(&stream_id, &body, &state.limits, trace).map_err(|e| {
        state.metrics.invalid(e.code());
        ApiError::invalid(&e)
    })?;
    let append_id = append.append_id;
    let (first_version, last_version) = submit(&state, append).await?;
    Ok((
        StatusCode::CREATED,
        Json(AppendResponse {
            stream_id,
            first_version,
            last_version,
            append_id,
        }),
    )
        .into_response())
}

/// An append request let in: its caller, its trace defaults, its body, and the room it holds
/// in the in-flight byte budget until the answer.
pub(crate) struct Admitted<'h> {
    pub(crate) principal: Principal,
    pub(crate) trace: TraceDefaults<'h>,
    pub(crate) body: Vec<u8>,
    pub(crate) _held: BytesHeld,
}

/// Lets an append request in, or refuses it: an unknown caller, or one without the append
/// scope on `stream` (when the stream is known before the body), a body that is not JSON,
/// bad trace headers, no room in the byte budget, a body too large or too slow.
pub(crate) async fn admit<'h>(
    state: &AppState,
    headers: &'h HeaderMap,
    body: Body,
    stream: Option<&str>,
) -> Result<Admitted<'h>, ApiError> {
    // Cheap refusals first: a body that will be refused is not parsed or buffered, only
    // drained (see `refuse_unread`). The caller first: nothing else is told to a stranger.
    let allowed = match state.auth.authenticate(authorization(headers)).await {
        Ok(principal) => match stream {
            Some(stream) => principal.require(Need::Append(stream)).map(|()| principal),
            None => Ok(principal),
        },
        Err(e) => Err(e),
    };
    let principal = match allowed {
        Ok(principal) => principal,
        Err(e) => {
            state.metrics.invalid(e.code());
            return Err(refuse_unread(
                state.max_body_bytes,
                state.body_timeout,
                body,
                ApiError::auth(&e),
            )
            .await);
        }
    };
    if !is_json(headers) {
        state.metrics.invalid("unsupported_media_type");
        let error = ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        );
        return Err(refuse_unread(state.max_body_bytes, state.body_timeout, body, error).await);
    }
    let trace = match trace_defaults(headers) {
        Ok(trace) => trace,
        Err(e) => {
            state.metrics.invalid(e.code());
            let error = ApiError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string());
            return Err(refuse_unread(state.max_body_bytes, state.body_timeout, body, error).await);
        }
    };
    // Room for the body in the in-flight byte budget, held until the answer: its declared
    // length, or the most a body may be.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(state.max_body_bytes)
        .min(state.max_body_bytes);
    let Some(held) = state.pipeline.try_hold_bytes(declared) else {
        state
            .metrics
            .unavailable
            .with_label_values(&["overloaded"])
            .inc();
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "ingest holds as many request bytes as it may; nothing was written: retry with the same append id",
        )
        .retry_after(1));
    };
    let body = read_body_within(body, state.max_body_bytes, state.body_timeout)
        .await
        .inspect_err(|e| {
            if e.status == StatusCode::REQUEST_TIMEOUT {
                state.metrics.invalid("request_timeout");
            }
        })?;
    Ok(Admitted {
        principal,
        trace,
        body,
        _held: held,
    })
}

/// Queues `append` and waits for its outcome: its first and last versions when accepted, else
/// the error to answer (a rejection, or 503 when ingest is full or the outcome is unknown).
pub(crate) async fn submit(
    state: &AppState,
    append: Append,
) -> Result<(Version, Version), ApiError> {
    let (command, reply) = AppendCommand::new(append);
    if state.pipeline.try_submit(command).is_err() {
        return Err(ApiError::queue_full(state));
    }
    let outcome = reply.await.map_err(|_| ApiError::shutting_down())?;
    match outcome {
        Ok(AppendOutcome::Accepted {
            first_version,
            last_version,
        }) => Ok((first_version, last_version)),
        Ok(AppendOutcome::Rejected(rejection)) => {
            Err(ApiError::rejected(&rejection, rejection.to_error_body()))
        }
        Err(unavailable) => Err(ApiError::unavailable(&unavailable)),
    }
}

/// The raw `Authorization` header, if any.
pub(crate) fn authorization(headers: &HeaderMap) -> Option<&[u8]> {
    headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
}

pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim();
            mime.eq_ignore_ascii_case("application/json")
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
}

/// The `X-Correlation-Id` / `X-Causation-Id` request headers, validated: they are copied into
/// the metadata of events that do not carry their own, so the ids travel with the events to the
/// indexer, the canonical topic's headers and the projections.
fn trace_defaults(headers: &HeaderMap) -> Result<TraceDefaults<'_>, InvalidAppend> {
    let read = |name: &str| -> Result<Option<&str>, InvalidAppend> {
        let Some(value) = headers.get(name) else {
            return Ok(None);
        };
        validate_trace_id(name, value.as_bytes())?;
        // Printable ASCII, checked above.
        Ok(value.to_str().ok())
    };
    Ok(TraceDefaults {
        correlation_id: read("x-correlation-id")?,
        causation_id: read("x-causation-id")?,
    })
}

/// Reads the body up to `limit` bytes within `timeout` (else 408, and the connection is
/// closed); see [`read_body`].
pub(crate) async fn read_body_within(
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Vec<u8>, ApiError> {
    tokio::time::timeout(timeout, read_body(body, limit))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the body did not arrive within {} ms; nothing was written",
                    timeout.as_millis()
                ),
            )
            .closing()
        })?
}

/// Reads the body up to `limit` bytes. A larger body is read on (and dropped) up to four times
/// the limit before answering 413, so a client still writing it gets the answer instead of a
/// reset connection; past that the connection is closed.
async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buffer = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("cannot read the body: {e}"),
            )
        })?;
        total += chunk.len();
        if total <= limit {
            buffer.extend_from_slice(&chunk);
        } else if total > limit.saturating_mul(4) {
            break;
        }
    }
    if total > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {limit} bytes"),
        ));
    }
    Ok(buffer)
}

/// Answers a refusal decided before the body was read. The body is read and dropped first (at
/// most four times the body limit, within the body timeout, never buffered), so a client still
/// writing it gets the answer instead of a reset connection; when the body is longer or
/// slower than that, the connection is closed after the answer.
pub(crate) async fn refuse_unread(
    max_body_bytes: usize,
    body_timeout: std::time::Duration,
    body: Body,
    error: ApiError,
) -> ApiError {
    let limit = max_body_bytes.saturating_mul(4);
    match tokio::time::timeout(body_timeout, discard_body(body, limit)).await {
        Ok(true) => error,
        _ => error.closing(),
    }
}

/// Reads and drops the body; false when it is longer than `limit` or breaks off.
async fn discard_body(body: Body, limit: usize) -> bool {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return false;
        };
        total += chunk.len();
        if total > limit {
            return false;
        }
    }
    true
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 description of this API", content_type = "application/json"))
)]
async fn openapi_document(Extension(document): Extension<Arc<OpenApi>>) -> Response {
    Json(document.as_ref()).into_response()
}

async fn overloaded(_: tower::BoxError) -> ApiError {
    let mut error = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "too many requests in flight; nothing was written: retry with the same append id",
    );
    error.retry_after = Some(1);
    error
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

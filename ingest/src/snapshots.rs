//! `PUT /streams/{stream_id}/snapshot` and `GET /streams/{stream_id}/snapshot`: a stream's
//! state as of one of its versions, kept by the store so a reader folds only the events after it
//! (docs/snapshots.md). Writing one needs `append:<stream>` (it is derived state of the stream,
//! written by whoever may extend it); reading one needs `read:<stream>`. Both check the scope
//! before anything about the stream is looked at, so a forbidden stream is 403 whether or not
//! it exists.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use esk_model::api::{PutSnapshotRequest, PutSnapshotResponse, Snapshot};
use esk_model::event::{StreamVersion, Version};
use esk_model::snapshot::{parse_snapshot_body, InvalidSnapshot};
use esk_model::validate::{InvalidAppend, Limits};
use esk_model::wire::ErrorEnvelope;
use esk_runtime::scope::Need;
use sqlx::PgPool;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{authorization, is_json, read_body_within, refuse_unread, shed_load, ApiError};
use crate::auth::Auth;
use crate::snapshot_store::{self, NoSuchVersion, PutOutcome};

/// What the snapshot routes share. They use the reads' pool: never the appends' connections.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotState {
    pub(crate) pool: PgPool,
    pub(crate) auth: Arc<Auth>,
    /// `data` may be as large as an event's payload (`max_event_bytes`), no larger.
    pub(crate) limits: Limits,
    pub(crate) max_body_bytes: usize,
    pub(crate) body_timeout: Duration,
}

/// The snapshot routes, documented, behind their own load shedding (a PUT buffers its body).
pub(crate) fn routes(max_concurrency: usize) -> OpenApiRouter<SnapshotState> {
    shed_load(
        OpenApiRouter::new().routes(routes!(put_snapshot, get_snapshot)),
        max_concurrency,
    )
}

fn stream_segment(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(stream_id)| stream_id)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_stream_id", e.body_text()))
}

fn db_error(error: sqlx::Error) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the store could not be reached; retry",
    )
    .with_detail(format_args!("snapshot query failed: {error}"))
    .retry_after(1)
}

fn invalid(error: &InvalidSnapshot) -> ApiError {
    let status = match error {
        InvalidSnapshot::Body(InvalidAppend::MalformedJson(_)) => StatusCode::BAD_REQUEST,
        InvalidSnapshot::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    ApiError::new(status, error.code(), error.to_string())
}

fn stream_version(accepted: i64) -> StreamVersion {
    Version::try_from(accepted).map_or(StreamVersion::NoStream, StreamVersion::At)
}

fn refused(stream_id: &str, version: Version, why: NoSuchVersion) -> ApiError {
    match why {
        NoSuchVersion::NoStream => ApiError::new(
            StatusCode::NOT_FOUND,
            "stream_not_found",
            format!("stream {stream_id:?} has no events; nothing was written"),
        ),
        NoSuchVersion::NotIndexed { accepted } => ApiError::new(
            StatusCode::CONFLICT,
            "version_not_indexed",
            format!(
                "version {version} of {stream_id:?} is accepted but not indexed yet; nothing was \
                 written: retry once GET /wait?stream_id=…&version={version} answers reached"
            ),
        )
        .with_actual_version(stream_version(accepted)),
        NoSuchVersion::AheadOfStream { accepted } => ApiError::new(
            StatusCode::CONFLICT,
            "version_ahead_of_stream",
            format!(
                "{stream_id:?} ends at version {accepted}: a snapshot at version {version} is \
                 ahead of its stream; nothing was written"
            ),
        )
        .with_actual_version(stream_version(accepted)),
    }
}

/// Stores a snapshot of a stream: its state as of `version`, an event the stream has (indexed).
/// A snapshot is only ever replaced by a newer one: when the stream's snapshot is at this
/// version or newer, it is kept and returned with `stored: false`.
#[utoipa::path(
    put,
    path = "/streams/{stream_id}/snapshot",
    tag = "snapshots",
    security(("bearer" = [])),
    params(("stream_id" = String, Path, description = "The stream the snapshot folds")),
    request_body(content = PutSnapshotRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Stored (`stored: true`), or a snapshot at this version or a newer one kept (`stored: false`); the stream's snapshot now", body = PutSnapshotResponse),
        (status = 400, description = "Malformed JSON or path", body = ErrorEnvelope),
        (status = 401, description = "unauthorized: no valid bearer token; nothing was written", body = ErrorEnvelope),
        (status = 403, description = "forbidden: the token has no append scope for this stream (whether or not it exists); nothing was written", body = ErrorEnvelope),
        (status = 404, description = "stream_not_found: the stream has no events, or was soft-deleted (and not appended to since); nothing was written", body = ErrorEnvelope),
        (status = 408, description = "The body did not arrive in time; nothing was written", body = ErrorEnvelope),
        (status = 409, description = "version_ahead_of_stream (the stream ends before `version`), or version_not_indexed (accepted, not indexed yet: retry after GET /wait); `actual_version` is the stream's last accepted version; nothing was written", body = ErrorEnvelope),
        (status = 410, description = "stream_deleted: the stream was hard-deleted; nothing was written", body = ErrorEnvelope),
        (status = 413, description = "snapshot_too_large: `data` is larger than an event may be, or the body is too large", body = ErrorEnvelope),
        (status = 415, description = "The body is not application/json", body = ErrorEnvelope),
        (status = 422, description = "invalid_version (not an integer of 0 or more), missing_field, unknown_field, duplicate_field, wrong_type, unstorable_json, invalid_stream_id; nothing was written", body = ErrorEnvelope),
        (status = 503, description = "Overloaded, or the store could not be reached; retry", body = ErrorEnvelope),
    )
)]
async fn put_snapshot(
    State(state): State<SnapshotState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let stream_id = stream_segment(path)?;
    let principal = match state.auth.authenticate(authorization(&headers)).await {
        Ok(principal) => principal
            .require(Need::Append(&stream_id))
            .map(|()| principal),
        Err(e) => Err(e),
    };
    let principal = match principal {
        Ok(principal) => principal,
        Err(e) => {
            let error = ApiError::auth(&e);
            return Err(refuse_unread(state.max_body_bytes, state.body_timeout, body, error).await);
        }
    };
    if !is_json(&headers) {
        let error = ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        );
        return Err(refuse_unread(state.max_body_bytes, state.body_timeout, body, error).await);
    }
    let body = read_body_within(body, state.max_body_bytes, state.body_timeout).await?;
    let snapshot =
        parse_snapshot_body(&stream_id, &body, &state.limits).map_err(|e| invalid(&e))?;
    // A deleted stream takes no snapshot, as it answers no read: 410 (hard), 404 (soft).
    crate::lifecycle::refuse_deleted(&state.pool, &stream_id).await?;
    let (stored, current) = match snapshot_store::put(&state.pool, &snapshot)
        .await
        .map_err(db_error)?
    {
        PutOutcome::Stored(current) => (true, current),
        PutOutcome::Kept(current) => (false, current),
        PutOutcome::Refused(why) => return Err(refused(&stream_id, snapshot.version, why)),
    };
    // A kept snapshot is someone else's state: only a caller who may read the stream sees it.
    let may_read = principal.require(Need::ReadStream(&stream_id)).is_ok();
    Ok(Json(PutSnapshotResponse {
        stored,
        version: current.version,
        snapshot: (stored || may_read).then_some(current),
    })
    .into_response())
}

/// The stream's snapshot: the newest stored. Events after it are read from `version + 1`.
#[utoipa::path(
    get,
    path = "/streams/{stream_id}/snapshot",
    tag = "snapshots",
    security(("bearer" = [])),
    params(("stream_id" = String, Path, description = "The stream")),
    responses(
        (status = 200, description = "The stream's snapshot", body = Snapshot),
        (status = 400, description = "An invalid path", body = ErrorEnvelope),
        (status = 401, description = "unauthorized: no valid bearer token", body = ErrorEnvelope),
        (status = 403, description = "forbidden: the token has no read scope for this stream (whether or not it exists)", body = ErrorEnvelope),
        (status = 404, description = "snapshot_not_found: the stream has no snapshot (or no events); stream_not_found: it was soft-deleted", body = ErrorEnvelope),
        (status = 410, description = "stream_deleted: the stream was hard-deleted", body = ErrorEnvelope),
        (status = 503, description = "The store could not be read; retry", body = ErrorEnvelope),
    )
)]
async fn get_snapshot(
    State(state): State<SnapshotState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = state
        .auth
        .authenticate(authorization(&headers))
        .await
        .map_err(|e| ApiError::auth(&e))?;
    let stream_id = stream_segment(path)?;
    caller
        .require(Need::ReadStream(&stream_id))
        .map_err(|e| ApiError::auth(&e))?;
    crate::lifecycle::refuse_deleted(&state.pool, &stream_id).await?;
    match snapshot_store::get(&state.pool, &stream_id)
        .await
        .map_err(db_error)?
    {
        Some(snapshot) => Ok(Json(snapshot).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "snapshot_not_found",
            format!("stream {stream_id:?} has no snapshot"),
        )),
    }
}

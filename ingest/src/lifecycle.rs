//! `GET`/`PUT /streams/{stream_id}/metadata` and `DELETE /streams/{stream_id}`: a stream's
//! metadata (retention rules, custom data) and deletes. A change is an append of one event of
//! a reserved type to `$$<stream>`, decided by the same attempt as any append (docs/design.md,
//! "Stream lifecycle"). Reading metadata needs `read:<stream>`; changing it or deleting the
//! stream needs `append:<stream>`, checked before anything about the stream is looked at.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use esk_model::event::{ExpectedVersion, StreamVersion, Version};
use esk_model::lifecycle::{
    lifecycle_append, parse_metadata_body, DeleteMode, DeleteStreamResponse, LifecycleChange,
    StreamMetadata, StreamMetadataResponse,
};
use esk_model::validate::{parse_object, parse_optional_uuid, validate_stream_id, InvalidAppend};
use esk_model::wire::ErrorEnvelope;
use esk_runtime::scope::Need;
use serde_json::value::RawValue;
use sqlx::{PgPool, Row};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::api::{
    authorization, is_json, read_body_within, refuse_unread, shed_load, submit, ApiError, AppState,
};

/// What the lifecycle routes share: the append path (changes) and the read pool (GET).
#[derive(Debug, Clone)]
pub(crate) struct LifecycleState {
    pub(crate) app: AppState,
    pub(crate) pool: PgPool,
}

/// The lifecycle routes, documented, behind load shedding (a PUT buffers its body).
pub(crate) fn routes(max_concurrency: usize) -> OpenApiRouter<LifecycleState> {
    shed_load(
        OpenApiRouter::new()
            .routes(routes!(get_metadata, put_metadata))
            .routes(routes!(delete_stream)),
        max_concurrency,
    )
}

/// Whether reads of `stream_id` are refused because it was deleted: 410 `stream_deleted`
/// (hard), 404 `stream_not_found` (soft, not appended to since). One place for every read
/// route (events, snapshot, metadata).
pub(crate) async fn refuse_deleted(pool: &PgPool, stream_id: &str) -> Result<(), ApiError> {
    let row = sqlx::query(
        "SELECT version, deleted_through, tombstoned FROM streams WHERE stream_id = $1",
    )
    .bind(stream_id)
    .fetch_optional(pool)
    .await
    .map_err(db_error)?;
    let Some(row) = row else {
        return Ok(());
    };
    let version: i64 = row.try_get("version").map_err(db_error)?;
    let deleted_through: Option<i64> = row.try_get("deleted_through").map_err(db_error)?;
    if row.try_get::<bool, _>("tombstoned").map_err(db_error)? {
        return Err(deleted_error(stream_id));
    }
    if deleted_through == Some(version) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "stream_not_found",
            format!("stream {stream_id:?} was deleted"),
        ));
    }
    Ok(())
}

fn deleted_error(stream_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "stream_deleted",
        format!("stream {stream_id:?} was deleted for good (hard delete)"),
    )
}

fn db_error(error: sqlx::Error) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the store could not be read; retry",
    )
    .with_detail(format_args!("lifecycle query failed: {error}"))
    .retry_after(1)
}

fn stream_segment(
    path: Result<Path<String>, PathRejection>,
    state: &AppState,
) -> Result<String, ApiError> {
    let stream_id = path
        .map(|Path(stream_id)| stream_id)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_stream_id", e.body_text()))?;
    validate_stream_id(&stream_id, &state.limits).map_err(|e| ApiError::invalid(&e))?;
    Ok(stream_id)
}

/// The stream's metadata as stored (read-your-writes: ingest stores it before answering a PUT).
#[utoipa::path(
    get,
    path = "/streams/{stream_id}/metadata",
    tag = "streams",
    security(("bearer" = [])),
    params(("stream_id" = String, Path, description = "The stream")),
    responses(
        (status = 200, description = "The metadata (`metadata_version` null and no rules when never set)", body = StreamMetadataResponse),
        (status = 401, description = "unauthorized: no valid bearer token", body = ErrorEnvelope),
        (status = 403, description = "forbidden: the token has no read scope for this stream (whether or not it exists)", body = ErrorEnvelope),
        (status = 410, description = "stream_deleted: the stream was hard-deleted", body = ErrorEnvelope),
        (status = 422, description = "invalid_stream_id", body = ErrorEnvelope),
        (status = 503, description = "The store could not be read; retry", body = ErrorEnvelope),
    )
)]
async fn get_metadata(
    State(state): State<LifecycleState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = state
        .app
        .auth
        .authenticate(authorization(&headers))
        .await
        .map_err(|e| ApiError::auth(&e))?;
    let stream_id = stream_segment(path, &state.app)?;
    caller
        .require(Need::ReadStream(&stream_id))
        .map_err(|e| ApiError::auth(&e))?;
    let row = sqlx::query(
        "SELECT s.tombstoned, m.metadata_version, m.max_age_s, m.max_count, m.truncate_before,
                m.custom::text AS custom
         FROM (SELECT $1::text AS stream_id) q
         LEFT JOIN streams s ON s.stream_id = q.stream_id
         LEFT JOIN stream_metadata m ON m.stream_id = q.stream_id",
    )
    .bind(&stream_id)
    .fetch_one(&state.pool)
    .await
    .map_err(db_error)?;
    let decode = |e: sqlx::Error| db_error(e);
    if row
        .try_get::<Option<bool>, _>("tombstoned")
        .map_err(decode)?
        == Some(true)
    {
        return Err(deleted_error(&stream_id));
    }
    let version: Option<i64> = row.try_get("metadata_version").map_err(decode)?;
    let truncate_before: Option<i64> = row.try_get("truncate_before").map_err(decode)?;
    let custom: Option<String> = row.try_get("custom").map_err(decode)?;
    let unreadable = |what: &str| db_error(sqlx::Error::Protocol(format!("stored {what}")));
    let metadata = StreamMetadata {
        max_age_s: row.try_get("max_age_s").map_err(decode)?,
        max_count: row.try_get("max_count").map_err(decode)?,
        truncate_before: truncate_before
            .map(Version::try_from)
            .transpose()
            .map_err(|_| unreadable("truncate_before"))?,
        custom: custom
            .map(RawValue::from_string)
            .transpose()
            .map_err(|_| unreadable("custom"))?,
    };
    let metadata_version = match version.map(Version::try_from).transpose() {
        Ok(v) => v.map_or(StreamVersion::NoStream, StreamVersion::At),
        Err(_) => return Err(unreadable("metadata_version")),
    };
    Ok(Json(StreamMetadataResponse {
        stream_id,
        metadata_version,
        metadata,
    })
    .into_response())
}

/// Replaces the stream's metadata (fields left out are unset). The change is an event
/// (`$metadata` on `$$<stream>`), ordered with the stream's events and published on the
/// canonical topic. Reads apply the retention rules at once; the scavenger removes what they
/// hide later.
#[utoipa::path(
    put,
    path = "/streams/{stream_id}/metadata",
    tag = "streams",
    security(("bearer" = [])),
    params(("stream_id" = String, Path, description = "The stream")),
    request_body(content = StreamMetadata, description = "The metadata, with `expected_metadata_version` (\"any\" by default, \"no_stream\" or N): the version of the metadata this change replaces, and `append_id` (optional UUID, as in an append's body): the idempotency key; a retry with the same id gets the original outcome, the same id with another change is 409 append_id_reused", content_type = "application/json"),
    responses(
        (status = 200, description = "Stored; the metadata now", body = StreamMetadataResponse),
        (status = 400, description = "Malformed JSON or path", body = ErrorEnvelope),
        (status = 401, description = "unauthorized: no valid bearer token; nothing was written", body = ErrorEnvelope),
        (status = 403, description = "forbidden: the token has no append scope for this stream; nothing was written", body = ErrorEnvelope),
        (status = 409, description = "wrong_expected_version: the metadata is at another version (`actual_version`), or append_id_reused; nothing was written", body = ErrorEnvelope),
        (status = 410, description = "stream_deleted: the stream was hard-deleted; nothing was written", body = ErrorEnvelope),
        (status = 415, description = "The body is not application/json", body = ErrorEnvelope),
        (status = 422, description = "wrong_type (a number that is not an integer in range, `custom` not an object), unknown_field, duplicate_field, invalid_expected_version, invalid_uuid (`append_id`), invalid_stream_id; nothing was written", body = ErrorEnvelope),
        (status = 503, description = "Overloaded or outcome unknown; retry", body = ErrorEnvelope),
    )
)]
async fn put_metadata(
    State(state): State<LifecycleState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let app = &state.app;
    let path = path.map(|Path(stream_id)| stream_id);
    let allowed = match app.auth.authenticate(authorization(&headers)).await {
        Ok(principal) => match &path {
            Ok(stream_id) => principal.require(Need::Append(stream_id)),
            Err(_) => Ok(()),
        },
        Err(e) => Err(e),
    };
    if let Err(e) = allowed {
        let error = ApiError::auth(&e);
        return Err(refuse_unread(app.max_body_bytes, app.body_timeout, body, error).await);
    }
    let stream_id = stream_segment(path.map(Path), app)?;
    if !is_json(&headers) {
        let error = ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        );
        return Err(refuse_unread(app.max_body_bytes, app.body_timeout, body, error).await);
    }
    let body = read_body_within(body, app.max_body_bytes, app.body_timeout).await?;
    let members = parse_object(&body).map_err(|e| ApiError::invalid(&e))?;
    let (metadata, expected) =
        parse_metadata_body(&members, &["append_id"]).map_err(|e| ApiError::invalid(&e))?;
    let append_id = parse_optional_uuid(members.last("append_id"), "append_id")
        .map_err(|e| ApiError::invalid(&e))?
        .unwrap_or_else(Uuid::new_v4);
    let append = lifecycle_append(
        &stream_id,
        LifecycleChange::SetMetadata(metadata.clone()),
        expected,
        append_id,
        &app.limits,
    )
    .map_err(|e| ApiError::invalid(&e))?;
    let (version, _) = submit(app, append).await?;
    Ok(Json(StreamMetadataResponse {
        stream_id,
        metadata_version: StreamVersion::At(version),
        metadata,
    })
    .into_response())
}

/// Deletes a stream. Soft (default): reads answer 404 `stream_not_found` until the next
/// append, which recreates it with versions continuing after the old last one. Hard
/// (`mode=hard`): a tombstone; every later append and read is 410 `stream_deleted`. Either is
/// an event (`$streamDeleted` on `$$<stream>`) on the canonical topic.
#[utoipa::path(
    delete,
    path = "/streams/{stream_id}",
    tag = "streams",
    security(("bearer" = [])),
    params(
        ("stream_id" = String, Path, description = "The stream"),
        ("expected_version" = Option<String>, Query, description = "The stream's version (N, \"any\" by default, \"stream_exists\")"),
        ("mode" = Option<DeleteMode>, Query, description = "soft (default) or hard"),
        ("append_id" = Option<Uuid>, Query, description = "The idempotency key (as in an append's body): a retry with the same id gets the original outcome; the same id with another change is 409 append_id_reused. A random one when absent"),
    ),
    responses(
        (status = 200, description = "Deleted", body = DeleteStreamResponse),
        (status = 400, description = "An invalid or unknown parameter", body = ErrorEnvelope),
        (status = 401, description = "unauthorized: no valid bearer token; nothing was written", body = ErrorEnvelope),
        (status = 403, description = "forbidden: the token has no append scope for this stream; nothing was written", body = ErrorEnvelope),
        (status = 404, description = "stream_not_found: the stream has no events, or was soft-deleted already; nothing was written", body = ErrorEnvelope),
        (status = 409, description = "wrong_expected_version (`actual_version`) or append_id_reused; nothing was written", body = ErrorEnvelope),
        (status = 410, description = "stream_deleted: hard-deleted already; nothing was written", body = ErrorEnvelope),
        (status = 503, description = "Overloaded or outcome unknown; retry", body = ErrorEnvelope),
    )
)]
async fn delete_stream(
    State(state): State<LifecycleState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let app = &state.app;
    let caller = app
        .auth
        .authenticate(authorization(&headers))
        .await
        .map_err(|e| ApiError::auth(&e))?;
    let stream_id = stream_segment(path, app)?;
    caller
        .require(Need::Append(&stream_id))
        .map_err(|e| ApiError::auth(&e))?;
    let bad =
        |message: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", message);
    let Query(params) = query.map_err(|e| bad(e.body_text()))?;
    if let Some(unknown) = params
        .keys()
        .find(|k| !matches!(k.as_str(), "expected_version" | "mode" | "append_id"))
    {
        return Err(bad(format!(
            "unknown parameter `{unknown}`; known: expected_version, mode, append_id"
        )));
    }
    let expected_version = match params.get("expected_version") {
        None => ExpectedVersion::Any,
        Some(raw) => raw.parse().map_err(|e| bad(format!("{e}")))?,
    };
    let mode = match params.get("mode") {
        None => DeleteMode::Soft,
        Some(raw) => raw.parse().map_err(|e: InvalidAppend| bad(e.to_string()))?,
    };
    let append_id = match params.get("append_id") {
        None => Uuid::new_v4(),
        Some(raw) => Uuid::parse_str(raw)
            .map_err(|_| bad(format!("`append_id` must be a UUID, got {raw:?}")))?,
    };
    let append = lifecycle_append(
        &stream_id,
        LifecycleChange::Delete {
            mode,
            expected_version,
        },
        ExpectedVersion::Any,
        append_id,
        &app.limits,
    )
    .map_err(|e| ApiError::invalid(&e))?;
    let (version, _) = submit(app, append).await?;
    Ok(Json(DeleteStreamResponse {
        stream_id,
        mode,
        metadata_version: version,
    })
    .into_response())
}

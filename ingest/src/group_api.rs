//! `POST /appends`: one append over several streams, all or nothing (docs/design.md,
//! "Multi-stream appends: ingest").

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use esk_model::api::{MultiAppendRequest, MultiAppendResponse};
use esk_model::group::parse_group_body;
use esk_model::wire::ErrorEnvelope;
use esk_runtime::scope::Need;

use crate::api::{admit, Admitted, ApiError, AppState};
use crate::outcome::GroupOutcome;
use crate::pipeline::GroupCommand;

/// Appends events to several streams at once, each with its own optimistic-concurrency
/// condition: all are written or none, and they become visible together. A retry with the same
/// append id gets the first answer.
#[utoipa::path(
    post,
    path = "/appends",
    tag = "streams",
    security(("bearer" = [])),
    params(
        ("x-correlation-id" = Option<String>, Header, description = "Correlation id for events whose metadata has none (printable ASCII, at most 256 bytes)"),
        ("x-causation-id" = Option<String>, Header, description = "Causation id for events whose metadata has none"),
    ),
    request_body(content = MultiAppendRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Accepted: every stream's versions, in request order", body = MultiAppendResponse),
        (status = 400, description = "Malformed JSON or header", body = ErrorEnvelope),
        (status = 401, description = "unauthorized: no valid bearer token; nothing was written", body = ErrorEnvelope),
        (status = 403, description = "forbidden: the token has no append scope for one of the streams; nothing was written", body = ErrorEnvelope),
        (status = 408, description = "The body did not arrive in time; nothing was written", body = ErrorEnvelope),
        (status = 409, description = "wrong_expected_version (with `streams`: every stream not at its expected version, with its actual version), append_id_reused, append_expired or duplicate_event_id; nothing was written", body = ErrorEnvelope),
        (status = 410, description = "stream_deleted: a stream was hard-deleted (named in `streams`); nothing was written", body = ErrorEnvelope),
        (status = 413, description = "An event or the body is too large", body = ErrorEnvelope),
        (status = 415, description = "The body is not application/json", body = ErrorEnvelope),
        (status = 422, description = "The body is JSON but invalid (empty_appends, duplicate_stream, too_many_streams, too_many_events over all streams, or a part invalid as a single append would be), or the broker refused the events", body = ErrorEnvelope),
        (status = 503, description = "Overloaded or outcome unknown: all or nothing was written; retry with the same append id", body = ErrorEnvelope),
    )
)]
pub(crate) async fn append_multi(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Admitted {
        principal,
        trace,
        body,
        _held,
    } = admit(&state, &headers, body, None).await?;
    let group =
        parse_group_body(&body, &state.limits, state.max_append_streams, trace).map_err(|e| {
            state.metrics.invalid(e.code());
            ApiError::invalid(&e)
        })?;
    drop(body);
    // The caller must have the append scope on every stream.
    for part in &group.parts {
        principal
            .require(Need::Append(&part.stream_id))
            .map_err(|e| {
                state.metrics.invalid(e.code());
                ApiError::auth(&e)
            })?;
    }
    let append_id = group.append_id;
    let (command, reply) = GroupCommand::new(group);
    if state.pipeline.try_submit_group(command).is_err() {
        return Err(ApiError::queue_full(&state));
    }
    match reply.await.map_err(|_| ApiError::shutting_down())? {
        Ok(GroupOutcome::Accepted(results)) => Ok((
            StatusCode::CREATED,
            Json(MultiAppendResponse { append_id, results }),
        )
            .into_response()),
        Ok(GroupOutcome::Rejected(rejected)) => Err(ApiError::rejected(
            &rejected.rejection,
            rejected.to_error_body(),
        )),
        Err(unavailable) => Err(ApiError::unavailable(&unavailable)),
    }
}

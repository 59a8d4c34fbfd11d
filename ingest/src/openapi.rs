//! The OpenAPI 3.1 description of ingest's HTTP API, served at `/openapi.json`. It is derived
//! from the handlers' `#[utoipa::path]` attributes and the `esk_model::api` types: every route
//! is registered through utoipa-axum's `routes!`, which does not compile without that
//! attribute, so a route cannot be served undocumented (the tests below hold the rest).

use std::sync::Arc;

use axum::{Extension, Router};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::api::{self, AppState};
use crate::lifecycle::{self, LifecycleState};
use crate::reads::{self, ReadState};
use crate::snapshots::{self, SnapshotState};
use crate::subscriptions;

/// What the document says besides its paths.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "esk ingest",
        description = "Appends with optimistic concurrency, and reads from the authoritative store."
    ),
    tags(
        (name = "streams", description = "Appends, reads and waits"),
        (name = "subscriptions", description = "Events as they are indexed, as Server-Sent Events"),
        (name = "snapshots", description = "A stream's state as of a version, to fold only the events after it"),
        (name = "meta", description = "This document"),
    ),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

/// Declares the `bearer` security scheme the routes name: `Authorization: Bearer <token>`,
/// a token from `esk token create` (docs/security.md).
#[derive(Debug)]
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from `esk token create`; scopes append:<pattern>, read:<pattern>, admin",
                    ))
                    .build(),
            ),
        );
    }
}

/// The whole API app: appends, reads and `/openapi.json`, with JSON fallbacks. Metrics and
/// health are not here: they are served on the admin listener.
pub(crate) fn app(
    app_state: AppState,
    lifecycle_state: LifecycleState,
    read_state: ReadState,
    snapshot_state: SnapshotState,
    max_concurrency: usize,
) -> Router {
    let (router, document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(api::routes(max_concurrency).with_state(app_state))
        .merge(lifecycle::routes(max_concurrency).with_state(lifecycle_state))
        .merge(reads::routes().with_state(read_state.clone()))
        .merge(subscriptions::routes().with_state(read_state))
        .merge(snapshots::routes(max_concurrency).with_state(snapshot_state))
        .split_for_parts();
    api::with_json_fallbacks(router).layer(Extension(Arc::new(document)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The document as [`app`] builds it, without the states (which need Postgres and Kafka).
    fn document() -> utoipa::openapi::OpenApi {
        let mut document = ApiDoc::openapi();
        document.merge(api::routes(1).into_openapi());
        document.merge(lifecycle::routes(1).into_openapi());
        document.merge(reads::routes().into_openapi());
        document.merge(subscriptions::routes().into_openapi());
        document.merge(snapshots::routes(1).into_openapi());
        document
    }

    #[test]
    fn routes_are_only_registered_through_the_documenting_router() {
        // A plain axum route would serve a path the document does not describe.
        let sources = [
            ("api.rs", include_str!("api.rs")),
            ("group_api.rs", include_str!("group_api.rs")),
            ("reads.rs", include_str!("reads.rs")),
            ("subscriptions.rs", include_str!("subscriptions.rs")),
            ("filters.rs", include_str!("filters.rs")),
            ("lifecycle.rs", include_str!("lifecycle.rs")),
            ("snapshots.rs", include_str!("snapshots.rs")),
            ("lib.rs", include_str!("lib.rs")),
            ("openapi.rs", include_str!("openapi.rs")),
            (
                "runtime telemetry.rs",
                include_str!("../../runtime/src/telemetry.rs"),
            ),
        ];
        let needle = [".", "route("].concat();
        for (name, text) in sources {
            assert!(
                !text.contains(&needle),
                "{name} registers a route outside routes!"
            );
        }
    }

    #[test]
    fn the_document_describes_every_route_ingest_serves() {
        let document = document();
        let mut operations = BTreeSet::new();
        for (path, item) in &document.paths.paths {
            for (method, operation) in [
                ("get", &item.get),
                ("post", &item.post),
                ("put", &item.put),
                ("delete", &item.delete),
            ] {
                if let Some(operation) = operation {
                    assert!(
                        !operation.responses.responses.is_empty(),
                        "{method} {path} documents no response"
                    );
                    operations.insert(format!("{method} {path}"));
                }
            }
        }
        let expected: BTreeSet<String> = [
            "post /streams/{stream_id}/events",
            "post /appends",
            "get /streams/{stream_id}/events",
            "get /categories/{category}/events",
            "get /types/{event_type}/events",
            "get /subscriptions/$all",
            "get /subscriptions/streams/{stream_id}",
            "get /wait",
            "put /streams/{stream_id}/snapshot",
            "get /streams/{stream_id}/snapshot",
            "get /streams/{stream_id}/metadata",
            "put /streams/{stream_id}/metadata",
            "delete /streams/{stream_id}",
            "get /openapi.json",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        assert_eq!(operations, expected);
    }

    #[test]
    fn every_schema_the_document_refers_to_is_in_it() {
        let text = serde_json::to_string(&document()).expect("the document serializes");
        let value: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        let schemas = &value["components"]["schemas"];
        let prefix = "\"$ref\":\"#/components/schemas/";
        let mut refs = 0;
        for piece in text.split(prefix).skip(1) {
            let name = piece.split('"').next().unwrap_or_default();
            assert!(
                schemas.get(name).is_some(),
                "{name} is referred to but not defined"
            );
            refs += 1;
        }
        assert!(
            refs >= 8,
            "only {refs} schema references: the types are not linked"
        );
        for name in [
            "AppendRequest",
            "AppendResponse",
            "MultiAppendRequest",
            "MultiAppendResponse",
            "StreamConflict",
            "StreamPage",
            "PositionedPage",
            "WaitResponse",
            "ErrorEnvelope",
            "ExpectedVersion",
            "PutSnapshotRequest",
            "PutSnapshotResponse",
            "Snapshot",
            "StreamMetadata",
            "StreamMetadataResponse",
            "DeleteStreamResponse",
        ] {
            assert!(schemas.get(name).is_some(), "{name} is missing");
        }
    }

    #[test]
    fn the_api_routes_need_a_bearer_token_and_the_open_ones_do_not() {
        let value = serde_json::to_value(document()).expect("the document serializes");
        assert_eq!(
            value["components"]["securitySchemes"]["bearer"]["scheme"], "bearer",
            "the bearer scheme is not declared"
        );
        for (path, method, secured) in [
            ("/streams/{stream_id}/events", "post", true),
            ("/appends", "post", true),
            ("/streams/{stream_id}/events", "get", true),
            ("/categories/{category}/events", "get", true),
            ("/types/{event_type}/events", "get", true),
            ("/subscriptions/$all", "get", true),
            ("/subscriptions/streams/{stream_id}", "get", true),
            ("/wait", "get", true),
            ("/streams/{stream_id}/snapshot", "put", true),
            ("/streams/{stream_id}/snapshot", "get", true),
            ("/streams/{stream_id}/metadata", "get", true),
            ("/streams/{stream_id}/metadata", "put", true),
            ("/streams/{stream_id}", "delete", true),
            ("/openapi.json", "get", false),
            ("/health", "get", false),
            ("/ready", "get", false),
            ("/metrics", "get", false),
        ] {
            let operation = &value["paths"][path][method];
            let names_bearer = operation["security"]
                .as_array()
                .is_some_and(|list| list.iter().any(|s| s.get("bearer").is_some()));
            assert_eq!(names_bearer, secured, "{method} {path}");
            if secured {
                assert!(
                    operation["responses"].get("401").is_some()
                        && operation["responses"].get("403").is_some(),
                    "{method} {path} does not document 401 and 403"
                );
            }
        }
    }
}

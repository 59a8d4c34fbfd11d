//! The OpenAPI 3.1 description of the HTTP API, served at `/openapi.json`.

use serde_json::{json, Value};

/// The document.
pub(crate) fn document() -> Value {
    let error = json!({"$ref": "#/components/schemas/Error"});
    let error_response = |description: &str| json!({"description": description, "content": {"application/json": {"schema": error}}});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "esk ingest", "version": env!("CARGO_PKG_VERSION")},
        "paths": {
            "/streams/{stream_id}/events": {
                "post": {
                    "summary": "Append events to a stream with optimistic concurrency",
                    "parameters": [{"name": "stream_id", "in": "path", "required": true, "schema": {"type": "string"}}],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AppendRequest"}}}},
                    "responses": {
                        "201": {"description": "Accepted", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AppendResult"}}}},
                        "400": error_response("Malformed JSON or path"),
                        "409": error_response("wrong_expected_version (with actual_version), append_id_reused or duplicate_event_id"),
                        "413": error_response("An event or the body is too large"),
                        "415": error_response("The body is not application/json"),
                        "422": error_response("The body is JSON but invalid"),
                        "503": error_response("Overloaded or outcome unknown: all or nothing was written; retry with the same append id")
                    }
                }
            },
            "/health": {"get": {"summary": "Liveness", "responses": {"200": {"description": "Healthy"}, "503": {"description": "Unhealthy"}}}},
            "/ready": {"get": {"summary": "Readiness", "responses": {"200": {"description": "Ready"}, "503": {"description": "Not ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "Text exposition format"}}}}
        },
        "components": {"schemas": {
            "ExpectedVersion": {"oneOf": [
                {"type": "string", "enum": ["any", "no_stream", "stream_exists"]},
                {"type": "integer", "minimum": 0}
            ]},
            "Event": {"type": "object", "required": ["id", "type", "data"], "additionalProperties": false, "properties": {
                "id": {"type": "string", "format": "uuid"},
                "type": {"type": "string", "minLength": 1},
                "data": {},
                "metadata": {"type": ["object", "null"]}
            }},
            "AppendRequest": {"type": "object", "required": ["expected_version", "events"], "additionalProperties": false, "properties": {
                "expected_version": {"$ref": "#/components/schemas/ExpectedVersion"},
                "append_id": {"type": "string", "format": "uuid", "description": "Idempotency key; derived from the event ids when absent"},
                "events": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Event"}}
            }},
            "AppendResult": {"type": "object", "required": ["stream_id", "first_version", "last_version", "append_id"], "properties": {
                "stream_id": {"type": "string"},
                "first_version": {"type": "integer"},
                "last_version": {"type": "integer"},
                "append_id": {"type": "string", "format": "uuid"}
            }},
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["code", "message"], "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "actual_version": {"type": ["integer", "null"]}
                }
            }}}
        }}
    })
}

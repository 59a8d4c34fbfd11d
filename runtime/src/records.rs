//! Kafka records of the wire formats (`esk_model::wire`): their headers, and the canonical
//! record of a committed event.

use esk_model::wire::{header, CanonicalEvent, IngestLogEventRef};
use rdkafka::message::{Header, OwnedHeaders};

use crate::kafka::OutgoingRecord;

/// The headers of a record on the canonical topic (and of topics derived from it).
pub fn canonical_headers(
    event: &CanonicalEvent,
    correlation_id: Option<&str>,
    causation_id: Option<&str>,
) -> OwnedHeaders {
    let position = event.global_position.to_string();
    let version = event.version.to_string();
    let event_id = event.event_id.to_string();
    let headers = OwnedHeaders::new_with_capacity(6)
        .insert(Header {
            key: header::GLOBAL_POSITION,
            value: Some(&position),
        })
        .insert(Header {
            key: header::STREAM_VERSION,
            value: Some(&version),
        })
        .insert(Header {
            key: header::EVENT_ID,
            value: Some(&event_id),
        })
        .insert(Header {
            key: header::EVENT_TYPE,
            value: Some(&event.event_type),
        });
    with_trace_ids(headers, correlation_id, causation_id)
}

/// The headers of an `ingest-log` record (the routing fields of its value, for tools that read
/// only headers).
pub fn ingest_log_headers(
    event: &IngestLogEventRef<'_>,
    correlation_id: Option<&str>,
    causation_id: Option<&str>,
) -> OwnedHeaders {
    let event_id = event.event_id.to_string();
    let version = event.version.to_string();
    let append_id = event.append_id.to_string();
    let attempt_id = event.attempt_id.to_string();
    let headers = OwnedHeaders::new_with_capacity(7)
        .insert(Header {
            key: header::EVENT_ID,
            value: Some(&event_id),
        })
        .insert(Header {
            key: header::EVENT_TYPE,
            value: Some(event.event_type),
        })
        .insert(Header {
            key: header::STREAM_VERSION,
            value: Some(&version),
        })
        .insert(Header {
            key: header::APPEND_ID,
            value: Some(&append_id),
        })
        .insert(Header {
            key: header::ATTEMPT_ID,
            value: Some(&attempt_id),
        });
    with_trace_ids(headers, correlation_id, causation_id)
}

/// The headers of a format-2 `ingest-log` record (`esk_model::ingest_log`): its attempt and
/// how many events it holds. Per-event fields are in the value only.
pub fn ingest_log_batch_headers(attempt_id: &str, events: usize) -> OwnedHeaders {
    let count = events.to_string();
    OwnedHeaders::new_with_capacity(2)
        .insert(Header {
            key: header::ATTEMPT_ID,
            value: Some(attempt_id),
        })
        .insert(Header {
            key: header::EVENT_COUNT,
            value: Some(&count),
        })
}

/// `headers` of a format-2 `ingest-log` record of a multi-stream append's attempt, with the
/// group's append id and how many records the attempt produced over every partition (rule 2:
/// the indexer commits the group, keyed by (append id, attempt id), once it holds them all).
pub fn with_group_headers(
    headers: OwnedHeaders,
    group_append_id: &str,
    records: usize,
) -> OwnedHeaders {
    let records = records.to_string();
    headers
        .insert(Header {
            key: header::GROUP_APPEND_ID,
            value: Some(group_append_id),
        })
        .insert(Header {
            key: header::GROUP_RECORDS,
            value: Some(&records),
        })
}

/// Adds the correlation and causation headers, when the event has them.
fn with_trace_ids(
    mut headers: OwnedHeaders,
    correlation_id: Option<&str>,
    causation_id: Option<&str>,
) -> OwnedHeaders {
    for (key, value) in [
        (header::CORRELATION_ID, correlation_id),
        (header::CAUSATION_ID, causation_id),
    ] {
        if let Some(id) = value {
            headers = headers.insert(Header {
                key,
                value: Some(id),
            });
        }
    }
    headers
}

/// The record of an event on the canonical topic (and on topics derived from it): key =
/// stream id, value = the JSON envelope, headers from [`canonical_headers`].
pub fn canonical_record(event: &CanonicalEvent) -> Result<OutgoingRecord<'_>, serde_json::Error> {
    let (correlation, causation) = event.trace_ids();
    Ok(OutgoingRecord {
        key: &event.stream_id,
        partition: None,
        payload: serde_json::to_vec(event)?,
        headers: canonical_headers(event, correlation.as_deref(), causation.as_deref()),
    })
}

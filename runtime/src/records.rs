//! Kafka records of the wire formats (`esk_model::wire`): their headers, and the canonical
//! record of a committed event.

use esk_model::wire::{header, CanonicalEvent, IngestLogEventRef};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use uuid::Uuid;

use crate::kafka::OutgoingRecord;
use crate::pages::GroupSpan;

/// The value of header `name` as text: `None` when the record lacks it or it is not UTF-8.
pub fn header_text<'a, H: Headers>(headers: &'a H, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| std::str::from_utf8(h.value?).ok())
}

/// A multi-stream append as its canonical records name it: the append and its contiguous
/// global positions, in the headers `group_append_id`, `group_first_position`,
/// `group_last_position` and `group_events` (the publisher writes them, projections and
/// downstream consumers read them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CanonicalGroup {
    /// The multi-stream append.
    pub append_id: Uuid,
    /// Its global positions.
    pub span: GroupSpan,
}

/// Group headers that name a group but do not parse (or whose first position is past the
/// last).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a canonical record names a group with headers that do not parse")]
pub struct MalformedGroupHeaders;

impl CanonicalGroup {
    /// How many events the group wrote.
    pub fn events(&self) -> i64 {
        self.span.last - self.span.first + 1
    }

    /// Whether `position` is one of the group's.
    pub fn contains(&self, position: i64) -> bool {
        (self.span.first..=self.span.last).contains(&position)
    }

    /// Adds the group headers to a canonical record's headers.
    pub fn add_headers(&self, headers: OwnedHeaders) -> OwnedHeaders {
        let append_id = self.append_id.to_string();
        let first = self.span.first.to_string();
        let last = self.span.last.to_string();
        let events = self.events().to_string();
        headers
            .insert(Header {
                key: header::GROUP_APPEND_ID,
                value: Some(&append_id),
            })
            .insert(Header {
                key: header::GROUP_FIRST_POSITION,
                value: Some(&first),
            })
            .insert(Header {
                key: header::GROUP_LAST_POSITION,
                value: Some(&last),
            })
            .insert(Header {
                key: header::GROUP_EVENTS,
                value: Some(&events),
            })
    }

    /// The group a canonical record's headers name: `Ok(None)` for a record of no group (no
    /// `group_append_id`).
    pub fn from_headers<H: Headers>(headers: &H) -> Result<Option<Self>, MalformedGroupHeaders> {
        let Some(append_id) = header_text(headers, header::GROUP_APPEND_ID) else {
            return Ok(None);
        };
        let position = |name| header_text(headers, name)?.parse::<i64>().ok();
        let parsed = (|| {
            let append_id = Uuid::parse_str(append_id).ok()?;
            let span = GroupSpan {
                first: position(header::GROUP_FIRST_POSITION)?,
                last: position(header::GROUP_LAST_POSITION)?,
            };
            (span.first <= span.last).then_some(CanonicalGroup { append_id, span })
        })();
        parsed.map(Some).ok_or(MalformedGroupHeaders)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canonical_group_is_read_back_from_the_headers_it_writes() {
        let group = CanonicalGroup {
            append_id: Uuid::new_v4(),
            span: GroupSpan { first: 5, last: 7 },
        };
        let headers = group.add_headers(OwnedHeaders::new());
        assert_eq!(
            header_text(&headers, header::GROUP_FIRST_POSITION),
            Some("5")
        );
        assert_eq!(
            header_text(&headers, header::GROUP_LAST_POSITION),
            Some("7")
        );
        assert_eq!(header_text(&headers, header::GROUP_EVENTS), Some("3"));
        assert_eq!(CanonicalGroup::from_headers(&headers), Ok(Some(group)));
        assert_eq!(CanonicalGroup::from_headers(&OwnedHeaders::new()), Ok(None));
        let backwards = CanonicalGroup {
            span: GroupSpan { first: 7, last: 5 },
            ..group
        };
        assert_eq!(
            CanonicalGroup::from_headers(&backwards.add_headers(OwnedHeaders::new())),
            Err(MalformedGroupHeaders)
        );
    }
}

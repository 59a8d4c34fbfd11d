//! The `ingest-log` record formats, and the one decoder the indexer reads them with.
//!
//! - **Format 1** (the earlier format, still read): one event per record, the record's value is the
//!   [`IngestLogEvent`] JSON object (its first byte is `{`).
//! - **Format 2** (what ingest writes): the events one attempt produced to one partition, in
//!   order, as one record (several when they exceed a size budget: [`BatchEncoder`]). The value
//!   is the byte [`BATCH_FORMAT`] followed by a JSON object,
//!   `{"attempt_id": .., "created_at": .., "events": [{"event_id": .., "stream_id": .., "version":
//!   .., "type": .., "data": .., "metadata": .., "append_id": ..}, ..]}`: what every event of an
//!   attempt shares is written once. The object may gain fields (a multi-stream part's group)
//!   that older readers ignore; a change they must not ignore takes a new leading byte.
//!
//! A record is told apart by its first byte, so an indexer reads both during an upgrade.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::wire::IngestLogEvent;

/// The first byte of a format-2 record (never the first byte of a JSON text).
pub const BATCH_FORMAT: u8 = 2;

/// Why a record's value is not events.
#[derive(Debug, thiserror::Error)]
pub enum RecordDecodeError {
    /// A format-1 record (or a value in no known format) that is not an event.
    #[error("not an ingest-log event: {0}")]
    Event(#[source] serde_json::Error),
    /// A record that says it is format 2 and does not decode as one.
    #[error("ingest-log batch record (format {BATCH_FORMAT}) does not decode: {0}")]
    Batch(#[source] serde_json::Error),
    /// A format-2 record with no events.
    #[error("ingest-log batch record (format {BATCH_FORMAT}) holds no events")]
    EmptyBatch,
}

impl RecordDecodeError {
    /// Whether the record claims to hold a batch of events: it may carry acknowledged appends
    /// of several streams, so it is never dropped as garbage (the indexer halts at it).
    pub fn is_batch(&self) -> bool {
        matches!(
            self,
            RecordDecodeError::Batch(_) | RecordDecodeError::EmptyBatch
        )
    }
}

/// The events of a record's value, in order, in either format.
pub fn decode(value: &[u8]) -> Result<Vec<IngestLogEvent>, RecordDecodeError> {
    match value.split_first() {
        Some((&BATCH_FORMAT, body)) => {
            let batch: Batch = serde_json::from_slice(body).map_err(RecordDecodeError::Batch)?;
            if batch.events.is_empty() {
                return Err(RecordDecodeError::EmptyBatch);
            }
            let (attempt_id, created_at) = (batch.attempt_id, batch.created_at);
            Ok(batch
                .events
                .into_iter()
                .map(|e| IngestLogEvent {
                    event_id: e.event_id,
                    stream_id: e.stream_id,
                    version: e.version,
                    event_type: e.event_type,
                    data: e.data,
                    metadata: e.metadata,
                    append_id: e.append_id,
                    attempt_id,
                    created_at,
                })
                .collect())
        }
        _ => serde_json::from_slice::<IngestLogEvent>(value)
            .map(|event| vec![event])
            .map_err(RecordDecodeError::Event),
    }
}

/// A format-2 record, decoded.
#[derive(Debug, Deserialize)]
struct Batch {
    attempt_id: Uuid,
    created_at: DateTime<Utc>,
    events: Vec<BatchEvent>,
}

/// One event of a format-2 record, decoded.
#[derive(Debug, Deserialize)]
struct BatchEvent {
    event_id: Uuid,
    stream_id: String,
    version: i64,
    #[serde(rename = "type")]
    event_type: String,
    data: Box<RawValue>,
    #[serde(default)]
    metadata: Option<Box<RawValue>>,
    append_id: Uuid,
}

/// One event to encode into a format-2 record (borrowed: payloads are not copied).
#[derive(Debug, Serialize)]
pub struct BatchEventRef<'a> {
    /// Event id.
    pub event_id: Uuid,
    /// Stream id.
    pub stream_id: &'a str,
    /// Stream version assigned by ingest.
    pub version: i64,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: &'a str,
    /// Payload, written as given.
    pub data: &'a RawValue,
    /// Metadata object, written as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<&'a RawValue>,
    /// The append the event belongs to.
    pub append_id: Uuid,
}

/// One encoded format-2 record: its value and which of the pushed events it holds.
#[derive(Debug)]
pub struct EncodedBatch {
    /// The record's value.
    pub value: Vec<u8>,
    /// Index (in push order) of its first event.
    pub first_event: usize,
    /// How many events it holds.
    pub events: usize,
}

/// Encodes the events one attempt produces to one partition, in push order, into as few
/// format-2 records as fit `max_bytes` each. An event too large to share a record is alone in
/// one (it is then about as large as its format-1 record was, which the topic's limit fits).
#[derive(Debug)]
pub struct BatchEncoder {
    /// The value's start, shared by every record: the format byte and the attempt's fields.
    head: Vec<u8>,
    max_bytes: usize,
    done: Vec<EncodedBatch>,
    current: Vec<u8>,
    current_first: usize,
    current_events: usize,
    pushed: usize,
    scratch: Vec<u8>,
}

/// What closes a record's value: the end of the events array and of the object.
const TAIL: &[u8] = b"]}";

impl BatchEncoder {
    /// An encoder for the records of `attempt_id`, accepted at `created_at`.
    pub fn new(
        attempt_id: Uuid,
        created_at: DateTime<Utc>,
        max_bytes: usize,
    ) -> Result<Self, serde_json::Error> {
        let mut head = vec![BATCH_FORMAT];
        head.extend_from_slice(b"{\"attempt_id\":");
        serde_json::to_writer(&mut head, &attempt_id)?;
        head.extend_from_slice(b",\"created_at\":");
        serde_json::to_writer(&mut head, &created_at)?;
        head.extend_from_slice(b",\"events\":[");
        Ok(BatchEncoder {
            current: head.clone(),
            head,
            max_bytes,
            done: Vec::new(),
            current_first: 0,
            current_events: 0,
            pushed: 0,
            scratch: Vec::new(),
        })
    }

    /// Appends the next event, starting a new record first when it would not fit.
    pub fn push(&mut self, event: &BatchEventRef<'_>) -> Result<(), serde_json::Error> {
        self.scratch.clear();
        serde_json::to_writer(&mut self.scratch, event)?;
        let size = self.current.len() + 1 + self.scratch.len() + TAIL.len();
        if self.current_events > 0 && size > self.max_bytes {
            self.close();
        }
        if self.current_events > 0 {
            self.current.push(b',');
        }
        self.current.extend_from_slice(&self.scratch);
        self.current_events += 1;
        self.pushed += 1;
        Ok(())
    }

    /// The records, in order (none if nothing was pushed).
    pub fn finish(mut self) -> Vec<EncodedBatch> {
        if self.current_events > 0 {
            self.close();
        }
        self.done
    }

    fn close(&mut self) {
        let mut value = std::mem::replace(&mut self.current, self.head.clone());
        value.extend_from_slice(TAIL);
        self.done.push(EncodedBatch {
            value,
            first_event: self.current_first,
            events: self.current_events,
        });
        self.current_first = self.pushed;
        self.current_events = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap_or_else(|_| unreachable!("valid JSON"))
    }

    fn encode(data: &[Box<RawValue>], max_bytes: usize) -> (Vec<EncodedBatch>, Uuid) {
        let attempt = Uuid::new_v4();
        let mut encoder = BatchEncoder::new(attempt, Utc::now(), max_bytes).expect("encoder");
        for (i, d) in data.iter().enumerate() {
            encoder
                .push(&BatchEventRef {
                    event_id: Uuid::new_v4(),
                    stream_id: if i % 2 == 0 { "A-1" } else { "B-1" },
                    version: i as i64,
                    event_type: "T",
                    data: d,
                    metadata: (i == 1).then(|| &*data[0]),
                    append_id: Uuid::from_u128(i as u128 / 2),
                })
                .expect("push");
        }
        (encoder.finish(), attempt)
    }

    #[test]
    fn a_batch_decodes_to_its_events_in_order_with_exact_payloads() {
        let data = vec![
            raw(r#"{"n":18446744073709551617,"n":0.1}"#),
            raw("[1, 2]"),
            raw("7"),
        ];
        let (records, attempt) = encode(&data, 1 << 20);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].value[0], BATCH_FORMAT);
        let events = decode(&records[0].value).expect("decodes");
        assert_eq!(events.len(), 3);
        for (i, event) in events.iter().enumerate() {
            assert_eq!(event.version, i as i64);
            assert_eq!(event.data.get(), data[i].get());
            assert_eq!(event.attempt_id, attempt);
        }
        assert_eq!(
            events[1].metadata.as_ref().map(|m| m.get()),
            Some(data[0].get())
        );
        assert!(events[0].metadata.is_none());
    }

    #[test]
    fn events_beyond_the_budget_go_to_the_next_record_in_order() {
        let data: Vec<_> = (0..10)
            .map(|i| raw(&format!("\"{}\"", "x".repeat(100 + i))))
            .collect();
        let (records, _) = encode(&data, 600);
        assert!(records.len() > 2, "{} records", records.len());
        let mut version = 0;
        for record in &records {
            assert!(record.value.len() <= 600, "{} bytes", record.value.len());
            let events = decode(&record.value).expect("decodes");
            assert_eq!(record.first_event, version as usize);
            assert_eq!(events.len(), record.events);
            for event in events {
                assert_eq!(event.version, version);
                version += 1;
            }
        }
        assert_eq!(version, 10);
    }

    #[test]
    fn an_event_larger_than_the_budget_is_alone_in_its_record() {
        let data = vec![
            raw("1"),
            raw(&format!("\"{}\"", "y".repeat(1000))),
            raw("2"),
        ];
        let (records, _) = encode(&data, 400);
        let counts: Vec<usize> = records.iter().map(|r| r.events).collect();
        assert_eq!(counts, vec![1, 1, 1]);
    }

    #[test]
    fn a_format_1_record_still_decodes() {
        let value = br#"{"event_id":"6f1c0c9e-35c5-4d4e-9d5e-0a0b0c0d0e0f","stream_id":"S-1","version":3,"type":"T","data":{"a":1.50},"append_id":"6f1c0c9e-35c5-4d4e-9d5e-0a0b0c0d0e01","attempt_id":"6f1c0c9e-35c5-4d4e-9d5e-0a0b0c0d0e02","created_at":"2024-01-01T00:00:00Z"}"#;
        let events = decode(value).expect("decodes");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data.get(), r#"{"a":1.50}"#);
        assert_eq!(events[0].version, 3);
    }

    #[test]
    fn garbage_is_typed_by_the_format_it_claims() {
        let not_json = decode(b"\x00\x01 not json").expect_err("garbage");
        assert!(!not_json.is_batch());
        let broken = decode(b"\x02{\"attempt_id\":").expect_err("garbage");
        assert!(broken.is_batch());
        let empty = decode(
            b"\x02{\"attempt_id\":\"6f1c0c9e-35c5-4d4e-9d5e-0a0b0c0d0e02\",\"created_at\":\"2024-01-01T00:00:00Z\",\"events\":[]}",
        )
        .expect_err("no events");
        assert!(matches!(empty, RecordDecodeError::EmptyBatch));
        assert!(decode(b"").is_err());
    }
}

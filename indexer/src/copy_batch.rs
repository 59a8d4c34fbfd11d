//! Binary COPY of event rows into `events`: the encoder for Postgres's binary copy format
//! (sqlx streams the bytes; it has no encoder of its own).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// One row of `events`.
#[derive(Debug, Clone)]
pub(crate) struct EventRow<'a> {
    pub(crate) global_position: i64,
    pub(crate) event_id: Uuid,
    pub(crate) stream_id: &'a str,
    pub(crate) category: &'a str,
    pub(crate) event_type: &'a str,
    pub(crate) data: &'a str,
    pub(crate) metadata: Option<&'a str>,
    pub(crate) version: i64,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) kafka_partition: i32,
    pub(crate) kafka_offset: i64,
}

const COPY_STATEMENT: &str = "COPY events (global_position, event_id, stream_id, category, \
     event_type, data, metadata, version, created_at, kafka_partition, kafka_offset) \
     FROM STDIN (FORMAT binary)";

/// Microseconds between the Unix epoch and Postgres's epoch (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Encodes `rows` in the binary COPY format.
pub(crate) fn encode(rows: &[EventRow<'_>]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(19 + 2 + rows.len() * 400);
    buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buf.extend_from_slice(&0i32.to_be_bytes()); // flags
    buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    for row in rows {
        buf.extend_from_slice(&11i16.to_be_bytes());
        put_field(&mut buf, &row.global_position.to_be_bytes());
        put_field(&mut buf, row.event_id.as_bytes());
        put_field(&mut buf, row.stream_id.as_bytes());
        put_field(&mut buf, row.category.as_bytes());
        put_field(&mut buf, row.event_type.as_bytes());
        put_json(&mut buf, row.data);
        match row.metadata {
            Some(m) => put_json(&mut buf, m),
            None => buf.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        put_field(&mut buf, &row.version.to_be_bytes());
        let micros = row.created_at.timestamp_micros() - PG_EPOCH_OFFSET_MICROS;
        put_field(&mut buf, &micros.to_be_bytes());
        put_field(&mut buf, &row.kafka_partition.to_be_bytes());
        put_field(&mut buf, &row.kafka_offset.to_be_bytes());
    }
    buf.extend_from_slice(&(-1i16).to_be_bytes());
    buf
}

fn put_field(buf: &mut Vec<u8>, bytes: &[u8]) {
    // Fields are bounded by the event size limit, far below i32::MAX.
    buf.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
    buf.extend_from_slice(bytes);
}

/// A `json` column's binary form is its text.
fn put_json(buf: &mut Vec<u8>, json_text: &str) {
    put_field(buf, json_text.as_bytes());
}

/// Streams the rows into `events` inside the caller's transaction.
pub(crate) async fn copy_rows(
    conn: &mut PgConnection,
    rows: &[EventRow<'_>],
) -> Result<u64, sqlx::Error> {
    let mut copy = conn.copy_in_raw(COPY_STATEMENT).await?;
    if let Err(error) = copy.send(encode(rows)).await {
        let _ = copy.abort("send failed").await;
        return Err(error);
    }
    copy.finish().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_header_row_and_trailer() {
        let created_at = DateTime::<Utc>::from_timestamp(946_684_800, 0).unwrap_or_default();
        let row = EventRow {
            global_position: 1,
            event_id: Uuid::nil(),
            stream_id: "s",
            category: "s",
            event_type: "t",
            data: "{}",
            metadata: None,
            version: 0,
            created_at,
            kafka_partition: 2,
            kafka_offset: 3,
        };
        let bytes = encode(&[row]);
        assert!(bytes.starts_with(b"PGCOPY\n\xff\r\n\0"));
        assert!(bytes.ends_with(&[0xff, 0xff]));
        // header 19 + count 2 + 11 length words + payloads + trailer 2
        let payload = 8 + 16 + 1 + 1 + 1 + 2 + 8 + 8 + 4 + 8;
        assert_eq!(bytes.len(), 19 + 2 + 11 * 4 + payload + 2);
        // created_at at Postgres's epoch encodes as zero microseconds.
        let micros_at = 19 + 2 + 4 + 8 + 4 + 16 + 4 + 1 + 4 + 1 + 4 + 1 + 4 + 2 + 4 + 4 + 8 + 4;
        assert_eq!(&bytes[micros_at..micros_at + 8], &[0u8; 8]);
    }
}

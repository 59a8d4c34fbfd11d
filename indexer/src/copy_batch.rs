//! Binary COPY of event rows into `events`: the encoder for Postgres's binary copy format
//! (sqlx streams the bytes; it has no encoder of its own), and the global positions and group
//! columns of a batch's rows.

use std::collections::HashMap;

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
    /// The multi-stream append the row belongs to (migration 0010), `None` for single-stream
    /// appends.
    pub(crate) group_append_id: Option<Uuid>,
    /// The group's first and last global positions, set by [`assign_positions`].
    pub(crate) group_positions: Option<(i64, i64)>,
}

const COPY_STATEMENT: &str = "COPY events (global_position, event_id, stream_id, category, \
     event_type, data, metadata, version, created_at, kafka_partition, kafka_offset, \
     group_append_id, group_first_position, group_last_position) \
     FROM STDIN (FORMAT binary)";

/// Gives the rows the positions `first`, `first + 1`, ... in their order, and each grouped row
/// its group's first and last position (the rows of a group are contiguous: `units.rs`).
pub(crate) fn assign_positions(rows: &mut [EventRow<'_>], first: i64) {
    let mut spans: HashMap<Uuid, (i64, i64)> = HashMap::new();
    for (i, row) in rows.iter_mut().enumerate() {
        row.global_position = first + i as i64;
        if let Some(append) = row.group_append_id {
            let span = spans
                .entry(append)
                .or_insert((row.global_position, row.global_position));
            span.0 = span.0.min(row.global_position);
            span.1 = span.1.max(row.global_position);
        }
    }
    for row in rows.iter_mut() {
        row.group_positions = row.group_append_id.and_then(|a| spans.get(&a).copied());
    }
}

/// Microseconds between the Unix epoch and Postgres's epoch (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Encodes `rows` in the binary COPY format.
pub(crate) fn encode(rows: &[EventRow<'_>]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(19 + 2 + rows.len() * 400);
    buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buf.extend_from_slice(&0i32.to_be_bytes()); // flags
    buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    for row in rows {
        buf.extend_from_slice(&14i16.to_be_bytes());
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
        match (row.group_append_id, row.group_positions) {
            (Some(append), Some((first, last))) => {
                put_field(&mut buf, append.as_bytes());
                put_field(&mut buf, &first.to_be_bytes());
                put_field(&mut buf, &last.to_be_bytes());
            }
            _ => {
                for _ in 0..3 {
                    buf.extend_from_slice(&(-1i32).to_be_bytes());
                }
            }
        }
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
            group_append_id: None,
            group_positions: None,
        };
        let bytes = encode(std::slice::from_ref(&row));
        assert!(bytes.starts_with(b"PGCOPY\n\xff\r\n\0"));
        assert!(bytes.ends_with(&[0xff, 0xff]));
        // header 19 + count 2 + 14 length words + payloads + trailer 2
        let payload = 8 + 16 + 1 + 1 + 1 + 2 + 8 + 8 + 4 + 8;
        assert_eq!(bytes.len(), 19 + 2 + 14 * 4 + payload + 2);
        // created_at at Postgres's epoch encodes as zero microseconds.
        let micros_at = 19 + 2 + 4 + 8 + 4 + 16 + 4 + 1 + 4 + 1 + 4 + 1 + 4 + 2 + 4 + 4 + 8 + 4;
        assert_eq!(&bytes[micros_at..micros_at + 8], &[0u8; 8]);
        // A grouped row carries the append id and both positions: 16 + 8 + 8 more bytes.
        let mut grouped = row;
        grouped.group_append_id = Some(Uuid::nil());
        grouped.group_positions = Some((1, 1));
        assert_eq!(encode(&[grouped]).len(), bytes.len() + 16 + 8 + 8);
    }

    #[test]
    fn a_groups_rows_carry_its_first_and_last_position() {
        let created_at = Utc::now();
        let group = Uuid::new_v4();
        let row = |g: Option<Uuid>| EventRow {
            global_position: 0,
            event_id: Uuid::new_v4(),
            stream_id: "s",
            category: "s",
            event_type: "t",
            data: "{}",
            metadata: None,
            version: 0,
            created_at,
            kafka_partition: 0,
            kafka_offset: 0,
            group_append_id: g,
            group_positions: None,
        };
        let mut rows = vec![row(None), row(Some(group)), row(Some(group)), row(None)];
        assign_positions(&mut rows, 10);
        let got: Vec<(i64, Option<(i64, i64)>)> = rows
            .iter()
            .map(|r| (r.global_position, r.group_positions))
            .collect();
        assert_eq!(
            got,
            vec![
                (10, None),
                (11, Some((11, 12))),
                (12, Some((11, 12))),
                (13, None)
            ]
        );
    }
}

//! Turning the untrusted body of `PUT /streams/{stream_id}/snapshot` into a validated
//! [`NewSnapshot`]: the same JSON rules as an append (one object, no unknown or duplicate
//! fields, payloads kept as the text sent) and the same size limit as an event's payload.

use serde_json::value::RawValue;

use crate::event::Version;
use crate::raw_json::{compact_owned, kind, Kind};
use crate::validate::{parse_object, validate_stream_id, InvalidAppend, Limits};

/// A snapshot ready to store: a stream's state as of one of its versions.
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    /// The stream it folds.
    pub stream_id: String,
    /// The version of the last event folded into it.
    pub version: Version,
    /// The state, as the client sent it (less whitespace between tokens).
    pub data: Box<RawValue>,
}

/// Why a snapshot was refused before the store was asked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidSnapshot {
    /// The body or the stream id is invalid, as it would be for an append.
    #[error(transparent)]
    Body(#[from] InvalidAppend),
    /// `version` is not a non-negative integer.
    #[error("version must be a non-negative integer (a version of the stream), got {0}")]
    InvalidVersion(String),
    /// `data` is larger than an event's payload may be.
    #[error("the snapshot's data is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit (the events' `max_event_bytes`).
        limit: usize,
    },
}

impl InvalidSnapshot {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            InvalidSnapshot::Body(e) => e.code(),
            InvalidSnapshot::InvalidVersion(_) => "invalid_version",
            InvalidSnapshot::TooLarge { .. } => "snapshot_too_large",
        }
    }
}

/// Parses and validates the body of `PUT /streams/{stream_id}/snapshot`: `{"version", "data"}`.
pub fn parse_snapshot_body(
    stream_id: &str,
    body: &[u8],
    limits: &Limits,
) -> Result<NewSnapshot, InvalidSnapshot> {
    validate_stream_id(stream_id, limits)?;
    let members = parse_object(body)?;
    for (key, _) in &members.0 {
        if !matches!(key.as_ref(), "version" | "data") {
            return Err(InvalidAppend::UnknownField(key.to_string()).into());
        }
    }
    let raw_version = members
        .last("version")
        .ok_or_else(|| InvalidAppend::MissingField("version".into()))?;
    let version = (kind(raw_version) == Kind::Number)
        .then(|| raw_version.get().parse::<i64>().ok())
        .flatten()
        .and_then(|v| Version::try_from(v).ok())
        .ok_or_else(|| InvalidSnapshot::InvalidVersion(raw_version.get().to_owned()))?;
    let data = members
        .last("data")
        .ok_or_else(|| InvalidAppend::MissingField("data".into()))?;
    let data = compact_owned(data).map_err(|e| InvalidAppend::UnstorableJson {
        field: "data".into(),
        reason: e.to_string(),
    })?;
    let size = data.get().len();
    if size > limits.max_event_bytes {
        return Err(InvalidSnapshot::TooLarge {
            size,
            limit: limits.max_event_bytes,
        });
    }
    Ok(NewSnapshot {
        stream_id: stream_id.to_owned(),
        version,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<NewSnapshot, InvalidSnapshot> {
        parse_snapshot_body("Order-1", body.as_bytes(), &Limits::default())
    }

    #[test]
    fn keeps_the_data_as_sent() -> Result<(), InvalidSnapshot> {
        let snapshot = parse(r#"{"data": {"n":1.50, "n":2, "b":[1e3]}, "version": 7}"#)?;
        assert_eq!(snapshot.version, Version::from(7u32));
        assert_eq!(snapshot.data.get(), r#"{"n":1.50,"n":2,"b":[1e3]}"#);
        Ok(())
    }

    #[test]
    fn refuses_what_is_not_a_snapshot() {
        for (body, code) in [
            ("{", "malformed_json"),
            ("[]", "invalid_body"),
            (r#"{"data":{}}"#, "missing_field"),
            (r#"{"version":1}"#, "missing_field"),
            (r#"{"version":-1,"data":{}}"#, "invalid_version"),
            (r#"{"version":1.5,"data":{}}"#, "invalid_version"),
            (r#"{"version":"3","data":{}}"#, "invalid_version"),
            (r#"{"version":1e2,"data":{}}"#, "invalid_version"),
            (
                r#"{"version":99999999999999999999,"data":{}}"#,
                "invalid_version",
            ),
            (r#"{"version":1,"data":{},"extra":0}"#, "unknown_field"),
            (r#"{"version":1,"version":2,"data":{}}"#, "duplicate_field"),
            (r#"{"version":1,"data":"\ud800"}"#, "unstorable_json"),
        ] {
            let error = parse(body).err();
            assert_eq!(
                error.as_ref().map(InvalidSnapshot::code),
                Some(code),
                "{body}"
            );
        }
    }

    #[test]
    fn refuses_data_larger_than_an_event_may_be() {
        let limits = Limits {
            max_event_bytes: 10,
            ..Limits::default()
        };
        let ok = parse_snapshot_body("S-1", br#"{"version":0,"data":"12345678"}"#, &limits);
        assert!(ok.is_ok());
        let big = parse_snapshot_body("S-1", br#"{"version":0,"data":"123456789"}"#, &limits);
        assert!(matches!(
            big,
            Err(InvalidSnapshot::TooLarge {
                size: 11,
                limit: 10
            })
        ));
    }

    #[test]
    fn refuses_an_invalid_stream_id() {
        let error = parse_snapshot_body("$all", br#"{"version":0,"data":{}}"#, &Limits::default());
        assert_eq!(error.err().map(|e| e.code()), Some("invalid_stream_id"));
    }
}

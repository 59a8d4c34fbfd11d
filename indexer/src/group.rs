//! Multi-stream append groups (design note `multi-stream.md`, rules 2 and 5-6): what an
//! `ingest-log` record says of its group. What a committed group's canonical records say is
//! `esk_runtime::records::CanonicalGroup`.

use esk_model::wire::header;
use esk_runtime::records::header_text;
use rdkafka::message::Headers;
use uuid::Uuid;

/// A group's key: (append id, attempt id). Parts of an earlier attempt of the same append are
/// another group (and a phantom one: the ledger names one attempt).
pub(crate) type GroupKey = (Uuid, Uuid);

/// What an `ingest-log` record's headers say of the group it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupTag {
    /// The multi-stream append.
    pub(crate) append_id: Uuid,
    /// The attempt that produced the record.
    pub(crate) attempt_id: Uuid,
    /// How many records the attempt produced for the group, over every partition.
    pub(crate) records: usize,
}

impl GroupTag {
    /// The group's key.
    pub(crate) fn key(&self) -> GroupKey {
        (self.append_id, self.attempt_id)
    }

    /// Reads the group headers of a record; `None` for a record of no group (single-stream
    /// appends), or whose group headers do not parse (then it is indexed as a single record:
    /// its events are still committed only if the ledger says so).
    pub(crate) fn from_headers<H: Headers>(headers: Option<&H>) -> Option<GroupTag> {
        let headers = headers?;
        let text = |name: &str| header_text(headers, name);
        let append_id = text(header::GROUP_APPEND_ID)?.parse().ok()?;
        let attempt_id = text(header::ATTEMPT_ID)?.parse().ok()?;
        let records = text(header::GROUP_RECORDS)?.parse::<usize>().ok()?.max(1);
        Some(GroupTag {
            append_id,
            attempt_id,
            records,
        })
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, OwnedHeaders};

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> OwnedHeaders {
        pairs.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(*v),
            })
        })
    }

    #[test]
    fn a_record_names_its_group_with_three_headers() {
        let (append, attempt) = (Uuid::new_v4(), Uuid::new_v4());
        let h = headers(&[
            (header::ATTEMPT_ID, &attempt.to_string()),
            (header::GROUP_APPEND_ID, &append.to_string()),
            (header::GROUP_RECORDS, "2"),
        ]);
        assert_eq!(
            GroupTag::from_headers(Some(&h)),
            Some(GroupTag {
                append_id: append,
                attempt_id: attempt,
                records: 2
            })
        );
        let single = headers(&[(header::ATTEMPT_ID, &attempt.to_string())]);
        assert_eq!(GroupTag::from_headers(Some(&single)), None);
        assert_eq!(GroupTag::from_headers::<OwnedHeaders>(None), None);
    }
}

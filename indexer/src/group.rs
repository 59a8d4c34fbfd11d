//! Multi-stream append groups (design note `multi-stream.md`, rules 2 and 5-6): what an
//! `ingest-log` record says of its group, and what a committed group's rows carry on.

use esk_model::wire::header;
use rdkafka::message::{Header, Headers, OwnedHeaders};
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
        let text = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| std::str::from_utf8(h.value?).ok())
        };
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

/// A committed group as its rows carry it: the append and its contiguous global positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupSpan {
    /// The multi-stream append.
    pub(crate) append_id: Uuid,
    /// The group's first global position.
    pub(crate) first_position: i64,
    /// The group's last global position.
    pub(crate) last_position: i64,
}

impl GroupSpan {
    /// How many events the group wrote (its positions are contiguous).
    pub(crate) fn events(&self) -> i64 {
        self.last_position - self.first_position + 1
    }

    /// Adds the group headers to a canonical record's headers.
    pub(crate) fn add_headers(&self, headers: OwnedHeaders) -> OwnedHeaders {
        let append_id = self.append_id.to_string();
        let first = self.first_position.to_string();
        let last = self.last_position.to_string();
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
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn the_canonical_headers_name_the_group() {
        let span = GroupSpan {
            append_id: Uuid::nil(),
            first_position: 5,
            last_position: 7,
        };
        let h = span.add_headers(OwnedHeaders::new());
        let value = |name: &str| {
            h.iter()
                .find(|x| x.key == name)
                .and_then(|x| std::str::from_utf8(x.value?).ok().map(str::to_owned))
        };
        assert_eq!(value(header::GROUP_FIRST_POSITION).as_deref(), Some("5"));
        assert_eq!(value(header::GROUP_LAST_POSITION).as_deref(), Some("7"));
        assert_eq!(value(header::GROUP_EVENTS).as_deref(), Some("3"));
        assert_eq!(
            value(header::GROUP_APPEND_ID),
            Some(Uuid::nil().to_string())
        );
    }
}

//! What an append gets back: accepted with versions, rejected with a reason, or "unavailable,
//! retry with the same append id".

use esk_model::api::{StreamAppendResult, StreamConflict};
use esk_model::event::{StreamVersion, Version};
use esk_model::wire::ErrorBody;

/// The final outcome of an append (also what the ledger records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AppendOutcome {
    /// Written with these versions.
    Accepted {
        first_version: Version,
        last_version: Version,
    },
    /// Not written.
    Rejected(Rejection),
}

/// Why an append was not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// The stream was not at the expected version.
    WrongExpectedVersion { actual: StreamVersion },
    /// An event id already belongs to another append.
    DuplicateEventId,
    /// The append id was used before for different events.
    AppendIdReused,
    /// A retry of an append whose ledger row was pruned after the idempotency window.
    AppendExpired,
    /// The stream was hard-deleted (a tombstone): nothing can be appended to it again.
    StreamDeleted,
    /// A delete of a stream that has no events (never written, or soft-deleted already).
    StreamNotFound,
    /// The broker refuses the append's records for good (too large for it, or invalid). Not
    /// recorded in the ledger: nothing was written, and a retry gets the same answer.
    RefusedByBroker { too_large: bool, reason: String },
}

impl Rejection {
    /// Stable machine code, also stored in the ledger.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Rejection::WrongExpectedVersion { .. } => "wrong_expected_version",
            Rejection::DuplicateEventId => "duplicate_event_id",
            Rejection::AppendIdReused => "append_id_reused",
            Rejection::AppendExpired => "append_expired",
            Rejection::StreamDeleted => "stream_deleted",
            Rejection::StreamNotFound => "stream_not_found",
            Rejection::RefusedByBroker {
                too_large: true, ..
            } => "record_too_large",
            Rejection::RefusedByBroker { .. } => "record_refused_by_broker",
        }
    }

    /// Rebuilds a rejection from its ledger columns.
    pub(crate) fn from_ledger(code: &str, actual_version: StreamVersion) -> Option<Self> {
        match code {
            "wrong_expected_version" => Some(Rejection::WrongExpectedVersion {
                actual: actual_version,
            }),
            "duplicate_event_id" => Some(Rejection::DuplicateEventId),
            "append_expired" => Some(Rejection::AppendExpired),
            "stream_deleted" => Some(Rejection::StreamDeleted),
            "stream_not_found" => Some(Rejection::StreamNotFound),
            _ => None,
        }
    }

    /// The error object clients see.
    pub(crate) fn to_error_body(&self) -> ErrorBody {
        match self {
            Rejection::WrongExpectedVersion { actual } => ErrorBody {
                code: self.code().into(),
                message: match actual {
                    StreamVersion::At(v) => format!("the stream is at version {v}"),
                    StreamVersion::NoStream => "the stream does not exist".into(),
                },
                actual_version: Some(*actual),
                streams: None,
            },
            Rejection::DuplicateEventId => ErrorBody {
                code: self.code().into(),
                message: "an event id in this append already belongs to another append".into(),
                actual_version: None,
                streams: None,
            },
            Rejection::AppendIdReused => ErrorBody {
                code: self.code().into(),
                message: "this append id was already used for different events".into(),
                actual_version: None,
                streams: None,
            },
            Rejection::AppendExpired => ErrorBody {
                code: self.code().into(),
                message: "this append was accepted longer ago than the idempotency window; \
                          its original outcome is no longer kept (its events are in the store)"
                    .into(),
                actual_version: None,
                streams: None,
            },
            Rejection::StreamDeleted => ErrorBody {
                code: self.code().into(),
                message: "the stream was deleted for good (hard delete); nothing was written"
                    .into(),
                actual_version: None,
                streams: None,
            },
            Rejection::StreamNotFound => ErrorBody {
                code: self.code().into(),
                message: "the stream has no events (never written, or deleted); nothing was \
                          written"
                    .into(),
                actual_version: None,
                streams: None,
            },
            Rejection::RefusedByBroker { reason, .. } => ErrorBody {
                code: self.code().into(),
                message: format!(
                    "the broker refuses this append's records ({reason}); nothing was written"
                ),
                actual_version: None,
                streams: None,
            },
        }
    }
}

/// The final outcome of a multi-stream append (also what its ledger row records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GroupOutcome {
    /// Every part written: one result per part, in request order.
    Accepted(Vec<StreamAppendResult>),
    /// Nothing written.
    Rejected(GroupRejection),
}

/// Why a multi-stream append was not written: the reason, and for `wrong_expected_version` and
/// `stream_deleted` the streams at fault (every failing one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupRejection {
    pub(crate) rejection: Rejection,
    pub(crate) streams: Vec<StreamConflict>,
}

impl GroupRejection {
    /// A rejection that names no stream.
    pub(crate) fn of(rejection: Rejection) -> Self {
        GroupRejection {
            rejection,
            streams: Vec::new(),
        }
    }

    /// The error object clients see: the single-append one, with the streams at fault.
    pub(crate) fn to_error_body(&self) -> ErrorBody {
        let mut body = self.rejection.to_error_body();
        if self.streams.is_empty() {
            return body;
        }
        let names: Vec<&str> = self.streams.iter().map(|s| s.stream_id.as_str()).collect();
        body.message = match self.rejection {
            Rejection::StreamDeleted => format!(
                "deleted for good (hard delete): {}; nothing was written",
                names.join(", ")
            ),
            _ => format!(
                "not at the expected version: {}; nothing was written",
                names.join(", ")
            ),
        };
        // Each stream's own version is in `streams`.
        body.actual_version = None;
        body.streams = Some(self.streams.clone());
        body
    }
}

/// What the pipeline answers for one multi-stream append.
pub(crate) type GroupReply = Result<GroupOutcome, Unavailable>;

/// The store could not decide now; all of the append or none of it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unavailable {
    /// `unavailable`, `commit_outcome_unknown` or `overloaded`.
    pub(crate) code: &'static str,
    /// Human-readable cause.
    pub(crate) message: String,
}

impl Unavailable {
    /// The error object clients see: the cause (`message`) stays in the log, where the error
    /// id of an HTTP answer finds it.
    pub(crate) fn to_error_body(&self) -> ErrorBody {
        let cause = match self.code {
            "commit_outcome_unknown" => "the commit's outcome is not known",
            "overloaded" => "ingest is at capacity",
            _ => "the store is unavailable",
        };
        ErrorBody {
            code: self.code.into(),
            message: format!(
                "{cause}; all of the append or none of it was written: retry with the same append id"
            ),
            actual_version: None,
            streams: None,
        }
    }
}

/// What the pipeline answers for one append.
pub(crate) type AppendReply = Result<AppendOutcome, Unavailable>;

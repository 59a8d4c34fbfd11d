//! The one classification of handler failures, used by every handler: a **transient** failure
//! (the destination is away or overloaded) is retried until it recovers and never dead-letters
//! anything; a **rejection** (the destination refused this event, and would again) dead-letters
//! the event and the projection moves on.

use rdkafka::error::KafkaError;
use reqwest::StatusCode;

/// Why a handler could not apply or deliver events.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandlerError {
    /// Retry until it works: nothing is lost and nothing is dead-lettered meanwhile.
    #[error("transient: {0}")]
    Transient(Cause),
    /// Deterministic: the same events would fail the same way. Dead-letter them.
    #[error("rejected: {0}")]
    Rejected(Cause),
}

/// What failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Cause {
    #[error("POST {url}: {}", chain(.error))]
    Request { url: String, error: reqwest::Error },
    #[error("POST {url} answered {status}")]
    Status { url: String, status: StatusCode },
    #[error(
        "POST {url} answered {status}, a redirect to {location:?}: redirects are not followed, \
         configure the final URL"
    )]
    Redirect {
        url: String,
        status: StatusCode,
        location: String,
    },
    #[error("postgres{}: {}", sqlstate(.0), .0)]
    Database(sqlx::Error),
    #[error("produce to {topic}: {error}")]
    Produce { topic: String, error: KafkaError },
    #[error("cannot encode the events: {0}")]
    Encode(serde_json::Error),
}

impl HandlerError {
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, HandlerError::Transient(_))
    }

    /// A failed request (no answer): connection refused or reset, timeout, TLS. All of them
    /// say the receiver is not there now, none says anything about the events.
    /// `url` is kept redacted, and the error without its URL: both reach logs and dead letters.
    pub(crate) fn request(url: &str, error: reqwest::Error) -> Self {
        HandlerError::Transient(Cause::Request {
            url: esk_runtime::redact::redact_url(url),
            error: error.without_url(),
        })
    }

    /// A non-2xx answer: 408, 429 and 5xx are the receiver's state; other 4xx and 3xx (redirects
    /// are not followed) are a verdict on the request.
    pub(crate) fn status(url: &str, status: StatusCode) -> Self {
        let cause = Cause::Status {
            url: esk_runtime::redact::redact_url(url),
            status,
        };
        if is_transient_status(status) {
            HandlerError::Transient(cause)
        } else {
            HandlerError::Rejected(cause)
        }
    }

    /// A redirect: not followed (it could lead the events anywhere), a verdict on the URL like
    /// other 3xx answers.
    pub(crate) fn redirect(url: &str, status: StatusCode, location: String) -> Self {
        HandlerError::Rejected(Cause::Redirect {
            url: url.to_owned(),
            status,
            location,
        })
    }

    /// A SQL handler's statement failed.
    pub(crate) fn database(error: sqlx::Error) -> Self {
        if esk_runtime::db::is_transient(&error) {
            HandlerError::Transient(Cause::Database(error))
        } else {
            HandlerError::Rejected(Cause::Database(error))
        }
    }

    /// A produce failed: the broker's errors are transient, except records the broker will
    /// never take (too large, invalid).
    pub(crate) fn produce(topic: &str, error: KafkaError) -> Self {
        let rejected = esk_runtime::kafka::is_permanent_produce_error(&error);
        let cause = Cause::Produce {
            topic: topic.to_owned(),
            error,
        };
        if rejected {
            HandlerError::Rejected(cause)
        } else {
            HandlerError::Transient(cause)
        }
    }

    /// The events cannot be encoded: no retry changes that.
    pub(crate) fn encode(error: serde_json::Error) -> Self {
        HandlerError::Rejected(Cause::Encode(error))
    }
}

/// An error with its causes ("error sending request: connection refused"): reqwest's own
/// message leaves out why.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// " <SQLSTATE>" of a server error, for the log and the dead letter.
fn sqlstate(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => db.code().map(|c| format!(" {c}")).unwrap_or_default(),
        _ => String::new(),
    }
}

/// 408 Request Timeout, 429 Too Many Requests and every 5xx.
pub(crate) fn is_transient_status(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::RDKafkaErrorCode;

    #[test]
    fn outages_and_overload_are_transient_verdicts_are_rejections() {
        for code in [
            "40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03", "08000", "08006",
            "08001", "53000", "53100", "53200", "53300", "58030",
        ] {
            assert!(
                esk_runtime::db::transient_sqlstate(code),
                "{code} is transient"
            );
        }
        for code in [
            "22P02", "22003", "23505", "23503", "23502", "23514", "42P01", "XX000",
        ] {
            assert!(
                !esk_runtime::db::transient_sqlstate(code),
                "{code} is a rejection"
            );
        }
    }

    #[test]
    fn http_statuses() {
        for status in [408, 429, 500, 502, 503, 504] {
            let status = StatusCode::from_u16(status).expect("valid status");
            assert!(HandlerError::status("u", status).is_transient(), "{status}");
        }
        for status in [301, 302, 307, 400, 401, 403, 404, 409, 410, 413, 422] {
            let status = StatusCode::from_u16(status).expect("valid status");
            assert!(
                !HandlerError::status("u", status).is_transient(),
                "{status}"
            );
        }
    }

    #[test]
    fn a_redirect_is_a_rejection_that_says_so() {
        let error = HandlerError::redirect("https://h/a", StatusCode::FOUND, "https://x/b".into());
        assert!(!error.is_transient());
        let text = error.to_string();
        assert!(text.contains("redirects are not followed"), "{text}");
        assert!(text.contains("https://x/b"), "{text}");
    }

    #[test]
    fn connection_loss_is_transient() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(HandlerError::database(sqlx::Error::Io(io)).is_transient());
        assert!(HandlerError::database(sqlx::Error::PoolTimedOut).is_transient());
        assert!(!HandlerError::database(sqlx::Error::RowNotFound).is_transient());
    }

    #[test]
    fn broker_errors_are_transient_oversized_records_are_not() {
        let down = KafkaError::MessageProduction(RDKafkaErrorCode::AllBrokersDown);
        assert!(HandlerError::produce("t", down).is_transient());
        let timeout = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert!(HandlerError::produce("t", timeout).is_transient());
        let large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(!HandlerError::produce("t", large).is_transient());
    }
}

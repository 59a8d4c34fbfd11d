//! What can go wrong talking to the API, sorted by what a caller does about it.

use std::time::Duration;

use esk_model::wire::{ErrorBody, ErrorEnvelope};
use reqwest::StatusCode;

/// How many characters of an unexpected body an error keeps.
pub const BODY_EXCERPT_CHARS: usize = 200;

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The base URL given to the client cannot address the API.
    #[error("invalid base URL {url:?}: {reason}")]
    InvalidBaseUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The bearer token given to the client cannot be sent in a header.
    #[error("invalid token: it must be printable ASCII without spaces")]
    InvalidToken,
    /// The CA file given to the client cannot be read or holds no PEM certificate.
    #[error("cannot use the CA file {}: {reason}", .path.display())]
    CaFile {
        /// The file as given.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be set up (for example, TLS initialisation failed).
    #[error("cannot build the HTTP client: {0}")]
    Setup(#[source] reqwest::Error),
    /// The request could not be encoded as JSON.
    #[error("cannot encode the request: {0}")]
    Encode(#[source] serde_json::Error),
    /// No answer: the server could not be reached, the exchange broke off, or it timed out.
    /// Whether an append was written is then unknown: retry it with the same append id.
    #[error("{kind}: {source}")]
    Transport {
        /// What kind of failure.
        kind: TransportKind,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// The server refused the request with its typed error body.
    #[error("{}: {} [HTTP {}]", .error.code, .error.message, .status.as_u16())]
    Api {
        /// The answer's status.
        status: StatusCode,
        /// The server's error (`code`, `message`, `actual_version`).
        error: ErrorBody,
        /// The answer's `Retry-After`, in whole seconds, when it had one.
        retry_after: Option<Duration>,
    },
    /// An answer that is not what the API answers: not JSON, or not of the expected shape
    /// (a proxy's error page, another service on that port, a server of another version).
    #[error("unexpected answer from {url} (HTTP {status}): {reason}")]
    Unexpected {
        /// The answer's status.
        status: StatusCode,
        /// The URL answered, without its query.
        url: String,
        /// Why the body was not understood.
        reason: String,
        /// The body's first [`BODY_EXCERPT_CHARS`] characters (invalid UTF-8 replaced).
        body: String,
    },
}

/// The kinds of transport failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportKind {
    /// No answer within the request's timeout (or no connection within the connect timeout).
    Timeout,
    /// The connection could not be opened, or broke while sending or receiving.
    Connection,
    /// Anything else (a redirect loop, a malformed URL built from the base).
    Other,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::Timeout => "no answer in time",
            TransportKind::Connection => "cannot reach the server",
            TransportKind::Other => "request failed",
        })
    }
}

impl ClientError {
    /// A transport failure, classified.
    pub(crate) fn transport(source: reqwest::Error) -> Self {
        let kind = if source.is_timeout() {
            TransportKind::Timeout
        } else if source.is_connect() || source.is_request() || source.is_body() {
            TransportKind::Connection
        } else {
            TransportKind::Other
        };
        ClientError::Transport { kind, source }
    }

    /// The error an answer with a non-success `status` stands for: the server's typed error
    /// when the body is its error envelope, else [`ClientError::Unexpected`].
    pub fn from_answer(status: StatusCode, url: &str, body: &[u8]) -> Self {
        match serde_json::from_slice::<ErrorEnvelope>(body) {
            Ok(ErrorEnvelope { error }) => ClientError::Api {
                status,
                error,
                retry_after: None,
            },
            Err(e) => ClientError::unexpected(status, url, body, format!("no error body: {e}")),
        }
    }

    /// An answer not understood.
    pub(crate) fn unexpected(status: StatusCode, url: &str, body: &[u8], reason: String) -> Self {
        ClientError::Unexpected {
            status,
            url: url.to_owned(),
            reason,
            body: excerpt(body),
        }
    }

    /// Adds the `Retry-After` of the answer to a typed error.
    pub(crate) fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        if let ClientError::Api { retry_after, .. } = &mut self {
            *retry_after = after;
        }
        self
    }

    /// The HTTP status, when there was an answer.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } | ClientError::Unexpected { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// The server's typed error, when it sent one.
    pub fn error_body(&self) -> Option<&ErrorBody> {
        match self {
            ClientError::Api { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The server's error code (`wrong_expected_version`, `overloaded`, ...), when it sent one.
    pub fn code(&self) -> Option<&str> {
        self.error_body().map(|e| e.code.as_str())
    }

    /// True for a refusal because of the stream's state (HTTP 409: wrong expected version,
    /// duplicate event id, append id reused): retrying the same request cannot succeed.
    pub fn is_conflict(&self) -> bool {
        matches!(self, ClientError::Api { status, .. } if *status == StatusCode::CONFLICT)
    }

    /// True when the request timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            ClientError::Transport {
                kind: TransportKind::Timeout,
                ..
            }
        )
    }

    /// True when the server could not be reached or the exchange broke off (timeouts included).
    pub fn is_transport(&self) -> bool {
        matches!(self, ClientError::Transport { .. })
    }

    /// True when the same request may succeed later: no answer, or an answer saying so (503
    /// overloaded/unavailable, 408, 429, a gateway's 502/504). An append retried with the same
    /// append id and event ids is written at most once.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Transport { kind, .. } => *kind != TransportKind::Other,
            ClientError::Api { status, .. } | ClientError::Unexpected { status, .. } => matches!(
                *status,
                StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::REQUEST_TIMEOUT
                    | StatusCode::TOO_MANY_REQUESTS
                    | StatusCode::BAD_GATEWAY
                    | StatusCode::GATEWAY_TIMEOUT
            ),
            _ => false,
        }
    }

    /// How long the server asked to wait before retrying, when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The start of a body, as text.
fn excerpt(body: &[u8]) -> String {
    // Only the excerpt is decoded: a large body is not copied whole.
    let head = &body[..body.len().min(BODY_EXCERPT_CHARS * 4)];
    String::from_utf8_lossy(head)
        .chars()
        .take(BODY_EXCERPT_CHARS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_envelopes_become_typed_errors() {
        let body = br#"{"error":{"code":"wrong_expected_version","message":"the stream is at version 2","actual_version":2}}"#;
        let error =
            ClientError::from_answer(StatusCode::CONFLICT, "http://h/streams/a/events", body);
        assert!(error.is_conflict());
        assert!(!error.is_retryable());
        assert_eq!(error.code(), Some("wrong_expected_version"));
        assert_eq!(error.status(), Some(StatusCode::CONFLICT));
        assert_eq!(
            error.error_body().and_then(|e| e.actual_version),
            Some(esk_model::event::StreamVersion::At(2.into()))
        );
        assert_eq!(
            error.to_string(),
            "wrong_expected_version: the stream is at version 2 [HTTP 409]"
        );

        let body = br#"{"error":{"code":"overloaded","message":"retry"}}"#;
        let error = ClientError::from_answer(StatusCode::SERVICE_UNAVAILABLE, "u", body)
            .with_retry_after(Some(Duration::from_secs(1)));
        assert!(error.is_retryable());
        assert!(!error.is_conflict());
        assert_eq!(error.retry_after(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn other_bodies_are_unexpected_answers() {
        let error = ClientError::from_answer(StatusCode::SERVICE_UNAVAILABLE, "u", b"busy");
        assert!(matches!(&error, ClientError::Unexpected { body, .. } if body == "busy"));
        assert!(error.is_retryable());
        assert_eq!(error.code(), None);
        assert_eq!(error.status(), Some(StatusCode::SERVICE_UNAVAILABLE));

        // An object that is not the envelope is not mistaken for one.
        let error = ClientError::from_answer(StatusCode::UNPROCESSABLE_ENTITY, "u", b"{}");
        assert!(matches!(error, ClientError::Unexpected { .. }));
        assert!(!error.is_retryable());

        let long = "é".repeat(BODY_EXCERPT_CHARS * 2);
        let error = ClientError::from_answer(StatusCode::BAD_GATEWAY, "u", long.as_bytes());
        let ClientError::Unexpected { body, .. } = error else {
            panic!("not unexpected: {error:?}");
        };
        assert_eq!(body.chars().count(), BODY_EXCERPT_CHARS);
        assert_eq!(excerpt(&[0xff, b'a']), "\u{fffd}a");
    }
}

//! Ingest's HTTP API through esk-client, and the one place the client's errors become the
//! CLI's exit codes and messages.

use std::path::Path;
use std::time::Duration;

use esk_client::{Client, ClientError, StatusCode, TransportKind};

use crate::exit::{root_cause, Exit, Failure};

/// Time allowed for one ordinary request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of ingest at `--url` (`http://host:port` or `https://host:port`), sending `token`
/// if given and trusting the CA certificates of `ca_file` besides the public roots.
pub(crate) fn client(
    base: &str,
    token: Option<&str>,
    ca_file: Option<&Path>,
) -> anyhow::Result<Client> {
    let trimmed = base.trim_end_matches('/');
    if !(trimmed.starts_with("http://") || trimmed.starts_with("https://")) {
        return Err(Failure::usage(format!(
            "--url must be an http:// or https:// URL, got {trimmed:?}"
        )));
    }
    let mut builder = Client::builder(base)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("esk/", env!("CARGO_PKG_VERSION")));
    if let Some(token) = token {
        builder = builder.token(token);
    }
    if let Some(ca_file) = ca_file {
        builder = builder.ca_file(ca_file);
    }
    builder.build().map_err(|e| failure(base, e))
}

/// A client result with its error turned into a [`Failure`].
pub(crate) trait OrFailure<T> {
    /// The value, or the failure `client`'s error stands for.
    fn or_failure(self, client: &Client) -> anyhow::Result<T>;
}

impl<T> OrFailure<T> for Result<T, ClientError> {
    fn or_failure(self, client: &Client) -> anyhow::Result<T> {
        self.map_err(|e| failure(client.base_url(), e))
    }
}

/// The exit code and message of a client error; `base` is the API's base URL.
pub(crate) fn failure(base: &str, error: ClientError) -> anyhow::Error {
    match &error {
        // The message already names the actual version of a wrong_expected_version.
        ClientError::Api { status, .. } => Failure::of(exit_for(*status), error.to_string()),
        ClientError::Unexpected {
            status,
            url,
            reason,
            ..
        } if status.is_success() => {
            Failure::usage(format!("unexpected answer from {url}: {reason}"))
        }
        ClientError::Unexpected { status, body, .. } => {
            Failure::of(exit_for(*status), format!("HTTP {status}: {}", body.trim()))
        }
        ClientError::Transport { kind, .. } => {
            let cause = root_cause(&error);
            match kind {
                TransportKind::Timeout => {
                    Failure::unavailable(format!("{base} did not answer in time ({cause})"))
                }
                TransportKind::Connection => {
                    Failure::unavailable(format!("cannot reach {base}: {cause}"))
                }
                _ => Failure::usage(format!("request to {base} failed: {cause}")),
            }
        }
        ClientError::InvalidBaseUrl { url, reason } => {
            Failure::usage(format!("--url {url:?} is not a usable URL: {reason}"))
        }
        _ => Failure::usage(error.to_string()),
    }
}

/// The exit code of an error answer.
fn exit_for(status: StatusCode) -> Exit {
    if status == StatusCode::CONFLICT {
        Exit::Conflict
    } else if status.is_server_error() {
        Exit::Unavailable
    } else {
        Exit::Usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::classify;

    fn api_error(status: StatusCode, body: &[u8]) -> anyhow::Error {
        failure(
            "http://127.0.0.1:1",
            ClientError::from_answer(status, "http://127.0.0.1:1/streams/a/events", body),
        )
    }

    #[test]
    fn error_bodies_map_to_exit_codes() {
        let body = br#"{"error":{"code":"wrong_expected_version","message":"the stream is at version 2","actual_version":2}}"#;
        let error = api_error(StatusCode::CONFLICT, body);
        assert_eq!(classify(&error), Some(Exit::Conflict));
        assert_eq!(
            error.to_string(),
            "wrong_expected_version: the stream is at version 2 [HTTP 409]"
        );
        let error = api_error(StatusCode::SERVICE_UNAVAILABLE, b"busy");
        assert_eq!(classify(&error), Some(Exit::Unavailable));
        assert_eq!(error.to_string(), "HTTP 503 Service Unavailable: busy");
        let error = api_error(StatusCode::UNPROCESSABLE_ENTITY, b"{}");
        assert_eq!(classify(&error), Some(Exit::Usage));
    }

    #[test]
    fn urls_must_be_http_or_https() {
        let error = client("ftp://h", None, None).err();
        assert_eq!(error.as_ref().and_then(classify), Some(Exit::Usage));
        assert_eq!(
            error.map(|e| e.to_string()).as_deref(),
            Some(r#"--url must be an http:// or https:// URL, got "ftp://h""#)
        );
        assert!(client("http://127.0.0.1:8080/", None, None).is_ok());
        assert!(client("https://127.0.0.1:8443", None, None).is_ok());
    }

    #[test]
    fn an_unreadable_ca_file_is_a_usage_error_naming_it() {
        let error = client(
            "https://127.0.0.1:8443",
            None,
            Some(Path::new("/nonexistent/esk-ca.pem")),
        )
        .err();
        assert_eq!(error.as_ref().and_then(classify), Some(Exit::Usage));
        let message = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("/nonexistent/esk-ca.pem"), "{message}");
    }
}

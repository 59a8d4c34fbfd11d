//! The HTTP client of ingest's API: JSON in and out, errors mapped to exit codes.

use std::time::Duration;

use esk_model::wire::ErrorEnvelope;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::exit::{root_cause, Exit, Failure};

/// Time allowed for one ordinary request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Characters left as they are in a path segment (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes one path segment (a stream id or category).
pub(crate) fn segment(raw: &str) -> String {
    utf8_percent_encode(raw, SEGMENT).to_string()
}

/// A client for one base URL (`http://host:port`).
#[derive(Debug, Clone)]
pub(crate) struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    pub(crate) fn new(base: &str) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") {
            return Err(Failure::usage(format!(
                "--url must be an http:// URL, got {base:?}"
            )));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("esk/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::usage(format!("cannot build the HTTP client: {e}")))?;
        Ok(Api { client, base })
    }

    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// GET `path` with query parameters, within `timeout`.
    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        timeout: Duration,
    ) -> anyhow::Result<T> {
        let request = self
            .client
            .get(format!("{}{path}", self.base))
            .query(query)
            .timeout(timeout);
        self.send(request).await
    }

    /// GET with the ordinary timeout.
    pub(crate) async fn get_default<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        self.get(path, query, REQUEST_TIMEOUT).await
    }

    /// POST a JSON body.
    pub(crate) async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        let request = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .timeout(REQUEST_TIMEOUT);
        self.send(request).await
    }

    async fn send<T: DeserializeOwned>(&self, request: RequestBuilder) -> anyhow::Result<T> {
        let response = request.send().await.map_err(|e| self.transport(&e))?;
        let status = response.status();
        let url = response.url().clone();
        let body = response.bytes().await.map_err(|e| self.transport(&e))?;
        if !status.is_success() {
            return Err(api_error(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| {
            Failure::usage(format!(
                "unexpected answer from {}: {e}",
                url.as_str().split('?').next().unwrap_or_default()
            ))
        })
    }

    fn transport(&self, error: &reqwest::Error) -> anyhow::Error {
        let cause = root_cause(error);
        if error.is_timeout() {
            Failure::unavailable(format!("{} did not answer in time ({cause})", self.base))
        } else if error.is_connect() || error.is_request() || error.is_body() {
            Failure::unavailable(format!("cannot reach {}: {cause}", self.base))
        } else {
            Failure::usage(format!("request to {} failed: {cause}", self.base))
        }
    }
}

/// Turns an error answer into a failure with the server's code and message.
fn api_error(status: StatusCode, body: &[u8]) -> anyhow::Error {
    let exit = if status == StatusCode::CONFLICT {
        Exit::Conflict
    } else if status.is_server_error() {
        Exit::Unavailable
    } else {
        Exit::Usage
    };
    let message = match serde_json::from_slice::<ErrorEnvelope>(body) {
        // The message already names the actual version of a wrong_expected_version.
        Ok(ErrorEnvelope { error }) => {
            format!(
                "{}: {} [HTTP {}]",
                error.code,
                error.message,
                status.as_u16()
            )
        }
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.chars().take(200).collect();
            format!("HTTP {status}: {}", text.trim())
        }
    };
    Failure::of(exit, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::classify;

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
    fn segments_are_encoded() {
        assert_eq!(segment("Order-1"), "Order-1");
        assert_eq!(segment("a b/c$"), "a%20b%2Fc%24");
    }
}

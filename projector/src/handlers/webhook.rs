//! Webhook handler: POSTs batches as `{"projection": name, "events": [...]}` (canonical event
//! envelopes, with `event_id` for deduplication), signed in the `esk-signature` header
//! ([`signature`](super::signature)). Any 2xx is an acknowledgement; see
//! [`HandlerError::status`] for what the other answers mean. Payloads go out byte for byte as
//! they were committed: the body is serialized from the envelopes, never re-parsed.

use std::time::Duration;

use esk_model::wire::CanonicalEvent;
use reqwest::header::CONTENT_TYPE;
use serde::Serialize;

use crate::event::ProjectedEvent;
use crate::projections_file::{Secret, WebhookSpec};

use super::{signature, HandlerError, HandlerSetupError};

/// A webhook receiver of one projection.
#[derive(Debug)]
pub(crate) struct Webhook {
    client: reqwest::Client,
    url: String,
    projection: String,
    secret: Secret,
}

/// The request body.
#[derive(Debug, Serialize)]
struct Body<'a> {
    projection: &'a str,
    events: Vec<&'a CanonicalEvent>,
}

impl Webhook {
    /// A webhook for `projection` as `settings` declare it (checked when the file was loaded).
    pub(crate) fn new(projection: &str, settings: &WebhookSpec) -> Result<Self, HandlerSetupError> {
        let url = settings.url.as_str();
        let timeout = Duration::from_millis(settings.timeout_ms.max(1));
        // A malformed URL is a configuration error, found at start rather than on every event.
        reqwest::Url::parse(url).map_err(|e| HandlerSetupError::InvalidUrl {
            url: esk_runtime::redact::redact_url(url),
            reason: e.to_string(),
        })?;
        Ok(Webhook {
            client: reqwest::Client::builder()
                .timeout(timeout)
                // A redirect is an answer about the URL, not an acknowledgement: not followed.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(HandlerSetupError::HttpClient)?,
            url: url.to_owned(),
            projection: projection.to_owned(),
            secret: settings.secret.clone(),
        })
    }

    /// POSTs `events` as one request; any 2xx acknowledges them.
    pub(crate) async fn deliver(&self, events: &[ProjectedEvent]) -> Result<(), HandlerError> {
        let body = serde_json::to_vec(&Body {
            projection: &self.projection,
            events: events.iter().map(|e| &e.event).collect(),
        })
        .map_err(HandlerError::encode)?;
        // Signed at each attempt, so a retry carries a fresh timestamp.
        let signed =
            signature::header_value(self.secret.expose(), chrono::Utc::now().timestamp(), &body);
        let response = self
            .client
            .post(&self.url)
            .header(CONTENT_TYPE, "application/json")
            .header(signature::HEADER, signed)
            .body(body)
            .send()
            .await
            .map_err(|e| HandlerError::request(&self.url, e))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .unwrap_or("")
                .to_owned();
            Err(HandlerError::redirect(&self.url, status, location))
        } else {
            Err(HandlerError::status(&self.url, status))
        }
    }
}

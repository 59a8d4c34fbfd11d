//! Webhook handler: POSTs batches as `{"projection": name, "events": [...]}` (canonical event
//! envelopes, with `event_id` for deduplication). Any 2xx is an acknowledgement.

use std::time::Duration;

use crate::event::ProjectedEvent;

use super::DeliveryError;

#[derive(Debug)]
pub(crate) struct Webhook {
    client: reqwest::Client,
    url: String,
    projection: String,
}

impl Webhook {
    pub(crate) fn new(projection: &str, url: &str, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Webhook {
            client: reqwest::Client::builder().timeout(timeout).build()?,
            url: url.to_owned(),
            projection: projection.to_owned(),
        })
    }

    pub(crate) async fn deliver(&self, events: &[ProjectedEvent]) -> Result<(), DeliveryError> {
        let body = serde_json::json!({
            "projection": self.projection,
            "events": events.iter().map(|e| &e.event).collect::<Vec<_>>(),
        });
        let response = self
            .client
            .post(&self.url)
            .json(&body)
            .send()
            .await
            .map_err(|e| DeliveryError(format!("POST {}: {e}", self.url)))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(DeliveryError(format!(
                "POST {} answered {}",
                self.url,
                response.status()
            )))
        }
    }
}

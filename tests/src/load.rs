//! A background append load for tests: writers with their own streams and exact versions.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use esk_client::{EncodedAppend, StatusCode};
use esk_model::api::{AppendRequest, EventData};
use esk_model::event::{ExpectedVersion, Version};
use serde_json::value::RawValue;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::ingest::Client;

/// A running load; `stop` ends it and returns the events acknowledged.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicI64>,
    writers: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Load {
    /// Starts `writers` writers, each appending `batch` events per append, `per_writer` appends
    /// at most, to streams named `{prefix}-{writer}-{n}` of 20 events each.
    pub fn start(
        client: &Client,
        prefix: &str,
        writers: usize,
        batch: usize,
        per_writer: usize,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicI64::new(0));
        let handles = (0..writers)
            .map(|w| {
                let api = client.api().cloned();
                let stop = stop.clone();
                let accepted = accepted.clone();
                let prefix = prefix.to_owned();
                tokio::spawn(async move {
                    let api = api?;
                    let mut n = 0;
                    let mut version: Option<Version> = None;
                    for _ in 0..per_writer {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        if version.is_some_and(|v| v.get() + 1 >= 20) {
                            n += 1;
                            version = None;
                        }
                        let stream = format!("{prefix}-{w}-{n}");
                        let request = AppendRequest {
                            expected_version: version
                                .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact),
                            append_id: None,
                            events: (0..batch)
                                .map(|_| {
                                    Ok(EventData {
                                        id: Uuid::new_v4(),
                                        event_type: "Happened".into(),
                                        data: RawValue::from_string(r#"{"n":1}"#.into())?,
                                        metadata: None,
                                    })
                                })
                                .collect::<serde_json::Result<_>>()?,
                        };
                        // Encoded once: a retry sends the same events (same ids) again.
                        let body = EncodedAppend::new(&request)?;
                        loop {
                            match api.append_encoded(&stream, &body).await {
                                Ok(appended) => {
                                    version = Some(appended.last_version);
                                    accepted.fetch_add(batch as i64, Ordering::SeqCst);
                                    break;
                                }
                                Err(e) if e.status() == Some(StatusCode::SERVICE_UNAVAILABLE) => {
                                    tokio::time::sleep(Duration::from_millis(50)).await
                                }
                                Err(e) => anyhow::bail!("append failed: {e}"),
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        Load {
            stop,
            accepted,
            writers: handles,
        }
    }

    /// Events acknowledged so far.
    pub fn accepted(&self) -> i64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Waits for the writers to finish (or stops them) and returns the events acknowledged.
    pub async fn finish(self, stop: bool) -> anyhow::Result<i64> {
        if stop {
            self.stop.store(true, Ordering::SeqCst);
        }
        for writer in self.writers {
            writer.await??;
        }
        Ok(self.accepted.load(Ordering::SeqCst))
    }
}

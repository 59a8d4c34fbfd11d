//! Settings shared by every binary. Each binary flattens [`CommonConfig`] into its own clap
//! struct, so every setting has a default, an environment variable and a flag.

use clap::{Args, ValueEnum};

use crate::kafka::{
    FetchTuning, KafkaSettings, PropertiesFile, PropertiesFileParser, PropertyList, PropertyParser,
    DEFAULT_FETCH_MIN_BYTES, DEFAULT_FETCH_WAIT_MS,
};

/// Connection settings and topic names shared by all processes.
#[derive(Debug, Clone, Args)]
pub struct CommonConfig {
    /// Postgres connection string.
    #[arg(
        long,
        env = "ESK_DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://esk:esk@127.0.0.1:5433/esk"
    )]
    pub database_url: String,

    /// Kafka bootstrap servers (comma separated host:port).
    #[arg(long, env = "ESK_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,

    /// A librdkafka property for every Kafka client (TLS, SASL, tuning), applied after esk's
    /// own settings. Repeat the flag, or separate entries by `;` (in the environment variable
    /// too; a value containing `;` goes in --kafka-properties-file). Values of secret
    /// properties (sasl.password, ...) are never shown.
    #[arg(
        long = "kafka-property",
        value_name = "KEY=VALUE",
        env = "ESK_KAFKA_PROPERTIES",
        hide_env_values = true,
        value_parser = PropertyParser
    )]
    pub kafka_properties: Vec<PropertyList>,

    /// A file of librdkafka properties, one KEY=VALUE a line (`#` starts a comment), applied
    /// before --kafka-property: keeps secrets out of the environment and the command line.
    #[arg(
        long,
        value_name = "PATH",
        env = "ESK_KAFKA_PROPERTIES_FILE",
        value_parser = PropertiesFileParser
    )]
    pub kafka_properties_file: Option<PropertiesFile>,

    /// Longest time the broker holds a consumer's fetch when it has fewer than
    /// --kafka-fetch-min-bytes to return (ms; `fetch.wait.max.ms`). Records are passed on as
    /// soon as a fetch returns them, so on a quiet topic this is the wait per hop (on Tansu 0.6
    /// every fetch takes this long, and 0 makes idle consumers fetch in a busy loop).
    #[arg(long, env = "ESK_KAFKA_FETCH_WAIT_MS", default_value_t = DEFAULT_FETCH_WAIT_MS)]
    pub kafka_fetch_wait_ms: u32,

    /// Bytes a consumer's fetch waits for before the broker answers it (`fetch.min.bytes`).
    /// 1 answers as soon as there is a record; under load fetches fill up on their own while
    /// the previous batch is being written.
    #[arg(long, env = "ESK_KAFKA_FETCH_MIN_BYTES", default_value_t = DEFAULT_FETCH_MIN_BYTES)]
    pub kafka_fetch_min_bytes: u32,

    #[command(flatten)]
    pub topics: Topics,

    /// Log output format.
    #[arg(long, env = "ESK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// A loop that has had work this long without progress (a batch not committed, an append
    /// not answered) makes /health unhealthy (503) with the reason, in seconds.
    #[arg(long, env = "ESK_STALL_AFTER_SECS", default_value_t = 60)]
    pub stall_after_secs: u64,
}

impl CommonConfig {
    /// The brokers and the user's properties, as every Kafka client is built from them: the
    /// file's properties first, then `--kafka-property` / `ESK_KAFKA_PROPERTIES`.
    pub fn kafka(&self) -> KafkaSettings {
        let from_file = self
            .kafka_properties_file
            .iter()
            .flat_map(|file| file.properties.iter().cloned());
        KafkaSettings::new(&self.kafka_brokers)
            .with_fetch(FetchTuning {
                wait_ms: self.kafka_fetch_wait_ms,
                min_bytes: self.kafka_fetch_min_bytes,
            })
            .with_properties(
                from_file.chain(
                    self.kafka_properties
                        .iter()
                        .flat_map(|list| list.0.iter().cloned()),
                ),
            )
    }

    /// The stall limit as a duration.
    pub fn stall_after(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.stall_after_secs.max(1))
    }
}

/// Topic names; partition counts are fixed when the topics are created.
#[derive(Debug, Clone, Args)]
pub struct Topics {
    /// Append requests produced by clients over Kafka.
    #[arg(
        long = "topic-appends",
        env = "ESK_TOPIC_APPENDS",
        default_value = "appends"
    )]
    pub appends: String,
    /// Events from ingest before they are known committed (read only by the indexer).
    #[arg(
        long = "topic-ingest-log",
        env = "ESK_TOPIC_INGEST_LOG",
        default_value = "ingest-log"
    )]
    pub ingest_log: String,
    /// One outcome per request from the appends topic.
    #[arg(
        long = "topic-append-results",
        env = "ESK_TOPIC_APPEND_RESULTS",
        default_value = "append-results"
    )]
    pub append_results: String,
    /// Canonical topic of committed events for downstream consumers.
    #[arg(
        long = "topic-events",
        env = "ESK_TOPIC_EVENTS",
        default_value = "events"
    )]
    pub events: String,
}

impl Topics {
    /// All four topic names, in a fixed order.
    pub fn all(&self) -> [&str; 4] {
        [
            &self.appends,
            &self.ingest_log,
            &self.append_results,
            &self.events,
        ]
    }

    /// Topic names with a common prefix, for isolated test runs.
    pub fn with_prefix(prefix: &str) -> Self {
        Topics {
            appends: format!("{prefix}appends"),
            ingest_log: format!("{prefix}ingest-log"),
            append_results: format!("{prefix}append-results"),
            events: format!("{prefix}events"),
        }
    }
}

impl Default for Topics {
    fn default() -> Self {
        Topics::with_prefix("")
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

//! The projector's settings (flags and environment) and its projections file (TOML).
//!
//! ```toml
//! [[projection]]
//! name = "counts"             # unique; also the consumer group suffix and checkpoint key
//! handler = "sql"
//! sql = "category_type_counts" # a registered SQL projection (see handlers/sql.rs)
//!
//! [[projection]]
//! name = "orders-hook"
//! category = "Order"          # filter: a category, or `event_types = [..]`, or nothing = all
//! handler = "webhook"
//! url = "http://127.0.0.1:9000/events"
//!
//! [[projection]]
//! name = "placed"
//! event_types = ["OrderPlaced"]
//! handler = "topic"
//! topic = "orders-placed"
//! ```

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use esk_runtime::config::CommonConfig;
use serde::Deserialize;

/// Settings of the `projector` binary.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "projector",
    version,
    about = "Checkpointed, backpressure-aware projections"
)]
pub(crate) struct ProjectorConfig {
    #[command(flatten)]
    pub(crate) common: CommonConfig,
    #[command(flatten)]
    pub(crate) tuning: Tuning,
    /// The projections file (TOML). Without one, the two built-in SQL projections run.
    #[arg(long, env = "ESK_PROJECTOR_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

/// Knobs shared by every projection.
#[derive(Debug, Clone, Args)]
pub(crate) struct Tuning {
    /// Listen address for /metrics and /health.
    #[arg(
        long,
        env = "ESK_PROJECTOR_HTTP_ADDR",
        default_value = "127.0.0.1:9102"
    )]
    pub(crate) http_addr: String,
    /// Events queued per projection; partitions pause when it is full. Keep it well above the
    /// batch: pausing drops the client's prefetched records, which are then fetched again.
    #[arg(long, env = "ESK_PROJECTOR_QUEUE", default_value_t = 20000)]
    pub(crate) queue_capacity: usize,
    /// Most bytes of records queued per projection (events may be a MiB each); partitions
    /// pause beyond it, as beyond the count.
    #[arg(long, env = "ESK_PROJECTOR_QUEUE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub(crate) queue_bytes: usize,
    /// Partitions resume once the queue is below this fraction of its capacity.
    #[arg(long, env = "ESK_PROJECTOR_RESUME_BELOW", default_value_t = 0.5)]
    pub(crate) resume_below: f64,
    /// Most events handed to a handler at once.
    #[arg(long, env = "ESK_PROJECTOR_BATCH", default_value_t = 2000)]
    pub(crate) batch: usize,
    /// Events read per query while replaying from Postgres.
    #[arg(long, env = "ESK_PROJECTOR_REPLAY_BATCH", default_value_t = 10000)]
    pub(crate) replay_batch: i64,
    /// Most bytes of events read per query while replaying from Postgres.
    #[arg(long, env = "ESK_PROJECTOR_REPLAY_BATCH_BYTES", default_value_t = esk_runtime::db::DEFAULT_MAX_READ_BYTES)]
    pub(crate) replay_batch_bytes: usize,
    /// Attempts at a failing event before it is dead-lettered.
    #[arg(long, env = "ESK_PROJECTOR_MAX_ATTEMPTS", default_value_t = 5)]
    pub(crate) max_attempts: usize,
    /// First retry delay (ms); doubles up to 10 s.
    #[arg(long, env = "ESK_PROJECTOR_RETRY_MS", default_value_t = 100)]
    pub(crate) retry_ms: u64,
    /// Consumer group prefix; each projection's group is `<prefix>-<name>`.
    #[arg(
        long,
        env = "ESK_PROJECTOR_GROUP_PREFIX",
        default_value = "esk-projection"
    )]
    pub(crate) group_prefix: String,
    /// Postgres connections.
    #[arg(long, env = "ESK_PROJECTOR_PG_CONNECTIONS", default_value_t = 8)]
    pub(crate) pg_connections: u32,
    /// Apply schema migrations at start-up.
    #[arg(long, env = "ESK_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) migrate: bool,
}

/// What to do.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum Command {
    /// Run every configured projection (the default).
    Run,
    /// Reset a projection and replay it from Postgres, then exit; `run` continues it live.
    Rebuild {
        /// The projection's name.
        name: String,
    },
    /// Dead letters of a projection.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// List the configured projections and their positions.
    List,
}

/// `projector dead-letters ...`
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum DeadLetterCommand {
    /// Show the projection's dead letters that were not replayed.
    List {
        /// The projection's name.
        name: String,
    },
    /// Apply them again through the handler; those that succeed are marked replayed.
    Replay {
        /// The projection's name.
        name: String,
    },
}

/// The projections file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProjectionsFile {
    #[serde(rename = "projection", default)]
    pub(crate) projections: Vec<ProjectionSpec>,
}

/// One projection as declared. (Unknown keys are caught by [`check_keys`]: serde cannot deny
/// them through a flattened, tagged enum.)
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ProjectionSpec {
    pub(crate) name: String,
    /// Only events of this category (`Order` or `Order-*`).
    #[serde(default)]
    pub(crate) category: Option<String>,
    /// Only events of these types.
    #[serde(default)]
    pub(crate) event_types: Option<Vec<String>>,
    #[serde(flatten)]
    pub(crate) handler: HandlerSpec,
}

/// The handler kind and its settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "handler", rename_all = "snake_case")]
pub(crate) enum HandlerSpec {
    /// A read model in Postgres, exactly once.
    Sql { sql: String },
    /// HTTP POST of event batches, at least once.
    Webhook {
        url: String,
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
    },
    /// Forward to a derived topic, at least once.
    Topic { topic: String },
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// Errors in the projections file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid projections file {path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("invalid projection {name:?}: {reason}")]
    Invalid { name: String, reason: String },
}

impl ProjectorConfig {
    /// The declared projections (or the built-in defaults), checked.
    pub(crate) fn projections(&self) -> Result<Vec<ProjectionSpec>, ConfigError> {
        let specs = match &self.config {
            None => vec![
                ProjectionSpec {
                    name: "counts".into(),
                    category: None,
                    event_types: None,
                    handler: HandlerSpec::Sql {
                        sql: "category_type_counts".into(),
                    },
                },
                ProjectionSpec {
                    name: "stream-summary".into(),
                    category: None,
                    event_types: None,
                    handler: HandlerSpec::Sql {
                        sql: "stream_summary".into(),
                    },
                },
            ],
            Some(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: shown.clone(),
                    source,
                })?;
                check_keys(&text, &shown)?;
                toml::from_str::<ProjectionsFile>(&text)
                    .map_err(|source| ConfigError::Parse {
                        path: shown,
                        source,
                    })?
                    .projections
            }
        };
        let mut seen = std::collections::HashSet::new();
        for spec in &specs {
            let invalid = |reason: &str| ConfigError::Invalid {
                name: spec.name.clone(),
                reason: reason.into(),
            };
            let name_ok = !spec.name.is_empty()
                && spec.name.len() <= 100
                && spec
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !name_ok {
                return Err(invalid(
                    "names are 1-100 characters of A-Z, a-z, 0-9, - and _",
                ));
            }
            if !seen.insert(spec.name.clone()) {
                return Err(invalid("declared twice"));
            }
            if spec.category.is_some() && spec.event_types.is_some() {
                return Err(invalid("give a category or event_types, not both"));
            }
            if let HandlerSpec::Sql { sql } = &spec.handler {
                if crate::handlers::sql::registered(sql).is_none() {
                    return Err(invalid(&format!(
                        "unknown sql projection {sql:?}; known: {}",
                        crate::handlers::sql::names().join(", ")
                    )));
                }
            }
        }
        Ok(specs)
    }
}

/// Rejects keys a projection's handler does not know, so a typo is an error, not a default.
fn check_keys(text: &str, path: &str) -> Result<(), ConfigError> {
    let value: toml::Value = toml::from_str(text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })?;
    let Some(list) = value.get("projection").and_then(toml::Value::as_array) else {
        return Ok(());
    };
    for table in list.iter().filter_map(toml::Value::as_table) {
        let name = table
            .get("name")
            .and_then(toml::Value::as_str)
            .unwrap_or("?");
        let specific: &[&str] = match table.get("handler").and_then(toml::Value::as_str) {
            Some("sql") => &["sql"],
            Some("webhook") => &["url", "timeout_ms"],
            Some("topic") => &["topic"],
            _ => &[],
        };
        for key in table.keys() {
            let common = matches!(
                key.as_str(),
                "name" | "category" | "event_types" | "handler"
            );
            if !common && !specific.contains(&key.as_str()) {
                return Err(ConfigError::Invalid {
                    name: name.to_owned(),
                    reason: format!("unknown key `{key}`"),
                });
            }
        }
    }
    Ok(())
}

//! The projections file (TOML): which projections run, what each takes and which handler it
//! uses, checked before anything connects.
//!
//! ```toml
//! [[projection]]
//! name = "counts"             # unique; also the consumer group suffix and checkpoint key
//! handler = "sql"
//! sql = "category_type_counts" # a registered SQL projection (see sql_projections/mod.rs)
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

use std::path::Path;

use serde::Deserialize;

use crate::sql_projections;

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
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not have the expected shape.
    #[error("invalid projections file {path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    /// A projection's declaration is wrong (name, filter, handler, unknown key).
    #[error("invalid projection {name:?}: {reason}")]
    Invalid { name: String, reason: String },
}

/// The projections declared in `file` (without one, the built-in defaults), checked.
pub(crate) fn load(file: Option<&Path>) -> Result<Vec<ProjectionSpec>, ConfigError> {
    let specs = match file {
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
            if !sql_projections::KINDS.contains(&sql.as_str()) {
                return Err(invalid(&format!(
                    "unknown sql projection {sql:?}; known: {}",
                    sql_projections::KINDS.join(", ")
                )));
            }
        }
    }
    Ok(specs)
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

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
//! url = "https://billing.internal/events" # https, or http to a loopback host
//! secret = "..."              # HMAC-SHA256 key of the `esk-signature` header
//!
//! [[projection]]
//! name = "placed"
//! event_types = ["OrderPlaced"]
//! handler = "topic"
//! topic = "orders-placed"
//! ```

use std::net::IpAddr;
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
    Webhook(WebhookSpec),
    /// Forward to a derived topic, at least once.
    Topic { topic: String },
}

/// A webhook projection's settings.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct WebhookSpec {
    /// Where batches are POSTed: `https`, or `http` to a loopback host (or with
    /// `allow_insecure_http`).
    pub(crate) url: String,
    /// Each request's timeout; more than 0.
    #[serde(default = "default_timeout_ms")]
    pub(crate) timeout_ms: u64,
    /// The key of the `esk-signature` header's HMAC.
    pub(crate) secret: Secret,
    /// Allows `http` to a host that is not loopback (the bodies and signatures travel in clear).
    #[serde(default)]
    pub(crate) allow_insecure_http: bool,
}

/// Shortest webhook secret accepted, in bytes.
pub(crate) const MIN_SECRET_BYTES: usize = 16;

/// A webhook secret: never shown by `Debug`, so it cannot reach a log line.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub(crate) struct Secret(String);

impl Secret {
    /// The key bytes, for signing only.
    pub(crate) fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// Why a webhook's settings are refused, if they are.
fn check_webhook(spec: &WebhookSpec) -> Result<(), String> {
    if spec.timeout_ms == 0 {
        return Err("timeout_ms must be more than 0".into());
    }
    if spec.secret.expose().len() < MIN_SECRET_BYTES {
        return Err(format!(
            "secret must be at least {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)"
        ));
    }
    let url = reqwest::Url::parse(&spec.url)
        .map_err(|e| format!("url {:?} does not parse: {e}", spec.url))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if spec.allow_insecure_http || is_loopback(&url) => Ok(()),
        "http" => Err(format!(
            "url {:?} is plain http to a host that is not loopback: use https, or set \
             allow_insecure_http = true to send events and signatures in clear",
            spec.url
        )),
        other => Err(format!(
            "url {:?} has scheme {other:?}: use https",
            spec.url
        )),
    }
}

/// Whether the URL's host is this machine (`localhost`, 127.0.0.0/8, `::1`).
fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
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
        if let HandlerSpec::Webhook(webhook) = &spec.handler {
            check_webhook(webhook).map_err(|reason| invalid(&reason))?;
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
            Some("webhook") => &["url", "timeout_ms", "secret", "allow_insecure_http"],
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

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    /// Loads a file of one webhook projection with `settings`.
    fn load_webhook(settings: &str) -> Result<Vec<ProjectionSpec>, ConfigError> {
        let path = std::env::temp_dir().join(format!(
            "esk-projections-unit-{}.toml",
            uuid::Uuid::new_v4()
        ));
        let text = format!("[[projection]]\nname = \"hook\"\nhandler = \"webhook\"\n{settings}");
        std::fs::write(&path, text).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let loaded = load(Some(&path));
        let _ = std::fs::remove_file(&path);
        loaded
    }

    fn refusal(settings: &str) -> String {
        match load_webhook(settings) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn https_and_loopback_http_are_accepted() {
        for url in [
            "https://billing.internal/events",
            "http://127.0.0.1:9000/events",
            "http://127.9.9.9/events",
            "http://localhost:9000/events",
            "http://[::1]:9000/events",
        ] {
            let loaded = load_webhook(&format!("url = \"{url}\"\nsecret = \"{SECRET}\"\n"));
            assert!(loaded.is_ok(), "{url}: {loaded:?}");
        }
    }

    #[test]
    fn plain_http_to_another_host_is_refused_unless_allowed() {
        let settings = format!("url = \"http://billing.internal/events\"\nsecret = \"{SECRET}\"\n");
        let refused = refusal(&settings);
        assert!(refused.contains("not loopback"), "{refused}");
        assert!(refused.contains("allow_insecure_http"), "{refused}");
        let allowed = load_webhook(&format!("{settings}allow_insecure_http = true\n"));
        assert!(allowed.is_ok(), "{allowed:?}");
        let ftp = refusal(&format!("url = \"ftp://h/x\"\nsecret = \"{SECRET}\"\n"));
        assert!(ftp.contains("use https"), "{ftp}");
    }

    #[test]
    fn a_zero_timeout_is_refused() {
        let refused = refusal(&format!(
            "url = \"https://h/x\"\nsecret = \"{SECRET}\"\ntimeout_ms = 0\n"
        ));
        assert!(
            refused.contains("timeout_ms must be more than 0"),
            "{refused}"
        );
    }

    #[test]
    fn a_missing_or_short_secret_is_refused() {
        let missing = refusal("url = \"https://h/x\"\n");
        assert!(missing.contains("secret"), "{missing}");
        let short = refusal("url = \"https://h/x\"\nsecret = \"short\"\n");
        assert!(short.contains("at least 16 bytes"), "{short}");
    }

    #[test]
    fn the_secret_is_never_shown() {
        let loaded = load_webhook(&format!("url = \"https://h/x\"\nsecret = \"{SECRET}\"\n"));
        let shown = format!("{loaded:?}");
        assert!(shown.contains("redacted"), "{shown}");
        assert!(!shown.contains(SECRET), "{shown}");
    }
}

//! The user's librdkafka properties (`--kafka-property`, `ESK_KAFKA_PROPERTIES`,
//! `--kafka-properties-file`): parsed and checked by librdkafka when the configuration is read,
//! so a misspelt name stops the process before it starts, and shown everywhere with the values
//! of secret properties (`sasl.password`, ...) redacted.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use rdkafka::error::KafkaError;
use rdkafka::ClientConfig;

use crate::redact::{is_secret_setting, REDACTED};

/// Properties esk's guarantees rest on, with the setting to use instead, if any: a consumer
/// that stores offsets before processing could lose events, a producer without idempotence
/// could duplicate them.
const RESERVED: &[(&str, &str)] = &[
    (
        "bootstrap.servers",
        "set --kafka-brokers / ESK_KAFKA_BROKERS instead",
    ),
    (
        "metadata.broker.list",
        "set --kafka-brokers / ESK_KAFKA_BROKERS instead",
    ),
    ("group.id", "each process has its own group setting"),
    (
        "enable.auto.offset.store",
        "esk stores offsets only after processing",
    ),
    (
        "enable.auto.commit",
        "esk decides how offsets are committed",
    ),
    ("enable.idempotence", "esk's producers must be idempotent"),
    ("acks", "esk's producers wait for every in-sync replica"),
    (
        "request.required.acks",
        "esk's producers wait for every in-sync replica",
    ),
    (
        "auto.offset.reset",
        "a new consumer group must read from the beginning",
    ),
];

/// One librdkafka property, `key=value`, that librdkafka accepted when it was parsed. Its
/// `Debug` and `Display` show the value as `***` when the key is secret.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaProperty {
    key: String,
    value: String,
}

/// Why a `key=value` entry was refused. The messages never quote a value.
#[derive(Debug, thiserror::Error)]
pub enum PropertyError {
    /// Not `key=value`.
    #[error("expected KEY=VALUE, a librdkafka property such as security.protocol=SASL_SSL")]
    Syntax,
    /// esk sets this property itself and depends on its value.
    #[error("`{key}` cannot be set: {why}")]
    Reserved {
        /// The property.
        key: String,
        /// Why, and what to set instead.
        why: &'static str,
    },
    /// librdkafka does not know the key or does not take the value.
    #[error("`{key}`: {reason}")]
    Rejected {
        /// The property.
        key: String,
        /// librdkafka's reason, with a secret value replaced by `***`.
        reason: String,
    },
    /// An entry of a `;`-separated list that also holds a secret failed: since a `;` inside
    /// the secret would have split it, nothing of the entry is quoted.
    #[error("entry {entry} of the list is not a valid KEY=VALUE property (not quoted: the list holds a secret, which may contain `;`; put secrets in a properties file, ESK_KAFKA_PROPERTIES_FILE)")]
    InListWithSecret {
        /// The entry's position, from 1.
        entry: usize,
    },
}

impl KafkaProperty {
    /// Parses `key=value` (the value is everything after the first `=`) and asks librdkafka
    /// whether it knows the key and takes the value.
    pub fn parse(entry: &str) -> Result<Self, PropertyError> {
        let (key, value) = entry.split_once('=').ok_or(PropertyError::Syntax)?;
        let key = key.trim();
        if key.is_empty() || key.chars().any(char::is_whitespace) {
            return Err(PropertyError::Syntax);
        }
        if let Some((_, why)) = RESERVED.iter().find(|(reserved, _)| *reserved == key) {
            return Err(PropertyError::Reserved {
                key: key.to_owned(),
                why,
            });
        }
        let property = KafkaProperty {
            key: key.to_owned(),
            value: value.to_owned(),
        };
        property.check()?;
        Ok(property)
    }

    /// librdkafka's verdict on this property, set alone on a fresh configuration.
    fn check(&self) -> Result<(), PropertyError> {
        let mut config = ClientConfig::new();
        config.set(&self.key, &self.value);
        match config.create_native_config() {
            Ok(_) => Ok(()),
            Err(KafkaError::ClientConfig(_, reason, _, _)) => Err(PropertyError::Rejected {
                key: self.key.clone(),
                reason: self.hide_value(&reason),
            }),
            Err(other) => Err(PropertyError::Rejected {
                key: self.key.clone(),
                reason: self.hide_value(&other.to_string()),
            }),
        }
    }

    /// `text` with this property's value replaced by `***` if the key is secret.
    fn hide_value(&self, text: &str) -> String {
        if self.is_secret() && !self.value.is_empty() {
            text.replace(&self.value, REDACTED)
        } else {
            text.to_owned()
        }
    }

    /// The property's name.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The property's value (a secret for some keys: see [`KafkaProperty::is_secret`]).
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Whether the value is a secret ([`crate::redact::is_secret_setting`]).
    pub fn is_secret(&self) -> bool {
        is_secret_setting(&self.key)
    }
}

impl fmt::Display for KafkaProperty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = if self.is_secret() {
            REDACTED
        } else {
            &self.value
        };
        write!(f, "{}={value}", self.key)
    }
}

impl fmt::Debug for KafkaProperty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KafkaProperty({self})")
    }
}

/// The properties of a file of `key=value` lines (blank lines and lines starting with `#`
/// skipped; whitespace around keys and values ignored), so that secrets need not sit in the
/// process's environment or command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertiesFile {
    /// Where they were read from.
    pub path: PathBuf,
    /// The properties, in file order.
    pub properties: Vec<KafkaProperty>,
}

impl PropertiesFile {
    /// Reads and checks every property of the file at `path`.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        let mut properties = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let property = KafkaProperty::parse(line)
                .map(|p| KafkaProperty {
                    value: p.value.trim().to_owned(),
                    ..p
                })
                .map_err(|error| format!("{} line {}: {error}", path.display(), index + 1))?;
            properties.push(property);
        }
        Ok(PropertiesFile {
            path: path.to_owned(),
            properties,
        })
    }
}

/// The properties of one `--kafka-property` or `ESK_KAFKA_PROPERTIES` value: entries separated
/// by `;`, empty ones skipped (so an empty variable is no property at all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertyList(pub Vec<KafkaProperty>);

impl PropertyList {
    /// Parses and checks every `;`-separated entry of `text`.
    pub fn parse(text: &str) -> Result<Self, PropertyError> {
        let entries: Vec<&str> = text
            .split(';')
            .filter(|entry| !entry.trim().is_empty())
            .collect();
        let holds_secret = entries.iter().any(|entry| {
            entry
                .split_once('=')
                .is_some_and(|(key, _)| is_secret_setting(key.trim()))
        });
        entries
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                KafkaProperty::parse(entry).map_err(|error| {
                    if holds_secret {
                        PropertyError::InListWithSecret { entry: index + 1 }
                    } else {
                        error
                    }
                })
            })
            .collect::<Result<_, _>>()
            .map(PropertyList)
    }
}

/// The clap parser of a [`PropertyList`]: its errors name the key, never the value (clap's own
/// would quote the whole entry, secret included).
#[derive(Debug, Clone, Copy)]
pub struct PropertyParser;

impl TypedValueParser for PropertyParser {
    type Value = PropertyList;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<PropertyList, clap::Error> {
        let text = value
            .to_str()
            .ok_or_else(|| invalid(cmd, arg, "not UTF-8".into()))?;
        PropertyList::parse(text).map_err(|error| invalid(cmd, arg, error.to_string()))
    }
}

/// The clap parser of a properties file path: reads and checks the file.
#[derive(Debug, Clone, Copy)]
pub struct PropertiesFileParser;

impl TypedValueParser for PropertiesFileParser {
    type Value = PropertiesFile;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<PropertiesFile, clap::Error> {
        PropertiesFile::read(Path::new(value)).map_err(|reason| invalid(cmd, arg, reason))
    }
}

/// A clap usage error (exit code 2) naming the flag and its environment variable.
fn invalid(cmd: &clap::Command, arg: Option<&clap::Arg>, reason: String) -> clap::Error {
    let name = match arg {
        Some(arg) => match (arg.get_long(), arg.get_env()) {
            (Some(long), Some(env)) => format!("--{long} / {}", env.to_string_lossy()),
            (Some(long), None) => format!("--{long}"),
            _ => arg.get_id().to_string(),
        },
        None => "value".to_owned(),
    };
    let mut cmd = cmd.clone();
    cmd.error(
        ErrorKind::ValueValidation,
        format!("invalid {name}: {reason}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_key_and_value_and_keeps_equals_signs_in_the_value() -> Result<(), PropertyError> {
        let property = KafkaProperty::parse("sasl.username=a=b")?;
        assert_eq!(property.key(), "sasl.username");
        assert_eq!(property.value(), "a=b");
        Ok(())
    }

    #[test]
    fn refuses_bad_syntax_unknown_names_and_reserved_ones() {
        assert!(matches!(
            KafkaProperty::parse("no-equals"),
            Err(PropertyError::Syntax)
        ));
        assert!(matches!(
            KafkaProperty::parse("=x"),
            Err(PropertyError::Syntax)
        ));
        assert!(matches!(
            KafkaProperty::parse(""),
            Err(PropertyError::Syntax)
        ));
        let unknown = KafkaProperty::parse("no.such.property=1");
        assert!(
            matches!(&unknown, Err(PropertyError::Rejected { key, .. }) if key == "no.such.property"),
            "{unknown:?}"
        );
        assert!(matches!(
            KafkaProperty::parse("enable.auto.offset.store=true"),
            Err(PropertyError::Reserved { .. })
        ));
        let bad_value = KafkaProperty::parse("security.protocol=carrier-pigeon");
        assert!(
            matches!(&bad_value, Err(PropertyError::Rejected { reason, .. }) if reason.contains("carrier-pigeon")),
            "{bad_value:?}"
        );
    }

    #[test]
    fn oidc_token_fetching_is_refused_as_it_is_not_built_in() {
        let oidc = KafkaProperty::parse("sasl.oauthbearer.method=oidc");
        assert!(
            matches!(&oidc, Err(PropertyError::Rejected { .. })),
            "{oidc:?}"
        );
    }

    #[test]
    fn a_list_skips_empty_entries() -> Result<(), PropertyError> {
        assert_eq!(PropertyList::parse("")?, PropertyList::default());
        let list = PropertyList::parse(" ;client.id=a;; linger.ms=5;")?;
        let keys: Vec<&str> = list.0.iter().map(KafkaProperty::key).collect();
        assert_eq!(keys, ["client.id", "linger.ms"]);
        assert!(matches!(
            PropertyList::parse("client.id=a;oops"),
            Err(PropertyError::Syntax)
        ));
        Ok(())
    }

    #[test]
    fn never_shows_a_secret_value() -> Result<(), PropertyError> {
        let property = KafkaProperty::parse("sasl.password=hunter2")?;
        assert_eq!(property.to_string(), "sasl.password=***");
        assert!(!format!("{property:?}").contains("hunter2"));
        assert_eq!(
            property.hide_value("Invalid value \"hunter2\""),
            "Invalid value \"***\""
        );
        let plain = KafkaProperty::parse("client.id=esk-a")?;
        assert_eq!(plain.to_string(), "client.id=esk-a");
        Ok(())
    }

    #[test]
    fn reads_a_file_of_properties() -> Result<(), Box<dyn std::error::Error>> {
        let path = std::env::temp_dir().join(format!(
            "esk-kafka-properties-{}.properties",
            std::process::id()
        ));
        std::fs::write(
            &path,
            "# SASL\n\nsasl.mechanism = SCRAM-SHA-512\nsasl.password=a;b=c \r\n",
        )?;
        let file = PropertiesFile::read(&path)?;
        assert_eq!(file.properties.len(), 2);
        assert_eq!(file.properties[0].value(), "SCRAM-SHA-512");
        assert_eq!(file.properties[1].value(), "a;b=c");
        std::fs::write(&path, "sasl.mechanism=PLAIN\nsasl.pasword=x\n")?;
        let error = PropertiesFile::read(&path).err().unwrap_or_default();
        assert!(error.contains("line 2"), "{error}");
        assert!(error.contains("sasl.pasword"), "{error}");
        std::fs::remove_file(&path)?;
        Ok(())
    }

    #[test]
    fn a_list_holding_a_secret_never_quotes_a_failing_entry() {
        // The password contained `;`: its second half became an entry of its own.
        let error = PropertyList::parse("sasl.password=ab;cd=ef")
            .expect_err("cd is no property")
            .to_string();
        assert!(!error.contains("cd"), "{error}");
        assert!(error.contains("entry 2"), "{error}");
        // Without a secret in the list, the key is named as before.
        let error = PropertyList::parse("client.id=x;no.such.property=1")
            .expect_err("unknown property")
            .to_string();
        assert!(error.contains("no.such.property"), "{error}");
    }
}

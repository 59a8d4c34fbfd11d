//! What every Kafka client esk creates is built from: the brokers and the user's librdkafka
//! properties, applied after esk's own settings at creation, in [`ClientBuilder`] only.

use rdkafka::client::ClientContext;
use rdkafka::config::{FromClientConfig, FromClientConfigAndContext};
use rdkafka::error::KafkaResult;
use rdkafka::ClientConfig;

use super::properties::KafkaProperty;

/// How a consumer's fetch requests wait on the broker (`fetch.wait.max.ms`,
/// `fetch.min.bytes`). A fetch is answered once it has `min_bytes` or after `wait_ms`; every
/// esk consumer passes records on as soon as it has them, so these bound how long a record
/// waits on the broker when the topic is quiet. On Tansu 0.6 a fetch always takes `wait_ms`
/// (it sleeps out the wait even when it has records) and 0 answers at once, empty or not: a
/// busy loop of fetches while idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchTuning {
    /// Longest time the broker holds a fetch (ms).
    pub wait_ms: u32,
    /// Bytes a fetch waits for before it is answered.
    pub min_bytes: u32,
}

impl Default for FetchTuning {
    fn default() -> Self {
        FetchTuning {
            wait_ms: DEFAULT_FETCH_WAIT_MS,
            min_bytes: DEFAULT_FETCH_MIN_BYTES,
        }
    }
}

/// Default `fetch.wait.max.ms` of esk's consumers (see [`FetchTuning`]).
pub const DEFAULT_FETCH_WAIT_MS: u32 = 10;
/// Default `fetch.min.bytes` of esk's consumers: answer as soon as there is a record.
pub const DEFAULT_FETCH_MIN_BYTES: u32 = 1;

/// The brokers and how to talk to them (TLS, SASL, any librdkafka property).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    brokers: String,
    properties: Vec<KafkaProperty>,
    fetch: FetchTuning,
}

impl KafkaSettings {
    /// Plaintext, no properties: librdkafka's defaults under esk's.
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaSettings {
            brokers: brokers.into(),
            properties: Vec::new(),
            fetch: FetchTuning::default(),
        }
    }

    /// These settings with consumers fetching as `fetch` says.
    pub fn with_fetch(mut self, fetch: FetchTuning) -> Self {
        self.fetch = fetch;
        self
    }

    /// How consumers fetch.
    pub fn fetch(&self) -> FetchTuning {
        self.fetch
    }

    /// These settings with `properties` added (a later property overrides an earlier one).
    pub fn with_properties(mut self, properties: impl IntoIterator<Item = KafkaProperty>) -> Self {
        self.properties.extend(properties);
        self
    }

    /// The bootstrap servers (comma separated host:port).
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// The user's properties, in the order they are applied.
    pub fn properties(&self) -> &[KafkaProperty] {
        &self.properties
    }

    /// The value the user gave `key` last, if any.
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties
            .iter()
            .rev()
            .find(|p| p.key() == key)
            .map(KafkaProperty::value)
    }

    /// The `security.protocol` in force (librdkafka's default is `plaintext`).
    pub fn security_protocol(&self) -> String {
        self.property("security.protocol")
            .unwrap_or("plaintext")
            .to_ascii_lowercase()
    }

    /// The first configuration of every client: the brokers and esk's base settings.
    pub(super) fn builder(&self) -> ClientBuilder {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("socket.keepalive.enable", "true")
            .set("log_level", "4");
        ClientBuilder {
            config,
            settings: self.clone(),
        }
    }
}

/// A client's configuration: esk's settings for one kind of client, then, at creation, the
/// user's properties on top, so that they override esk's.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    config: ClientConfig,
    settings: KafkaSettings,
}

impl ClientBuilder {
    /// Sets one of esk's settings (the user's properties still win).
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.config.set(key, value);
        self
    }

    /// The configuration a client is created with: esk's settings, then the user's.
    pub fn config(&self) -> ClientConfig {
        let mut config = self.config.clone();
        for property in self.settings.properties() {
            config.set(property.key(), property.value());
        }
        config
    }

    /// Creates a client with the default context.
    pub fn create<T: FromClientConfig>(&self) -> KafkaResult<T> {
        self.config().create()
    }

    /// Creates a client with `context`.
    pub fn create_with_context<C, T>(&self, context: C) -> KafkaResult<T>
    where
        C: ClientContext,
        T: FromClientConfigAndContext<C>,
    {
        self.config().create_with_context(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::properties::PropertyError;

    #[test]
    fn the_users_properties_come_last_and_win() -> Result<(), PropertyError> {
        let settings = KafkaSettings::new("b:9092").with_properties([
            KafkaProperty::parse("socket.keepalive.enable=false")?,
            KafkaProperty::parse("security.protocol=SASL_SSL")?,
            KafkaProperty::parse("client.id=esk-test")?,
        ]);
        let mut builder = settings.builder();
        builder.set("linger.ms", "1").set("client.id", "esk");
        let config = builder.config();
        assert_eq!(config.get("bootstrap.servers"), Some("b:9092"));
        assert_eq!(config.get("socket.keepalive.enable"), Some("false"));
        assert_eq!(config.get("client.id"), Some("esk-test"));
        assert_eq!(config.get("linger.ms"), Some("1"));
        assert_eq!(settings.security_protocol(), "sasl_ssl");
        assert_eq!(KafkaSettings::new("b").security_protocol(), "plaintext");
        Ok(())
    }

    #[test]
    fn debug_output_hides_secret_properties() -> Result<(), PropertyError> {
        let settings = KafkaSettings::new("b:9092")
            .with_properties([KafkaProperty::parse("sasl.password=hunter2")?]);
        let mut builder = settings.builder();
        builder.set("acks", "all");
        let shown = format!("{settings:?} {builder:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("sasl.password=***"), "{shown}");
        Ok(())
    }
}

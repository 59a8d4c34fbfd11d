//! Whether the brokers can be talked to with the configured security settings. librdkafka
//! retries every connection failure forever, a TLS handshake or a SASL login that can never
//! succeed included; [`check_connection`] tells those apart from a broker that is merely down,
//! so a process with the wrong `security.protocol` or password stops within seconds saying why,
//! while one started before its brokers waits for them as before. [`watch_connection`] keeps
//! checking at run time and reports such failures on `/health`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use tokio_util::sync::CancellationToken;

use super::settings::KafkaSettings;
use crate::telemetry::Health;

/// How often the same security failure must be seen before it counts: one disconnection at
/// the wrong moment (a broker restarting mid-handshake) looks like a mismatch once, a real
/// mismatch repeats at every reconnect. (librdkafka reports the first two of a series of
/// identical failures, then stays silent for 30 s.)
const REPEATS: u32 = 2;

/// How long a process waits at start for the brokers to answer before it goes on without them
/// (a security failure ends the wait sooner). Longer than [`REPEATS`] connection setups.
pub const START_CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// The check's limit on setting up one connection (TCP, TLS, SASL), in milliseconds, instead
/// of librdkafka's 30 s: a listener that does not speak TLS may keep a TLS client waiting
/// rather than close (Tansu does), and that must show within seconds.
const SETUP_TIMEOUT_MS: &str = "4000";

/// How often [`watch_connection`] checks the connection.
const WATCH_EVERY: Duration = Duration::from_secs(30);

/// Errors that no retry fixes: the client's security settings do not match the broker's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityFailure {
    /// The TLS handshake failed (a TLS client on a plaintext listener, an unknown CA, an
    /// expired or refused certificate).
    Tls,
    /// The broker refused the SASL login (wrong credentials, unsupported mechanism).
    Authentication,
    /// The broker closed the connection before it answered, or as soon as it was up: what a
    /// TLS listener does to a plaintext client, and a SASL listener to a client that does not
    /// authenticate.
    ProtocolMismatch,
}

impl std::fmt::Display for SecurityFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SecurityFailure::Tls => "the TLS handshake failed",
            SecurityFailure::Authentication => "SASL authentication failed",
            SecurityFailure::ProtocolMismatch => "the broker closed every connection at once",
        })
    }
}

/// The security failure a connection failure that librdkafka reported (its `FAIL` log line)
/// stands for, if any. A broker that is down, unreachable or slow is none.
pub fn security_failure(message: &str) -> Option<SecurityFailure> {
    // A connection that got no further than the TLS handshake: the listener does not speak
    // TLS, does not answer this client's hello, or refused its certificate.
    if message.contains("SSL handshake failed") || message.contains("state SSL_HANDSHAKE") {
        return Some(SecurityFailure::Tls);
    }
    if message.contains("SASL") && (message.contains("failed") || message.contains("error"))
        || message.contains("state AUTH_")
    {
        return Some(SecurityFailure::Authentication);
    }
    // librdkafka's own hint, given when a connection dies while it asks for API versions; and
    // a connection closed as soon as it was up (librdkafka's threshold: 2 s), as a listener
    // that requires SASL closes a client that does not authenticate.
    if message.contains("security.protocol")
        || ms_in_state(message, "UP").is_some_and(|ms| ms < 2000)
    {
        return Some(SecurityFailure::ProtocolMismatch);
    }
    None
}

/// The `N` of librdkafka's `(after Nms in state STATE` suffix.
fn ms_in_state(message: &str, state: &str) -> Option<u64> {
    let (before, _) = message.rsplit_once(&format!("ms in state {state}"))?;
    let (_, digits) = before.rsplit_once("(after ")?;
    digits.parse().ok()
}

/// The security failures a client reported, the last one with its text and how often it was
/// seen in a row (another connection failure, or [`SecurityErrors::take`], starts over).
#[derive(Debug, Default)]
struct SecurityErrors {
    last: Mutex<Option<(SecurityFailure, String, u32)>>,
}

impl SecurityErrors {
    fn record(&self, failure: SecurityFailure, text: String) {
        if let Ok(mut last) = self.last.lock() {
            let seen = match last.as_ref() {
                Some((previous, _, seen)) if *previous == failure => seen + 1,
                _ => 1,
            };
            *last = Some((failure, text, seen));
        }
    }

    /// The failure seen often enough to count, if any.
    fn confirmed(&self) -> Option<(SecurityFailure, String)> {
        let last = self.last.lock().ok()?;
        match last.as_ref() {
            Some((failure, text, seen)) if *seen >= REPEATS => Some((*failure, text.clone())),
            _ => None,
        }
    }

    fn take(&self) {
        if let Ok(mut last) = self.last.lock() {
            *last = None;
        }
    }
}

/// A client context that logs librdkafka's lines as the default one does and records the
/// connection failures (`FAIL` lines: librdkafka logs every one, but hands only the severe
/// ones to the error callback) that are [`SecurityFailure`]s.
#[derive(Debug, Clone, Default)]
struct SecurityWatch {
    errors: Arc<SecurityErrors>,
}

impl ClientContext for SecurityWatch {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
        }
        if fac == "FAIL" {
            match security_failure(message) {
                Some(failure) => self
                    .errors
                    .record(failure, crate::redact::redact_text(message)),
                // A broker that went down in between: what came before was no mismatch.
                None => self.errors.take(),
            }
        }
    }
}

impl ConsumerContext for SecurityWatch {}

/// Why the brokers cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KafkaConnectError {
    /// librdkafka refused the configuration (a missing certificate file, a property that only
    /// fails in combination with another).
    #[error("cannot create a Kafka client for {brokers} (security.protocol={protocol}): {source}")]
    Client {
        /// The bootstrap servers.
        brokers: String,
        /// The `security.protocol` in force.
        protocol: String,
        /// librdkafka's error.
        #[source]
        source: Box<KafkaError>,
    },
    /// The brokers answer, but not to these security settings.
    #[error(
        "cannot connect to the Kafka brokers {brokers} with security.protocol={protocol}: \
         {failure} ({detail}); check security.protocol and the ssl.* / sasl.* properties \
         (--kafka-property) against the broker's listener"
    )]
    Security {
        /// The bootstrap servers.
        brokers: String,
        /// The `security.protocol` in force.
        protocol: String,
        /// The kind of failure.
        failure: SecurityFailure,
        /// librdkafka's error text (secrets redacted).
        detail: String,
    },
    /// The check itself could not run to its end.
    #[error("the Kafka connection check did not finish: {0}")]
    Interrupted(String),
}

/// A client that only asks for metadata, watched for security failures.
struct Probe {
    consumer: BaseConsumer<SecurityWatch>,
    errors: Arc<SecurityErrors>,
    settings: KafkaSettings,
}

impl Probe {
    fn new(settings: &KafkaSettings) -> Result<Self, KafkaConnectError> {
        let watch = SecurityWatch::default();
        let errors = watch.errors.clone();
        let mut builder = settings.builder();
        builder.set("socket.connection.setup.timeout.ms", SETUP_TIMEOUT_MS);
        let mut config = builder.config();
        // rust-rdkafka derives the level from the tracing subscriber (none in the CLI), and
        // connection failures are logged as warnings.
        config.set_log_level(RDKafkaLogLevel::Warning);
        let consumer =
            config
                .create_with_context(watch)
                .map_err(|source| KafkaConnectError::Client {
                    brokers: settings.brokers().to_owned(),
                    protocol: settings.security_protocol(),
                    source: Box::new(source),
                })?;
        Ok(Probe {
            consumer,
            errors,
            settings: settings.clone(),
        })
    }

    /// Asks for metadata until it comes, a security failure is confirmed, or `timeout` passes
    /// (blocking). `Ok(true)`: the brokers answered; `Ok(false)`: they did not, for no reason
    /// that rules out a retry.
    fn round(&self, timeout: Duration) -> Result<bool, KafkaConnectError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answered = self
                .consumer
                .fetch_metadata(None, left.min(Duration::from_millis(500)))
                .is_ok();
            // Serves the error callbacks queued meanwhile.
            let _ = self.consumer.poll(Duration::ZERO);
            if answered {
                self.errors.take();
                return Ok(true);
            }
            if let Some((failure, detail)) = self.errors.confirmed() {
                return Err(KafkaConnectError::Security {
                    brokers: self.settings.brokers().to_owned(),
                    protocol: self.settings.security_protocol(),
                    failure,
                    detail,
                });
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
        }
    }
}

/// Connects to the brokers of `settings` and waits up to `timeout` for them to answer a
/// metadata request (blocking: call from a blocking task). Security settings the brokers
/// refuse end it early with [`KafkaConnectError::Security`]; brokers that do not answer at all
/// are no error (`Ok(false)`, and a warning), since librdkafka keeps trying and `/health` tells.
/// `Ok(true)`: the brokers answered.
pub fn check_connection(
    settings: &KafkaSettings,
    timeout: Duration,
) -> Result<bool, KafkaConnectError> {
    let probe = Probe::new(settings)?;
    let answered = probe.round(timeout)?;
    if !answered {
        tracing::warn!(
            brokers = settings.brokers(),
            "the Kafka brokers did not answer within {timeout:?}; the clients keep trying"
        );
    }
    Ok(answered)
}

/// [`check_connection`] from async code.
pub async fn check_connection_async(
    settings: &KafkaSettings,
    timeout: Duration,
) -> Result<bool, KafkaConnectError> {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || check_connection(&settings, timeout))
        .await
        .map_err(|error| KafkaConnectError::Interrupted(error.to_string()))?
}

/// The `/health` key of a security failure at run time.
const HEALTH_KEY: &str = "kafka security";

/// Checks the connection every 30 s until `shutdown`: a confirmed security failure (a
/// certificate that expired, a password rotated on the broker) makes `/health` unhealthy with
/// the reason until the brokers answer again. A supervised task: it only ends on shutdown.
pub async fn watch_connection(
    settings: KafkaSettings,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    let probe = match Probe::new(&settings) {
        Ok(probe) => Arc::new(probe),
        Err(error) => {
            health.set_problem(HEALTH_KEY, error.to_string());
            shutdown.cancelled().await;
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
        let round = probe.clone();
        match tokio::task::spawn_blocking(move || round.round(Duration::from_secs(10))).await {
            Ok(Ok(true)) => health.clear_problem(HEALTH_KEY),
            Ok(Err(error)) => {
                tracing::error!(%error, "Kafka security failure");
                health.set_problem(HEALTH_KEY, error.to_string());
            }
            // No answer: the broker is down or slow, which the loops' own watchdogs report.
            Ok(Ok(false)) | Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_security_failures_from_a_broker_that_is_down() {
        for (message, failure) in [
            (
                "ssl://127.0.0.1:9092/bootstrap: SSL handshake failed: Disconnected: connecting \
                 to a PLAINTEXT broker listener? (after 2ms in state SSL_HANDSHAKE)",
                SecurityFailure::Tls,
            ),
            (
                "ssl://127.0.0.1:9092/bootstrap: Connection setup timed out in state \
                 SSL_HANDSHAKE (after 4003ms in state SSL_HANDSHAKE)",
                SecurityFailure::Tls,
            ),
            (
                "sasl_ssl://k:9093/1: SASL authentication error: Authentication failed during \
                 authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 \
                 (after 5ms in state AUTH_REQ)",
                SecurityFailure::Authentication,
            ),
            (
                "sasl_plaintext://127.0.0.1:9092/bootstrap: SASL PLAIN mechanism handshake \
                 failed: Broker: Unsupported SASL mechanism: broker's supported mechanisms: \
                 PLAIN (after 0ms in state AUTH_HANDSHAKE)",
                SecurityFailure::Authentication,
            ),
            (
                "127.0.0.1:19392/bootstrap: Disconnected: connection reset by peer (after 1ms \
                 in state UP)",
                SecurityFailure::ProtocolMismatch,
            ),
            (
                "127.0.0.1:19392/bootstrap: Send failed: Broken pipe (after 0ms in state UP, 1 \
                 identical error(s) suppressed)",
                SecurityFailure::ProtocolMismatch,
            ),
            (
                "127.0.0.1:9093/bootstrap: Disconnected while requesting ApiVersion: might be \
                 caused by incorrect security.protocol configuration (connecting to a SSL \
                 listener?) or broker version is < 0.10 (see api.version.request) (after 1ms \
                 in state APIVERSION_QUERY)",
                SecurityFailure::ProtocolMismatch,
            ),
        ] {
            assert_eq!(security_failure(message), Some(failure), "{message}");
        }
        for message in [
            "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection \
             refused (after 0ms in state CONNECT)",
            "kafka.invalid:9092/bootstrap: Failed to resolve 'kafka.invalid:9092': Name or \
             service not known (after 3ms in state CONNECT)",
            "127.0.0.1:9092/1: Disconnected (after 5021ms in state UP)",
            "127.0.0.1:9092/1: Disconnected (after 600000ms in state UP, 1 identical error(s) \
             suppressed)",
            "127.0.0.1:9092/bootstrap: Connection setup timed out in state CONNECT (after \
             30029ms in state CONNECT)",
        ] {
            assert_eq!(security_failure(message), None, "{message}");
        }
    }

    #[test]
    fn a_failure_counts_once_it_repeats() {
        let errors = SecurityErrors::default();
        errors.record(SecurityFailure::Tls, "once".into());
        assert!(errors.confirmed().is_none());
        errors.record(SecurityFailure::Tls, "twice".into());
        assert_eq!(
            errors.confirmed(),
            Some((SecurityFailure::Tls, "twice".into()))
        );
        errors.take();
        assert!(errors.confirmed().is_none());
    }
}

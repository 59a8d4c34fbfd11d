//! The ingest process's settings: defaults ← environment ← flags.

use clap::Parser;
use esk_model::validate::Limits;
use esk_runtime::config::CommonConfig;
use esk_runtime::http_server::ServerLimits;
use esk_runtime::tls::TlsArgs;

/// Settings of the `ingest` binary.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ingest",
    version,
    about = "Accept appends and decide them against Postgres"
)]
pub struct IngestConfig {
    #[command(flatten)]
    pub common: CommonConfig,
    #[command(flatten)]
    pub limits: Limits,
    #[command(flatten)]
    pub server: ServerLimits,
    /// HTTP listen address of the API (appends, reads, /openapi.json; nothing else).
    #[arg(long, env = "ESK_INGEST_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: String,
    /// TLS of the API listener (the admin listener stays plain HTTP on loopback).
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Admin listen address: /metrics, /health and /ready, never on the API's port. Loopback
    /// by default; widen it only for a scraper on a trusted network.
    #[arg(long, env = "ESK_INGEST_ADMIN_ADDR", default_value = "127.0.0.1:9180")]
    pub admin_addr: String,
    /// Batching workers, each with its own Postgres transaction in flight; streams are sharded
    /// across them so one stream's appends stay in arrival order.
    #[arg(long, env = "ESK_INGEST_WORKERS", default_value_t = 2)]
    pub workers: usize,
    /// Most streams one multi-stream append (`POST /appends`, or an `appends` request with
    /// `"appends": [...]`) may write; more are refused with `too_many_streams`. Its events
    /// count toward ESK_MAX_EVENTS_PER_APPEND together.
    #[arg(long, env = "ESK_INGEST_MAX_APPEND_STREAMS", default_value_t = 1000)]
    pub max_append_streams: usize,
    /// Most appends in one ingest transaction.
    #[arg(long, env = "ESK_INGEST_MAX_BATCH", default_value_t = 400)]
    pub max_batch: usize,
    /// Appends queued per worker before HTTP answers 503 and the Kafka consumer pauses.
    #[arg(long, env = "ESK_INGEST_QUEUE", default_value_t = 2000)]
    pub queue_capacity: usize,
    /// Largest HTTP request body, in bytes.
    #[arg(long, env = "ESK_INGEST_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// HTTP requests served at once; more are refused with 503 (bounds memory for bodies).
    #[arg(long, env = "ESK_INGEST_MAX_HTTP_CONCURRENCY", default_value_t = 1024)]
    pub max_http_concurrency: usize,
    /// Kafka append requests in flight (decided or waiting for a retry); the consumer pauses
    /// its partitions beyond this.
    #[arg(long, env = "ESK_INGEST_MAX_KAFKA_IN_FLIGHT", default_value_t = 4096)]
    pub max_kafka_in_flight: usize,
    /// Postgres connections in the pool appends use.
    #[arg(long, env = "ESK_INGEST_PG_CONNECTIONS", default_value_t = 8)]
    pub pg_connections: u32,
    /// Postgres connections in the separate pool reads and `/wait` use, so reads can never
    /// starve appends of connections.
    #[arg(long, env = "ESK_INGEST_PG_READ_CONNECTIONS", default_value_t = 4)]
    pub pg_read_connections: u32,
    /// A request body must arrive within this many milliseconds, else 408 and the connection
    /// is closed.
    #[arg(long, env = "ESK_INGEST_BODY_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_timeout_ms: u64,
    /// A read page stops once its events reach this many bytes (its `next` continues); with
    /// events of up to a MiB, a count alone does not bound memory.
    #[arg(long, env = "ESK_INGEST_MAX_PAGE_BYTES", default_value_t = esk_runtime::db::DEFAULT_MAX_READ_BYTES)]
    pub max_page_bytes: usize,
    /// Most bytes of append requests held at once (bodies being read, queued or being
    /// decided, over HTTP and Kafka together); beyond it HTTP answers 503 and the Kafka
    /// consumer waits.
    #[arg(long, env = "ESK_INGEST_MAX_IN_FLIGHT_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_in_flight_bytes: usize,
    /// Most `/wait` requests waiting at once; more are answered 503 `too_many_waiters`.
    #[arg(long, env = "ESK_INGEST_MAX_WAITERS", default_value_t = 1000)]
    pub max_waiters: usize,
    /// Most subscriptions (`GET /subscriptions/...`, Server-Sent Events) open at once; more
    /// are answered 503 `too_many_subscriptions`.
    #[arg(long, env = "ESK_INGEST_MAX_SUBSCRIPTIONS", default_value_t = 256)]
    pub max_subscriptions: usize,
    /// Messages (events) buffered per subscriber between the store and its connection.
    #[arg(long, env = "ESK_INGEST_SUBSCRIPTION_BUFFER", default_value_t = 256)]
    pub subscription_buffer: usize,
    /// A subscriber whose buffer stays full this long (ms) is sent `: closed slow_subscriber`
    /// and disconnected; it resumes with `Last-Event-ID`.
    #[arg(
        long,
        env = "ESK_INGEST_SUBSCRIPTION_SLOW_MS",
        default_value_t = 10_000
    )]
    pub subscription_slow_ms: u64,
    /// An idle subscription gets a `: heartbeat` comment this often (ms), so proxies and
    /// clients can tell a quiet stream from a dead connection.
    #[arg(
        long,
        env = "ESK_INGEST_SUBSCRIPTION_HEARTBEAT_MS",
        default_value_t = 15_000
    )]
    pub subscription_heartbeat_ms: u64,
    /// How long a statement may wait for a lock before the attempt is retried (ms).
    #[arg(long, env = "ESK_INGEST_LOCK_TIMEOUT_MS", default_value_t = 5000)]
    pub lock_timeout_ms: u64,
    /// Kafka producer delivery timeout (ms). Postgres's idle-in-transaction timeout is set above
    /// it so a vanished ingest's transaction rolls back and its late records become phantoms.
    #[arg(long, env = "ESK_INGEST_DELIVERY_TIMEOUT_MS", default_value_t = 30000)]
    pub delivery_timeout_ms: u64,
    /// Largest ingest-log record (bytes) that events share: an attempt's events for one
    /// partition go in one record, or in several of at most this size, in order (an event
    /// larger than this is alone in its record). Keep it below the topic's max.message.bytes.
    #[arg(long, env = "ESK_INGEST_LOG_RECORD_BYTES", default_value_t = 1_048_576)]
    pub log_record_bytes: usize,
    /// Retries of an attempt that failed transiently, before answering 503.
    #[arg(long, env = "ESK_INGEST_ATTEMPT_RETRIES", default_value_t = 3)]
    pub attempt_retries: usize,
    /// Consume append requests from the appends topic.
    #[arg(long, env = "ESK_INGEST_KAFKA_APPENDS", default_value_t = true, action = clap::ArgAction::Set)]
    pub kafka_appends: bool,
    /// Consumer group for the appends topic.
    #[arg(long, env = "ESK_INGEST_GROUP", default_value = "esk-ingest")]
    pub group_id: String,
    /// Turn authentication off: every HTTP request and Kafka record is served without a token.
    /// Only for local experiments; a warning is logged at every start.
    #[arg(long, env = "ESK_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// How long a token lookup is cached, in seconds: a revoked token stops working at most
    /// this long after `esk token revoke`. A verified JWT is trusted as long (or until its
    /// `exp`, if sooner).
    #[arg(long, env = "ESK_AUTH_CACHE_SECS", default_value_t = 5)]
    pub auth_cache_secs: u64,
    #[command(flatten)]
    pub jwt: JwtSettings,
    /// Apply schema migrations at start-up.
    #[arg(long, env = "ESK_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate: bool,
}

/// JWT verification, for bearer tokens issued by an identity provider; on only when a JWKS file
/// is given, alongside esk's own tokens.
#[derive(Debug, Clone, clap::Args)]
pub struct JwtSettings {
    /// A JSON Web Key Set file (`{"keys": [...]}`) with the identity provider's public keys.
    /// Setting it turns JWT verification on: a bearer token with two dots is verified as a JWT,
    /// any other is looked up as an esk token. The file is read again when it changes.
    #[arg(long = "jwt-jwks-file", env = "ESK_JWT_JWKS_FILE")]
    pub jwks_file: Option<std::path::PathBuf>,
    /// The `iss` every JWT must carry (required with --jwt-jwks-file).
    #[arg(long = "jwt-issuer", env = "ESK_JWT_ISSUER")]
    pub issuer: Option<String>,
    /// The value the `aud` of every JWT must be or contain (required with --jwt-jwks-file).
    #[arg(long = "jwt-audience", env = "ESK_JWT_AUDIENCE")]
    pub audience: Option<String>,
    /// The claim that holds a JWT's esk scopes: a space-separated string (as OAuth 2's
    /// `scope`) or an array of strings. Other scopes in it (`openid`, ...) are ignored.
    #[arg(
        long = "jwt-scopes-claim",
        env = "ESK_JWT_SCOPES_CLAIM",
        default_value = "scope"
    )]
    pub scopes_claim: String,
    /// Clock skew allowed when checking a JWT's `exp` and `nbf`, in seconds.
    #[arg(
        long = "jwt-leeway-secs",
        env = "ESK_JWT_LEEWAY_SECS",
        default_value_t = 30
    )]
    pub leeway_secs: u64,
    /// How often the JWKS file is checked for a change, in seconds: a key added or removed
    /// applies at most this long after the file changes (a token with an unknown `kid` also
    /// triggers a check, at most once a second).
    #[arg(
        long = "jwt-jwks-reload-secs",
        env = "ESK_JWT_JWKS_RELOAD_SECS",
        default_value_t = 5
    )]
    pub jwks_reload_secs: u64,
}

impl IngestConfig {
    /// Whether the HTTP address is a loopback one (an unresolvable one counts as not).
    pub(crate) fn listens_on_loopback(&self) -> bool {
        use std::net::ToSocketAddrs;
        self.http_addr
            .to_socket_addrs()
            .map(|mut addrs| addrs.all(|a| a.ip().is_loopback()))
            .unwrap_or(false)
    }

    /// How subscriptions are served.
    pub(crate) fn subscription_settings(&self) -> crate::subscriptions::SubscriptionSettings {
        use std::time::Duration;
        crate::subscriptions::SubscriptionSettings {
            heartbeat: Duration::from_millis(self.subscription_heartbeat_ms.max(1)),
            buffer: self.subscription_buffer.max(1),
            slow_after: Duration::from_millis(self.subscription_slow_ms.max(1)),
            max: self.max_subscriptions.max(1),
        }
    }

    /// Session settings of every ingest connection.
    pub(crate) fn session_settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("lock_timeout", format!("{}ms", self.lock_timeout_ms)),
            (
                "idle_in_transaction_session_timeout",
                format!("{}ms", self.delivery_timeout_ms + 15_000),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// The default of the flag `id`, as an address.
    fn default_addr(id: &str) -> Option<std::net::SocketAddr> {
        let command = IngestConfig::command();
        let arg = command.get_arguments().find(|a| a.get_id() == id)?;
        arg.get_default_values().first()?.to_str()?.parse().ok()
    }

    #[test]
    fn the_admin_listener_binds_loopback_by_default_apart_from_the_api() {
        let admin = default_addr("admin_addr");
        assert!(admin.is_some_and(|a| a.ip().is_loopback()), "{admin:?}");
        assert_ne!(admin, default_addr("http_addr"));
    }
}

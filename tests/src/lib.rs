//! Test harness: connects to the running local stack (see `deploy/local/stack`), gives each
//! test its own Postgres database, topics and consumer groups, and spawns the real binaries.
//!
//! Settings (environment, with defaults matching the local stack):
//! - `ESK_TEST_DATABASE_URL` (else `ESK_DATABASE_URL`): a database whose role may create
//!   databases; each test creates `esk_t_<name>_<random>` next to it.
//! - `ESK_KAFKA_BROKERS`: the broker.

pub mod bench;
pub mod broker;
pub mod history;
pub mod indexer;
pub mod ingest;
pub mod kafka;
pub mod load;
pub mod process;
pub mod projector;
pub mod roles;
pub mod soak;
pub mod tls;

#[cfg(feature = "testcontainers")]
pub mod containers;

use std::time::Duration;

use esk_runtime::config::Topics;
use sqlx::PgPool;
use uuid::Uuid;

/// Partitions of each test topic.
pub const TEST_PARTITIONS: i32 = 3;

/// The base database URL of the running stack.
pub fn base_database_url() -> String {
    std::env::var("ESK_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("ESK_DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://esk:esk@127.0.0.1:5433/esk".into())
}

/// The broker of the running stack.
pub fn brokers() -> String {
    std::env::var("ESK_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// One test's private slice of the stack.
#[derive(Debug)]
pub struct TestContext {
    /// Unique name (database name and topic prefix).
    pub name: String,
    /// URL of the test's own database.
    pub database_url: String,
    /// A pool on it.
    pub pool: PgPool,
    /// The test's own topics.
    pub topics: Topics,
    /// The broker.
    pub brokers: String,
    /// An admin token of the test's database (`ESK_TOKEN` in [`TestContext::env`]).
    pub token: String,
}

impl TestContext {
    /// Creates a database (migrated) and topics for the test called `name`.
    pub async fn new(name: &str) -> anyhow::Result<Self> {
        Self::create(name, "esk_t_", true).await
    }

    /// Like [`TestContext::new`], but leaves the topics to the test.
    pub async fn without_topics(name: &str) -> anyhow::Result<Self> {
        Self::create(name, "esk_t_", false).await
    }

    /// Like [`TestContext::new`], with a database named `{database_prefix}{name}_{random}`
    /// (`deploy/local/test` drops every `esk_t_` database when it starts: a long run outside the
    /// suite uses another prefix).
    pub async fn with_database_prefix(name: &str, database_prefix: &str) -> anyhow::Result<Self> {
        Self::create(name, database_prefix, true).await
    }

    async fn create(name: &str, database_prefix: &str, topics: bool) -> anyhow::Result<Self> {
        let suffix = &Uuid::new_v4().simple().to_string()[..8];
        let unique = format!("{}_{suffix}", name.replace('-', "_")).to_lowercase();
        let database_url = create_database(&format!("{database_prefix}{unique}")).await?;
        let pool = esk_runtime::db::connect(&database_url, 8).await?;
        esk_runtime::db::migrate(&pool).await?;
        let token = esk_runtime::tokens::create(
            &pool,
            "test-admin",
            &[esk_runtime::scope::Scope::Admin],
            None,
        )
        .await?;
        let context = TestContext {
            name: unique.clone(),
            database_url,
            pool,
            topics: Topics::with_prefix(&format!("t-{unique}-")),
            brokers: brokers(),
            token,
        };
        if topics {
            let all = context.topics.all();
            esk_runtime::kafka::create_topics(&context.kafka(), &all, TEST_PARTITIONS, 1).await?;
        }
        Ok(context)
    }

    /// The test broker as Kafka clients are built from it (plaintext, no properties).
    pub fn kafka(&self) -> esk_runtime::kafka::KafkaSettings {
        esk_runtime::kafka::KafkaSettings::new(&self.brokers)
    }

    /// The environment that points a spawned binary at this test's database and topics.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("ESK_DATABASE_URL".into(), self.database_url.clone()),
            ("ESK_KAFKA_BROKERS".into(), self.brokers.clone()),
            ("ESK_TOPIC_APPENDS".into(), self.topics.appends.clone()),
            (
                "ESK_TOPIC_INGEST_LOG".into(),
                self.topics.ingest_log.clone(),
            ),
            (
                "ESK_TOPIC_APPEND_RESULTS".into(),
                self.topics.append_results.clone(),
            ),
            ("ESK_TOPIC_EVENTS".into(), self.topics.events.clone()),
            ("ESK_INGEST_GROUP".into(), format!("{}-ingest", self.name)),
            ("ESK_INDEXER_GROUP".into(), format!("{}-indexer", self.name)),
            // The CLI, loadgen and the harness's clients send it; ingest checks it, as deployed.
            ("ESK_TOKEN".into(), self.token.clone()),
            ("ESK_INSECURE_NO_AUTH".into(), "false".into()),
        ]
    }

    /// A plain HTTP client that sends this test's admin token with every request, for tests
    /// that build their requests by hand.
    pub fn http(&self) -> anyhow::Result<reqwest::Client> {
        bearer_client(&self.token)
    }

    /// The `authorization` header a Kafka append request carries this test's admin token in.
    pub fn kafka_auth(&self) -> rdkafka::message::OwnedHeaders {
        kafka::bearer_headers(&self.token)
    }
}

/// A plain HTTP client sending `Authorization: Bearer <token>` with every request.
pub fn bearer_client(token: &str) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::try_from(format!("Bearer {token}"))?,
    );
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .build()?)
}

/// Creates a fresh database next to the base one and returns its URL.
pub async fn create_database(name: &str) -> anyhow::Result<String> {
    let base = base_database_url();
    let admin = esk_runtime::db::connect(&base, 1).await?;
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&admin)
        .await?;
    admin.close().await;
    let (prefix, _) = base
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("database url has no database name: {base}"))?;
    Ok(format!("{prefix}/{name}"))
}

/// Polls `check` every 50 ms until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

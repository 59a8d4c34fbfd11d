//! Postgres over TLS: `sslmode=verify-full&sslrootcert=<the stack's CA>` connects encrypted
//! (through `esk_runtime::db::connect`, and from ingest and the indexer doing their work), a CA
//! that did not sign the server's certificate fails fast with a TLS error (in-process and for a
//! starting ingest), and `sslmode=require` encrypts without checking.
//!
//! Needs the stack's Postgres to serve TLS: `deploy/local/stack up` makes its CA and turns TLS
//! on (for an existing cluster too); its env file exports `ESK_PG_CA_FILE`.

use std::time::{Duration, Instant};

use esk_runtime::db::DbError;
use esk_tests::indexer::{self, wait_indexed};
use esk_tests::ingest::{self, event, Client};
use esk_tests::process::{bin_dir, free_port, Process, INGEST};
use esk_tests::tls::{postgres_ca, with_params, Certificates};
use esk_tests::{base_database_url, TestContext};
use serde_json::json;
use sqlx::PgPool;

/// `url` checked against the stack's CA, with its host name.
async fn verify_full(url: &str) -> anyhow::Result<String> {
    let ca = postgres_ca().await?;
    Ok(with_params(
        url,
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    ))
}

/// Whether this session's connection is encrypted.
async fn encrypted(pool: &PgPool) -> anyhow::Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(pool)
            .await?,
    )
}

#[tokio::test]
async fn verify_full_against_the_stack_ca_connects_encrypted() -> anyhow::Result<()> {
    let url = verify_full(&base_database_url()).await?;
    let pool = esk_runtime::db::connect(&url, 1).await?;
    assert!(encrypted(&pool).await?);
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await?;
    assert_eq!(one, 1);
    Ok(())
}

#[tokio::test]
async fn require_encrypts_without_a_ca() -> anyhow::Result<()> {
    postgres_ca().await?;
    let url = with_params(&base_database_url(), "sslmode=require");
    let pool = esk_runtime::db::connect(&url, 1).await?;
    assert!(encrypted(&pool).await?);
    Ok(())
}

#[tokio::test]
async fn a_ca_that_did_not_sign_the_server_fails_fast_with_a_tls_error() -> anyhow::Result<()> {
    postgres_ca().await?;
    let other = Certificates::generate().await?;
    let url = with_params(
        &base_database_url(),
        &format!("sslmode=verify-full&sslrootcert={}", other.ca.display()),
    );
    let started = Instant::now();
    let result = esk_runtime::db::connect(&url, 1).await;
    let elapsed = started.elapsed();
    let error = result.err();
    assert!(
        matches!(error, Some(DbError::Connect(sqlx::Error::Tls(_)))),
        "{error:?}"
    );
    let message = error.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("TLS") && message.contains("certificate"),
        "{message}"
    );
    // Refused at the handshake, not retried until the pool's acquire timeout.
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    Ok(())
}

#[tokio::test]
async fn ingest_and_the_indexer_work_over_verify_full() -> anyhow::Result<()> {
    let ctx = TestContext::new("pg_tls_processes").await?;
    // Named so their sessions can be told from the test's own.
    let url = with_params(
        &verify_full(&ctx.database_url).await?,
        "application_name=esk-tls-test",
    );
    let env = [
        ("ESK_DATABASE_URL", url.as_str()),
        ("ESK_INGEST_KAFKA_APPENDS", "false"),
    ];
    let ingest = ingest::spawn(&ctx, &env).await?;
    let _indexer = indexer::spawn(&ctx, &env).await?;

    let client = Client::new(&ingest);
    let body = json!({"expected_version": "no_stream", "events": [event("OrderPlaced")]});
    let reply = client.append("Order-1", &body).await?;
    assert_eq!(reply.status, 201, "{reply:?}");
    wait_indexed(&ctx, 1, Duration::from_secs(30)).await?;
    let read = client.get("/streams/Order-1/events").await?;
    assert_eq!(read.status, 200, "{read:?}");
    assert_eq!(read.body["events"][0]["type"], "OrderPlaced", "{read:?}");

    // Every session of the two processes is encrypted.
    let (sessions, encrypted): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE s.ssl) \
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.datname = current_database() AND a.application_name = 'esk-tls-test'",
    )
    .fetch_one(&ctx.pool)
    .await?;
    assert!(sessions > 0);
    assert_eq!(encrypted, sessions);
    Ok(())
}

#[tokio::test]
async fn ingest_refuses_to_start_when_the_ca_did_not_sign_the_server() -> anyhow::Result<()> {
    let ctx = TestContext::without_topics("pg_tls_wrong_ca").await?;
    postgres_ca().await?;
    let other = Certificates::generate().await?;
    let url = with_params(
        &ctx.database_url,
        &format!("sslmode=verify-full&sslrootcert={}", other.ca.display()),
    );
    let mut env = ctx.env();
    env.push(("ESK_DATABASE_URL".into(), url));
    let log = std::env::temp_dir().join(format!("esk-ingest-pg-tls-{}.log", free_port()?));
    let mut process = Process::start(&bin_dir()?.join("ingest"), &env, INGEST, &[], log)?;
    let code = process.wait_exit(Duration::from_secs(30)).await?;
    let log = process.log_text();
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}; log:\n{log}");
    assert!(
        log.contains("cannot connect to Postgres") && log.contains("certificate"),
        "{log}"
    );
    Ok(())
}

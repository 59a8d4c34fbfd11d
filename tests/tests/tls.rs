//! Ingest's API over TLS (`--tls-cert-file`, `--tls-key-file`): a client trusting the CA
//! appends and reads with a token (esk-client and the `esk` CLI), plain HTTP on that port and a
//! client trusting another CA get nothing, a client that never finishes its handshake is
//! disconnected, and a missing or mismatched key stops ingest at start with the file named.

use std::path::Path;
use std::time::Duration;

use esk_client::{Client, ClientError, ReadStream};
use esk_model::api::{AppendRequest, EventData};
use esk_model::event::ExpectedVersion;
use esk_tests::indexer::{self, wait_indexed};
use esk_tests::ingest;
use esk_tests::process::{bin_dir, free_port, Process, INGEST};
use esk_tests::tls::Certificates;
use esk_tests::TestContext;
use futures::TryStreamExt;
use serde_json::value::RawValue;
use tokio::io::AsyncReadExt;

/// Ingest with authentication on, serving `certificates` on its API port; its admin port stays
/// plain HTTP.
async fn spawn_https(
    ctx: &TestContext,
    certificates: &Certificates,
    extra: &[(&str, &str)],
) -> anyhow::Result<(Process, String)> {
    let cert = certificates.cert.to_string_lossy();
    let key = certificates.key.to_string_lossy();
    let mut env = vec![
        ("ESK_INSECURE_NO_AUTH", "false"),
        ("ESK_INGEST_KAFKA_APPENDS", "false"),
        ("ESK_TLS_CERT_FILE", cert.as_ref()),
        ("ESK_TLS_KEY_FILE", key.as_ref()),
    ];
    env.extend_from_slice(extra);
    let process = ingest::spawn(ctx, &env).await?;
    let https = process.http.replacen("http://", "https://", 1);
    Ok((process, https))
}

fn client(base: &str, token: &str, ca: &Path) -> anyhow::Result<Client> {
    Ok(Client::builder(base)
        .token(token)
        .ca_file(ca)
        .timeout(Duration::from_secs(10))
        .build()?)
}

fn one_event(event_type: &str) -> anyhow::Result<AppendRequest> {
    Ok(AppendRequest {
        expected_version: ExpectedVersion::Any,
        append_id: None,
        events: vec![EventData {
            id: uuid::Uuid::new_v4(),
            event_type: event_type.into(),
            data: RawValue::from_string(r#"{"n":1}"#.into())?,
            metadata: None,
        }],
    })
}

/// Every message of an error's chain, joined.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[tokio::test]
async fn a_client_trusting_the_ca_appends_and_reads_over_https() -> anyhow::Result<()> {
    let ctx = TestContext::new("tls_https").await?;
    let certificates = Certificates::generate().await?;
    let (_ingest, https) = spawn_https(&ctx, &certificates, &[]).await?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;

    let api = client(&https, &ctx.token, &certificates.ca)?;
    let appended = api.append("Order-1", &one_event("OrderPlaced")?).await?;
    assert_eq!(appended.last_version, 0.into());
    wait_indexed(&ctx, 1, Duration::from_secs(30)).await?;
    let events: Vec<_> = api
        .stream_events("Order-1", ReadStream::forward())
        .try_collect()
        .await?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, "OrderPlaced");

    // The certificate names `localhost` too.
    let by_name = client(
        &https.replacen("127.0.0.1", "localhost", 1),
        &ctx.token,
        &certificates.ca,
    )?;
    let page = by_name
        .read_stream("Order-1", ReadStream::forward())
        .await?;
    assert_eq!(page.events.len(), 1);

    // The token is still checked behind TLS.
    let no_token = Client::builder(&https).ca_file(&certificates.ca).build()?;
    let refused = no_token.append("Order-1", &one_event("X")?).await;
    assert_eq!(
        refused.as_ref().err().and_then(ClientError::status),
        Some(esk_client::StatusCode::UNAUTHORIZED),
        "{refused:?}"
    );
    Ok(())
}

#[tokio::test]
async fn plain_http_and_clients_trusting_another_ca_get_nothing() -> anyhow::Result<()> {
    let ctx = TestContext::new("tls_refusals").await?;
    let certificates = Certificates::generate().await?;
    let (ingest, https) = spawn_https(&ctx, &certificates, &[]).await?;

    // Plain HTTP on the HTTPS port: no answer.
    let plain = Client::builder(&ingest.http)
        .token(&ctx.token)
        .timeout(Duration::from_secs(10))
        .build()?;
    let answer = plain.append("Order-1", &one_event("Plain")?).await;
    assert!(
        matches!(answer, Err(ClientError::Transport { .. })),
        "{answer:?}"
    );

    // A client trusting only another CA refuses the server's certificate.
    let other = Certificates::generate().await?;
    let untrusting = client(&https, &ctx.token, &other.ca)?;
    let answer = untrusting.append("Order-1", &one_event("Untrusted")?).await;
    let error = answer.err();
    assert!(
        matches!(error, Some(ClientError::Transport { .. })),
        "{error:?}"
    );
    let message = error.as_ref().map(|e| chain(e)).unwrap_or_default();
    assert!(message.contains("certificate"), "{message}");

    // Nothing of either reached the store, and the port still serves a trusting client.
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM append_ledger")
        .fetch_one(&ctx.pool)
        .await?;
    assert_eq!(count, 0);
    let trusting = client(&https, &ctx.token, &certificates.ca)?;
    trusting.append("Order-1", &one_event("Trusted")?).await?;
    Ok(())
}

#[tokio::test]
async fn a_handshake_never_finished_is_disconnected_after_the_header_timeout() -> anyhow::Result<()>
{
    let ctx = TestContext::new("tls_slow_handshake").await?;
    let certificates = Certificates::generate().await?;
    let (ingest, _https) = spawn_https(
        &ctx,
        &certificates,
        &[("ESK_HTTP_HEADER_TIMEOUT_MS", "500")],
    )
    .await?;
    let addr = ingest.http.trim_start_matches("http://");
    let mut silent = tokio::net::TcpStream::connect(addr).await?;
    let mut buffer = [0u8; 64];
    // The server closes the connection (end of stream) rather than waiting for ever.
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buffer)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the connection is still open: {read:?}"
    );
    Ok(())
}

/// Starts ingest with `env` on top of the test's and waits for it to exit by itself.
async fn start_expecting_exit(
    ctx: &TestContext,
    env: &[(&str, &str)],
) -> anyhow::Result<(Option<i32>, String)> {
    let mut all = ctx.env();
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let log = std::env::temp_dir().join(format!("esk-ingest-tls-{}.log", free_port()?));
    let mut process = Process::start(&bin_dir()?.join("ingest"), &all, INGEST, &[], log)?;
    let code = process.wait_exit(Duration::from_secs(30)).await?;
    Ok((code, process.log_text()))
}

#[tokio::test]
async fn a_missing_key_file_stops_ingest_naming_the_file() -> anyhow::Result<()> {
    let ctx = TestContext::without_topics("tls_missing_key").await?;
    let certificates = Certificates::generate().await?;
    let missing = certificates.dir.join("no-such-key.pem");
    let (code, log) = start_expecting_exit(
        &ctx,
        &[
            ("ESK_TLS_CERT_FILE", &certificates.cert.to_string_lossy()),
            ("ESK_TLS_KEY_FILE", &missing.to_string_lossy()),
        ],
    )
    .await?;
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}; log:\n{log}");
    assert!(
        log.contains(&format!(
            "cannot read the TLS key file {}",
            missing.display()
        )),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    Ok(())
}

#[tokio::test]
async fn a_key_of_another_certificate_stops_ingest_naming_both_files() -> anyhow::Result<()> {
    let ctx = TestContext::without_topics("tls_wrong_key").await?;
    let certificates = Certificates::generate().await?;
    let other = Certificates::generate().await?;
    let (code, log) = start_expecting_exit(
        &ctx,
        &[
            ("ESK_TLS_CERT_FILE", &certificates.cert.to_string_lossy()),
            ("ESK_TLS_KEY_FILE", &other.key.to_string_lossy()),
        ],
    )
    .await?;
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}; log:\n{log}");
    let expected = format!(
        "the TLS key file {} does not fit the certificate in {}",
        other.key.display(),
        certificates.cert.display()
    );
    assert!(log.contains(&expected), "{log}");
    Ok(())
}

/// `esk` with only `env` among the `ESK_*` variables.
async fn esk(env: &[(&str, &str)], args: &[&str]) -> anyhow::Result<std::process::Output> {
    let mut command = tokio::process::Command::new(bin_dir()?.join("esk"));
    for (key, _) in std::env::vars() {
        if key.starts_with("ESK_") {
            command.env_remove(key);
        }
    }
    let output = command
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .args(args)
        .kill_on_drop(true)
        .output();
    Ok(tokio::time::timeout(Duration::from_secs(60), output).await??)
}

#[tokio::test]
async fn the_cli_appends_and_reads_over_https_with_a_ca_file() -> anyhow::Result<()> {
    let ctx = TestContext::new("tls_cli").await?;
    let certificates = Certificates::generate().await?;
    let (_ingest, https) = spawn_https(&ctx, &certificates, &[]).await?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    let ca = certificates.ca.to_string_lossy();
    let env = [
        ("ESK_URL", https.as_str()),
        ("ESK_TOKEN", ctx.token.as_str()),
        ("ESK_CA_FILE", ca.as_ref()),
    ];

    let appended = esk(
        &env,
        &["append", "Order-1", "--type", "OrderPlaced", "--data", "{}"],
    )
    .await?;
    assert!(appended.status.success(), "{appended:?}");
    wait_indexed(&ctx, 1, Duration::from_secs(30)).await?;
    let read = esk(&env, &["read", "Order-1", "--json"]).await?;
    assert!(read.status.success(), "{read:?}");
    let page: serde_json::Value = serde_json::from_slice(&read.stdout)?;
    assert_eq!(page["events"][0]["type"], "OrderPlaced", "{page}");

    // Without the CA, the server's certificate is not trusted: exit 3 (unavailable), saying so.
    let untrusted = esk(&env[..2], &["read", "Order-1"]).await?;
    assert_eq!(untrusted.status.code(), Some(3), "{untrusted:?}");
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(stderr.contains("certificate"), "{stderr}");
    Ok(())
}

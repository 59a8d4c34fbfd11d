//! Authentication and scopes, with auth on (the default): every kind of bad credential over
//! HTTP (append, stream read, category read, `$all`, both waits) and over Kafka gets its typed
//! error, and nothing is written; a revoked token stops working within the cache time.

use std::time::{Duration, Instant};

use chrono::Utc;
use esk_runtime::scope::Scope;
use esk_runtime::tokens;
use esk_tests::ingest::{self, event, Client};
use esk_tests::{indexer, kafka, TestContext};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::Message;
use serde_json::{json, Value};

/// Auth on (the harness's default), and a revocation noticed within a second.
const AUTH_ON: &[(&str, &str)] = &[("ESK_AUTH_CACHE_SECS", "1")];

fn scopes(list: &[&str]) -> anyhow::Result<Vec<Scope>> {
    list.iter()
        .map(|s| s.parse().map_err(anyhow::Error::from))
        .collect()
}

/// The tokens of the tables: name → token.
struct Tokens {
    billing: String,
    one_stream: String,
    reader: String,
    expired: String,
    revoked: String,
}

async fn tokens(ctx: &TestContext) -> anyhow::Result<Tokens> {
    let pool = &ctx.pool;
    let billing = tokens::create(
        pool,
        "billing",
        &scopes(&["append:Order-*", "read:Order-*"])?,
        None,
    )
    .await?;
    let one_stream = tokens::create(pool, "one", &scopes(&["read:Order-1"])?, None).await?;
    let reader = tokens::create(pool, "reader", &scopes(&["read:*"])?, None).await?;
    let expired = tokens::create(
        pool,
        "expired",
        &scopes(&["admin"])?,
        Some(Utc::now() - chrono::Duration::minutes(1)),
    )
    .await?;
    let revoked = tokens::create(pool, "revoked", &scopes(&["admin"])?, None).await?;
    tokens::revoke(pool, "revoked").await?;
    Ok(Tokens {
        billing,
        one_stream,
        reader,
        expired,
        revoked,
    })
}

/// One request of the table.
#[derive(Debug, Clone, Copy)]
enum Request {
    Append(&'static str),
    ReadStream(&'static str),
    ReadCategory(&'static str),
    ReadAll,
    WaitStream(&'static str),
    WaitPosition,
}

impl Request {
    const ALL: [Request; 6] = [
        Request::Append("Order-1"),
        Request::ReadStream("Order-1"),
        Request::ReadCategory("Order"),
        Request::ReadAll,
        Request::WaitStream("Order-1"),
        Request::WaitPosition,
    ];

    /// Sends it with `authorization` as the raw header value (none when `None`); the status,
    /// the `WWW-Authenticate` header and the JSON body.
    async fn send(
        self,
        base: &str,
        authorization: Option<&str>,
    ) -> anyhow::Result<(u16, Option<String>, Value)> {
        let http = reqwest::Client::new();
        let mut request = match self {
            Request::Append(stream) => http
                .post(format!("{base}/streams/{stream}/events"))
                .header("content-type", "application/json")
                .body(json!({"expected_version": "any", "events": [event("Refused")]}).to_string()),
            Request::ReadStream(stream) => http.get(format!("{base}/streams/{stream}/events")),
            Request::ReadCategory(category) => {
                http.get(format!("{base}/categories/{category}/events"))
            }
            Request::ReadAll => http.get(format!("{base}/streams/$all/events")),
            Request::WaitStream(stream) => http.get(format!(
                "{base}/wait?stream_id={stream}&version=0&timeout_ms=0"
            )),
            Request::WaitPosition => http.get(format!("{base}/wait?position=1&timeout_ms=0")),
        };
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = serde_json::from_slice(&response.bytes().await?).unwrap_or(Value::Null);
        Ok((status, challenge, body))
    }
}

/// What was written: stream rows, ledger rows, indexed events.
async fn written(ctx: &TestContext) -> anyhow::Result<(i64, i64, i64)> {
    let count = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql).fetch_one(&ctx.pool).await
    };
    Ok((
        count("SELECT count(*) FROM streams WHERE version >= 0").await?,
        count("SELECT count(*) FROM append_ledger").await?,
        count("SELECT count(*) FROM events").await?,
    ))
}

#[tokio::test]
async fn bad_credentials_over_http_get_typed_errors_and_write_nothing() -> anyhow::Result<()> {
    let ctx = TestContext::new("auth_http").await?;
    let ingest_process = ingest::spawn(&ctx, AUTH_ON).await?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    let t = tokens(&ctx).await?;
    let base = ingest_process.http.clone();

    // One stream exists (appended with the harness's admin token), so a refusal cannot be told
    // apart by whether the stream exists.
    let admin = Client::new(&ingest_process);
    let seeded = admin
        .append(
            "User-1",
            &json!({"expected_version": "no_stream", "events": [event("Seeded")]}),
        )
        .await?;
    assert_eq!(seeded.status, 201, "{:?}", seeded.body);
    indexer::wait_indexed(&ctx, 1, Duration::from_secs(60)).await?;
    let before = written(&ctx).await?;
    assert_eq!(before, (1, 1, 1));

    let long = format!("Bearer esk_{}", "a".repeat(5000));
    let unknown = format!("Bearer esk_{}", "0".repeat(64));
    let expired = format!("Bearer {}", t.expired);
    let revoked = format!("Bearer {}", t.revoked);
    let unauthenticated: [(&str, Option<&str>); 9] = [
        ("missing", None),
        ("basic", Some("Basic dXNlcjpwYXNz")),
        ("bearer without token", Some("Bearer")),
        ("bearer and a blank", Some("Bearer ")),
        ("garbage", Some("garbage")),
        ("over-long", Some(&long)),
        ("unknown", Some(&unknown)),
        ("expired", Some(&expired)),
        ("revoked", Some(&revoked)),
    ];
    for (case, authorization) in unauthenticated {
        for request in Request::ALL {
            let (status, challenge, body) = request.send(&base, authorization).await?;
            assert_eq!(
                (status, body.pointer("/error/code").and_then(Value::as_str)),
                (401, Some("unauthorized")),
                "{case} {request:?}: {body}"
            );
            assert_eq!(challenge.as_deref(), Some("Bearer"), "{case} {request:?}");
        }
    }

    let billing = format!("Bearer {}", t.billing);
    let one_stream = format!("Bearer {}", t.one_stream);
    let reader = format!("Bearer {}", t.reader);
    let forbidden: [(&str, &str, Request); 11] = [
        ("billing", &billing, Request::Append("User-1")),
        ("billing", &billing, Request::Append("Orders-1")),
        ("billing", &billing, Request::ReadStream("User-1")),
        ("billing", &billing, Request::ReadCategory("User")),
        ("billing", &billing, Request::ReadAll),
        ("billing", &billing, Request::WaitStream("User-1")),
        ("billing", &billing, Request::WaitPosition),
        ("one stream", &one_stream, Request::ReadCategory("Order")),
        ("one stream", &one_stream, Request::ReadStream("Order-2")),
        ("one stream", &one_stream, Request::Append("Order-1")),
        ("reader", &reader, Request::Append("Order-1")),
    ];
    for (case, authorization, request) in forbidden {
        let (status, challenge, body) = request.send(&base, Some(authorization)).await?;
        assert_eq!(
            (status, body.pointer("/error/code").and_then(Value::as_str)),
            (403, Some("forbidden")),
            "{case} {request:?}: {body}"
        );
        assert_eq!(challenge, None, "{case} {request:?}");
    }
    // An existing stream and a missing one are refused alike.
    let existing = Request::ReadStream("User-1")
        .send(&base, Some(&one_stream))
        .await?;
    let missing = Request::ReadStream("User-404")
        .send(&base, Some(&one_stream))
        .await?;
    assert_eq!(
        (existing.0, existing.2.pointer("/error/code")),
        (missing.0, missing.2.pointer("/error/code"))
    );

    assert_eq!(written(&ctx).await?, before, "a refused request wrote");

    // The scopes that are enough.
    for (authorization, request) in [
        (&one_stream, Request::ReadStream("Order-1")),
        (&one_stream, Request::WaitStream("Order-1")),
        (&billing, Request::ReadCategory("Order")),
        (&reader, Request::ReadAll),
        (&reader, Request::WaitPosition),
        (&reader, Request::ReadCategory("User")),
        (&billing, Request::Append("Order-1")),
    ] {
        let (status, _, body) = request.send(&base, Some(authorization)).await?;
        assert!(
            status == 200 || status == 201,
            "{request:?}: {status} {body}"
        );
    }
    // The open routes stay open: the document on the API port, telemetry on the admin port.
    for url in [
        format!("{base}/openapi.json"),
        format!("{}/health", ingest_process.admin),
        format!("{}/ready", ingest_process.admin),
        format!("{}/metrics", ingest_process.admin),
    ] {
        let status = reqwest::get(&url).await?.status();
        assert_eq!(status.as_u16(), 200, "{url}");
    }
    Ok(())
}

#[tokio::test]
async fn a_revoked_token_is_refused_within_the_cache_time() -> anyhow::Result<()> {
    let ctx = TestContext::new("auth_revoke").await?;
    let ingest_process = ingest::spawn(&ctx, AUTH_ON).await?;
    let token = tokens::create(&ctx.pool, "rotating", &scopes(&["read:*"])?, None).await?;
    let authorization = format!("Bearer {token}");
    let base = ingest_process.http.clone();
    // Used, so its lookup is cached.
    let (status, _, _) = Request::ReadAll.send(&base, Some(&authorization)).await?;
    assert_eq!(status, 200);
    tokens::revoke(&ctx.pool, "rotating").await?;
    let revoked_at = Instant::now();
    loop {
        let (status, _, body) = Request::ReadAll.send(&base, Some(&authorization)).await?;
        if status == 401 {
            assert_eq!(body["error"]["code"], "unauthorized");
            break;
        }
        assert_eq!(status, 200, "{body}");
        // ESK_AUTH_CACHE_SECS=1, and a margin for a slow machine.
        assert!(
            revoked_at.elapsed() < Duration::from_secs(3),
            "still served 3 s after revocation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn bad_credentials_over_kafka_get_typed_rejections_and_write_nothing() -> anyhow::Result<()> {
    let ctx = TestContext::new("auth_kafka").await?;
    let _ingest = ingest::spawn(&ctx, AUTH_ON).await?;
    let t = tokens(&ctx).await?;
    let producer = kafka::producer(&ctx.brokers)?;

    let long = format!("Bearer esk_{}", "a".repeat(5000));
    let unknown = format!("Bearer esk_{}", "0".repeat(64));
    let expired = format!("Bearer {}", t.expired);
    let revoked = format!("Bearer {}", t.revoked);
    let billing = format!("Bearer {}", t.billing);
    let reader = format!("Bearer {}", t.reader);
    // (request id, stream, authorization header, expected code; None: accepted)
    let cases: Vec<(&str, &str, Option<&str>, Option<&str>)> = vec![
        ("missing", "Order-1", None, Some("unauthorized")),
        (
            "basic",
            "Order-1",
            Some("Basic dXNlcjpwYXNz"),
            Some("unauthorized"),
        ),
        (
            "bearer-only",
            "Order-1",
            Some("Bearer"),
            Some("unauthorized"),
        ),
        ("blank", "Order-1", Some("Bearer "), Some("unauthorized")),
        ("garbage", "Order-1", Some("garbage"), Some("unauthorized")),
        ("over-long", "Order-1", Some(&long), Some("unauthorized")),
        ("unknown", "Order-1", Some(&unknown), Some("unauthorized")),
        ("expired", "Order-1", Some(&expired), Some("unauthorized")),
        ("revoked", "Order-1", Some(&revoked), Some("unauthorized")),
        (
            "other-category",
            "User-1",
            Some(&billing),
            Some("forbidden"),
        ),
        ("read-only", "Order-1", Some(&reader), Some("forbidden")),
        ("allowed", "Order-2", Some(&billing), None),
    ];
    for (request_id, stream, authorization, _) in &cases {
        let payload = json!({"schema_version": 1, "request_id": request_id, "stream_id": stream,
            "expected_version": "any", "events": [event("Maybe")]})
        .to_string();
        let mut record = FutureRecord::to(&ctx.topics.appends)
            .key(*stream)
            .payload(payload.as_bytes());
        if let Some(value) = authorization {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: "authorization",
                value: Some(value.as_bytes()),
            }));
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("produce failed: {e}"))?;
    }
    let results = kafka::read_topic(
        &ctx.brokers,
        &ctx.topics.append_results,
        cases.len(),
        Duration::from_secs(60),
    )?;
    assert_eq!(results.len(), cases.len(), "one result per request");
    for (request_id, stream, _, code) in &cases {
        let result = results
            .iter()
            .filter_map(|r| kafka::json_payload(r).ok())
            .find(|v| v["request_id"] == *request_id)
            .ok_or_else(|| anyhow::anyhow!("no result for {request_id}"))?;
        match code {
            Some(code) => {
                assert_eq!(result["outcome"], "rejected", "{request_id}: {result}");
                assert_eq!(result["error"]["code"], *code, "{request_id}: {result}");
                assert_eq!(result["stream_id"], *stream, "{request_id}");
            }
            None => assert_eq!(result["outcome"], "accepted", "{request_id}: {result}"),
        }
    }
    // Only the allowed request wrote: one stream, one ledger row.
    let (streams, ledger, _) = written(&ctx).await?;
    assert_eq!((streams, ledger), (1, 1));
    let stream: String = sqlx::query_scalar("SELECT stream_id FROM append_ledger")
        .fetch_one(&ctx.pool)
        .await?;
    assert_eq!(stream, "Order-2");
    // The results carry no token.
    for record in &results {
        let text = String::from_utf8_lossy(record.payload().unwrap_or_default()).into_owned();
        assert!(!text.contains(&t.billing), "a result echoes the token");
    }
    Ok(())
}

/// Starts ingest on `addr` (`HOST:PORT`, PORT free) with the test's environment and `env`.
async fn ingest_on(
    ctx: &TestContext,
    host: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<esk_tests::process::Process> {
    let port = esk_tests::process::free_port()?;
    let mut all = ctx.env();
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    all.push(("ESK_INGEST_HTTP_ADDR".into(), format!("{host}:{port}")));
    all.push(("ESK_INGEST_KAFKA_APPENDS".into(), "false".into()));
    let path = esk_tests::process::bin_dir()?.join("ingest");
    let log = std::env::temp_dir().join(format!("esk-ingest-auth-{port}.log"));
    // The harness picks the admin address; the API address is ours (on `host`).
    let listen = esk_tests::process::Listen {
        admin: "ESK_INGEST_ADMIN_ADDR",
        api: None,
    };
    let mut process = esk_tests::process::Process::start(&path, &all, listen, &[], log)?;
    process.http = format!("http://127.0.0.1:{port}");
    process.wait_healthy(Duration::from_secs(60)).await?;
    Ok(process)
}

#[tokio::test]
async fn without_auth_ingest_warns_at_every_start_and_loudest_off_loopback() -> anyhow::Result<()> {
    let ctx = TestContext::new("auth_insecure").await?;
    let off = [("ESK_INSECURE_NO_AUTH", "true")];

    let mut open_wide = ingest_on(&ctx, "0.0.0.0", &off).await?;
    let (status, _, _) = Request::ReadAll.send(&open_wide.http, None).await?;
    assert_eq!(status, 200, "the flag turns auth off");
    let log = open_wide.log_text();
    assert!(log.contains("AUTHENTICATION IS OFF"), "{log}");
    assert!(log.contains("NON-LOOPBACK"), "{log}");
    open_wide.terminate(Duration::from_secs(10)).await?;

    let local = ingest_on(&ctx, "127.0.0.1", &off).await?;
    let log = local.log_text();
    assert!(log.contains("AUTHENTICATION IS OFF"), "{log}");
    assert!(!log.contains("NON-LOOPBACK"), "{log}");
    drop(local);

    // Without the flag auth is on, on any address.
    let default = ingest_on(&ctx, "0.0.0.0", &[("ESK_INSECURE_NO_AUTH", "false")]).await?;
    let (status, challenge, _) = Request::ReadAll.send(&default.http, None).await?;
    assert_eq!((status, challenge.as_deref()), (401, Some("Bearer")));
    assert!(!default.log_text().contains("AUTHENTICATION IS OFF"));
    Ok(())
}

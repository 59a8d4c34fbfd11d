//! HTTP under abuse: slow headers and slow bodies are cut off, connections beyond the cap are
//! closed, `/wait` requests beyond their cap are refused and the rest are woken by the shared
//! poller, and every error is the JSON error body, GET routes included.

use std::time::Duration;

use esk_tests::indexer;
use esk_tests::ingest::{self, Client};
use esk_tests::process::Process;
use esk_tests::TestContext;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HTTP_ONLY: &[(&str, &str)] = &[("ESK_INGEST_KAFKA_APPENDS", "false")];

fn address(process: &Process) -> String {
    process.http.trim_start_matches("http://").to_owned()
}

/// Reads until the peer closes the connection or `limit` passes; returns what arrived and
/// whether it was closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&received).into(), true),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_) => return (String::from_utf8_lossy(&received).into(), false),
        }
    }
}

#[tokio::test]
async fn slow_headers_are_disconnected_and_slow_bodies_get_408() -> anyhow::Result<()> {
    let ctx = TestContext::new("http_slow").await?;
    let mut env = HTTP_ONLY.to_vec();
    env.extend([
        ("ESK_HTTP_HEADER_TIMEOUT_MS", "1000"),
        ("ESK_INGEST_BODY_TIMEOUT_MS", "1000"),
    ]);
    let ingest_process = ingest::spawn(&ctx, &env).await?;
    let addr = address(&ingest_process);

    // 64 slow-header clients, each trickling a header byte now and then.
    let mut slow = Vec::new();
    for _ in 0..64 {
        let mut stream = TcpStream::connect(&addr).await?;
        stream
            .write_all(b"POST /streams/Slow-1/events HTTP/1.1\r\nHost: x\r\n")
            .await?;
        slow.push(stream);
    }
    let started = tokio::time::Instant::now();
    let mut closed = 0;
    for stream in &mut slow {
        let _ = stream.write_all(b"X-A").await;
        let (_, was_closed) = read_until_closed(stream, Duration::from_secs(5)).await;
        closed += usize::from(was_closed);
    }
    assert_eq!(closed, 64, "every slow-header connection was closed");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed within a few seconds: {:?}",
        started.elapsed()
    );

    // A body that stops half way: 408 with the JSON error body, and nothing written.
    // (With a token: a request without one is refused before its body is read.)
    let mut stream = TcpStream::connect(&addr).await?;
    let head = format!(
        "POST /streams/Slow-2/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"expected_version\":",
        ctx.token
    );
    stream.write_all(head.as_bytes()).await?;
    let (response, was_closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("\"request_timeout\""), "{response}");
    assert!(was_closed, "the connection is closed after the 408");
    assert_eq!(ingest::stream_version(&ctx, "Slow-2").await?, None);

    // Still serving.
    let reply = Client::new(&ingest_process)
        .append(
            "Fine-1",
            &json!({"expected_version": "no_stream", "events": [ingest::event("T")]}),
        )
        .await?;
    assert_eq!(reply.status, 201);
    Ok(())
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() -> anyhow::Result<()> {
    let ctx = TestContext::new("http_cap").await?;
    let mut env = HTTP_ONLY.to_vec();
    env.push(("ESK_HTTP_MAX_CONNECTIONS", "8"));
    let ingest_process = ingest::spawn(&ctx, &env).await?;
    let addr = address(&ingest_process);
    // Eight connections that each got an answer, so each holds a slot (a connection refused
    // while an earlier client's slot was still being released is simply made again).
    let mut held = Vec::new();
    for _ in 0..50 {
        if held.len() == 8 {
            break;
        }
        let mut stream = TcpStream::connect(&addr).await?;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await?;
        let mut buffer = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await;
        if matches!(read, Ok(Ok(n)) if n > 0) {
            held.push(stream);
        }
    }
    assert_eq!(held.len(), 8, "eight connections served");
    let mut extra = TcpStream::connect(&addr).await?;
    let _ = extra
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let (response, was_closed) = read_until_closed(&mut extra, Duration::from_secs(2)).await;
    assert!(
        was_closed && response.is_empty(),
        "closed without an answer: {response:?}"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = indexer::metrics(&ingest_process).await?;
    assert!(
        metrics
            .get("esk_http_refused_connections_total")
            .is_some_and(|n| *n >= 1.0),
        "{metrics:?}"
    );
    Ok(())
}

#[tokio::test]
async fn waiters_beyond_the_cap_get_503_and_the_rest_are_woken() -> anyhow::Result<()> {
    let ctx = TestContext::new("http_waiters").await?;
    let mut env = HTTP_ONLY.to_vec();
    env.push(("ESK_INGEST_MAX_WAITERS", "4"));
    let ingest_process = ingest::spawn(&ctx, &env).await?;
    let client = Client::new(&ingest_process);
    let mut waiters = Vec::new();
    for version in 0..2 {
        for path in [
            format!("/wait?stream_id=Wait-1&version={version}&timeout_ms=20000"),
            format!("/wait?position={}&timeout_ms=20000", version + 1),
        ] {
            let client = client.clone();
            waiters.push(tokio::spawn(async move { client.get(&path).await }));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = client.get("/wait?position=1&timeout_ms=1000").await?;
    assert_eq!(
        (refused.status, refused.code()),
        (503, Some("too_many_waiters")),
        "{:?}",
        refused.body
    );

    let _indexer = indexer::spawn(&ctx, &[]).await?;
    let started = tokio::time::Instant::now();
    let reply = client
        .append(
            "Wait-1",
            &json!({"expected_version": "no_stream", "events": [ingest::event("T"), ingest::event("T")]}),
        )
        .await?;
    assert_eq!(reply.status, 201);
    for waiter in waiters {
        let reply = waiter.await??;
        assert_eq!(
            (reply.status, &reply.body),
            (200, &json!({"reached": true}))
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "woken when indexed, not at the timeout"
    );
    let missing = client
        .get("/wait?stream_id=Wait-1&version=5&timeout_ms=300")
        .await?;
    assert_eq!(missing.body, json!({"reached": false}));
    Ok(())
}

#[tokio::test]
async fn get_errors_are_json_too() -> anyhow::Result<()> {
    let ctx = TestContext::new("http_get_errors").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let client = Client::new(&ingest_process);
    for (path, status, code) in [
        ("/streams/%FF%FE/events", 400, "invalid_parameter"),
        ("/categories/%C3%28/events", 400, "invalid_parameter"),
        ("/streams/S-1/events?limit=abc", 400, "invalid_parameter"),
        ("/wait?position=0", 400, "invalid_parameter"),
        ("/nowhere", 404, "not_found"),
    ] {
        let reply = client.get(path).await?;
        assert_eq!(
            (
                reply.status,
                reply.body.pointer("/error/code").and_then(Value::as_str)
            ),
            (status, Some(code)),
            "{path}: {:?}",
            reply.body
        );
    }
    Ok(())
}

/// Clients that never send a whole first request cannot hold connection slots: one silent, one
/// that stops after two bytes (before the protocol is known), one that sends only the HTTP/2
/// preface. Each is closed within about the header timeout, and with a cap of 4 connections
/// the server still answers afterwards.
#[tokio::test]
async fn connections_without_a_first_request_are_closed() -> anyhow::Result<()> {
    let ctx = TestContext::new("http_silent").await?;
    let mut env = HTTP_ONLY.to_vec();
    env.extend([
        ("ESK_HTTP_HEADER_TIMEOUT_MS", "1000"),
        ("ESK_HTTP_MAX_CONNECTIONS", "4"),
    ]);
    let ingest_process = ingest::spawn(&ctx, &env).await?;
    let addr = address(&ingest_process);
    let openings: [&[u8]; 3] = [b"", b"PO", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"];
    let mut clients = Vec::new();
    for opening in openings {
        let mut stream = TcpStream::connect(&addr).await?;
        stream.write_all(opening).await?;
        clients.push(stream);
    }
    let started = tokio::time::Instant::now();
    for (stream, opening) in clients.iter_mut().zip(openings) {
        let (_, closed) = read_until_closed(stream, Duration::from_secs(5)).await;
        assert!(closed, "a client that sent {opening:?} kept its connection");
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed within about the header timeout: {:?}",
        started.elapsed()
    );
    let reply = Client::new(&ingest_process)
        .append(
            "Fine-1",
            &json!({"expected_version": "no_stream", "events": [ingest::event("T")]}),
        )
        .await?;
    assert_eq!(reply.status, 201);
    Ok(())
}

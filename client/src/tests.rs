use std::collections::VecDeque;

use esk_model::api::EventData;
use esk_model::event::ExpectedVersion;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

#[test]
fn segments_keep_only_unreserved_characters() {
    assert_eq!(encode_segment("Order-1"), "Order-1");
    assert_eq!(encode_segment("a_b.c~d"), "a_b.c~d");
    assert_eq!(encode_segment("a b/c$"), "a%20b%2Fc%24");
    assert_eq!(encode_segment("x?y#z%"), "x%3Fy%23z%25");
    assert_eq!(encode_segment("é"), "%C3%A9");
    let client = Client::new("http://h:1/");
    assert_eq!(
        client.map(|c| c.stream_url("a b")).ok().as_deref(),
        Some("http://h:1/streams/a%20b/events")
    );
}

#[test]
fn base_urls_are_checked() {
    let client = Client::new("http://127.0.0.1:8080/");
    assert_eq!(
        client.as_ref().map(Client::base_url).ok(),
        Some("http://127.0.0.1:8080")
    );
    assert!(Client::new("https://esk.example/api").is_ok());
    for bad in ["127.0.0.1:8080", "ftp://h", "http://", "http://h/?a=1", ""] {
        assert!(
            matches!(Client::new(bad), Err(ClientError::InvalidBaseUrl { .. })),
            "{bad}"
        );
    }
}

#[test]
fn unusable_ca_files_are_refused_by_name() {
    let missing = Path::new("/nonexistent/esk-ca.pem");
    let error = Client::builder("https://127.0.0.1:1")
        .ca_file(missing)
        .build();
    assert!(
        matches!(&error, Err(ClientError::CaFile { path, .. }) if path == missing),
        "{error:?}"
    );
    assert!(error
        .err()
        .is_some_and(|e| e.to_string().contains("/nonexistent/esk-ca.pem")),);
    let empty =
        std::env::temp_dir().join(format!("esk-client-empty-ca-{}.pem", std::process::id()));
    assert!(std::fs::write(&empty, "no certificate here\n").is_ok());
    let error = Client::builder("https://127.0.0.1:1")
        .ca_file(&empty)
        .build();
    let _ = std::fs::remove_file(&empty);
    assert!(
        matches!(error, Err(ClientError::CaFile { .. })),
        "{error:?}"
    );
}

#[test]
fn encoded_requests_are_the_serialized_request() -> Result<(), Box<dyn std::error::Error>> {
    let request = AppendRequest {
        expected_version: ExpectedVersion::Exact(3.into()),
        append_id: None,
        events: vec![EventData {
            id: uuid::Uuid::nil(),
            event_type: "A".into(),
            data: RawValue::from_string(r#"{"n":1.50,"n":2}"#.into())?,
            metadata: None,
        }],
    };
    let encoded = EncodedAppend::new(&request)?;
    assert_eq!(
        std::str::from_utf8(encoded.as_bytes())?,
        r#"{"expected_version":3,"events":[{"id":"00000000-0000-0000-0000-000000000000","type":"A","data":{"n":1.50,"n":2}}]}"#
    );
    Ok(())
}

#[test]
fn page_queries_carry_only_what_is_given() {
    assert!(page_query(None, None).is_empty());
    assert_eq!(
        page_query(Some(5), Some(10)),
        vec![("limit", "10".to_owned()), ("from", "5".to_owned())]
    );
}

/// A server answering each connection's request with the next canned answer, and recording
/// the request lines.
async fn canned(
    answers: Vec<(u16, String)>,
) -> std::io::Result<(String, tokio::task::JoinHandle<Vec<String>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let handle = tokio::spawn(async move {
        let mut answers = VecDeque::from(answers);
        let mut seen = Vec::new();
        while let Some((status, body)) = answers.pop_front() {
            let Ok((mut socket, _)) = listener.accept().await else {
                break;
            };
            let mut request = vec![0u8; 8192];
            let n = socket.read(&mut request).await.unwrap_or(0);
            let text = String::from_utf8_lossy(&request[..n]);
            seen.push(text.lines().next().unwrap_or_default().to_owned());
            let answer = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        }
        seen
    });
    Ok((base, handle))
}

fn event_json(version: i64, position: i64) -> String {
    format!(
        r#"{{"event_id":"{}","stream_id":"Order-1","version":{version},"global_position":{position},"type":"A","data":{{"x":1.0}},"metadata":null,"created_at":"2026-01-01T00:00:00Z"}}"#,
        uuid::Uuid::new_v4()
    )
}

#[tokio::test]
async fn event_streams_follow_next_across_pages() -> Result<(), Box<dyn std::error::Error>> {
    let page = |events: &[String], next: &str| {
        format!(
            r#"{{"stream_id":"Order 1","direction":"forward","events":[{}],"next":{next}}}"#,
            events.join(",")
        )
    };
    let (base, server) = canned(vec![
        (200, page(&[event_json(0, 1), event_json(1, 2)], "2")),
        (200, page(&[event_json(2, 5)], "null")),
    ])
    .await?;
    let client = Client::new(&base)?;
    let events: Vec<CanonicalEvent> = client
        .stream_events("Order 1", ReadStream::forward().limit(2))
        .try_collect()
        .await?;
    assert_eq!(
        events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_eq!(events[0].data.get(), r#"{"x":1.0}"#);
    assert_eq!(
        server.await?,
        [
            "GET /streams/Order%201/events?limit=2 HTTP/1.1",
            "GET /streams/Order%201/events?limit=2&from=2 HTTP/1.1",
        ]
    );
    Ok(())
}

#[tokio::test]
async fn answers_map_to_errors() -> Result<(), Box<dyn std::error::Error>> {
    let (base, server) = canned(vec![
        (
            503,
            r#"{"error":{"code":"overloaded","message":"retry"}}"#.into(),
        ),
        (200, r#"{"reached":"yes"}"#.into()),
        (200, r#"{"reached":true}"#.into()),
    ])
    .await?;
    let client = Client::new(&base)?;
    let error = client.read_all(None, None).await.err();
    assert_eq!(
        error.as_ref().and_then(ClientError::code),
        Some("overloaded")
    );
    assert_eq!(
        error.as_ref().and_then(ClientError::retry_after),
        Some(Duration::from_secs(1))
    );
    let error = client.wait_for_position(3, Duration::ZERO).await.err();
    assert!(
        matches!(&error, Some(ClientError::Unexpected { status, url, .. })
            if *status == StatusCode::OK && url == &format!("{base}/wait")),
        "{error:?}"
    );
    assert!(
        client
            .wait_for_version("a/b", 4, Duration::from_millis(1500))
            .await?
    );
    assert_eq!(
        server.await?[2],
        "GET /wait?stream_id=a%2Fb&version=4&timeout_ms=1500 HTTP/1.1"
    );
    Ok(())
}

#[tokio::test]
async fn no_server_is_a_transport_error() -> Result<(), Box<dyn std::error::Error>> {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
    let client = Client::new(&format!("http://127.0.0.1:{port}"))?;
    let error = client.read_all(None, None).await.err();
    assert!(
        matches!(
            &error,
            Some(ClientError::Transport {
                kind: TransportKind::Connection,
                ..
            })
        ),
        "{error:?}"
    );
    assert!(error.as_ref().is_some_and(ClientError::is_retryable));
    assert!(error.as_ref().is_some_and(|e| !e.is_timeout()));
    Ok(())
}

#[tokio::test]
async fn a_token_is_sent_as_a_bearer_header() -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move {
        let Ok((mut socket, _)) = listener.accept().await else {
            return String::new();
        };
        let mut request = vec![0u8; 8192];
        let n = socket.read(&mut request).await.unwrap_or(0);
        let body = r#"{"reached":true}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = socket.write_all(answer.as_bytes()).await;
        String::from_utf8_lossy(&request[..n]).to_lowercase()
    });
    let client = Client::builder(&base).token("esk_secret").build()?;
    assert!(client.wait_for_position(1, Duration::ZERO).await?);
    assert!(server
        .await?
        .contains("\r\nauthorization: bearer esk_secret\r\n"));
    for bad in ["", "a b", "tab\there", "é"] {
        assert!(
            matches!(
                Client::builder(&base).token(bad).build(),
                Err(ClientError::InvalidToken)
            ),
            "{bad:?}"
        );
    }
    Ok(())
}

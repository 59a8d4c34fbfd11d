//! What a client appends is kept exactly as given: the same number tokens, key order and
//! duplicate keys in Postgres, in HTTP reads and on the canonical topic, over both entry
//! points. And input that Postgres or a later hop would refuse is refused at the door with a
//! typed error, over both entry points, with nothing written.

use std::collections::HashMap;
use std::time::Duration;

use esk_tests::ingest::{self, event, Client};
use esk_tests::{indexer, kafka, TestContext};
use rdkafka::producer::FutureRecord;
use rdkafka::Message;
use serde_json::{json, Value};
use uuid::Uuid;

/// Payloads a tree-building parser would alter: float digits beyond f64's shortest form, an
/// integer beyond u64, duplicate keys, keys out of order, exponent and negative-zero tokens,
/// escapes (a surrogate pair and NUL, which the `json` column keeps).
const DATA: &str = r#"{"r":0.17393510096763853,"big":18446744073709551617,"k":1,"k":2,"z":{"b":1,"a":[1.0,2e10,-0.0,1E+2]},"s":"\u00e9\ud83d\ude00 \u0000"}"#;
const METADATA: &str = r#"{"b":1,"a":2,"a":3.10,"correlation_id":"c-exact"}"#;

fn append_body(stream_events: &str) -> String {
    format!(r#"{{"expected_version": "no_stream", "events": [{stream_events}]}}"#)
}

fn exact_event(id: Uuid) -> String {
    // Whitespace between tokens may go; everything else must stay.
    format!(r#"{{"id": "{id}", "type": "Exact", "data": {DATA}, "metadata": {METADATA}}}"#)
}

#[tokio::test]
async fn payloads_are_stored_read_and_published_exactly_as_sent() -> anyhow::Result<()> {
    let ctx = TestContext::new("exact_payloads").await?;
    let ingest_process = ingest::spawn(&ctx, &[]).await?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    let client = Client::new(&ingest_process);

    let http_reply = client
        .post_raw(
            "/streams/Exact-http/events",
            "application/json",
            append_body(&exact_event(Uuid::new_v4())).into_bytes(),
        )
        .await?;
    assert_eq!(http_reply.status, 201, "{:?}", http_reply.body);

    let request = format!(
        r#"{{"schema_version": 1, "request_id": "r-exact", "stream_id": "Exact-kafka", "expected_version": "no_stream", "events": [{}]}}"#,
        exact_event(Uuid::new_v4())
    );
    let producer = kafka::producer(&ctx.brokers)?;
    kafka::produce_append(
        &producer,
        &ctx.topics.appends,
        &ctx.token,
        "Exact-kafka",
        request.as_bytes(),
    )
    .await?;
    // A multi-stream append keeps every part's payload exactly as well.
    let multi = format!(
        r#"{{"appends": [{{"stream_id": "Exact-multi-a", "expected_version": "no_stream", "events": [{}]}}, {{"stream_id": "Exact-multi-b", "expected_version": "no_stream", "events": [{}]}}]}}"#,
        exact_event(Uuid::new_v4()),
        exact_event(Uuid::new_v4())
    );
    let multi_reply = client
        .post_raw("/appends", "application/json", multi.into_bytes())
        .await?;
    assert_eq!(multi_reply.status, 201, "{:?}", multi_reply.body);
    indexer::wait_indexed(&ctx, 4, Duration::from_secs(60)).await?;

    let stored: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT stream_id, data::text, metadata::text FROM events ORDER BY stream_id",
    )
    .fetch_all(&ctx.pool)
    .await?;
    assert_eq!(stored.len(), 4);
    for (stream, data, metadata) in &stored {
        assert_eq!(data, DATA, "{stream}: data in Postgres");
        assert_eq!(metadata.as_deref(), Some(METADATA), "{stream}: metadata");
    }

    let expected_fragment = format!(r#""data":{DATA},"metadata":{METADATA}"#);
    let http = ctx.http()?;
    for stream in [
        "Exact-http",
        "Exact-kafka",
        "Exact-multi-a",
        "Exact-multi-b",
    ] {
        let text = http
            .get(format!("{}/streams/{stream}/events", ingest_process.http))
            .send()
            .await?
            .text()
            .await?;
        assert!(
            text.contains(&expected_fragment),
            "{stream}: the read returns the payload as sent: {text}"
        );
        let all = http
            .get(format!("{}/streams/$all/events", ingest_process.http))
            .send()
            .await?
            .text()
            .await?;
        assert_eq!(all.matches(&expected_fragment).count(), 4, "$all: {all}");
    }

    let published =
        kafka::read_topic(&ctx.brokers, &ctx.topics.events, 4, Duration::from_secs(60))?;
    assert_eq!(published.len(), 4);
    for record in &published {
        let value = std::str::from_utf8(record.payload().unwrap_or_default())?;
        assert!(
            value.contains(&expected_fragment),
            "canonical record keeps the payload: {value}"
        );
        assert_eq!(
            kafka::header_map(record)
                .get("correlation_id")
                .map(String::as_str),
            Some("c-exact")
        );
    }
    Ok(())
}

/// HTTP cases: (what, path, headers, body, status, code).
type HttpCase = (
    &'static str,
    String,
    Vec<(&'static str, Vec<u8>)>,
    Vec<u8>,
    u16,
    &'static str,
);

#[tokio::test]
async fn storage_hostile_input_is_refused_over_http_and_kafka_with_nothing_written(
) -> anyhow::Result<()> {
    let ctx = TestContext::new("hostile_input").await?;
    let ingest_process = ingest::spawn(&ctx, &[]).await?;
    let id = Uuid::new_v4();
    let typed = |event_type: &str| {
        json!({"expected_version": "any", "events": [{"id": id, "type": event_type, "data": 1}]})
            .to_string()
            .into_bytes()
    };
    let ok_body = || {
        json!({"expected_version": "any", "events": [event("T")]})
            .to_string()
            .into_bytes()
    };
    let raw_event = |event: &str| append_body(event).into_bytes();
    // A multi-stream append whose second part is `part` (the first is valid).
    let multi = |part: &str| {
        format!(
            r#"{{"appends": [{{"stream_id": "H-1", "expected_version": "any", "events": [{{"id": "{}", "type": "T", "data": 1}}]}}, {part}]}}"#,
            Uuid::new_v4()
        )
        .into_bytes()
    };
    let json_ct = || vec![("content-type", b"application/json".to_vec())];
    let with_header = |name: &'static str, value: Vec<u8>| {
        vec![
            ("content-type", b"application/json".to_vec()),
            (name, value),
        ]
    };
    let cases: Vec<HttpCase> = vec![
        ("NUL in type", "/streams/H-1/events".into(), json_ct(), typed("a\u{0}b"), 422, "invalid_event_type"),
        ("DEL in type", "/streams/H-1/events".into(), json_ct(), typed("a\u{7f}"), 422, "invalid_event_type"),
        ("C1 control in type", "/streams/H-1/events".into(), json_ct(), typed("a\u{85}"), 422, "invalid_event_type"),
        ("zero-width space in type", "/streams/H-1/events".into(), json_ct(), typed("Order\u{200B}Placed"), 422, "invalid_event_type"),
        ("line separator in type", "/streams/H-1/events".into(), json_ct(), typed("a\u{2028}b"), 422, "invalid_event_type"),
        ("bidi override in type", "/streams/H-1/events".into(), json_ct(), typed("a\u{202E}b"), 422, "invalid_event_type"),
        ("byte order mark in type", "/streams/H-1/events".into(), json_ct(), typed("\u{FEFF}T"), 422, "invalid_event_type"),
        ("lone surrogate in type", "/streams/H-1/events".into(), json_ct(), raw_event(&format!(r#"{{"id": "{id}", "type": "\ud800", "data": 1}}"#)), 422, "invalid_event_type"),
        ("NUL in stream id", "/streams/H%00x/events".into(), json_ct(), ok_body(), 422, "invalid_stream_id"),
        ("bidi isolate in stream id", format!("/streams/{}/events", ingest::urlencode("H-\u{2066}x")), json_ct(), ok_body(), 422, "invalid_stream_id"),
        ("zero-width joiner in stream id", format!("/streams/{}/events", ingest::urlencode("H-\u{200D}")), json_ct(), ok_body(), 422, "invalid_stream_id"),
        ("lone surrogate in data", "/streams/H-1/events".into(), json_ct(), raw_event(&format!(r#"{{"id": "{id}", "type": "T", "data": {{"a": "\udc00"}}}}"#)), 422, "unstorable_json"),
        ("high surrogate without its pair in metadata", "/streams/H-1/events".into(), json_ct(), raw_event(&format!(r#"{{"id": "{id}", "type": "T", "data": 1, "metadata": {{"a": "\ud83dx"}}}}"#)), 422, "unstorable_json"),
        ("duplicate top-level field", "/streams/H-1/events".into(), json_ct(), format!(r#"{{"expected_version": "any", "expected_version": 3, "events": [{{"id": "{id}", "type": "T", "data": 1}}]}}"#).into_bytes(), 422, "duplicate_field"),
        ("duplicate event field", "/streams/H-1/events".into(), json_ct(), raw_event(&format!(r#"{{"id": "{id}", "type": "T", "data": 1, "data": 2}}"#)), 422, "duplicate_field"),
        ("event not an object", "/streams/H-1/events".into(), json_ct(), raw_event("7"), 422, "wrong_type"),
        ("correlation id over 256 bytes", "/streams/H-1/events".into(), with_header("x-correlation-id", vec![b'c'; 300]), ok_body(), 400, "invalid_trace_id"),
        ("non-ASCII causation id", "/streams/H-1/events".into(), with_header("x-causation-id", "caus\u{e9}".as_bytes().to_vec()), ok_body(), 400, "invalid_trace_id"),
        ("wrong content type with a 200 KB body", "/streams/H-1/events".into(), vec![("content-type", b"text/plain".to_vec())], vec![b'x'; 200 * 1024], 415, "unsupported_media_type"),
        ("no content type", "/streams/H-1/events".into(), vec![], ok_body(), 415, "unsupported_media_type"),
        ("multi-stream: NUL in a part's stream id", "/appends".into(), json_ct(), multi(&format!(r#"{{"stream_id": "H\u0000x", "expected_version": "any", "events": [{{"id": "{}", "type": "T", "data": 1}}]}}"#, Uuid::new_v4())), 422, "invalid_stream_id"),
        ("multi-stream: bidi override in a part's type", "/appends".into(), json_ct(), multi(&format!(r#"{{"stream_id": "H-2", "expected_version": "any", "events": [{{"id": "{}", "type": "a\u202Eb", "data": 1}}]}}"#, Uuid::new_v4())), 422, "invalid_event_type"),
        ("multi-stream: lone surrogate in a part's data", "/appends".into(), json_ct(), multi(&format!(r#"{{"stream_id": "H-2", "expected_version": "any", "events": [{{"id": "{}", "type": "T", "data": "\udc00"}}]}}"#, Uuid::new_v4())), 422, "unstorable_json"),
        ("multi-stream: duplicate field in a part", "/appends".into(), json_ct(), multi(&format!(r#"{{"stream_id": "H-2", "stream_id": "H-3", "expected_version": "any", "events": [{{"id": "{}", "type": "T", "data": 1}}]}}"#, Uuid::new_v4())), 422, "duplicate_field"),
    ];
    let http = ctx.http()?;
    for (what, path, headers, body, status, code) in cases {
        let mut request = http
            .post(format!("{}{path}", ingest_process.http))
            .body(body);
        for (name, value) in headers {
            request = request.header(name, reqwest::header::HeaderValue::from_bytes(&value)?);
        }
        let response = request.send().await?;
        let got_status = response.status().as_u16();
        let reply: Value = serde_json::from_slice(&response.bytes().await?).unwrap_or(Value::Null);
        assert_eq!(
            (
                got_status,
                reply.pointer("/error/code").and_then(Value::as_str)
            ),
            (status, Some(code)),
            "{what}: {reply}"
        );
    }

    // The same classes over Kafka, plus what only a Kafka record can be.
    let request = |fields: Value| {
        let mut base = json!({"schema_version": 1, "stream_id": "K-1", "expected_version": "any",
            "events": [event("T")]});
        if let (Some(base), Some(fields)) = (base.as_object_mut(), fields.as_object()) {
            base.extend(fields.clone());
        }
        base.to_string().into_bytes()
    };
    let kafka_event =
        |event_type: &str| json!([{"id": Uuid::new_v4(), "type": event_type, "data": 1}]);
    let kafka_cases: Vec<(&str, Option<Vec<u8>>, &str)> = vec![
        ("k-nul-type", Some(request(json!({"request_id": "k-nul-type", "events": kafka_event("a\u{0}b")}))), "invalid_event_type"),
        ("k-bidi-type", Some(request(json!({"request_id": "k-bidi-type", "events": kafka_event("a\u{202A}b")}))), "invalid_event_type"),
        ("k-nul-stream", Some(request(json!({"request_id": "k-nul-stream", "stream_id": "K\u{0}1"}))), "invalid_stream_id"),
        ("k-bom-stream", Some(request(json!({"request_id": "k-bom-stream", "stream_id": "\u{FEFF}K-1"}))), "invalid_stream_id"),
        ("k-schema-2", Some(request(json!({"request_id": "k-schema-2", "schema_version": 2}))), "unsupported_schema_version"),
        ("k-surrogate", Some(format!(r#"{{"schema_version": 1, "request_id": "k-surrogate", "stream_id": "K-1", "expected_version": "any", "events": [{{"id": "{}", "type": "T", "data": "\ud800"}}]}}"#, Uuid::new_v4()).into_bytes()), "unstorable_json"),
        ("k-duplicate", Some(format!(r#"{{"schema_version": 1, "request_id": "k-duplicate", "stream_id": "K-1", "stream_id": "K-2", "expected_version": "any", "events": [{{"id": "{}", "type": "T", "data": 1}}]}}"#, Uuid::new_v4()).into_bytes()), "duplicate_field"),
        ("k-not-utf8", Some(vec![b'{', 0xff, 0xfe, b'}']), "malformed_json"),
        ("k-tombstone", None, "empty_request"),
    ];
    let producer = kafka::producer(&ctx.brokers)?;
    for (key, payload, _) in &kafka_cases {
        let mut record = FutureRecord::<str, [u8]>::to(&ctx.topics.appends)
            .key(key)
            .headers(ctx.kafka_auth());
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
    }
    let results = kafka::read_topic(
        &ctx.brokers,
        &ctx.topics.append_results,
        kafka_cases.len(),
        Duration::from_secs(60),
    )?;
    let codes: HashMap<String, String> = results
        .iter()
        .map(|r| {
            let key = String::from_utf8_lossy(r.key().unwrap_or_default()).into_owned();
            let value: Value = kafka::json_payload(r).unwrap_or(Value::Null);
            let code = value
                .pointer("/error/code")
                .and_then(Value::as_str)
                .unwrap_or("none")
                .to_owned();
            (key, code)
        })
        .collect();
    for (key, _, code) in &kafka_cases {
        assert_eq!(
            codes.get(*key).map(String::as_str),
            Some(*code),
            "{key}: {codes:?}"
        );
    }

    let written: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM append_ledger) + (SELECT count(*) FROM streams) + (SELECT count(*) FROM event_claims)",
    )
    .fetch_one(&ctx.pool)
    .await?;
    assert_eq!(written, 0, "nothing written for refused input");
    let log = kafka::read_topic(
        &ctx.brokers,
        &ctx.topics.ingest_log,
        1,
        Duration::from_secs(2),
    )?;
    assert!(log.is_empty(), "nothing produced for refused input");
    Ok(())
}

//! Ingest over HTTP: expected-version modes, concurrency, idempotency and bad input, against the
//! real Postgres and broker.

use std::collections::BTreeSet;
use std::time::Duration;

use esk_tests::ingest::{self, event, events, Client};
use esk_tests::{kafka, TestContext};
use rdkafka::Message;
use serde_json::{json, Value};
use uuid::Uuid;

/// What, path, content type, body, status, code.
type RawCase<'a> = (&'a str, &'a str, &'a str, Vec<u8>, u16, &'a str);

const HTTP_ONLY: &[(&str, &str)] = &[("ESK_INGEST_KAFKA_APPENDS", "false")];

async fn start(name: &str) -> anyhow::Result<(TestContext, esk_tests::process::Process, Client)> {
    let ctx = TestContext::new(name).await?;
    let process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let client = Client::new(&process);
    Ok((ctx, process, client))
}

#[tokio::test]
async fn every_expected_version_mode_accepts_and_rejects() -> anyhow::Result<()> {
    let (ctx, _ingest, client) = start("ev_modes").await?;
    let s = "Order-1";
    let cases: Vec<(Value, u16, Option<Value>)> = vec![
        // stream_exists and exact N on a missing stream are 409 with actual_version null.
        (json!("stream_exists"), 409, Some(Value::Null)),
        (json!(0), 409, Some(Value::Null)),
        (json!("no_stream"), 201, None), // -> version 1 (two events)
        (json!("no_stream"), 409, Some(json!(1))),
        (json!("stream_exists"), 201, None), // -> 3
        (json!(1), 409, Some(json!(3))),
        (json!(3), 201, None),     // -> 5
        (json!("any"), 201, None), // -> 7
    ];
    let mut version = -1i64;
    for (expected, status, actual) in cases {
        let reply = client
            .append(
                s,
                &json!({"expected_version": expected, "events": events(2)}),
            )
            .await?;
        assert_eq!(
            reply.status, status,
            "expected_version {expected}: {:?}",
            reply.body
        );
        if status == 201 {
            assert_eq!(reply.body["first_version"], json!(version + 1));
            assert_eq!(reply.body["last_version"], json!(version + 2));
            assert_eq!(reply.body["stream_id"], json!(s));
            version += 2;
        } else {
            assert_eq!(reply.code(), Some("wrong_expected_version"));
            assert_eq!(
                reply.body["error"]["actual_version"],
                actual.unwrap_or_default()
            );
        }
    }
    assert_eq!(ingest::stream_version(&ctx, s).await?, Some(7));
    // A stream with one event is at version 0.
    let reply = client
        .append(
            "Other-1",
            &json!({"expected_version": "any", "events": events(1)}),
        )
        .await?;
    assert_eq!(
        (
            reply.body["first_version"].clone(),
            reply.body["last_version"].clone()
        ),
        (json!(0), json!(0))
    );
    Ok(())
}

#[tokio::test]
async fn fifty_concurrent_writers_get_one_winner_per_version() -> anyhow::Result<()> {
    let (ctx, _ingest, client) = start("race").await?;
    let stream = "Race-1";
    let target_events = 150i64;
    let mut writers = Vec::new();
    for _ in 0..50 {
        let client = client.clone();
        writers.push(tokio::spawn(async move {
            let mut known: Option<i64> = None;
            let mut wins: Vec<(i64, i64)> = Vec::new();
            loop {
                if known.is_some_and(|v| v + 1 >= target_events) {
                    return Ok::<_, anyhow::Error>(wins);
                }
                let expected = known.map_or(json!("no_stream"), |v| json!(v));
                let reply = client
                    .append(
                        stream,
                        &json!({"expected_version": expected, "events": events(1)}),
                    )
                    .await?;
                match reply.status {
                    201 => {
                        let v = reply.body["last_version"].as_i64().unwrap_or(-2);
                        wins.push((reply.body["first_version"].as_i64().unwrap_or(-2), v));
                        known = Some(v);
                    }
                    409 => known = reply.body["error"]["actual_version"].as_i64(),
                    503 => tokio::time::sleep(Duration::from_millis(20)).await,
                    other => anyhow::bail!("unexpected status {other}: {:?}", reply.body),
                }
            }
        }));
    }
    let mut versions = Vec::new();
    for writer in writers {
        for (first, last) in writer.await?? {
            assert_eq!(first, last, "one event per append");
            versions.push(first);
        }
    }
    versions.sort_unstable();
    let expected: Vec<i64> = (0..target_events).collect();
    assert_eq!(
        versions, expected,
        "exactly one winner per version, contiguous from 0"
    );
    assert_eq!(
        ingest::stream_version(&ctx, stream).await?,
        Some(target_events - 1)
    );
    let accepted: Vec<_> = ingest::ledger(&ctx)
        .await?
        .into_iter()
        .filter(|r| r.status == "accepted")
        .collect();
    assert_eq!(accepted.len() as i64, target_events);
    Ok(())
}

#[tokio::test]
async fn a_retry_after_success_gets_the_same_versions_and_writes_nothing() -> anyhow::Result<()> {
    let (ctx, ingest, client) = start("retry_ok").await?;
    let body = json!({"expected_version": "no_stream", "events": events(3)});
    let first = client.append("Cart-1", &body).await?;
    assert_eq!(first.status, 201);
    assert_eq!(claims_redone(&ingest).await?, 0.0, "new ids: plain claims");
    let retry = client.append("Cart-1", &body).await?;
    assert_eq!(retry.status, 201, "{:?}", retry.body);
    assert_eq!(
        claims_redone(&ingest).await?,
        1.0,
        "the retry's plain claim met its own append id and was redone skipping it"
    );
    assert_eq!(
        retry.body, first.body,
        "the original outcome, same versions and append id"
    );
    assert_eq!(ingest::stream_version(&ctx, "Cart-1").await?, Some(2));
    assert_eq!(ingest::ledger(&ctx).await?.len(), 1);
    // ingest-log holds each event once: only one attempt produced them (one record).
    let records = kafka::read_topic(
        &ctx.brokers,
        &ctx.topics.ingest_log,
        2,
        Duration::from_secs(3),
    )?;
    assert_eq!(records.len(), 1);
    assert_eq!(kafka::ingest_log_events(&records)?.len(), 3);
    Ok(())
}

#[tokio::test]
async fn a_redelivered_rejection_stays_rejected() -> anyhow::Result<()> {
    let (_ctx, _ingest, client) = start("retry_rejected").await?;
    client
        .append(
            "Acct-1",
            &json!({"expected_version": "no_stream", "events": events(1)}),
        )
        .await?;
    let append_id = Uuid::new_v4();
    let stale = json!({"expected_version": 1, "append_id": append_id, "events": events(1)});
    let rejected = client.append("Acct-1", &stale).await?;
    assert_eq!(rejected.status, 409);
    assert_eq!(rejected.body["error"]["actual_version"], json!(0));
    // Now the stream reaches version 1, so the same request would pass if it were re-decided.
    let advanced = client
        .append(
            "Acct-1",
            &json!({"expected_version": 0, "events": events(1)}),
        )
        .await?;
    assert_eq!(advanced.status, 201);
    let redelivered = client.append("Acct-1", &stale).await?;
    assert_eq!(
        redelivered.status, 409,
        "the original rejection: {:?}",
        redelivered.body
    );
    assert_eq!(redelivered.body, rejected.body);
    Ok(())
}

#[tokio::test]
async fn same_events_under_a_new_append_id_are_duplicate_event_ids() -> anyhow::Result<()> {
    let (ctx, ingest, client) = start("dup_events").await?;
    let evs = events(2);
    let first = client
        .append("Ship-1", &json!({"expected_version": "any", "events": evs}))
        .await?;
    assert_eq!(first.status, 201);
    let again = client
        .append(
            "Ship-1",
            &json!({"expected_version": "any", "append_id": Uuid::new_v4(), "events": evs}),
        )
        .await?;
    assert_eq!(again.status, 409);
    assert_eq!(again.code(), Some("duplicate_event_id"));
    // One event id reused in another stream, beside a fresh one: the whole append is refused
    // and the fresh id stays usable.
    let fresh = event("Fresh");
    let mixed = client
        .append(
            "Ship-2",
            &json!({"expected_version": "any", "events": [fresh, evs[0]]}),
        )
        .await?;
    assert_eq!(mixed.code(), Some("duplicate_event_id"));
    assert_eq!(ingest::stream_version(&ctx, "Ship-2").await?, None);
    let reuse_fresh = client
        .append(
            "Ship-2",
            &json!({"expected_version": "no_stream", "events": [fresh]}),
        )
        .await?;
    assert_eq!(reuse_fresh.status, 201, "{:?}", reuse_fresh.body);
    assert_eq!(ingest::stream_version(&ctx, "Ship-1").await?, Some(1));
    assert_eq!(
        claims_redone(&ingest).await?,
        2.0,
        "each append holding a used event id was redone; the fresh ones were not"
    );
    Ok(())
}

/// `esk_ingest_claims_redone_total` of an ingest process.
async fn claims_redone(process: &esk_tests::process::Process) -> anyhow::Result<f64> {
    let metrics = esk_tests::indexer::metrics(process).await?;
    metrics
        .get("esk_ingest_claims_redone_total")
        .copied()
        .ok_or_else(|| anyhow::anyhow!("no esk_ingest_claims_redone_total in /metrics"))
}

#[tokio::test]
async fn an_append_id_reused_for_other_events_is_a_conflict() -> anyhow::Result<()> {
    let (ctx, _ingest, client) = start("reuse").await?;
    let append_id = Uuid::new_v4();
    let first = client
        .append(
            "Bill-1",
            &json!({"expected_version": "any", "append_id": append_id, "events": events(1)}),
        )
        .await?;
    assert_eq!(first.status, 201);
    let other = client
        .append(
            "Bill-1",
            &json!({"expected_version": "any", "append_id": append_id, "events": events(1)}),
        )
        .await?;
    assert_eq!(other.status, 409);
    assert_eq!(other.code(), Some("append_id_reused"));
    assert_eq!(ingest::stream_version(&ctx, "Bill-1").await?, Some(0));
    Ok(())
}

/// A retry that arrives while its first attempt still holds the append id (here an open
/// transaction standing in for a slow attempt) waits for it and gets its outcome.
#[tokio::test]
async fn a_retry_waits_for_an_attempt_that_holds_its_append_id() -> anyhow::Result<()> {
    let (ctx, _ingest, client) = start("retry_inflight").await?;
    for commit in [true, false] {
        let stream = format!("Slow-{commit}");
        let evs = events(1);
        let body = json!({"expected_version": "no_stream", "events": evs});
        let append = esk_model::validate::parse_append_body(
            &stream,
            body.to_string().as_bytes(),
            &Default::default(),
            Default::default(),
        )?;
        let mut holder = ctx.pool.begin().await?;
        sqlx::query(
            "INSERT INTO append_ledger (append_id, attempt_id, stream_id, fingerprint, event_count, status,
                                        first_version, last_version)
             VALUES ($1, $2, $3, $4, 1, 'accepted', 0, 0)",
        )
        .bind(append.append_id)
        .bind(Uuid::new_v4())
        .bind(&stream)
        .bind(append.fingerprint())
        .execute(&mut *holder)
        .await?;
        let retry = {
            let client = client.clone();
            let stream = stream.clone();
            tokio::spawn(async move { client.append(&stream, &body).await })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!retry.is_finished(), "the retry must wait for the holder");
        if commit {
            holder.commit().await?;
        } else {
            holder.rollback().await?;
        }
        let reply = retry.await??;
        assert_eq!(reply.status, 201, "{:?}", reply.body);
        assert_eq!(reply.body["first_version"], json!(0));
        // Committed: answered from the holder's row, nothing written. Rolled back: applied now.
        let expected_stream = if commit { None } else { Some(0) };
        assert_eq!(
            ingest::stream_version(&ctx, &stream).await?,
            expected_stream
        );
    }
    Ok(())
}

#[tokio::test]
async fn bad_input_gets_typed_errors_and_writes_nothing() -> anyhow::Result<()> {
    let (ctx, ingest_process, client) = start("bad_input").await?;
    let id = Uuid::new_v4();
    let ok_event = json!({"id": Uuid::new_v4(), "type": "T", "data": {}});
    let big = "x".repeat(1024 * 1024 + 10);
    let huge = "y".repeat(10 * 1024 * 1024);
    let long_stream = "s".repeat(10 * 1024);
    let json_cases: Vec<(&str, &str, Value, u16, &str)> = vec![
        (
            "missing expected_version",
            "S-1",
            json!({"events": [ok_event]}),
            422,
            "missing_field",
        ),
        (
            "missing events",
            "S-1",
            json!({"expected_version": "any"}),
            422,
            "missing_field",
        ),
        (
            "events not an array",
            "S-1",
            json!({"expected_version": "any", "events": "x"}),
            422,
            "wrong_type",
        ),
        (
            "empty events",
            "S-1",
            json!({"expected_version": "any", "events": []}),
            422,
            "empty_events",
        ),
        (
            "unknown expected-version word",
            "S-1",
            json!({"expected_version": "sometimes", "events": [ok_event]}),
            422,
            "invalid_expected_version",
        ),
        (
            "negative version",
            "S-1",
            json!({"expected_version": -3, "events": [ok_event]}),
            422,
            "invalid_expected_version",
        ),
        (
            "fractional version",
            "S-1",
            json!({"expected_version": 1.5, "events": [ok_event]}),
            422,
            "invalid_expected_version",
        ),
        (
            "non-UUID event id",
            "S-1",
            json!({"expected_version": "any", "events": [{"id": "abc", "type": "T", "data": 1}]}),
            422,
            "invalid_uuid",
        ),
        (
            "event id of wrong type",
            "S-1",
            json!({"expected_version": "any", "events": [{"id": 7, "type": "T", "data": 1}]}),
            422,
            "invalid_uuid",
        ),
        (
            "non-UUID append id",
            "S-1",
            json!({"expected_version": "any", "append_id": "nope", "events": [ok_event]}),
            422,
            "invalid_uuid",
        ),
        (
            "missing type",
            "S-1",
            json!({"expected_version": "any", "events": [{"id": id, "data": 1}]}),
            422,
            "missing_field",
        ),
        (
            "empty type",
            "S-1",
            json!({"expected_version": "any", "events": [{"id": id, "type": " ", "data": 1}]}),
            422,
            "invalid_event_type",
        ),
        (
            "type not a string",
            "S-1",
            json!({"expected_version": "any", "events": [{"id": id, "type": 5, "data": 1}]}),
            422,
            "wrong_type",
        ),
        (
            "missing data",
            "S-1",
            json!({"expected_version": "any", "events": [{"id": id, "type": "T"}]}),
            422,
            "missing_field",
        ),
        (
            "metadata not an object",
            "S-1",
            json!({"expected_version": "any", "events": [{"id": id, "type": "T", "data": 1, "metadata": [1]}]}),
            422,
            "invalid_metadata",
        ),
        (
            "duplicate event id inside one append",
            "S-1",
            json!({"expected_version": "any", "events": [{"id": id, "type": "T", "data": 1}, {"id": id, "type": "T", "data": 2}]}),
            422,
            "duplicate_event_id_in_append",
        ),
        (
            "oversize event",
            "S-1",
            json!({"expected_version": "any", "events": [{"id": id, "type": "T", "data": big}]}),
            413,
            "event_too_large",
        ),
        (
            "10 MB event",
            "S-1",
            json!({"expected_version": "any", "events": [{"id": id, "type": "T", "data": huge}]}),
            413,
            "payload_too_large",
        ),
        (
            "10 KB stream id",
            &long_stream,
            json!({"expected_version": "any", "events": [ok_event]}),
            422,
            "invalid_stream_id",
        ),
        (
            "reserved stream id",
            "$all",
            json!({"expected_version": "any", "events": [ok_event]}),
            422,
            "invalid_stream_id",
        ),
        (
            "body not an object",
            "S-1",
            json!([1, 2]),
            422,
            "invalid_body",
        ),
        (
            "unknown field",
            "S-1",
            json!({"expected_version": "any", "events": [ok_event], "expectedVersion": 1}),
            422,
            "unknown_field",
        ),
        (
            "too many events",
            "S-1",
            json!({"expected_version": "any", "events": (0..1001).map(|_| event("T")).collect::<Vec<_>>()}),
            422,
            "too_many_events",
        ),
    ];
    for (what, stream, body, status, code) in json_cases {
        // The server answers an oversized body before reading it all and closes that
        // connection; a fresh client per case keeps a reused connection out of the picture.
        let client = Client::new(&ingest_process);
        let reply = client.append(stream, &body).await?;
        assert_eq!(
            (reply.status, reply.code()),
            (status, Some(code)),
            "{what}: {:?}",
            reply.body
        );
        assert!(
            reply.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }
    let raw_cases: Vec<RawCase<'_>> = vec![
        (
            "broken JSON",
            "/streams/S-1/events",
            "application/json",
            b"{\"expected_version\": ".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "not UTF-8",
            "/streams/S-1/events",
            "application/json",
            vec![0xff, 0xfe, 0x00],
            400,
            "malformed_json",
        ),
        (
            "wrong content type",
            "/streams/S-1/events",
            "text/plain",
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "stream id with a control character",
            "/streams/S%01x/events",
            "application/json",
            serde_json::to_vec(&json!({"expected_version": "any", "events": [event("T")]}))?,
            422,
            "invalid_stream_id",
        ),
        (
            "non-UTF-8 stream id",
            "/streams/%FF%FE/events",
            "application/json",
            serde_json::to_vec(&json!({"expected_version": "any", "events": [event("T")]}))?,
            400,
            "invalid_stream_id",
        ),
        (
            "unknown route",
            "/nowhere",
            "application/json",
            b"{}".to_vec(),
            404,
            "not_found",
        ),
    ];
    for (what, path, content_type, body, status, code) in raw_cases {
        let reply = client.post_raw(path, content_type, body).await?;
        assert_eq!(
            (reply.status, reply.code()),
            (status, Some(code)),
            "{what}: {:?}",
            reply.body
        );
    }
    let wrong_method = client.delete("/streams/S-1/events").await?;
    assert_eq!(
        (wrong_method.status, wrong_method.code()),
        (405, Some("method_not_allowed"))
    );

    let written: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM append_ledger) + (SELECT count(*) FROM streams) + (SELECT count(*) FROM event_claims)",
    )
    .fetch_one(&ctx.pool)
    .await?;
    assert_eq!(written, 0, "nothing written for bad input");
    let records = kafka::read_topic(
        &ctx.brokers,
        &ctx.topics.ingest_log,
        1,
        Duration::from_secs(2),
    )?;
    assert!(records.is_empty(), "nothing produced for bad input");
    // Still serving after all that.
    let ok = client
        .append(
            "S-1",
            &json!({"expected_version": "no_stream", "events": [event("T")]}),
        )
        .await?;
    assert_eq!(ok.status, 201, "log:\n{}", ingest_process.log_text());
    Ok(())
}

#[tokio::test]
async fn an_append_is_one_ingest_log_record_with_versions_ids_and_headers() -> anyhow::Result<()> {
    let (ctx, _ingest, client) = start("ingest_log_format").await?;
    let evs = vec![
        json!({"id": Uuid::new_v4(), "type": "Opened", "data": {"a": 1}, "metadata": {"correlation_id": "c-1", "causation_id": "x-1"}}),
        json!({"id": Uuid::new_v4(), "type": "Closed", "data": [1, 2]}),
    ];
    let reply = client
        .append(
            "Door-7",
            &json!({"expected_version": "no_stream", "events": evs}),
        )
        .await?;
    assert_eq!(reply.status, 201);
    let records = kafka::read_topic(
        &ctx.brokers,
        &ctx.topics.ingest_log,
        2,
        Duration::from_secs(5),
    )?;
    assert_eq!(records.len(), 1, "one record for the attempt's partition");
    let record = &records[0];
    assert_eq!(record.key(), Some(&b"Door-7"[..]));
    assert_eq!(
        record.payload().and_then(|p| p.first()).copied(),
        Some(esk_model::ingest_log::BATCH_FORMAT)
    );
    assert_eq!(
        record.partition(),
        esk_runtime::kafka::partition_for_key(b"Door-7", esk_tests::TEST_PARTITIONS),
        "placed by the stream id"
    );
    let headers = kafka::header_map(record);
    let events = kafka::ingest_log_events(&records)?;
    assert_eq!(events.len(), 2);
    assert_eq!(headers.get("event_count").map(String::as_str), Some("2"));
    assert_eq!(
        headers.get("attempt_id"),
        Some(&events[0].attempt_id.to_string())
    );
    let versions: BTreeSet<i64> = events.iter().map(|e| e.version).collect();
    assert_eq!(versions, BTreeSet::from([0, 1]));
    for (event, sent) in events.iter().zip(&evs) {
        assert_eq!(json!(event.append_id), reply.body["append_id"]);
        assert_eq!(json!(event.event_id), sent["id"]);
        assert_eq!(json!(event.event_type), sent["type"]);
        assert_eq!(event.stream_id, "Door-7");
    }
    // The payload and metadata as sent.
    assert_eq!(events[0].data.get(), r#"{"a":1}"#);
    assert!(events[0]
        .metadata
        .as_ref()
        .is_some_and(|m| m.get().contains(r#""correlation_id":"c-1""#)));
    assert!(events[1].metadata.is_none());
    Ok(())
}

#[tokio::test]
async fn a_retry_after_its_ledger_row_was_pruned_is_append_expired() -> anyhow::Result<()> {
    let (ctx, _ingest, client) = start("expired").await?;
    let body = json!({"expected_version": "no_stream", "events": events(2)});
    let first = client.append("Old-1", &body).await?;
    assert_eq!(first.status, 201);
    // What pruning after the idempotency window leaves: the claims, no ledger row.
    sqlx::query("DELETE FROM append_ledger")
        .execute(&ctx.pool)
        .await?;
    for _ in 0..2 {
        let retry = client.append("Old-1", &body).await?;
        assert_eq!(
            (retry.status, retry.code()),
            (409, Some("append_expired")),
            "{:?}",
            retry.body
        );
    }
    let claims: i64 = sqlx::query_scalar("SELECT count(*) FROM event_claims")
        .fetch_one(&ctx.pool)
        .await?;
    assert_eq!(claims, 2, "the original claims are kept");
    assert_eq!(
        ingest::stream_version(&ctx, "Old-1").await?,
        Some(1),
        "nothing written again"
    );
    Ok(())
}

#[tokio::test]
async fn overload_is_refused_with_503_and_retry_after_and_writes_nothing_partial(
) -> anyhow::Result<()> {
    let ctx = TestContext::new("overload").await?;
    let process = ingest::spawn(
        &ctx,
        &[
            ("ESK_INGEST_KAFKA_APPENDS", "false"),
            ("ESK_INGEST_WORKERS", "1"),
            ("ESK_INGEST_QUEUE", "1"),
            ("ESK_INGEST_MAX_BATCH", "1"),
        ],
    )
    .await?;
    let http = ctx.http()?;
    let mut requests = Vec::new();
    for i in 0..200 {
        let http = http.clone();
        let url = format!("{}/streams/Busy-{i}/events", process.http);
        requests.push(tokio::spawn(async move {
            let body = json!({"expected_version": "no_stream", "events": events(3)});
            let response = http
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await?;
            let status = response.status().as_u16();
            let retry_after = response.headers().get("retry-after").is_some();
            let body: Value = response.json().await?;
            Ok::<_, anyhow::Error>((status, retry_after, body))
        }));
    }
    let (mut accepted, mut refused) = (0i64, 0);
    for request in requests {
        let (status, retry_after, body) = request.await??;
        match status {
            201 => accepted += 1,
            503 => {
                refused += 1;
                assert!(retry_after, "503 carries Retry-After");
                assert_eq!(body["error"]["code"], "overloaded");
            }
            other => anyhow::bail!("unexpected {other}: {body}"),
        }
    }
    assert!(refused > 0, "the bounded queue refused some appends");
    assert!(accepted > 0);
    let ledger = ingest::ledger(&ctx).await?;
    assert_eq!(
        ledger.len() as i64,
        accepted,
        "exactly the acknowledged appends are in the ledger"
    );
    let claims: i64 = sqlx::query_scalar("SELECT count(*) FROM event_claims")
        .fetch_one(&ctx.pool)
        .await?;
    assert_eq!(claims, accepted * 3, "no partial append");
    Ok(())
}

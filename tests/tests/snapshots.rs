//! Snapshots (`PUT/GET /streams/{id}/snapshot`, docs/snapshots.md) against the real stack: data
//! kept byte for byte, an older snapshot never replacing a newer one (also when PUTs race), every
//! bad input a typed error that writes nothing, scopes, and the client's `load`.

use std::time::Duration;

use esk_client::ReadStream;
use esk_model::api::PutSnapshotRequest;
use esk_model::event::Version;
use esk_runtime::scope::Scope;
use esk_runtime::tokens;
use esk_tests::indexer::{self, wait_indexed};
use esk_tests::ingest::{self, events, Client};
use esk_tests::process::Process;
use esk_tests::TestContext;
use serde_json::json;
use serde_json::value::RawValue;

const HTTP_ONLY: &[(&str, &str)] = &[("ESK_INGEST_KAFKA_APPENDS", "false")];

/// Ingest and the indexer on a new database and topics.
async fn stack(name: &str) -> anyhow::Result<(TestContext, Process, Process, Client)> {
    let ctx = TestContext::new(name).await?;
    let ingest = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let indexer = indexer::spawn(&ctx, &[]).await?;
    let client = Client::new(&ingest);
    Ok((ctx, ingest, indexer, client))
}

/// Appends `n` events to `stream` and waits until its last is indexed.
async fn append_indexed(client: &Client, stream: &str, n: usize) -> anyhow::Result<i64> {
    let reply = client
        .append(
            stream,
            &json!({"expected_version": "any", "events": events(n)}),
        )
        .await?;
    anyhow::ensure!(reply.status == 201, "append: {reply:?}");
    let last = reply.body["last_version"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("no last_version in {reply:?}"))?;
    let indexed = client
        .api()?
        .wait_for_version(stream, last, Duration::from_secs(30))
        .await?;
    anyhow::ensure!(indexed, "{stream}@{last} not indexed in 30 s");
    Ok(last)
}

async fn snapshot_rows(ctx: &TestContext) -> anyhow::Result<Vec<(String, i64, String)>> {
    Ok(
        sqlx::query_as("SELECT stream_id, version, data::text FROM snapshots ORDER BY stream_id")
            .fetch_all(&ctx.pool)
            .await?,
    )
}

#[tokio::test]
async fn a_snapshot_reads_back_byte_for_byte() -> anyhow::Result<()> {
    let (ctx, ingest, _indexer, client) = stack("snap_exact").await?;
    append_indexed(&client, "Order-1", 3).await?;
    // Digits, key order, duplicate keys and escapes as sent; only whitespace between tokens goes.
    let data = r#"{"total":12.50,"b":1,"a":2,"a":3,"big":123456789012345678901234567890,"e":1E+2,"s":"\u00e9\n"}"#;
    let sent = format!(
        "{{ \"version\": 2, \"data\": {} }}",
        data.replace(',', " , ")
    );
    let reply = client.put_snapshot("Order-1", &sent).await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["stored"], json!(true));
    assert_eq!(reply.body["snapshot"]["version"], json!(2));
    assert_eq!(reply.body["snapshot"]["stream_id"], json!("Order-1"));

    let text = ctx
        .http()?
        .get(format!("{}/streams/Order-1/snapshot", ingest.http))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        text.contains(&format!("\"data\":{data}")),
        "the data is not what was sent: {text}"
    );
    let rows = snapshot_rows(&ctx).await?;
    assert_eq!(rows, vec![("Order-1".into(), 2, data.to_owned())]);

    // The typed client reads it the same.
    let snapshot = client
        .api()?
        .get_snapshot("Order-1")
        .await?
        .ok_or_else(|| anyhow::anyhow!("no snapshot"))?;
    assert_eq!(snapshot.data.get(), data);
    assert_eq!(snapshot.version.get(), 2);
    let reply = client.get_snapshot("Order-1").await?;
    assert!(
        reply.body["created_at"].as_str().is_some(),
        "{:?}",
        reply.body
    );
    // A stream without one: 404 snapshot_not_found, None for the client.
    append_indexed(&client, "Order-2", 1).await?;
    let reply = client.get_snapshot("Order-2").await?;
    assert_eq!(
        (reply.status, reply.code()),
        (404, Some("snapshot_not_found"))
    );
    assert!(client.api()?.get_snapshot("Order-2").await?.is_none());
    Ok(())
}

#[tokio::test]
async fn an_older_snapshot_never_replaces_a_newer_one() -> anyhow::Result<()> {
    let (ctx, _ingest, _indexer, client) = stack("snap_newer").await?;
    let last = append_indexed(&client, "Order-1", 40).await?;
    assert_eq!(last, 39);
    let put = |version: i64, tag: &str| {
        let body = format!(r#"{{"version":{version},"data":{{"at":{version},"tag":"{tag}"}}}}"#);
        let client = client.clone();
        async move { client.put_snapshot("Order-1", &body).await }
    };
    let reply = put(10, "first").await?;
    assert_eq!((reply.status, &reply.body["stored"]), (200, &json!(true)));
    // Older: kept the newer one, and says so.
    let reply = put(5, "older").await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["stored"], json!(false));
    assert_eq!(reply.body["snapshot"]["version"], json!(10));
    assert_eq!(reply.body["snapshot"]["data"]["tag"], json!("first"));
    // The same version again: the first is kept.
    let reply = put(10, "again").await?;
    assert_eq!(reply.body["stored"], json!(false));
    assert_eq!(reply.body["snapshot"]["data"]["tag"], json!("first"));
    // Newer: replaces it.
    let reply = put(11, "newer").await?;
    assert_eq!(reply.body["stored"], json!(true));
    assert_eq!(reply.body["snapshot"]["version"], json!(11));

    // Racing PUTs: pairs sent at once, the newer sent last (so without the conditional upsert
    // the older would often land second and win), then all of 12..=39 at once, newest first.
    for round in 0..10 {
        let (low, high) = (12 + round, 20 + round);
        let (a, b) = tokio::join!(put(high, "high"), put(low, "low"));
        assert_eq!((a?.status, b?.status), (200, 200));
        let rows = snapshot_rows(&ctx).await?;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].1, high, "round {round}: {rows:?}");
    }
    let all = futures::future::join_all((12..=39).rev().map(|v| put(v, "many"))).await;
    let mut stored = 0;
    for reply in all {
        let reply = reply?;
        assert_eq!(reply.status, 200, "{reply:?}");
        stored += usize::from(reply.body["stored"] == json!(true));
    }
    let rows = snapshot_rows(&ctx).await?;
    assert_eq!(
        rows,
        vec![("Order-1".into(), 39, r#"{"at":39,"tag":"many"}"#.into())]
    );
    // Each stored one was the newest so far when it landed; at least the last (39) was.
    assert!(stored >= 1, "the newest of the burst was not stored");
    Ok(())
}

#[tokio::test]
async fn bad_snapshots_are_typed_errors_and_write_nothing() -> anyhow::Result<()> {
    let ctx = TestContext::new("snap_bad").await?;
    let ingest = ingest::spawn(
        &ctx,
        &[
            ("ESK_INGEST_KAFKA_APPENDS", "false"),
            ("ESK_MAX_EVENT_BYTES", "1000"),
        ],
    )
    .await?;
    let client = Client::new(&ingest);

    // Accepted but not indexed (no indexer yet): 409 version_not_indexed, nothing written.
    let reply = client
        .append(
            "Order-1",
            &json!({"expected_version": "no_stream", "events": events(3)}),
        )
        .await?;
    assert_eq!(reply.status, 201, "{reply:?}");
    let reply = client
        .put_snapshot("Order-1", r#"{"version":1,"data":{}}"#)
        .await?;
    assert_eq!(
        (reply.status, reply.code()),
        (409, Some("version_not_indexed")),
        "{reply:?}"
    );
    assert_eq!(reply.body["error"]["actual_version"], json!(2));
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    wait_indexed(&ctx, 3, Duration::from_secs(30)).await?;

    let big = format!(r#"{{"version":1,"data":"{}"}}"#, "x".repeat(1000));
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "negative version",
            "Order-1",
            r#"{"version":-1,"data":{}}"#.into(),
            422,
            "invalid_version",
        ),
        (
            "fractional version",
            "Order-1",
            r#"{"version":1.5,"data":{}}"#.into(),
            422,
            "invalid_version",
        ),
        (
            "version as text",
            "Order-1",
            r#"{"version":"1","data":{}}"#.into(),
            422,
            "invalid_version",
        ),
        (
            "version null",
            "Order-1",
            r#"{"version":null,"data":{}}"#.into(),
            422,
            "invalid_version",
        ),
        (
            "beyond the stream's last",
            "Order-1",
            r#"{"version":3,"data":{}}"#.into(),
            409,
            "version_ahead_of_stream",
        ),
        (
            "far beyond",
            "Order-1",
            r#"{"version":9223372036854775807,"data":{}}"#.into(),
            409,
            "version_ahead_of_stream",
        ),
        (
            "no version",
            "Order-1",
            r#"{"data":{}}"#.into(),
            422,
            "missing_field",
        ),
        (
            "no data",
            "Order-1",
            r#"{"version":1}"#.into(),
            422,
            "missing_field",
        ),
        (
            "unknown field",
            "Order-1",
            r#"{"version":1,"data":{},"state":{}}"#.into(),
            422,
            "unknown_field",
        ),
        (
            "duplicate field",
            "Order-1",
            r#"{"version":1,"version":2,"data":{}}"#.into(),
            422,
            "duplicate_field",
        ),
        (
            "not an object",
            "Order-1",
            "[1]".into(),
            422,
            "invalid_body",
        ),
        (
            "malformed JSON",
            "Order-1",
            r#"{"version":1,"data":"#.into(),
            400,
            "malformed_json",
        ),
        ("data too large", "Order-1", big, 413, "snapshot_too_large"),
        (
            "lone surrogate",
            "Order-1",
            r#"{"version":1,"data":"\udc00"}"#.into(),
            422,
            "unstorable_json",
        ),
        (
            "unknown stream",
            "User-1",
            r#"{"version":0,"data":{}}"#.into(),
            404,
            "stream_not_found",
        ),
        (
            "reserved stream id",
            "$all",
            r#"{"version":0,"data":{}}"#.into(),
            422,
            "invalid_stream_id",
        ),
    ];
    for (what, stream, body, status, code) in cases {
        let reply = client.put_snapshot(stream, &body).await?;
        assert_eq!(
            (reply.status, reply.code()),
            (status, Some(code)),
            "{what}: {reply:?}"
        );
    }
    let reply = client
        .put_snapshot("Order-1", r#"{"version":7,"data":{}}"#)
        .await?;
    assert_eq!(reply.body["error"]["actual_version"], json!(2), "{reply:?}");
    let reply = client
        .put_raw(
            "/streams/Order-1/snapshot",
            "text/plain",
            br#"{"version":1,"data":{}}"#.to_vec(),
        )
        .await?;
    assert_eq!(
        (reply.status, reply.code()),
        (415, Some("unsupported_media_type"))
    );
    assert!(snapshot_rows(&ctx).await?.is_empty(), "a refusal wrote");

    // The largest data allowed, and version 0 (a stream's first event), are fine.
    let fits = format!(r#"{{"version":0,"data":"{}"}}"#, "x".repeat(998));
    let reply = client.put_snapshot("Order-1", &fits).await?;
    assert_eq!(
        (reply.status, &reply.body["stored"]),
        (200, &json!(true)),
        "{reply:?}"
    );
    // Now indexed: the version refused before is accepted.
    let reply = client
        .put_snapshot("Order-1", r#"{"version":1,"data":{}}"#)
        .await?;
    assert_eq!(
        (reply.status, &reply.body["stored"]),
        (200, &json!(true)),
        "{reply:?}"
    );
    Ok(())
}

#[tokio::test]
async fn snapshots_need_append_to_write_and_read_to_read() -> anyhow::Result<()> {
    let (ctx, ingest, _indexer, admin) = stack("snap_scopes").await?;
    append_indexed(&admin, "Order-1", 2).await?;
    let scopes = |list: &[&str]| -> anyhow::Result<Vec<Scope>> {
        list.iter()
            .map(|s| s.parse().map_err(anyhow::Error::from))
            .collect()
    };
    let writer = tokens::create(&ctx.pool, "writer", &scopes(&["append:Order-*"])?, None).await?;
    let reader = tokens::create(&ctx.pool, "reader", &scopes(&["read:Order-*"])?, None).await?;
    let anonymous = Client::for_url(&ingest.http);
    let writer = Client::with_token(&ingest.http, Some(&writer));
    let reader = Client::with_token(&ingest.http, Some(&reader));
    let body = r#"{"version":1,"data":{"n":1}}"#;

    let reply = anonymous.put_snapshot("Order-1", body).await?;
    assert_eq!(
        (reply.status, reply.code()),
        (401, Some("unauthorized")),
        "{reply:?}"
    );
    let reply = anonymous.get_snapshot("Order-1").await?;
    assert_eq!(
        (reply.status, reply.code()),
        (401, Some("unauthorized")),
        "{reply:?}"
    );
    // Reading is not writing, and the other way round.
    let reply = reader.put_snapshot("Order-1", body).await?;
    assert_eq!(
        (reply.status, reply.code()),
        (403, Some("forbidden")),
        "{reply:?}"
    );
    assert!(snapshot_rows(&ctx).await?.is_empty());
    let reply = writer.put_snapshot("Order-1", body).await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = writer.get_snapshot("Order-1").await?;
    assert_eq!(
        (reply.status, reply.code()),
        (403, Some("forbidden")),
        "{reply:?}"
    );
    let reply = reader.get_snapshot("Order-1").await?;
    assert_eq!(
        (reply.status, &reply.body["version"]),
        (200, &json!(1)),
        "{reply:?}"
    );
    // A writer without read scope whose older snapshot is kept learns the kept version, never
    // its data; the admin (who may read) sees it.
    let reply = writer
        .put_snapshot("Order-1", r#"{"version":0,"data":{"probe":true}}"#)
        .await?;
    assert_eq!(
        (reply.status, &reply.body["stored"], &reply.body["version"]),
        (200, &json!(false), &json!(1)),
        "{reply:?}"
    );
    assert!(
        reply.body.get("snapshot").is_none() && !reply.body.to_string().contains("\"n\""),
        "an append-only token saw the kept snapshot: {reply:?}"
    );
    let reply = admin
        .put_snapshot("Order-1", r#"{"version":0,"data":{}}"#)
        .await?;
    assert_eq!(reply.body["snapshot"]["data"], json!({"n": 1}), "{reply:?}");
    // A stream outside the scope is 403 whether or not it exists: never 404.
    for stream in ["User-1", "Orders-1"] {
        let reply = writer
            .put_snapshot(stream, r#"{"version":0,"data":{}}"#)
            .await?;
        assert_eq!(
            (reply.status, reply.code()),
            (403, Some("forbidden")),
            "{stream}: {reply:?}"
        );
        let reply = reader.get_snapshot(stream).await?;
        assert_eq!(
            (reply.status, reply.code()),
            (403, Some("forbidden")),
            "{stream}: {reply:?}"
        );
    }
    // A refused body, even a malformed one, is not parsed: the scope is checked first.
    let reply = reader.put_snapshot("Order-1", "{not json").await?;
    assert_eq!(reply.status, 403, "{reply:?}");
    Ok(())
}

#[tokio::test]
async fn load_returns_the_snapshot_and_exactly_the_events_after_it() -> anyhow::Result<()> {
    let (_ctx, _ingest, _indexer, client) = stack("snap_load").await?;
    let last = append_indexed(&client, "Order-1", 260).await?;
    assert_eq!(last, 259);
    let api = client.api()?;

    // No snapshot: every event, over several pages.
    let loaded = api.load("Order-1").await?;
    assert!(loaded.snapshot.is_none());
    let versions: Vec<i64> = loaded.events.iter().map(|e| e.version).collect();
    assert_eq!(versions, (0..=259).collect::<Vec<_>>());

    let answer = api
        .put_snapshot(
            "Order-1",
            &PutSnapshotRequest {
                version: Version::from(120u32),
                data: RawValue::from_string(r#"{"folded":121}"#.into())?,
            },
        )
        .await?;
    assert!(answer.stored);
    let loaded = api.load("Order-1").await?;
    let snapshot = loaded
        .snapshot
        .ok_or_else(|| anyhow::anyhow!("no snapshot loaded"))?;
    assert_eq!(snapshot.version.get(), 120);
    assert_eq!(snapshot.data.get(), r#"{"folded":121}"#);
    let versions: Vec<i64> = loaded.events.iter().map(|e| e.version).collect();
    assert_eq!(versions, (121..=259).collect::<Vec<_>>());
    // They are the stream's own events, as a read returns them.
    let read = api
        .read_stream("Order-1", ReadStream::forward().from(121).limit(1))
        .await?;
    assert_eq!(read.events[0].event_id, loaded.events[0].event_id);

    // A snapshot at the last version: nothing after it.
    let answer = api
        .put_snapshot(
            "Order-1",
            &PutSnapshotRequest {
                version: Version::from(259u32),
                data: RawValue::from_string("[]".into())?,
            },
        )
        .await?;
    assert!(answer.stored);
    let loaded = api.load("Order-1").await?;
    assert_eq!(loaded.snapshot.map(|s| s.version.get()), Some(259));
    assert!(loaded.events.is_empty());
    // Refusals come back typed.
    let error = api
        .put_snapshot(
            "Order-1",
            &PutSnapshotRequest {
                version: Version::from(260u32),
                data: RawValue::from_string("{}".into())?,
            },
        )
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a snapshot ahead of its stream was stored"))?;
    assert_eq!(error.code(), Some("version_ahead_of_stream"));
    assert!(error.is_conflict());
    Ok(())
}

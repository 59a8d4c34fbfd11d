//! Stream lifecycle against the real stack: metadata (`GET`/`PUT /streams/{id}/metadata`),
//! soft and hard deletes, reads honouring the retention rules at once, every bad input a typed
//! error that writes nothing, and the changes on the canonical topic as events.

use std::time::Duration;

use esk_runtime::scope::Scope;
use esk_runtime::tokens;
use esk_tests::indexer;
use esk_tests::ingest::{self, events, Client};
use esk_tests::process::Process;
use esk_tests::{kafka, TestContext};
use rdkafka::producer::FutureProducer;
use serde_json::{json, Value};

/// Ingest (HTTP and Kafka) and the indexer on a new database and topics.
async fn stack(name: &str) -> anyhow::Result<(TestContext, Process, Process, Client)> {
    let ctx = TestContext::new(name).await?;
    let ingest = ingest::spawn(&ctx, &[]).await?;
    let indexer = indexer::spawn(&ctx, &[]).await?;
    let client = Client::new(&ingest);
    Ok((ctx, ingest, indexer, client))
}

/// Appends `n` events with `expected`, waits until indexed, returns the last version.
async fn append_indexed(
    client: &Client,
    stream: &str,
    expected: Value,
    n: usize,
) -> anyhow::Result<i64> {
    let reply = client
        .append(
            stream,
            &json!({"expected_version": expected, "events": events(n)}),
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

async fn put_metadata(client: &Client, stream: &str, body: &str) -> anyhow::Result<ingest::Reply> {
    client
        .put_raw(
            &format!("/streams/{stream}/metadata"),
            "application/json",
            body.as_bytes().to_vec(),
        )
        .await
}

/// How many snapshots are stored.
async fn snapshot_rows(ctx: &TestContext) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM snapshots")
        .fetch_one(&ctx.pool)
        .await?)
}

/// The versions a forward read of `stream` shows.
async fn visible_versions(client: &Client, stream: &str) -> anyhow::Result<Vec<i64>> {
    let reply = client.get(&format!("/streams/{stream}/events")).await?;
    anyhow::ensure!(reply.status == 200, "read {stream}: {reply:?}");
    Ok(reply.body["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["version"].as_i64())
                .collect()
        })
        .unwrap_or_default())
}

/// (stream, version) of every event `$all` shows.
async fn all_visible(client: &Client) -> anyhow::Result<Vec<(String, i64)>> {
    let reply = client.get("/streams/$all/events?limit=1000").await?;
    anyhow::ensure!(reply.status == 200, "read $all: {reply:?}");
    Ok(reply.body["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| {
                    (
                        e["stream_id"].as_str().unwrap_or_default().to_owned(),
                        e["version"].as_i64().unwrap_or(-1),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

async fn event_rows(ctx: &TestContext, stream: &str) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id = $1")
            .bind(stream)
            .fetch_one(&ctx.pool)
            .await?,
    )
}

#[tokio::test]
async fn metadata_reads_back_after_put_and_a_stale_version_is_a_conflict() -> anyhow::Result<()> {
    let (ctx, _ingest, _indexer, client) = stack("meta_rw").await?;
    let reply = client.get("/streams/Order-1/metadata").await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["metadata_version"], Value::Null);

    let reply = put_metadata(
        &client,
        "Order-1",
        r#"{"expected_metadata_version":"no_stream","max_count":3,"custom":{"owner": "team-a","n":1.50}}"#,
    )
    .await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["metadata_version"], json!(0));
    // Read-your-writes: the GET right after the acknowledged PUT sees it.
    let reply = client.get("/streams/Order-1/metadata").await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["stream_id"], "Order-1");
    assert_eq!(reply.body["metadata_version"], json!(0));
    assert_eq!(reply.body["max_count"], json!(3));
    assert_eq!(reply.body["custom"]["owner"], "team-a");
    assert_eq!(reply.body.get("max_age_s"), None);

    // A stale expected version: 409 with the actual one, nothing written.
    let reply = put_metadata(
        &client,
        "Order-1",
        r#"{"expected_metadata_version":5,"max_count":9}"#,
    )
    .await?;
    assert_eq!(reply.status, 409, "{reply:?}");
    assert_eq!(reply.body["error"]["code"], "wrong_expected_version");
    assert_eq!(reply.body["error"]["actual_version"], json!(0));
    let reply = put_metadata(
        &client,
        "Order-1",
        r#"{"expected_metadata_version":"no_stream","max_count":9}"#,
    )
    .await?;
    assert_eq!(reply.status, 409, "{reply:?}");

    // Bad input: typed, nothing written.
    for (body, status, code) in [
        (r#"{"max_count":"ten"}"#, 422, "wrong_type"),
        (r#"{"max_count":-1}"#, 422, "wrong_type"),
        (r#"{"max_count":0}"#, 422, "wrong_type"),
        (r#"{"max_age_s":2.5}"#, 422, "wrong_type"),
        (r#"{"truncate_before":-3}"#, 422, "wrong_type"),
        (r#"{"custom":"text"}"#, 422, "wrong_type"),
        (r#"{"maxCount":3}"#, 422, "unknown_field"),
        (r#"{"max_count":3,"max_count":4}"#, 422, "duplicate_field"),
        (
            r#"{"expected_metadata_version":"soon"}"#,
            422,
            "invalid_expected_version",
        ),
        (r#"{"max_count":3"#, 400, "malformed_json"),
        (r#"[1]"#, 422, "invalid_body"),
    ] {
        let reply = put_metadata(&client, "Order-1", body).await?;
        assert_eq!(
            (reply.status, reply.body["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {reply:?}"
        );
    }
    let reply = put_metadata(&client, "$all", r#"{"max_count":3}"#).await?;
    assert_eq!(reply.status, 422, "{reply:?}");
    assert_eq!(ingest::stream_version(&ctx, "$$Order-1").await?, Some(0));

    let reply = put_metadata(
        &client,
        "Order-1",
        r#"{"expected_metadata_version":0,"truncate_before":2}"#,
    )
    .await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["metadata_version"], json!(1));
    let reply = client.get("/streams/Order-1/metadata").await?;
    assert_eq!(reply.body["truncate_before"], json!(2));
    // Fields left out are unset.
    assert_eq!(reply.body.get("max_count"), None, "{reply:?}");
    assert_eq!(ingest::stream_version(&ctx, "$$Order-1").await?, Some(1));
    Ok(())
}

#[tokio::test]
async fn user_appends_cannot_write_metadata_streams_or_reserved_types() -> anyhow::Result<()> {
    let (ctx, _ingest, _indexer, client) = stack("meta_forge").await?;
    let id = uuid::Uuid::new_v4();
    let reply = client
        .append(
            "$$Order-1",
            &json!({"expected_version": "any", "events": events(1)}),
        )
        .await?;
    assert_eq!(reply.status, 422, "{reply:?}");
    assert_eq!(reply.body["error"]["code"], "invalid_stream_id");
    for event_type in ["$metadata", "$streamDeleted", "$anything"] {
        let reply = client
            .append(
                "Order-1",
                &json!({"expected_version": "any",
                    "events": [{"id": id, "type": event_type, "data": {}}]}),
            )
            .await?;
        assert_eq!(reply.status, 422, "{event_type}: {reply:?}");
        assert_eq!(reply.body["error"]["code"], "reserved_event_type");
    }
    // Over Kafka too: a typed rejection on the results topic.
    let producer = kafka::producer(&ctx.brokers)?;
    let request = json!({"schema_version": 1, "request_id": "forge", "stream_id": "Order-1",
        "expected_version": "any", "events": [{"id": id, "type": "$metadata", "data": {}}]});
    kafka::produce_append(
        &producer,
        &ctx.topics.appends,
        &ctx.token,
        "Order-1",
        &serde_json::to_vec(&request)?,
    )
    .await?;
    let results = kafka::read_topic(
        &ctx.brokers,
        &ctx.topics.append_results,
        1,
        Duration::from_secs(30),
    )?;
    let result = kafka::json_payload(
        results
            .first()
            .ok_or_else(|| anyhow::anyhow!("no result"))?,
    )?;
    assert_eq!(result["error"]["code"], "reserved_event_type", "{result}");
    assert!(ingest::ledger(&ctx).await?.is_empty());
    assert_eq!(ingest::stream_version(&ctx, "Order-1").await?, None);
    Ok(())
}

#[tokio::test]
async fn a_soft_delete_hides_the_stream_until_an_append_recreates_it() -> anyhow::Result<()> {
    let (ctx, _ingest, _indexer, client) = stack("soft_delete").await?;
    append_indexed(&client, "Order-1", json!("no_stream"), 3).await?;
    append_indexed(&client, "Order-2", json!("no_stream"), 1).await?;

    let reply = client.delete("/streams/Order-1?expected_version=5").await?;
    assert_eq!(reply.status, 409, "{reply:?}");
    assert_eq!(reply.body["error"]["code"], "wrong_expected_version");
    assert_eq!(reply.body["error"]["actual_version"], json!(2));
    for (path, code) in [
        ("/streams/Order-1?mode=medium", "invalid_parameter"),
        (
            "/streams/Order-1?expected_version=soon",
            "invalid_parameter",
        ),
        ("/streams/Order-1?force=true", "invalid_parameter"),
    ] {
        let reply = client.delete(path).await?;
        assert_eq!(reply.status, 400, "{path}: {reply:?}");
        assert_eq!(reply.body["error"]["code"], code);
    }
    assert_eq!(visible_versions(&client, "Order-1").await?, vec![0, 1, 2]);

    let reply = client.delete("/streams/Order-1?expected_version=2").await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["mode"], "soft");
    let reply = client.get("/streams/Order-1/events").await?;
    assert_eq!(reply.status, 404, "{reply:?}");
    assert_eq!(reply.body["error"]["code"], "stream_not_found");
    // Nor does it take a snapshot (of an event that is still stored, hidden).
    let reply = client
        .put_snapshot("Order-1", r#"{"version":2,"data":{}}"#)
        .await?;
    assert_eq!(reply.status, 404, "{reply:?}");
    assert_eq!(reply.body["error"]["code"], "stream_not_found");
    assert_eq!(snapshot_rows(&ctx).await?, 0);
    // Deleting twice: the stream is not there any more.
    let reply = client.delete("/streams/Order-1").await?;
    assert_eq!(reply.status, 404, "{reply:?}");
    assert_eq!(reply.body["error"]["code"], "stream_not_found");
    let reply = client.delete("/streams/Never-1").await?;
    assert_eq!(reply.status, 404, "{reply:?}");
    // $all and the category no longer show its events; another stream is untouched.
    let all = all_visible(&client).await?;
    assert!(!all.iter().any(|(s, _)| s == "Order-1"), "{all:?}");
    assert!(all.contains(&("Order-2".to_owned(), 0)), "{all:?}");
    let reply = client.get("/categories/Order/events").await?;
    let streams: Vec<&str> = reply.body["events"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["stream_id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(streams, vec!["Order-2"], "{reply:?}");

    // An append recreates it (no_stream is admitted: it reads as not found); versions continue.
    let last = append_indexed(&client, "Order-1", json!("no_stream"), 2).await?;
    assert_eq!(last, 4);
    assert_eq!(visible_versions(&client, "Order-1").await?, vec![3, 4]);
    // The rows are still stored (hidden) until the scavenger runs.
    assert_eq!(event_rows(&ctx, "Order-1").await?, 5);
    Ok(())
}

#[tokio::test]
async fn a_hard_delete_is_a_tombstone_for_http_and_kafka() -> anyhow::Result<()> {
    let (ctx, _ingest, _indexer, client) = stack("hard_delete").await?;
    append_indexed(&client, "Order-1", json!("no_stream"), 2).await?;
    let reply = client
        .delete("/streams/Order-1?mode=hard&expected_version=1")
        .await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["mode"], "hard");

    for path in [
        "/streams/Order-1/events",
        "/streams/Order-1/metadata",
        "/streams/Order-1/snapshot",
    ] {
        let reply = client.get(path).await?;
        assert_eq!(reply.status, 410, "{path}: {reply:?}");
        assert_eq!(reply.body["error"]["code"], "stream_deleted");
    }
    let reply = client
        .append(
            "Order-1",
            &json!({"expected_version": "any", "events": events(1)}),
        )
        .await?;
    assert_eq!(reply.status, 410, "{reply:?}");
    assert_eq!(reply.body["error"]["code"], "stream_deleted");
    for path in ["/streams/Order-1?mode=hard", "/streams/Order-1"] {
        let reply = client.delete(path).await?;
        assert_eq!(reply.status, 410, "{path}: {reply:?}");
    }
    let reply = put_metadata(&client, "Order-1", r#"{"max_count":1}"#).await?;
    assert_eq!(reply.status, 410, "{reply:?}");
    let reply = client
        .put_snapshot("Order-1", r#"{"version":1,"data":{}}"#)
        .await?;
    assert_eq!(reply.status, 410, "{reply:?}");
    assert_eq!(reply.body["error"]["code"], "stream_deleted");
    assert_eq!(snapshot_rows(&ctx).await?, 0);

    // Over Kafka: the typed rejection on the results topic, nothing written.
    let producer = kafka::producer(&ctx.brokers)?;
    let request = json!({"schema_version": 1, "request_id": "late", "stream_id": "Order-1",
        "expected_version": "any", "events": events(1)});
    kafka::produce_append(
        &producer,
        &ctx.topics.appends,
        &ctx.token,
        "Order-1",
        &serde_json::to_vec(&request)?,
    )
    .await?;
    let results = kafka::read_topic(
        &ctx.brokers,
        &ctx.topics.append_results,
        1,
        Duration::from_secs(30),
    )?;
    let result = kafka::json_payload(
        results
            .first()
            .ok_or_else(|| anyhow::anyhow!("no result"))?,
    )?;
    assert_eq!(result["outcome"], "rejected", "{result}");
    assert_eq!(result["error"]["code"], "stream_deleted", "{result}");

    assert_eq!(ingest::stream_version(&ctx, "Order-1").await?, Some(1));
    let accepted: Vec<_> = ingest::ledger(&ctx)
        .await?
        .into_iter()
        .filter(|r| r.status == "accepted")
        .map(|r| r.stream_id)
        .collect();
    assert_eq!(accepted, vec!["$$Order-1", "Order-1"]);
    assert!(indexer::wait_indexed(&ctx, 3, Duration::from_secs(30)).await? >= 3);
    assert_eq!(event_rows(&ctx, "Order-1").await?, 2);
    assert!(!all_visible(&client)
        .await?
        .iter()
        .any(|(s, _)| s == "Order-1"));
    Ok(())
}

#[tokio::test]
async fn lifecycle_changes_are_events_on_the_canonical_topic_in_stream_order() -> anyhow::Result<()>
{
    let (ctx, _ingest, _indexer, client) = stack("lifecycle_topic").await?;
    append_indexed(&client, "Order-1", json!("no_stream"), 1).await?;
    let reply = put_metadata(&client, "Order-1", r#"{"max_age_s":3600}"#).await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = client.delete("/streams/Order-1?expected_version=0").await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        client
            .api()?
            .wait_for_version("$$Order-1", 1, Duration::from_secs(30))
            .await?
    );
    let rows: Vec<(i64, String, String, i64)> = sqlx::query_as(
        "SELECT global_position, stream_id, event_type, version FROM events ORDER BY global_position",
    )
    .fetch_all(&ctx.pool)
    .await?;
    let kinds: Vec<(&str, &str, i64)> = rows
        .iter()
        .map(|(_, s, t, v)| (s.as_str(), t.as_str(), *v))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("Order-1", "Happened", 0),
            ("$$Order-1", "$metadata", 0),
            ("$$Order-1", "$streamDeleted", 1),
        ]
    );
    let published =
        kafka::read_topic(&ctx.brokers, &ctx.topics.events, 3, Duration::from_secs(30))?;
    let mut types = Vec::new();
    for record in &published {
        let value = kafka::json_payload(record)?;
        types.push(value.to_string());
    }
    assert_eq!(published.len(), 3, "{types:?}");
    assert!(
        types
            .iter()
            .any(|t| t.contains("$streamDeleted") && t.contains(r#""mode":"soft""#)),
        "{types:?}"
    );
    assert!(
        types
            .iter()
            .any(|t| t.contains("$metadata") && t.contains("3600")),
        "{types:?}"
    );
    Ok(())
}

#[tokio::test]
async fn reads_honour_max_count_truncate_before_and_max_age_at_once() -> anyhow::Result<()> {
    let (_ctx, _ingest, _indexer, client) = stack("retention_reads").await?;
    append_indexed(&client, "Order-1", json!("no_stream"), 5).await?;
    append_indexed(&client, "Order-2", json!("no_stream"), 2).await?;

    let reply = put_metadata(&client, "Order-1", r#"{"max_count":2}"#).await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(visible_versions(&client, "Order-1").await?, vec![3, 4]);
    let reply = client
        .get("/streams/Order-1/events?direction=backward")
        .await?;
    let backward: Vec<i64> = reply.body["events"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["version"].as_i64()).collect())
        .unwrap_or_default();
    assert_eq!(backward, vec![4, 3]);
    let all = all_visible(&client).await?;
    let order_1: Vec<i64> = all
        .iter()
        .filter(|(s, _)| s == "Order-1")
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(order_1, vec![3, 4]);

    let reply = put_metadata(&client, "Order-1", r#"{"max_count":3,"truncate_before":4}"#).await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(visible_versions(&client, "Order-1").await?, vec![4]);

    let reply = put_metadata(&client, "Order-2", r#"{"max_age_s":1}"#).await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        visible_versions(&client, "Order-2").await?,
        Vec::<i64>::new()
    );
    // Lifting the rules shows the events again: nothing was deleted yet.
    let reply = put_metadata(&client, "Order-1", r#"{}"#).await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        visible_versions(&client, "Order-1").await?,
        vec![0, 1, 2, 3, 4]
    );
    Ok(())
}

/// Every stored event as text, by position: what "kept byte-identical" compares.
async fn stored_rows(ctx: &TestContext) -> anyhow::Result<Vec<(i64, String, i64, String, String)>> {
    Ok(sqlx::query_as(
        "SELECT global_position, stream_id, version, event_id::text || event_type || created_at::text,
                data::text || coalesce(metadata::text, '')
         FROM events ORDER BY global_position",
    )
    .fetch_all(&ctx.pool)
    .await?)
}

/// Appends interleaved so that the hidden rows leave holes all over `$all`: per round, 10
/// events to Doomed-1 (soft-deleted later), 1 to Keep-1, 5 to Trim-1 (max_count 5 later).
/// Waits until everything is indexed and published (the scavenger only takes published rows).
async fn holes_setup(ctx: &TestContext, client: &Client) -> anyhow::Result<()> {
    for _ in 0..6 {
        append_indexed(client, "Doomed-1", json!("any"), 10).await?;
        append_indexed(client, "Keep-1", json!("any"), 1).await?;
        append_indexed(client, "Trim-1", json!("any"), 5).await?;
    }
    let published = esk_tests::eventually(Duration::from_secs(30), || async {
        let (through, head): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT global_position FROM published_through),
                    (SELECT last_position FROM global_position_counter)",
        )
        .fetch_one(&ctx.pool)
        .await
        .ok()?;
        (through == head && head == 96).then_some(())
    })
    .await;
    anyhow::ensure!(published.is_some(), "not all 96 events published");
    Ok(())
}

/// What must survive: every row that stays visible, and each stream's last event.
fn survivors(
    before: &[(i64, String, i64, String, String)],
) -> Vec<(i64, String, i64, String, String)> {
    before
        .iter()
        .filter(|(_, stream, version, _, _)| match stream.as_str() {
            "Doomed-1" => *version == 59,
            "Trim-1" => *version >= 25,
            _ => true,
        })
        .cloned()
        .collect()
}

async fn hide_rows(client: &Client) -> anyhow::Result<()> {
    let reply = client
        .delete("/streams/Doomed-1?expected_version=59")
        .await?;
    anyhow::ensure!(reply.status == 200, "delete: {reply:?}");
    let reply = put_metadata(client, "Trim-1", r#"{"max_count":5}"#).await?;
    anyhow::ensure!(reply.status == 200, "metadata: {reply:?}");
    Ok(())
}

/// Reads `$all` in pages of 7 by following `next`: every visible event once, in order.
async fn page_all(client: &Client) -> anyhow::Result<Vec<i64>> {
    let mut from = 0;
    let mut positions = Vec::new();
    loop {
        let reply = client
            .get(&format!("/streams/$all/events?from={from}&limit=7"))
            .await?;
        anyhow::ensure!(reply.status == 200, "{reply:?}");
        positions.extend(
            reply.body["events"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["global_position"].as_i64()),
        );
        match reply.body["next"].as_i64() {
            Some(next) => from = next,
            None => return Ok(positions),
        }
    }
}

#[tokio::test]
async fn scavenging_deletes_only_hidden_rows_and_never_blocks_indexing() -> anyhow::Result<()> {
    let ctx = TestContext::new("scavenge_tx").await?;
    let ingest = ingest::spawn(&ctx, &[]).await?;
    // The task is off: this test holds a scavenging transaction open itself.
    let _indexer = indexer::spawn(&ctx, &[("ESK_SCAVENGE_INTERVAL_SECS", "0")]).await?;
    let client = Client::new(&ingest);
    holes_setup(&ctx, &client).await?;
    let before = stored_rows(&ctx).await?;
    hide_rows(&client).await?;
    assert!(
        client
            .api()?
            .wait_for_version("$$Trim-1", 0, Duration::from_secs(30))
            .await?
    );
    let visible_before = page_all(&client).await?;

    // A scavenging batch holds its deletions uncommitted: indexing, /wait and $all go on.
    let mut tx = ctx.pool.begin().await?;
    let deleted: i64 = sqlx::query_scalar("SELECT scavenge_events(1000)")
        .fetch_one(&mut *tx)
        .await?;
    assert_eq!(deleted, 59 + 25);
    let indexed = tokio::time::timeout(
        Duration::from_secs(20),
        append_indexed(&client, "Live-1", json!("no_stream"), 3),
    )
    .await;
    assert!(
        matches!(indexed, Ok(Ok(2))),
        "indexing stalled behind an open scavenging transaction: {indexed:?}"
    );
    tx.commit().await?;

    let after = stored_rows(&ctx).await?;
    let kept: Vec<_> = after
        .iter()
        .filter(|(p, _, _, _, _)| *p <= 96)
        .cloned()
        .collect();
    assert_eq!(
        kept,
        survivors(&before),
        "hidden rows gone, the rest byte-identical"
    );
    // $all pages across the holes: the same visible events as before, plus the new ones.
    let visible_after = page_all(&client).await?;
    let mut expected = visible_before.clone();
    expected.extend(after.iter().filter(|r| r.1 == "Live-1").map(|r| r.0));
    assert_eq!(visible_after, expected);
    // /wait answers across the holes: by position and by stream version (the last event of a
    // stream is kept).
    let api = client.api()?;
    assert!(api.wait_for_position(10, Duration::from_secs(5)).await?);
    assert!(
        api.wait_for_version("Doomed-1", 59, Duration::from_secs(5))
            .await?
    );
    assert!(
        api.wait_for_version("Trim-1", 29, Duration::from_secs(5))
            .await?
    );
    // Nothing left to do.
    let again: i64 = sqlx::query_scalar("SELECT scavenge_events(1000)")
        .fetch_one(&ctx.pool)
        .await?;
    assert_eq!(again, 0);
    Ok(())
}

#[tokio::test]
async fn the_indexer_scavenges_in_bounded_batches_while_indexing_goes_on() -> anyhow::Result<()> {
    let ctx = TestContext::new("scavenge_task").await?;
    let ingest = ingest::spawn(&ctx, &[]).await?;
    let indexer = indexer::spawn(
        &ctx,
        &[
            ("ESK_SCAVENGE_INTERVAL_SECS", "1"),
            ("ESK_SCAVENGE_BATCH", "4"),
        ],
    )
    .await?;
    let client = Client::new(&ingest);
    holes_setup(&ctx, &client).await?;
    let before = stored_rows(&ctx).await?;
    hide_rows(&client).await?;

    // Appends keep being indexed while the task works through its batches.
    let mut live = 0;
    let done = loop {
        append_indexed(&client, "Live-1", json!("any"), 1).await?;
        live += 1;
        let metrics = indexer::metrics(&indexer).await?;
        let scavenged = metrics
            .get("esk_scavenged_events_total")
            .copied()
            .unwrap_or_default();
        if scavenged >= 84.0 || live > 300 {
            break scavenged;
        }
    };
    assert_eq!(done, 84.0, "the metric counts every deleted row");
    let after = stored_rows(&ctx).await?;
    let kept: Vec<_> = after
        .iter()
        .filter(|(p, _, _, _, _)| *p <= 96)
        .cloned()
        .collect();
    assert_eq!(kept, survivors(&before));
    let live_rows = after.iter().filter(|r| r.1 == "Live-1").count();
    assert_eq!(
        live_rows, live,
        "every append made during scavenging was indexed"
    );
    assert_eq!(
        visible_versions(&client, "Trim-1").await?,
        vec![25, 26, 27, 28, 29]
    );
    let reply = client.get("/streams/Doomed-1/events").await?;
    assert_eq!(reply.status, 404, "{reply:?}");
    Ok(())
}

/// Produces `request` to the appends topic with `token` and returns its result (found by its
/// `request_id`) from the shared results topic.
async fn kafka_request(
    ctx: &TestContext,
    producer: &FutureProducer,
    token: &str,
    request: Value,
) -> anyhow::Result<Value> {
    let request_id = request["request_id"].clone();
    let key = request["stream_id"].as_str().unwrap_or("none").to_owned();
    kafka::produce_append(
        producer,
        &ctx.topics.appends,
        token,
        &key,
        &serde_json::to_vec(&request)?,
    )
    .await?;
    let reader = kafka::reader_from_beginning(&ctx.brokers, &ctx.topics.append_results)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Some(message) =
            rdkafka::consumer::BaseConsumer::poll(&reader, Duration::from_millis(100))
        {
            let result = kafka::json_payload(&message?.detach())?;
            if result["request_id"] == request_id {
                return Ok(result);
            }
        }
    }
    anyhow::bail!("no result for {request_id} in 30 s")
}

#[tokio::test]
async fn kafka_requests_change_metadata_and_delete_like_http() -> anyhow::Result<()> {
    let (ctx, _ingest, _indexer, client) = stack("kafka_lifecycle").await?;
    append_indexed(&client, "Order-1", json!("no_stream"), 3).await?;
    let producer = kafka::producer(&ctx.brokers)?;
    let token = ctx.token.clone();

    // Metadata over Kafka, read back over HTTP; the retention rule applies at once.
    let result = kafka_request(
        &ctx,
        &producer,
        &token,
        json!({"schema_version": 1,
        "request_id": "meta", "stream_id": "Order-1", "metadata": {"max_count": 2,
        "custom": {"owner": "kafka"}, "expected_metadata_version": "no_stream"}}),
    )
    .await?;
    assert_eq!(result["outcome"], "accepted", "{result}");
    assert_eq!(result["stream_id"], "Order-1", "{result}");
    assert_eq!(result["first_version"], 0, "{result}");
    let reply = client.get("/streams/Order-1/metadata").await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["metadata_version"], 0);
    assert_eq!(reply.body["max_count"], 2);
    assert_eq!(reply.body["custom"], json!({"owner": "kafka"}));
    assert_eq!(visible_versions(&client, "Order-1").await?, vec![1, 2]);

    // Bad forms and a token without the append scope: typed rejections, nothing written.
    let reader = tokens::create(&ctx.pool, "reader", &["read:*".parse::<Scope>()?], None).await?;
    let ledger_before = ingest::ledger(&ctx).await?.len();
    for (request_id, token, form, code) in [
        (
            "types",
            &token,
            json!({"metadata": {"max_count": "ten"}}),
            "wrong_type",
        ),
        (
            "custom",
            &token,
            json!({"metadata": {"custom": [1]}}),
            "wrong_type",
        ),
        ("not-object", &token, json!({"metadata": 3}), "wrong_type"),
        (
            "mode",
            &token,
            json!({"delete": {"mode": "gone"}}),
            "invalid_delete_mode",
        ),
        (
            "both",
            &token,
            json!({"delete": {}, "metadata": {}}),
            "unknown_field",
        ),
        (
            "mixed",
            &token,
            json!({"delete": {}, "events": events(1)}),
            "unknown_field",
        ),
        (
            "stale",
            &token,
            json!({"metadata": {"expected_metadata_version": 5}}),
            "wrong_expected_version",
        ),
        (
            "scope",
            &reader,
            json!({"delete": {"mode": "hard"}}),
            "forbidden",
        ),
    ] {
        let mut request = json!({"schema_version": 1, "request_id": request_id,
            "stream_id": "Order-1"});
        for (key, value) in form.as_object().into_iter().flatten() {
            request[key] = value.clone();
        }
        let result = kafka_request(&ctx, &producer, token, request).await?;
        assert_eq!(result["outcome"], "rejected", "{request_id}: {result}");
        assert_eq!(result["error"]["code"], code, "{request_id}: {result}");
    }
    // The stale change is decided (and recorded) like any append; the rest never got there.
    let ledger = ingest::ledger(&ctx).await?;
    assert_eq!(ledger.len(), ledger_before + 1, "{ledger:?}");
    assert_eq!(ingest::stream_version(&ctx, "$$Order-1").await?, Some(0));
    assert_eq!(ingest::stream_version(&ctx, "Order-1").await?, Some(2));

    // A soft delete; the same append id again (a re-sent request) gets the same result and
    // writes nothing new.
    let soft = |request_id: &str| {
        json!({"schema_version": 1, "request_id": request_id, "stream_id": "Order-1",
            "append_id": "6c1d3f0e-2a57-4c1b-9e64-0d3b9a1f7c25",
            "delete": {"mode": "soft", "expected_version": 2}})
    };
    let first = kafka_request(&ctx, &producer, &token, soft("soft")).await?;
    assert_eq!(first["outcome"], "accepted", "{first}");
    assert_eq!(first["first_version"], 1, "{first}");
    let reply = client.get("/streams/Order-1/events").await?;
    assert_eq!(reply.status, 404, "{reply:?}");
    let ledger_before = ingest::ledger(&ctx).await?.len();
    let again = kafka_request(&ctx, &producer, &token, soft("soft-again")).await?;
    assert_eq!(again["outcome"], "accepted", "{again}");
    assert_eq!(again["append_id"], first["append_id"]);
    assert_eq!(again["first_version"], first["first_version"]);
    assert_eq!(ingest::ledger(&ctx).await?.len(), ledger_before);
    assert_eq!(ingest::stream_version(&ctx, "$$Order-1").await?, Some(1));
    // The same append id with another change is not a retry.
    let mut reused = soft("reused");
    reused["delete"]["mode"] = json!("hard");
    let result = kafka_request(&ctx, &producer, &token, reused).await?;
    assert_eq!(result["error"]["code"], "append_id_reused", "{result}");

    // An append recreates the soft-deleted stream; a hard delete, then a Kafka append is
    // refused.
    let result = kafka_request(
        &ctx,
        &producer,
        &token,
        json!({"schema_version": 1,
        "request_id": "recreate", "stream_id": "Order-1", "expected_version": "no_stream",
        "events": events(1)}),
    )
    .await?;
    assert_eq!(result["first_version"], 3, "{result}");
    let result = kafka_request(
        &ctx,
        &producer,
        &token,
        json!({"schema_version": 1,
        "request_id": "hard", "stream_id": "Order-1", "delete": {"mode": "hard"}}),
    )
    .await?;
    assert_eq!(result["outcome"], "accepted", "{result}");
    let result = kafka_request(
        &ctx,
        &producer,
        &token,
        json!({"schema_version": 1,
        "request_id": "late", "stream_id": "Order-1", "expected_version": "any",
        "events": events(1)}),
    )
    .await?;
    assert_eq!(result["error"]["code"], "stream_deleted", "{result}");
    let reply = client.get("/streams/Order-1/events").await?;
    assert_eq!(reply.status, 410, "{reply:?}");
    assert_eq!(ingest::stream_version(&ctx, "Order-1").await?, Some(3));
    assert_eq!(ingest::stream_version(&ctx, "$$Order-1").await?, Some(2));
    Ok(())
}

#[tokio::test]
async fn http_retries_with_the_same_append_id_get_the_original_outcome() -> anyhow::Result<()> {
    let (ctx, _ingest, _indexer, client) = stack("lifecycle_retries").await?;
    append_indexed(&client, "Order-1", json!("no_stream"), 2).await?;

    // PUT metadata: the append id in the body, as in an append's body.
    let body = r#"{"append_id":"0b7e5c1a-9d43-4f2e-8a61-3c5d7e9f1b24","max_count":1}"#;
    let first = put_metadata(&client, "Order-1", body).await?;
    assert_eq!(first.status, 200, "{first:?}");
    // Another change in between: a retry must not apply the first one again on top of it.
    let reply = put_metadata(&client, "Order-1", r#"{"max_count":2}"#).await?;
    assert_eq!(reply.body["metadata_version"], 1, "{reply:?}");
    let retry = put_metadata(&client, "Order-1", body).await?;
    assert_eq!(retry.status, 200, "{retry:?}");
    assert_eq!(
        retry.body["metadata_version"],
        first.body["metadata_version"]
    );
    let reply = client.get("/streams/Order-1/metadata").await?;
    assert_eq!(reply.body["metadata_version"], 1, "{reply:?}");
    assert_eq!(reply.body["max_count"], 2, "{reply:?}");
    let reused = put_metadata(
        &client,
        "Order-1",
        r#"{"append_id":"0b7e5c1a-9d43-4f2e-8a61-3c5d7e9f1b24","max_count":3}"#,
    )
    .await?;
    assert_eq!(reused.status, 409, "{reused:?}");
    assert_eq!(reused.body["error"]["code"], "append_id_reused");
    let bad = put_metadata(&client, "Order-1", r#"{"append_id":"nope"}"#).await?;
    assert_eq!(bad.status, 422, "{bad:?}");
    assert_eq!(bad.body["error"]["code"], "invalid_uuid");

    // DELETE: the append id as a query parameter. Without one, a second delete is refused
    // (the stream is already deleted); with the first one's id it is the same success.
    let path = "/streams/Order-1?expected_version=1&append_id=5a2f8c3e-1b7d-4e96-b0c4-7d8e9f0a1b2c";
    let first = client.delete(path).await?;
    assert_eq!(first.status, 200, "{first:?}");
    let retry = client.delete(path).await?;
    assert_eq!(retry.status, 200, "{retry:?}");
    assert_eq!(retry.body, first.body);
    let fresh = client.delete("/streams/Order-1?expected_version=1").await?;
    assert_eq!(fresh.status, 404, "{fresh:?}");
    let bad = client.delete("/streams/Order-1?append_id=12").await?;
    assert_eq!(bad.status, 400, "{bad:?}");
    let bad = client.delete("/streams/Order-1?mode=gone").await?;
    assert_eq!(bad.status, 400, "{bad:?}");
    assert_eq!(ingest::stream_version(&ctx, "$$Order-1").await?, Some(2));
    let accepted = ingest::ledger(&ctx)
        .await?
        .into_iter()
        .filter(|r| r.status == "accepted" && r.stream_id == "$$Order-1")
        .count();
    assert_eq!(accepted, 3, "two metadata changes and one delete");
    Ok(())
}

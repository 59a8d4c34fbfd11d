//! The indexer: exactly-once indexing, phantoms, crashes, leader changes, ordering, publishing.

use std::time::Duration;

use esk_model::event::advisory_key;
use esk_tests::indexer::{self, check_canonical_topic, check_table, wait_indexed};
use esk_tests::ingest::{self, Client};
use esk_tests::load::Load;
use esk_tests::{kafka, TestContext};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::Message;
use serde_json::json;
use uuid::Uuid;

const HTTP_ONLY: &[(&str, &str)] = &[("ESK_INGEST_KAFKA_APPENDS", "false")];

#[tokio::test]
async fn appends_are_indexed_in_order_and_published_in_order() -> anyhow::Result<()> {
    let ctx = TestContext::new("idx_e2e").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    let client = Client::new(&ingest_process);
    let accepted = Load::start(&client, "E2e", 8, 3, 30).finish(false).await?;
    assert_eq!(accepted, 8 * 3 * 30);
    wait_indexed(&ctx, accepted, Duration::from_secs(60)).await?;
    check_table(&ctx).await?;
    check_canonical_topic(&ctx, accepted).await?;
    Ok(())
}

/// Writes an ingest-log record by hand, as an ingest attempt would.
async fn produce_log_record(
    ctx: &TestContext,
    producer: &rdkafka::producer::FutureProducer,
    stream: &str,
    version: i64,
    append_id: Uuid,
    attempt_id: Uuid,
) -> anyhow::Result<Uuid> {
    let event_id = Uuid::new_v4();
    let value = json!({"event_id": event_id, "stream_id": stream, "version": version, "type": "Manual",
        "data": {"x": 1}, "append_id": append_id, "attempt_id": attempt_id, "created_at": chrono::Utc::now()});
    let payload = serde_json::to_vec(&value)?;
    let headers = OwnedHeaders::new().insert(Header {
        key: "event_id",
        value: Some(&event_id.to_string()),
    });
    producer
        .send(
            FutureRecord::to(&ctx.topics.ingest_log)
                .key(stream)
                .payload(&payload)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
    Ok(event_id)
}

#[tokio::test]
async fn phantoms_are_never_indexed_and_garbage_is_dead_lettered() -> anyhow::Result<()> {
    let ctx = TestContext::new("idx_phantoms").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let indexer_process = indexer::spawn(&ctx, &[]).await?;
    let producer = kafka::producer(&ctx.brokers)?;
    let mut phantom_ids = Vec::new();
    for i in 0..10 {
        // No ledger row: a failed attempt's late records.
        phantom_ids.push(
            produce_log_record(
                &ctx,
                &producer,
                &format!("Ghost-{i}"),
                0,
                Uuid::new_v4(),
                Uuid::new_v4(),
            )
            .await?,
        );
    }
    kafka::produce(
        &producer,
        &ctx.topics.ingest_log,
        "Junk-1",
        b"\x00\x01 not json",
    )
    .await?;
    let client = Client::new(&ingest_process);
    let accepted = Load::start(&client, "Real", 4, 2, 10).finish(false).await?;
    wait_indexed(&ctx, accepted, Duration::from_secs(60)).await?;
    let leaked: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_id = ANY($1)")
        .bind(&phantom_ids)
        .fetch_one(&ctx.pool)
        .await?;
    assert_eq!(leaked, 0, "phantoms indexed");
    let dead = esk_tests::eventually(Duration::from_secs(20), || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE source = 'indexer'")
                .fetch_one(&ctx.pool)
                .await
                .ok()?;
        (n == 1).then_some(n)
    })
    .await;
    assert_eq!(
        dead,
        Some(1),
        "the undecodable record is dead-lettered once"
    );
    // A partition holding only phantoms may commit its batch after the real events were
    // indexed: wait for the counter to settle rather than read it once.
    let settled = esk_tests::eventually(Duration::from_secs(20), || async {
        let metrics = indexer::metrics(&indexer_process).await.ok()?;
        (metrics.get("esk_indexer_phantoms_dropped_total").copied() == Some(10.0))
            .then_some(metrics)
    })
    .await;
    let metrics = match settled {
        Some(metrics) => metrics,
        None => indexer::metrics(&indexer_process).await?,
    };
    assert_eq!(
        metrics.get("esk_indexer_phantoms_dropped_total").copied(),
        Some(10.0)
    );
    assert_eq!(
        metrics.get("esk_indexer_dead_letters_total").copied(),
        Some(1.0)
    );
    // Acknowledgement → indexed is observed once per indexed event: not for the phantoms, not
    // for the dead letter.
    assert_eq!(
        metrics
            .get("esk_indexer_ack_to_indexed_seconds_count")
            .copied(),
        Some(accepted as f64)
    );
    check_table(&ctx).await?;
    check_canonical_topic(&ctx, accepted).await?;
    Ok(())
}

/// An append to a brand-new stream whose ingest transaction is still open when the indexer
/// reads its records is indexed after the commit, not dropped; a rolled-back one is dropped.
#[tokio::test]
async fn an_open_attempt_on_a_new_stream_is_waited_for() -> anyhow::Result<()> {
    let ctx = TestContext::new("idx_open_attempt").await?;
    let indexer_process = indexer::spawn(&ctx, &[]).await?;
    let producer = kafka::producer(&ctx.brokers)?;
    for commit in [true, false] {
        let stream = format!("Fresh-{commit}");
        let append_id = Uuid::new_v4();
        let attempt_id = Uuid::new_v4();
        let mut tx = ctx.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(advisory_key(attempt_id))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO append_ledger (append_id, attempt_id, stream_id, fingerprint, event_count, status, first_version, last_version)
             VALUES ($1, $2, $3, $1, 1, 'accepted', 0, 0)",
        )
        .bind(append_id)
        .bind(attempt_id)
        .bind(&stream)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO streams (stream_id, version) VALUES ($1, 0)")
            .bind(&stream)
            .execute(&mut *tx)
            .await?;
        let event_id =
            produce_log_record(&ctx, &producer, &stream, 0, append_id, attempt_id).await?;
        // Give the indexer time to read the record and block on the attempt's lock.
        indexer::pause(3000).await;
        let early: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_id = $1")
            .bind(event_id)
            .fetch_one(&ctx.pool)
            .await?;
        assert_eq!(early, 0, "nothing indexed before the attempt ends");
        if commit {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        let expected = i64::from(commit);
        let got = esk_tests::eventually(Duration::from_secs(30), || async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_id = $1")
                .bind(event_id)
                .fetch_one(&ctx.pool)
                .await
                .ok()?;
            let phantoms = indexer::metrics(&indexer_process)
                .await
                .ok()?
                .get("esk_indexer_phantoms_dropped_total")
                .copied()
                .unwrap_or(0.0);
            (n == expected && (commit || phantoms >= 1.0)).then_some(n)
        })
        .await;
        assert_eq!(got, Some(expected), "commit={commit}");
    }
    Ok(())
}

#[tokio::test]
async fn survives_indexer_kill_mid_batch_and_between_commit_and_publish() -> anyhow::Result<()> {
    let ctx = TestContext::new("idx_kill").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let client = Client::new(&ingest_process);
    let load = Load::start(&client, "Kill", 8, 4, 60);
    // Killed repeatedly mid-load.
    for round in 0..3 {
        let mut process = indexer::spawn(&ctx, &[("ESK_INDEXER_MAX_BATCH", "200")]).await?;
        indexer::pause(400 + 300 * round).await;
        process.kill9()?;
    }
    // Indexes without publishing, then dies: committed rows wait for the next publisher. (The
    // elected committer starts at once, so the load may be indexed by now: more follows.)
    let mut unpublished = indexer::spawn(&ctx, &[("ESK_PUBLISH", "false")]).await?;
    let accepted = load.finish(false).await?
        + Load::start(&client, "Unpublished", 2, 2, 10)
            .finish(false)
            .await?;
    wait_indexed(&ctx, accepted, Duration::from_secs(60)).await?;
    let through: i64 = sqlx::query_scalar("SELECT global_position FROM published_through")
        .fetch_one(&ctx.pool)
        .await?;
    assert!(
        through < accepted,
        "some indexed rows are unpublished when it dies"
    );
    unpublished.kill9()?;
    let _final = indexer::spawn(&ctx, &[]).await?;
    let published = esk_tests::eventually(Duration::from_secs(60), || async {
        let p: i64 = sqlx::query_scalar("SELECT global_position FROM published_through")
            .fetch_one(&ctx.pool)
            .await
            .ok()?;
        (p == accepted).then_some(p)
    })
    .await;
    assert_eq!(published, Some(accepted));
    check_table(&ctx).await?;
    check_canonical_topic(&ctx, accepted).await?;
    Ok(())
}

#[tokio::test]
async fn two_indexers_and_a_leader_change_lose_and_double_nothing() -> anyhow::Result<()> {
    let ctx = TestContext::new("idx_leader_change").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let client = Client::new(&ingest_process);
    let mut first = indexer::spawn(&ctx, &[("ESK_INDEXER_MAX_BATCH", "100")]).await?;
    // A reader polling `global_position > X` during the load must never skip a row.
    let reader = {
        let pool = ctx.pool.clone();
        tokio::spawn(async move {
            let mut seen: Vec<i64> = Vec::new();
            let mut x = 0i64;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
            while tokio::time::Instant::now() < deadline {
                let rows: Vec<i64> = sqlx::query_scalar("SELECT global_position FROM events WHERE global_position > $1 ORDER BY global_position LIMIT 500")
                    .bind(x)
                    .fetch_all(&pool)
                    .await?;
                if let Some(last) = rows.last() {
                    x = *last;
                }
                seen.extend(rows);
                let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
                    .fetch_one(&pool)
                    .await?;
                let accepted: i64 = sqlx::query_scalar("SELECT coalesce(sum(event_count),0)::int8 FROM append_ledger WHERE status='accepted'").fetch_one(&pool).await?;
                if total >= 2400 && total == accepted && x == total {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok::<_, anyhow::Error>(seen)
        })
    };
    let load = Load::start(&client, "Reb", 8, 3, 100);
    indexer::pause(1500).await;
    // A standby joins mid-load; the leader is killed with batches in flight.
    let second = indexer::spawn(&ctx, &[("ESK_INDEXER_MAX_BATCH", "100")]).await?;
    indexer::pause(1000).await;
    first.kill9()?;
    let accepted = load.finish(false).await?;
    assert_eq!(accepted, 2400);
    wait_indexed(&ctx, accepted, Duration::from_secs(90)).await?;
    let seen = reader.await??;
    let expected: Vec<i64> = (1..=accepted).collect();
    assert_eq!(
        seen, expected,
        "the polling reader saw every position, in order, none skipped"
    );
    check_table(&ctx).await?;
    let metrics = indexer::metrics(&second).await?;
    assert_eq!(
        metrics
            .get("esk_indexer_invariant_violations_total")
            .copied(),
        Some(0.0),
        "no false alarm"
    );
    assert_eq!(
        metrics.get("esk_indexer_committer_leader").copied(),
        Some(1.0),
        "the standby took over"
    );
    let health = reqwest::get(format!("{}/health", second.admin)).await?;
    assert!(health.status().is_success());
    let both_indexed = [&first, &second]
        .iter()
        .all(|p| p.log_text().contains("elected index committer"));
    assert!(both_indexed, "both instances led in turn");
    check_canonical_topic(&ctx, accepted).await?;
    Ok(())
}

#[tokio::test]
async fn every_read_shape_and_bad_parameters() -> anyhow::Result<()> {
    let ctx = TestContext::new("idx_reads").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    let client = Client::new(&ingest_process);
    for stream in ["Order-1", "Order-2", "Invoice-1"] {
        for v in 0..3 {
            let expected = if v == 0 {
                json!("no_stream")
            } else {
                json!(v - 1)
            };
            let r = client.append(stream, &json!({"expected_version": expected, "events": [ingest::event(&format!("{stream}-e{v}"))]})).await?;
            assert_eq!(r.status, 201);
        }
    }
    // Read-your-writes: wait until Invoice-1 version 2 is indexed.
    let waited = client
        .get("/wait?stream_id=Invoice-1&version=2&timeout_ms=30000")
        .await?;
    assert_eq!(waited.body["reached"], true);
    wait_indexed(&ctx, 9, Duration::from_secs(30)).await?;
    let versions = |r: &ingest::Reply| -> Vec<i64> {
        r.body["events"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["version"].as_i64()).collect())
            .unwrap_or_default()
    };
    let positions = |r: &ingest::Reply| -> Vec<i64> {
        r.body["events"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["global_position"].as_i64())
                    .collect()
            })
            .unwrap_or_default()
    };

    let forward = client.get("/streams/Order-1/events").await?;
    assert_eq!(versions(&forward), vec![0, 1, 2]);
    assert_eq!(forward.body["events"][0]["type"], "Order-1-e0");
    let page = client.get("/streams/Order-1/events?from=1&limit=1").await?;
    assert_eq!(
        (versions(&page), page.body["next"].as_i64()),
        (vec![1], Some(2))
    );
    let backward = client
        .get("/streams/Order-1/events?direction=backward")
        .await?;
    assert_eq!(versions(&backward), vec![2, 1, 0]);
    let backward_from = client
        .get("/streams/Order-1/events?direction=backward&from=1&limit=5")
        .await?;
    assert_eq!(versions(&backward_from), vec![1, 0]);
    let missing = client.get("/streams/Nope-1/events").await?;
    assert_eq!((missing.status, versions(&missing)), (200, vec![]));

    let all = client.get("/streams/$all/events?limit=4").await?;
    assert_eq!(positions(&all), vec![1, 2, 3, 4]);
    assert_eq!(all.body["next"].as_i64(), Some(5));
    let rest = client.get("/streams/$all/events?from=5").await?;
    assert_eq!(positions(&rest), (5..=9).collect::<Vec<_>>());

    for path in ["/categories/Order/events", "/categories/Order-*/events"] {
        let category = client.get(path).await?;
        let streams: Vec<&str> = category.body["events"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["stream_id"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(streams.len(), 6, "{path}");
        assert!(streams.iter().all(|s| s.starts_with("Order-")));
        let p = positions(&category);
        assert!(
            p.windows(2).all(|w| w[0] < w[1]),
            "category in position order"
        );
    }
    let wait_timeout = client.get("/wait?position=1000&timeout_ms=200").await?;
    assert_eq!(
        (wait_timeout.status, wait_timeout.body["reached"].as_bool()),
        (200, Some(false))
    );
    let by_position = client.get("/wait?position=9&timeout_ms=200").await?;
    assert_eq!(by_position.body["reached"], true);

    for bad in [
        "/streams/Order-1/events?limit=0",
        "/streams/Order-1/events?limit=100000",
        "/streams/Order-1/events?from=-1",
        "/streams/Order-1/events?from=abc",
        "/streams/Order-1/events?direction=sideways",
        "/streams/Order-1/events?colour=red",
        "/streams/$all/events?direction=backward",
        "/categories/Or-der/events",
        "/wait?timeout_ms=10",
        "/wait?position=1&stream_id=x&version=1",
        "/wait?position=1&timeout_ms=999999",
    ] {
        let reply = client.get(bad).await?;
        assert_eq!(
            (reply.status, reply.code()),
            (400, Some("invalid_parameter")),
            "{bad}: {:?}",
            reply.body
        );
    }
    Ok(())
}

#[tokio::test]
async fn canonical_records_have_the_envelope_and_headers() -> anyhow::Result<()> {
    let ctx = TestContext::new("idx_envelope").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    let client = Client::new(&ingest_process);
    let event_id = Uuid::new_v4();
    let r = client
        .append("Env-1", &json!({"expected_version": "no_stream", "events": [{"id": event_id, "type": "Made", "data": {"k": [1, 2]}, "metadata": {"correlation_id": "corr-9", "causation_id": "cause-3"}}]}))
        .await?;
    assert_eq!(r.status, 201);
    // A correlation id given as an HTTP header travels in the metadata of events without one.
    let traced = ctx
        .http()?
        .post(format!("{}/streams/Env-2/events", ingest_process.http))
        .header("content-type", "application/json")
        .header("x-correlation-id", "from-header")
        .body(
            json!({"expected_version": "no_stream", "events": [ingest::event("Traced")]})
                .to_string(),
        )
        .send()
        .await?;
    assert_eq!(traced.status().as_u16(), 201);
    let records = kafka::read_topic(&ctx.brokers, &ctx.topics.events, 2, Duration::from_secs(60))?;
    assert_eq!(records.len(), 2);
    let traced_record = records
        .iter()
        .find(|r| r.key() == Some(&b"Env-2"[..]))
        .ok_or_else(|| anyhow::anyhow!("Env-2 on the topic"))?;
    assert_eq!(
        kafka::json_payload(traced_record)?["metadata"]["correlation_id"],
        "from-header"
    );
    let traced_header = traced_record.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == "correlation_id")
            .and_then(|h| h.value)
    });
    assert_eq!(traced_header, Some(&b"from-header"[..]));
    let record = records
        .iter()
        .find(|r| r.key() == Some(&b"Env-1"[..]))
        .ok_or_else(|| anyhow::anyhow!("Env-1 on the topic"))?;
    assert_eq!(record.key(), Some(&b"Env-1"[..]));
    let value = kafka::json_payload(record)?;
    for field in [
        "event_id",
        "stream_id",
        "version",
        "global_position",
        "type",
        "data",
        "metadata",
        "created_at",
    ] {
        assert!(value.get(field).is_some(), "envelope field {field}");
    }
    assert_eq!(value["data"], json!({"k": [1, 2]}));
    let headers = kafka::header_map(record);
    assert_eq!(
        headers.get("global_position").map(String::as_str),
        Some("1")
    );
    assert_eq!(headers.get("stream_version").map(String::as_str), Some("0"));
    assert_eq!(headers.get("event_id"), Some(&event_id.to_string()));
    assert_eq!(headers.get("event_type").map(String::as_str), Some("Made"));
    assert_eq!(
        headers.get("correlation_id").map(String::as_str),
        Some("corr-9")
    );
    assert_eq!(
        headers.get("causation_id").map(String::as_str),
        Some("cause-3")
    );
    Ok(())
}

#[tokio::test]
async fn ledger_rows_are_pruned_after_the_window_only_once_indexed() -> anyhow::Result<()> {
    let ctx = TestContext::new("idx_prune").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let client = Client::new(&ingest_process);
    let accepted = Load::start(&client, "Prune", 2, 2, 5).finish(false).await?;
    // An accepted append whose events never reached the table: it must stay, and be alerted on.
    sqlx::query(
        "INSERT INTO append_ledger (append_id, attempt_id, stream_id, fingerprint, event_count, status, first_version, last_version, created_at)
         VALUES ($1, $1, 'Stuck-1', $1, 1, 'accepted', 0, 0, now() - interval '30 minutes')",
    )
    .bind(Uuid::new_v4())
    .execute(&ctx.pool)
    .await?;
    let process = indexer::spawn(
        &ctx,
        &[
            ("ESK_IDEMPOTENCY_WINDOW_SECS", "1"),
            ("ESK_LEDGER_MAINTENANCE_SECS", "1"),
            ("ESK_UNINDEXED_ALERT_SECS", "1"),
        ],
    )
    .await?;
    let indexed = esk_tests::eventually(Duration::from_secs(60), || async {
        let n = indexer::event_count(&ctx).await.ok()?;
        (n == accepted).then_some(n)
    })
    .await;
    assert_eq!(indexed, Some(accepted));
    let remaining = esk_tests::eventually(Duration::from_secs(30), || async {
        let rows: Vec<String> = sqlx::query_scalar("SELECT stream_id FROM append_ledger")
            .fetch_all(&ctx.pool)
            .await
            .ok()?;
        (rows.len() == 1).then_some(rows)
    })
    .await;
    assert_eq!(
        remaining,
        Some(vec!["Stuck-1".to_owned()]),
        "indexed rows pruned, the unindexed one kept"
    );
    let alert = esk_tests::eventually(Duration::from_secs(10), || async {
        let m = indexer::metrics(&process).await.ok()?;
        (m.get("esk_indexer_unindexed_appends").copied() == Some(1.0)).then_some(())
    })
    .await;
    assert!(alert.is_some(), "the stuck append is counted");
    Ok(())
}

/// The publisher sends what this process just committed from memory and anything else from the
/// table; a record published both ways (here: `published_through` moved back, as after a crash
/// before it advanced) must be the same bytes, and its `data` the table's text exactly.
#[tokio::test]
async fn a_republished_record_is_byte_identical_to_the_first_publication() -> anyhow::Result<()> {
    let ctx = TestContext::new("idx_republish").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    let client = Client::new(&ingest_process);
    let r = client
        .append("Bytes-1", &json!({"expected_version": "no_stream", "events": [{"id": Uuid::new_v4(), "type": "Made", "data": {"b": 1, "a": [1.5, 2, "x y"]}, "metadata": {"correlation_id": "c-1"}}]}))
        .await?;
    assert_eq!(r.status, 201);
    let first = kafka::read_topic(&ctx.brokers, &ctx.topics.events, 1, Duration::from_secs(60))?;
    assert_eq!(first.len(), 1);
    // Published from memory; now make the publisher see position 1 as unpublished.
    sqlx::query("UPDATE published_through SET global_position = 0")
        .execute(&ctx.pool)
        .await?;
    let both = kafka::read_topic(&ctx.brokers, &ctx.topics.events, 2, Duration::from_secs(60))?;
    assert_eq!(
        both.len(),
        2,
        "position 1 was published again from the table"
    );
    assert_eq!(
        both[0].payload(),
        both[1].payload(),
        "the same bytes from memory and from the table"
    );
    assert_eq!(kafka::header_map(&both[0]), kafka::header_map(&both[1]));
    let stored: String =
        sqlx::query_scalar("SELECT data::text FROM events WHERE global_position = 1")
            .fetch_one(&ctx.pool)
            .await?;
    let envelope: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(both[1].payload().unwrap_or_default())?;
    assert_eq!(
        envelope.get("data").map(|d| d.to_string()),
        Some(stored.clone())
    );
    let raw = String::from_utf8_lossy(both[0].payload().unwrap_or_default()).into_owned();
    assert!(
        raw.contains(&format!("\"data\":{stored}")),
        "the envelope embeds the stored text verbatim: {raw}"
    );
    Ok(())
}

//! The projector: exactly-once SQL projections across kill -9, backpressure with a slow handler,
//! webhook retries and dead letters, rebuild and hand-over.

use std::collections::HashMap;
use std::time::Duration;

use esk_tests::indexer::{self, wait_indexed};
use esk_tests::ingest::{self, Client};
use esk_tests::load::Load;
use esk_tests::projector::{self, Receiver, Webhook};
use esk_tests::{eventually, TestContext};
use serde_json::json;

const HTTP_ONLY: &[(&str, &str)] = &[("ESK_INGEST_KAFKA_APPENDS", "false")];

type Counts = Vec<(String, String, i64)>;

async fn expected_counts(ctx: &TestContext) -> anyhow::Result<Counts> {
    Ok(sqlx::query_as(
        "SELECT category, event_type, count(*) FROM events GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(&ctx.pool)
    .await?)
}

async fn projected_counts(ctx: &TestContext, projection: &str) -> anyhow::Result<Counts> {
    Ok(sqlx::query_as(
        "SELECT category, event_type, count FROM projection_category_type_counts WHERE projection = $1 ORDER BY 1, 2",
    )
    .bind(projection)
    .fetch_all(&ctx.pool)
    .await?)
}

type Summary = Vec<(String, i64, String)>;

async fn expected_summary(ctx: &TestContext) -> anyhow::Result<Summary> {
    Ok(sqlx::query_as(
        "SELECT DISTINCT ON (stream_id) stream_id, version, event_type FROM events ORDER BY stream_id, version DESC",
    )
    .fetch_all(&ctx.pool)
    .await?)
}

async fn projected_summary(ctx: &TestContext, projection: &str) -> anyhow::Result<Summary> {
    Ok(sqlx::query_as(
        "SELECT stream_id, version, last_event_type FROM projection_stream_summary WHERE projection = $1 ORDER BY stream_id",
    )
    .bind(projection)
    .fetch_all(&ctx.pool)
    .await?)
}

/// Waits until the projection's counts equal a recomputation from the events table.
async fn wait_counts_match(ctx: &TestContext, projection: &str) -> anyhow::Result<()> {
    let matched = eventually(Duration::from_secs(60), || async {
        let expected = expected_counts(ctx).await.ok()?;
        (projected_counts(ctx, projection).await.ok()? == expected).then_some(())
    })
    .await;
    if matched.is_none() {
        anyhow::bail!(
            "{projection} never matched:\nexpected {:?}\nprojected {:?}",
            expected_counts(ctx).await?,
            projected_counts(ctx, projection).await?
        );
    }
    Ok(())
}

#[tokio::test]
async fn sql_projections_stay_exactly_once_across_projector_kills() -> anyhow::Result<()> {
    let ctx = TestContext::new("proj_kill").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    let client = Client::new(&ingest_process);
    // Some history first, so the first projector replays from Postgres before going live.
    let before = Load::start(&client, "Hist", 4, 3, 20).finish(false).await?;
    wait_indexed(&ctx, before, Duration::from_secs(60)).await?;
    let load = Load::start(&client, "Live", 8, 3, 60);
    let small_batches = [
        ("ESK_PROJECTOR_BATCH", "40"),
        ("ESK_PROJECTOR_REPLAY_BATCH", "50"),
    ];
    for round in 0..3 {
        let mut process = projector::spawn(&ctx, None, &small_batches).await?;
        indexer::pause(1500 + 400 * round).await;
        process.kill9()?;
    }
    let accepted = load.finish(false).await? + before;
    wait_indexed(&ctx, accepted, Duration::from_secs(60)).await?;
    let _final = projector::spawn(&ctx, None, &small_batches).await?;
    wait_counts_match(&ctx, "counts").await?;
    let summary_matched = eventually(Duration::from_secs(60), || async {
        (projected_summary(&ctx, "stream-summary").await.ok()?
            == expected_summary(&ctx).await.ok()?)
        .then_some(())
    })
    .await;
    assert!(
        summary_matched.is_some(),
        "stream summary equals the recomputation"
    );
    let total: i64 = projected_counts(&ctx, "counts")
        .await?
        .iter()
        .map(|(_, _, n)| n)
        .sum();
    assert_eq!(total, accepted, "every event counted exactly once");
    Ok(())
}

#[tokio::test]
async fn a_slow_handler_pauses_partitions_with_bounded_memory_and_loses_nothing(
) -> anyhow::Result<()> {
    let ctx = TestContext::new("proj_slow").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    // About 20 events per request, one request per 100 ms: ~200 events/s, far below the input.
    let hook = Webhook::start(Receiver {
        delay: Duration::from_millis(100),
        ..Default::default()
    })
    .await?;
    let config = projector::write_webhook_config(&ctx, "slow", &hook.url, "")?;
    let process = projector::spawn(
        &ctx,
        Some(&config),
        &[
            ("ESK_PROJECTOR_QUEUE", "200"),
            ("ESK_PROJECTOR_BATCH", "20"),
        ],
    )
    .await?;
    let client = Client::new(&ingest_process);
    let load = Load::start(&client, "Slow", 8, 5, 60);
    let mut paused_seen = false;
    let mut max_rss = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut accepted = None;
    let mut load = Some(load);
    loop {
        let metrics = indexer::metrics(&process).await?;
        paused_seen |= metrics.get("esk_projector_paused").copied().unwrap_or(0.0) >= 1.0;
        max_rss = max_rss.max(process.rss_kib().unwrap_or(0));
        if accepted.is_none() && load.as_ref().is_some_and(|l| l.accepted() >= 2400) {
            if let Some(l) = load.take() {
                accepted = Some(l.finish(false).await?);
            }
        }
        if let Some(total) = accepted {
            if hook.first_arrivals().len() as i64 >= total {
                break;
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "not delivered in time: {} of {accepted:?}",
            hook.first_arrivals().len()
        );
        indexer::pause(200).await;
    }
    assert!(
        paused_seen,
        "the queue filled and the partitions were paused"
    );
    assert!(
        max_rss < 200 * 1024,
        "resident memory stayed under 200 MiB (peak {max_rss} KiB)"
    );
    let log = process.log_text();
    assert_eq!(
        log.matches("partitions assigned").count(),
        1,
        "joined the group once:\n{log}"
    );
    assert!(
        !log.contains("partitions revoked"),
        "never left its group:\n{log}"
    );
    assert!(log.contains("partitions resumed"));
    Ok(())
}

#[tokio::test]
async fn a_failing_webhook_is_retried_and_a_poison_event_is_dead_lettered_then_replayed(
) -> anyhow::Result<()> {
    let ctx = TestContext::new("proj_webhook").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    let hook = Webhook::start(Receiver {
        fail_next: 4,
        poison_type: Some("Poison".into()),
        ..Default::default()
    })
    .await?;
    let config = projector::write_webhook_config(&ctx, "hook", &hook.url, "category = \"Hook\"\n")?;
    let _process = projector::spawn(
        &ctx,
        Some(&config),
        &[
            ("ESK_PROJECTOR_MAX_ATTEMPTS", "3"),
            ("ESK_PROJECTOR_RETRY_MS", "20"),
        ],
    )
    .await?;
    let client = Client::new(&ingest_process);
    let mut expected_ids: HashMap<String, Vec<String>> = HashMap::new();
    let mut poison_id = String::new();
    for s in 0..4 {
        let stream = format!("Hook-{s}");
        for v in 0..5 {
            let event_type = if s == 2 && v == 2 { "Poison" } else { "Normal" };
            let event = json!({"id": uuid::Uuid::new_v4(), "type": event_type, "data": {"v": v}});
            let id = event["id"].as_str().unwrap_or_default().to_owned();
            if event_type == "Poison" {
                poison_id = id.clone();
            } else {
                expected_ids.entry(stream.clone()).or_default().push(id);
            }
            let expected = if v == 0 {
                json!("no_stream")
            } else {
                json!(v - 1)
            };
            let reply = client
                .append(
                    &stream,
                    &json!({"expected_version": expected, "events": [event]}),
                )
                .await?;
            assert_eq!(reply.status, 201);
        }
        // Another category, filtered out.
        client
            .append(
                &format!("Other-{s}"),
                &json!({"expected_version": "any", "events": [ingest::event("Normal")]}),
            )
            .await?;
    }
    let wanted: usize = expected_ids.values().map(Vec::len).sum();
    let delivered = eventually(Duration::from_secs(60), || async {
        let first = hook.first_arrivals();
        expected_ids
            .values()
            .flatten()
            .all(|id| first.contains_key(id))
            .then_some(first)
    })
    .await
    .ok_or_else(|| anyhow::anyhow!("not every event delivered"))?;
    assert_eq!(
        delivered.len(),
        wanted,
        "only the category's events, poison excluded"
    );
    for (stream, ids) in &expected_ids {
        let order: Vec<usize> = ids.iter().map(|id| delivered[id]).collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "{stream} delivered in stream order: {order:?}"
        );
    }
    let requests = hook.state.lock().map(|s| s.requests).unwrap_or(0);
    assert!(requests > wanted / 5, "the webhook was retried");
    let listed = eventually(Duration::from_secs(30), || async {
        let out = projector::command(&ctx, Some(&config), &["dead-letters", "list", "hook"])
            .await
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains(&poison_id).then_some(text)
    })
    .await;
    assert!(listed.is_some(), "the poison event is in the dead letters");
    // The receiver is fixed; replay delivers it and empties the list.
    if let Ok(mut state) = hook.state.lock() {
        state.poison_type = None;
    }
    let replay =
        projector::command(&ctx, Some(&config), &["dead-letters", "replay", "hook"]).await?;
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert!(hook.first_arrivals().contains_key(&poison_id));
    let after = projector::command(&ctx, Some(&config), &["dead-letters", "list", "hook"]).await?;
    assert!(!String::from_utf8_lossy(&after.stdout).contains(&poison_id));
    Ok(())
}

#[tokio::test]
async fn a_rebuild_handed_over_to_live_equals_a_projection_live_from_the_start(
) -> anyhow::Result<()> {
    let ctx = TestContext::new("proj_rebuild").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    let both = projector::write_config(&ctx, "[[projection]]\nname = \"from-start\"\nhandler = \"sql\"\nsql = \"category_type_counts\"\n\n[[projection]]\nname = \"rebuilt\"\nhandler = \"sql\"\nsql = \"category_type_counts\"\n")?;
    let only_a = std::env::temp_dir().join(format!("esk-projections-{}-a.toml", ctx.name));
    std::fs::write(&only_a, "[[projection]]\nname = \"from-start\"\nhandler = \"sql\"\nsql = \"category_type_counts\"\n")?;
    let only_b = std::env::temp_dir().join(format!("esk-projections-{}-b.toml", ctx.name));
    std::fs::write(
        &only_b,
        "[[projection]]\nname = \"rebuilt\"\nhandler = \"sql\"\nsql = \"category_type_counts\"\n",
    )?;
    // A runs live from before the first event.
    let _a = projector::spawn(&ctx, Some(&only_a), &[]).await?;
    let client = Client::new(&ingest_process);
    let first = Load::start(&client, "Reb", 6, 3, 30).finish(false).await?;
    wait_indexed(&ctx, first, Duration::from_secs(60)).await?;
    // B is rebuilt from Postgres while appends continue, then runs live.
    let load = Load::start(&client, "More", 6, 3, 40);
    let rebuild = projector::command(
        &ctx,
        Some(&both),
        &["--replay-batch", "100", "rebuild", "rebuilt"],
    )
    .await?;
    assert!(
        rebuild.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuild.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&rebuild.stdout)?;
    assert!(
        summary["events"].as_i64().unwrap_or(0) >= first,
        "replayed at least the first load: {summary}"
    );
    let _b = projector::spawn(&ctx, Some(&only_b), &[]).await?;
    let total = load.finish(false).await? + first;
    wait_indexed(&ctx, total, Duration::from_secs(60)).await?;
    wait_counts_match(&ctx, "from-start").await?;
    wait_counts_match(&ctx, "rebuilt").await?;
    assert_eq!(
        projected_counts(&ctx, "rebuilt").await?,
        projected_counts(&ctx, "from-start").await?
    );
    Ok(())
}

#[tokio::test]
async fn a_topic_projection_forwards_matching_events_with_canonical_headers() -> anyhow::Result<()>
{
    let ctx = TestContext::new("proj_topic").await?;
    let derived = format!("t-{}-derived", ctx.name);
    esk_runtime::kafka::create_topics(&ctx.kafka(), &[derived.as_str()], 2, 1).await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    let config = projector::write_config(&ctx, &format!(
        "[[projection]]\nname = \"placed\"\nevent_types = [\"Placed\"]\nhandler = \"topic\"\ntopic = \"{derived}\"\n"))?;
    let _process = projector::spawn(&ctx, Some(&config), &[]).await?;
    let client = Client::new(&ingest_process);
    for i in 0..4 {
        let events = json!([
            {"id": uuid::Uuid::new_v4(), "type": "Placed", "data": {"i": i}, "metadata": {"correlation_id": format!("c-{i}")}},
            {"id": uuid::Uuid::new_v4(), "type": "Other", "data": {}}
        ]);
        let reply = client
            .append(
                &format!("Shop-{i}"),
                &json!({"expected_version": "no_stream", "events": events}),
            )
            .await?;
        assert_eq!(reply.status, 201);
    }
    let records = esk_tests::kafka::read_topic(&ctx.brokers, &derived, 4, Duration::from_secs(60))?;
    assert_eq!(records.len(), 4, "only the Placed events are forwarded");
    let extra = esk_tests::kafka::read_topic(&ctx.brokers, &derived, 5, Duration::from_secs(3))?;
    assert_eq!(extra.len(), 4, "nothing else arrives");
    for record in &records {
        let value = esk_tests::kafka::json_payload(record)?;
        assert_eq!(value["type"], "Placed");
        let headers = esk_tests::kafka::header_map(record);
        assert_eq!(
            headers.get("global_position"),
            Some(&value["global_position"].to_string())
        );
        assert_eq!(
            headers.get("event_type").map(String::as_str),
            Some("Placed")
        );
        assert_eq!(
            headers.get("correlation_id"),
            value["metadata"]["correlation_id"]
                .as_str()
                .map(str::to_owned)
                .as_ref()
        );
    }
    Ok(())
}

/// The projection's dead letters: (event id, partition, offset, payload, error), oldest first.
type DeadLetterRow = (
    Option<uuid::Uuid>,
    Option<i32>,
    Option<i64>,
    Option<Vec<u8>>,
    String,
);

async fn dead_letters(ctx: &TestContext, projection: &str) -> anyhow::Result<Vec<DeadLetterRow>> {
    Ok(sqlx::query_as(
        "SELECT event_id, kafka_partition, kafka_offset, payload, error FROM dead_letters
         WHERE source = $1 ORDER BY id",
    )
    .bind(format!("projection:{projection}"))
    .fetch_all(&ctx.pool)
    .await?)
}

/// `/health` status code and body.
async fn health(process: &esk_tests::process::Process) -> anyhow::Result<(u16, serde_json::Value)> {
    let response = reqwest::get(format!("{}/health", process.admin)).await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or_default()))
}

/// Appends one event of `event_type` to `stream` and returns its id.
async fn append_one(client: &Client, stream: &str, event_type: &str) -> anyhow::Result<String> {
    let event = ingest::event(event_type);
    let id = event["id"].as_str().unwrap_or_default().to_owned();
    let reply = client
        .append(
            stream,
            &json!({"expected_version": "any", "events": [event]}),
        )
        .await?;
    anyhow::ensure!(reply.status == 201, "append failed: {:?}", reply.body);
    Ok(id)
}

/// Waits until every id in `ids` reached the webhook.
async fn wait_delivered(hook: &Webhook, ids: &[String], timeout: Duration) -> anyhow::Result<()> {
    let done = eventually(timeout, || async {
        let first = hook.first_arrivals();
        ids.iter().all(|id| first.contains_key(id)).then_some(())
    })
    .await;
    if done.is_none() {
        let first = hook.first_arrivals();
        let missing: Vec<&String> = ids.iter().filter(|id| !first.contains_key(*id)).collect();
        anyhow::bail!("not delivered: {missing:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_webhook_outage_stalls_the_projection_without_dead_letters_and_loses_nothing(
) -> anyhow::Result<()> {
    let ctx = TestContext::new("proj_outage").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    let hook = Webhook::start(Receiver::default()).await?;
    let config = projector::write_webhook_config(&ctx, "outage", &hook.url, "timeout_ms = 1000\n")?;
    // The old policy dead-lettered after 3 quick tries (well under a second); the outage below
    // lasts several seconds.
    let process = projector::spawn(
        &ctx,
        Some(&config),
        &[
            ("ESK_PROJECTOR_MAX_ATTEMPTS", "3"),
            ("ESK_PROJECTOR_RETRY_MS", "20"),
        ],
    )
    .await?;
    let client = Client::new(&ingest_process);
    let mut ids = vec![append_one(&client, "Out-0", "Before").await?];
    wait_delivered(&hook, &ids, Duration::from_secs(60)).await?;

    // The receiver answers 503 ...
    if let Ok(mut state) = hook.state.lock() {
        state.fail_with = Some(503);
    }
    for s in 0..6 {
        ids.push(append_one(&client, &format!("Out-{s}"), "During").await?);
    }
    let unhealthy = eventually(Duration::from_secs(30), || async {
        let (status, body) = health(&process).await.ok()?;
        (status == 503).then_some(body)
    })
    .await
    .ok_or_else(|| anyhow::anyhow!("/health never reported the stall"))?;
    assert!(
        unhealthy.to_string().contains("outage") && unhealthy.to_string().contains("503"),
        "the problem names the projection and the error: {unhealthy}"
    );
    let metrics = indexer::metrics(&process).await?;
    assert_eq!(metrics.get("esk_projector_stalled").copied(), Some(1.0));
    indexer::pause(3000).await;
    // ... then refuses connections.
    hook.stop().await?;
    for s in 0..4 {
        ids.push(append_one(&client, &format!("Out-{s}"), "Refused").await?);
    }
    indexer::pause(3000).await;
    let (status, body) = health(&process).await?;
    assert_eq!(status, 503, "still unhealthy while refused: {body}");
    assert!(
        dead_letters(&ctx, "outage").await?.is_empty(),
        "nothing dead-lettered during the outage"
    );

    // Recovery: everything arrives, nothing was dead-lettered, healthy again.
    if let Ok(mut state) = hook.state.lock() {
        state.fail_with = None;
    }
    hook.restart().await?;
    wait_delivered(&hook, &ids, Duration::from_secs(60)).await?;
    let healthy = eventually(Duration::from_secs(30), || async {
        (health(&process).await.ok()?.0 == 200).then_some(())
    })
    .await;
    assert!(healthy.is_some(), "/health is 200 again after recovery");
    let metrics = indexer::metrics(&process).await?;
    assert_eq!(metrics.get("esk_projector_stalled").copied(), Some(0.0));
    assert!(
        metrics
            .get("esk_projector_retries_total")
            .copied()
            .unwrap_or(0.0)
            >= 2.0,
        "the retries were counted"
    );
    assert_eq!(
        metrics.get("esk_projector_dead_letters_total").copied(),
        Some(0.0)
    );
    assert!(dead_letters(&ctx, "outage").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_webhook_rejecting_one_event_dead_letters_exactly_that_event() -> anyhow::Result<()> {
    let ctx = TestContext::new("proj_reject").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    let hook = Webhook::start(Receiver {
        poison_type: Some("Refused".into()),
        ..Default::default()
    })
    .await?;
    let config = projector::write_webhook_config(&ctx, "reject", &hook.url, "")?;
    let _process = projector::spawn(
        &ctx,
        Some(&config),
        &[
            ("ESK_PROJECTOR_MAX_ATTEMPTS", "2"),
            ("ESK_PROJECTOR_RETRY_MS", "20"),
        ],
    )
    .await?;
    let client = Client::new(&ingest_process);
    let mut ids = Vec::new();
    let mut refused = String::new();
    for s in 0..3 {
        for v in 0..4 {
            if s == 1 && v == 2 {
                refused = append_one(&client, &format!("Rej-{s}"), "Refused").await?;
            } else {
                ids.push(append_one(&client, &format!("Rej-{s}"), "Fine").await?);
            }
        }
    }
    wait_delivered(&hook, &ids, Duration::from_secs(60)).await?;
    let listed = eventually(Duration::from_secs(30), || async {
        (!dead_letters(&ctx, "reject").await.ok()?.is_empty()).then_some(())
    })
    .await;
    assert!(listed.is_some(), "the rejected event was dead-lettered");
    // Anything else still in flight is checkpointed by now.
    indexer::pause(1000).await;
    let stored = dead_letters(&ctx, "reject").await?;
    assert_eq!(stored.len(), 1, "exactly one dead letter: {stored:?}");
    assert_eq!(
        stored[0].0.map(|id| id.to_string()),
        Some(refused.clone()),
        "the rejected event"
    );
    assert!(
        stored[0].4.contains("400"),
        "with the answer: {}",
        stored[0].4
    );
    assert!(
        !hook.first_arrivals().contains_key(&refused),
        "the rejected event was never acknowledged"
    );
    assert_eq!(
        hook.first_arrivals().len(),
        ids.len(),
        "all the others arrived"
    );
    Ok(())
}

#[tokio::test]
async fn an_undecodable_canonical_record_is_dead_lettered_and_later_events_still_project(
) -> anyhow::Result<()> {
    let ctx = TestContext::new("proj_undecodable").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    let hook = Webhook::start(Receiver::default()).await?;
    let config = projector::write_webhook_config(&ctx, "undecodable", &hook.url, "")?;
    let _process = projector::spawn(&ctx, Some(&config), &[]).await?;
    let client = Client::new(&ingest_process);
    // Live first, so the record below is read from the topic, not replayed from Postgres.
    let first = append_one(&client, "Und-1", "First").await?;
    wait_delivered(&hook, std::slice::from_ref(&first), Duration::from_secs(60)).await?;
    // Same key as the stream, so the events after it share its partition.
    let garbage = b"{\"event_id\": \"not an envelope\", \"data\": [1, 2".to_vec();
    let producer = esk_tests::kafka::producer(&ctx.brokers)?;
    let (partition, offset) =
        esk_tests::kafka::produce(&producer, &ctx.topics.events, "Und-1", &garbage).await?;
    let mut later = Vec::new();
    for s in 0..3 {
        later.push(append_one(&client, &format!("Und-{s}"), "Later").await?);
    }
    wait_delivered(&hook, &later, Duration::from_secs(60)).await?;
    let stored = eventually(Duration::from_secs(30), || async {
        let stored = dead_letters(&ctx, "undecodable").await.ok()?;
        (!stored.is_empty()).then_some(stored)
    })
    .await
    .ok_or_else(|| anyhow::anyhow!("the undecodable record was not dead-lettered"))?;
    assert_eq!(stored.len(), 1, "one dead letter: {stored:?}");
    let (event_id, p, o, payload, error) = &stored[0];
    assert_eq!(*event_id, None);
    assert_eq!(
        (*p, *o),
        (Some(partition), Some(offset)),
        "where it was read"
    );
    assert_eq!(payload.as_deref(), Some(garbage.as_slice()), "its bytes");
    assert!(error.contains("undecodable"), "{error}");
    Ok(())
}

#[tokio::test]
async fn a_webhook_receives_event_payloads_byte_exact() -> anyhow::Result<()> {
    let ctx = TestContext::new("proj_exact").await?;
    let hook = Webhook::start(Receiver::default()).await?;
    let config = projector::write_webhook_config(&ctx, "exact", &hook.url, "")?;
    let _process = projector::spawn(&ctx, Some(&config), &[]).await?;
    // Produced onto the canonical topic directly, so what is checked is the projector's own
    // handling (ingest and the indexer keep payloads exact too: tests/tests/exact_payloads.rs).
    let data = r#"{"r":0.17393510096763853,"big":18446744073709551617,"k":1,"k":2}"#;
    let metadata = r#"{"z":1,"a":[1.0,2.50]}"#;
    let event_id = uuid::Uuid::new_v4();
    let record = format!(
        r#"{{"event_id":"{event_id}","stream_id":"Exact-1","version":0,"global_position":1,"type":"Exact","data":{data},"metadata":{metadata},"created_at":"2024-05-01T12:00:00Z"}}"#
    );
    let producer = esk_tests::kafka::producer(&ctx.brokers)?;
    esk_tests::kafka::produce(&producer, &ctx.topics.events, "Exact-1", record.as_bytes()).await?;
    wait_delivered(&hook, &[event_id.to_string()], Duration::from_secs(60)).await?;
    let body = hook
        .state
        .lock()
        .ok()
        .and_then(|s| s.bodies.first().cloned())
        .ok_or_else(|| anyhow::anyhow!("no body"))?;
    let text = String::from_utf8(body.to_vec())?;
    assert!(
        text.contains(&format!(r#""data":{data}"#)),
        "data byte-exact: {text}"
    );
    assert!(
        text.contains(&format!(r#""metadata":{metadata}"#)),
        "metadata byte-exact: {text}"
    );
    assert!(
        text.starts_with(r#"{"projection":"exact","events":[{"#),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn a_sql_projection_waits_out_lost_connections_without_dead_letters() -> anyhow::Result<()> {
    let ctx = TestContext::new("proj_sql_outage").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    let process = projector::spawn(
        &ctx,
        None,
        &[
            ("ESK_PROJECTOR_MAX_ATTEMPTS", "2"),
            ("ESK_PROJECTOR_RETRY_MS", "20"),
        ],
    )
    .await?;
    let client = Client::new(&ingest_process);
    append_one(&client, "Lk-0", "Before").await?;
    wait_counts_match(&ctx, "counts").await?;
    // Hold the read model's table, so the projection's next write waits on the lock ...
    let mut lock = ctx.pool.begin().await?;
    sqlx::query("LOCK TABLE projection_category_type_counts IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await?;
    for s in 0..5 {
        append_one(&client, &format!("Lk-{s}"), "During").await?;
    }
    // ... and cut its connection while it waits (57P01 admin_shutdown), three times over.
    let mut cut = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while cut < 3 {
        let waiting: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()
             AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
        )
        .fetch_all(&ctx.pool)
        .await?;
        for pid in waiting {
            sqlx::query("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .execute(&ctx.pool)
                .await?;
            cut += 1;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the projection never waited on the lock"
        );
        indexer::pause(100).await;
    }
    let (status, body) = health(&process).await?;
    assert_eq!(status, 503, "unhealthy while stalled: {body}");
    assert!(body.to_string().contains("counts"), "{body}");
    lock.commit().await?;
    wait_counts_match(&ctx, "counts").await?;
    let healthy = eventually(Duration::from_secs(30), || async {
        (health(&process).await.ok()?.0 == 200).then_some(())
    })
    .await;
    assert!(healthy.is_some(), "/health is 200 again after recovery");
    assert!(dead_letters(&ctx, "counts").await?.is_empty());
    let metrics = indexer::metrics(&process).await?;
    assert_eq!(metrics.get("esk_projector_stalled").copied(), Some(0.0));
    assert_eq!(
        metrics.get("esk_projector_dead_letters_total").copied(),
        Some(0.0)
    );
    Ok(())
}

#[tokio::test]
async fn a_sql_projection_dead_letters_only_the_event_its_table_rejects() -> anyhow::Result<()> {
    let ctx = TestContext::new("proj_sql_reject").await?;
    // A rule of the read model that one event breaks (23514 check_violation).
    sqlx::query(
        "ALTER TABLE projection_stream_summary
         ADD CONSTRAINT no_refused CHECK (last_event_type <> 'Refused')",
    )
    .execute(&ctx.pool)
    .await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    let _process = projector::spawn(&ctx, None, &[]).await?;
    let client = Client::new(&ingest_process);
    let mut refused = String::new();
    for s in 0..3 {
        for v in 0..3 {
            // The last event of its stream, so whatever batch holds it upserts it.
            let event_type = if s == 1 && v == 2 { "Refused" } else { "Fine" };
            let id = append_one(&client, &format!("Chk-{s}"), event_type).await?;
            if event_type == "Refused" {
                refused = id;
            }
        }
    }
    wait_counts_match(&ctx, "counts").await?;
    let expected: Summary = sqlx::query_as(
        "SELECT DISTINCT ON (stream_id) stream_id, version, event_type FROM events
         WHERE event_type <> 'Refused' ORDER BY stream_id, version DESC",
    )
    .fetch_all(&ctx.pool)
    .await?;
    let matched = eventually(Duration::from_secs(60), || async {
        (projected_summary(&ctx, "stream-summary").await.ok()? == expected).then_some(())
    })
    .await;
    assert!(
        matched.is_some(),
        "every other event applied: {:?}",
        projected_summary(&ctx, "stream-summary").await?
    );
    let stored = eventually(Duration::from_secs(30), || async {
        let stored = dead_letters(&ctx, "stream-summary").await.ok()?;
        (!stored.is_empty()).then_some(stored)
    })
    .await
    .ok_or_else(|| anyhow::anyhow!("the rejected event was not dead-lettered"))?;
    assert_eq!(stored.len(), 1, "exactly one dead letter: {stored:?}");
    assert_eq!(stored[0].0.map(|id| id.to_string()), Some(refused));
    assert!(stored[0].4.contains("no_refused"), "{}", stored[0].4);
    assert!(dead_letters(&ctx, "counts").await?.is_empty());
    Ok(())
}

/// A record and its repeat arriving in one live batch (the canonical topic may repeat after a
/// publisher crash or a broker outage) are applied once: an additive projection counts once.
#[tokio::test]
async fn a_repeat_in_the_same_batch_is_applied_once() -> anyhow::Result<()> {
    let ctx = TestContext::new("proj_repeat").await?;
    let _process = projector::spawn(&ctx, None, &[]).await?;
    let record = |position: i64| {
        format!(
            r#"{{"event_id":"{}","stream_id":"Rep-1","version":{},"global_position":{position},"type":"Counted","data":{{}},"metadata":null,"created_at":"2024-05-01T12:00:00Z"}}"#,
            uuid::Uuid::from_u128(position as u128),
            position - 1
        )
    };
    let producer = esk_tests::kafka::producer(&ctx.brokers)?;
    // Enqueued together, so they are fetched (and batched) together.
    let records = [record(1), record(1), record(2), record(2), record(3)];
    let deliveries = records
        .iter()
        .map(|value| {
            producer
                .send_result(
                    rdkafka::producer::FutureRecord::to(&ctx.topics.events)
                        .key("Rep-1")
                        .payload(value.as_bytes()),
                )
                .map_err(|(e, _)| anyhow::anyhow!("{e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for delivery in deliveries {
        delivery
            .await
            .map_err(|_| anyhow::anyhow!("delivery canceled"))?
            .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
    }
    let counted = eventually(Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(count), 0)::int8 FROM projection_category_type_counts WHERE category = 'Rep'",
        )
        .fetch_one(&ctx.pool)
        .await
        .ok()?;
        (n >= 3).then_some(n)
    })
    .await;
    assert_eq!(counted, Some(3), "three events, each counted once");
    // And nothing arrives late to change it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(count), 0)::int8 FROM projection_category_type_counts WHERE category = 'Rep'",
    )
    .fetch_one(&ctx.pool)
    .await?;
    assert_eq!(n, 3);
    Ok(())
}

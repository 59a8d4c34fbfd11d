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
    let config = projector::write_config(
        &ctx,
        &format!(
            "[[projection]]\nname = \"slow\"\nhandler = \"webhook\"\nurl = \"{}\"\n",
            hook.url
        ),
    )?;
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
    let config = projector::write_config(&ctx, &format!(
        "[[projection]]\nname = \"hook\"\ncategory = \"Hook\"\nhandler = \"webhook\"\nurl = \"{}\"\n", hook.url))?;
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
    esk_core::kafka::create_topics(&ctx.brokers, &[derived.as_str()], 2, 1).await?;
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

//! Liveness you can see: a supervised task that ends or panics takes its process down with a
//! documented exit code (so systemd or compose restarts it) and says which task; a loop that
//! has work and makes no progress turns `/health` unhealthy with the reason, and healthy again
//! when it moves.

use std::time::Duration;

use esk_runtime::supervisor::EXIT_TASK_ENDED;
use esk_tests::indexer::{self, event_count};
use esk_tests::ingest::{self, Client};
use esk_tests::{eventually, TestContext};
use serde_json::json;

const HTTP_ONLY: &[(&str, &str)] = &[("ESK_INGEST_KAFKA_APPENDS", "false")];

#[tokio::test]
async fn a_task_that_panics_stops_the_process_with_exit_code_70_naming_it() -> anyhow::Result<()> {
    let ctx = TestContext::new("live_panic").await?;
    for (binary, task) in [("indexer", "publisher"), ("ingest", "append worker 0")] {
        let mut process = match binary {
            "indexer" => indexer::spawn(&ctx, &[("ESK_FAILPOINT_PANIC", task)]).await?,
            _ => {
                let mut env = HTTP_ONLY.to_vec();
                env.push(("ESK_FAILPOINT_PANIC", task));
                ingest::spawn(&ctx, &env).await?
            }
        };
        let code = process.wait_exit(Duration::from_secs(60)).await?;
        let log = process.log_text();
        assert_eq!(code, Some(EXIT_TASK_ENDED), "{binary}: {log}");
        assert!(
            log.contains(&format!("task `{task}` panicked")),
            "{binary} names the task: {log}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_stalled_index_loop_turns_health_unhealthy_until_it_moves() -> anyhow::Result<()> {
    let ctx = TestContext::new("live_stall").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let indexer_process = indexer::spawn(&ctx, &[("ESK_STALL_AFTER_SECS", "2")]).await?;
    let client = Client::new(&ingest_process);
    // Hold the position counter: the indexer's transaction waits on it with a batch in hand.
    let mut holder = ctx.pool.begin().await?;
    sqlx::query("SELECT * FROM global_position_counter FOR UPDATE")
        .execute(&mut *holder)
        .await?;
    let reply = client
        .append(
            "Stall-1",
            &json!({"expected_version": "no_stream", "events": [ingest::event("T")]}),
        )
        .await?;
    assert_eq!(reply.status, 201);
    let health_url = format!("{}/health", indexer_process.admin);
    let unhealthy = eventually(Duration::from_secs(30), || async {
        let response = reqwest::get(&health_url).await.ok()?;
        let status = response.status().as_u16();
        let body = response.text().await.ok()?;
        (status == 503 && body.contains("index loop has had work")).then_some(body)
    })
    .await;
    assert!(unhealthy.is_some(), "/health reports the stalled loop");
    assert_eq!(event_count(&ctx).await?, 0);

    holder.rollback().await?;
    let healthy = eventually(Duration::from_secs(30), || async {
        let response = reqwest::get(&health_url).await.ok()?;
        (response.status().as_u16() == 200).then_some(())
    })
    .await;
    assert!(healthy.is_some(), "healthy again once the loop moves");
    indexer::wait_indexed(&ctx, 1, Duration::from_secs(30)).await?;
    Ok(())
}

#[tokio::test]
async fn a_scavenger_that_keeps_failing_turns_health_unhealthy_until_it_works() -> anyhow::Result<()>
{
    let ctx = TestContext::new("live_scavenge").await?;
    // The indexer's scavenging function is gone: every round fails.
    sqlx::query("ALTER FUNCTION scavenge_events(INT) RENAME TO scavenge_events_gone")
        .execute(&ctx.pool)
        .await?;
    let indexer_process = indexer::spawn(
        &ctx,
        &[
            ("ESK_STALL_AFTER_SECS", "2"),
            ("ESK_SCAVENGE_INTERVAL_SECS", "1"),
        ],
    )
    .await?;
    let health_url = format!("{}/health", indexer_process.admin);
    let unhealthy = eventually(Duration::from_secs(30), || async {
        let response = reqwest::get(&health_url).await.ok()?;
        let status = response.status().as_u16();
        let body = response.text().await.ok()?;
        (status == 503
            && body.contains("scavenge has had work")
            && body.contains("scavenge_events"))
        .then_some(body)
    })
    .await;
    assert!(
        unhealthy.is_some(),
        "/health names the failing scavenger and its error"
    );

    sqlx::query("ALTER FUNCTION scavenge_events_gone(INT) RENAME TO scavenge_events")
        .execute(&ctx.pool)
        .await?;
    let healthy = eventually(Duration::from_secs(30), || async {
        let response = reqwest::get(&health_url).await.ok()?;
        (response.status().as_u16() == 200).then_some(())
    })
    .await;
    assert!(healthy.is_some(), "healthy again once a round succeeds");
    Ok(())
}

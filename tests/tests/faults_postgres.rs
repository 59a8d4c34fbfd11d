//! Postgres restarting under load (its own test binary: the restart cuts every test's
//! connections, so nothing else runs beside it).

use std::time::Duration;

use esk_tests::indexer::{self, check_table, wait_indexed};
use esk_tests::ingest::{self, Client};
use esk_tests::load::Load;
use esk_tests::TestContext;

#[tokio::test]
async fn survives_a_postgres_restart_mid_load() -> anyhow::Result<()> {
    let ctx = TestContext::new("pg_restart").await?;
    let ingest_process = ingest::spawn(&ctx, &[("ESK_INGEST_KAFKA_APPENDS", "false")]).await?;
    let indexer_process = indexer::spawn(&ctx, &[]).await?;
    let client = Client::new(&ingest_process);
    // Writers retry a 503 with the same body (same event ids, so the same append id).
    // Unbounded: it runs until stopped, so the restart always lands mid-load.
    let load = Load::start(&client, "Pgr", 6, 3, usize::MAX);
    indexer::pause(1500).await;
    let started_before: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT pg_postmaster_start_time()")
            .fetch_one(&ctx.pool)
            .await?;
    let before_restart = load.accepted();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/stack");
    let restart = tokio::process::Command::new(script)
        .arg("restart-postgres")
        .output()
        .await?;
    assert!(
        restart.status.success(),
        "{}",
        String::from_utf8_lossy(&restart.stderr)
    );
    indexer::pause(2000).await;
    let accepted = load.finish(true).await?;
    assert!(accepted > 0, "appends acknowledged across the restart");
    assert!(
        accepted > before_restart,
        "appends were acknowledged after the restart too"
    );
    let started_after: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT pg_postmaster_start_time()")
            .fetch_one(&ctx.pool)
            .await?;
    assert!(started_after > started_before, "Postgres really restarted");
    wait_indexed(&ctx, accepted, Duration::from_secs(90)).await?;
    check_table(&ctx).await?;
    let health = reqwest::get(format!("{}/health", indexer_process.admin)).await?;
    assert!(health.status().is_success(), "no partition halted");
    let metrics = indexer::metrics(&indexer_process).await?;
    assert_eq!(
        metrics
            .get("esk_indexer_invariant_violations_total")
            .copied(),
        Some(0.0)
    );
    Ok(())
}

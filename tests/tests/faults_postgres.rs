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
    let load = Load::start(&client, "Pgr", 6, 3, 150);
    indexer::pause(1500).await;
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
    let accepted = load.finish(false).await?;
    assert_eq!(
        accepted,
        6 * 3 * 150,
        "every append eventually acknowledged"
    );
    let ingest_metrics = indexer::metrics(&ingest_process).await?;
    let failures = ingest_metrics
        .get("esk_ingest_attempt_failures_total")
        .copied()
        .unwrap_or(0.0);
    assert!(failures >= 1.0, "the restart hit ingest attempts mid-load");
    wait_indexed(&ctx, accepted, Duration::from_secs(90)).await?;
    check_table(&ctx).await?;
    let health = reqwest::get(format!("{}/health", indexer_process.http)).await?;
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

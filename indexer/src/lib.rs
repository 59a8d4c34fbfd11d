//! `indexer`: consumes `ingest-log` into the authoritative `events` table, exactly once, and
//! publishes committed events to the canonical topic in global-position order. The `indexer`
//! binary parses [`IndexerConfig`] and calls [`run`]; `esk indexer quarantine` calls
//! [`request_quarantine`].

mod chore;
mod classify;
mod commit;
mod committed_tail;
mod config;
mod copy_batch;
mod election;
mod frontier;
mod group;
mod halts;
mod index_batch;
mod index_loop;
mod internal_events;
mod lag;
mod ledger_maintenance;
mod metrics;
mod narrow;
mod offsets;
mod publisher;
mod quarantine;
mod scavenger;
mod units;

use std::sync::Arc;
use std::time::Duration;

use esk_runtime::service::RunError;
use esk_runtime::supervisor::{Supervisor, Watchdog};
use esk_runtime::telemetry::Telemetry;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use config::IndexerConfig;
pub use quarantine::{request_quarantine, QuarantineError, QuarantineRequest};

/// Runs the indexer until `shutdown` is cancelled (then drains and returns `Ok`), or until one
/// of its tasks ends early ([`RunError::Stopped`]). Errors before it is running are returned as
/// they happen.
pub async fn run(config: IndexerConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    let telemetry = Telemetry::new("indexer");
    let metrics = Arc::new(metrics::IndexerMetrics::new(&telemetry.registry));
    let kafka = config.common.kafka();
    esk_runtime::kafka::check_connection_async(&kafka, esk_runtime::kafka::START_CHECK_TIMEOUT)
        .await?;
    let pool = esk_runtime::db::connect(&config.common.database_url, config.pg_connections).await?;
    if config.migrate {
        esk_runtime::db::migrate(&pool).await?;
    }
    let indexed = Arc::new(Notify::new());
    // A few publish rounds' worth: enough to publish from memory while the publisher keeps up.
    let tail = Arc::new(committed_tail::CommittedTail::new(
        usize::try_from(config.publish_batch.saturating_mul(4)).unwrap_or(20_000),
        config.publish_batch_bytes.saturating_mul(2),
    ));

    let server = telemetry
        .serve(&config.admin_addr, shutdown.clone())
        .await
        .map_err(RunError::listen(&config.admin_addr))?;

    let mut supervisor = Supervisor::new(shutdown.clone(), telemetry.health.clone());
    supervisor.watch("telemetry server", server);
    let watchdog = Watchdog::new(config.common.stall_after(), telemetry.health.clone());
    let indexer = index_loop::Indexer::new(
        &config,
        pool.clone(),
        metrics.clone(),
        telemetry.health.clone(),
        indexed.clone(),
        tail.clone(),
        watchdog.register("index loop"),
    );
    supervisor.spawn("index loop", indexer.run(shutdown.clone()));
    if config.publish {
        let publisher = publisher::Publisher {
            pool: pool.clone(),
            producer: esk_runtime::kafka::producer_config(&kafka).create()?,
            topic: config.common.topics.events.clone(),
            batch: config.publish_batch,
            batch_bytes: config.publish_batch_bytes.max(1),
            metrics: metrics.clone(),
            indexed,
            linger: Duration::from_millis(config.publish_linger_ms),
            tail,
            progress: watchdog.register("publisher"),
        };
        supervisor.spawn("publisher", publisher.run(shutdown.clone()));
    }
    let chore = |stage: &'static str, failed: &'static str, every_secs: u64| chore::Chore {
        stage,
        failed,
        every: Duration::from_secs(every_secs),
        metrics: metrics.clone(),
        progress: watchdog.register(stage.replace('_', " ")),
    };
    let maintenance = Arc::new(ledger_maintenance::LedgerMaintenance {
        pool: pool.clone(),
        window: Duration::from_secs(config.idempotency_window_secs),
        alert_after: Duration::from_secs(config.unindexed_alert_secs),
        metrics: metrics.clone(),
    });
    supervisor.spawn(
        "ledger maintenance",
        chore(
            "ledger_maintenance",
            "ledger maintenance failed",
            config.ledger_maintenance_secs,
        )
        .run(shutdown.clone(), move |_| {
            let maintenance = maintenance.clone();
            async move { maintenance.round().await }
        }),
    );
    if config.scavenge_interval_secs > 0 {
        let scavenger = Arc::new(scavenger::Scavenger {
            pool: pool.clone(),
            batch: config.scavenge_batch.max(1),
            metrics: metrics.clone(),
        });
        let stop = shutdown.clone();
        supervisor.spawn(
            "scavenger",
            chore(
                "scavenge",
                "scavenging failed",
                config.scavenge_interval_secs,
            )
            .run(shutdown.clone(), move |progress| {
                let (scavenger, stop) = (scavenger.clone(), stop.clone());
                async move { scavenger.round(&stop, &progress).await }
            }),
        );
    }
    let lag = lag::LagMonitor {
        pool: pool.clone(),
        kafka: kafka.clone(),
        topic: config.common.topics.ingest_log.clone(),
        metrics: metrics.clone(),
    };
    supervisor.spawn("lag monitor", lag.run(shutdown.clone()));
    supervisor.spawn("watchdog", watchdog.run(shutdown.clone()));
    supervisor.spawn(
        "kafka security watch",
        esk_runtime::kafka::watch_connection(kafka, telemetry.health.clone(), shutdown.clone()),
    );
    telemetry.health.set_ready(true);
    tracing::info!(addr = %config.admin_addr, "indexer running");
    supervisor.run_until_stopped().await?;
    Ok(())
}

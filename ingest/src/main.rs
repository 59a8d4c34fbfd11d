//! `ingest`: accepts appends over HTTP and Kafka, decides them against the Postgres stream index
//! and produces the accepted events to `ingest-log`.

mod api;
mod attempt;
mod config;
mod decide;
mod event_claims;
mod ingest_log;
mod kafka_appends;
mod ledger;
mod metrics;
mod offsets;
mod openapi;
mod outcome;
mod pipeline;
mod reads;
mod stream_index;
mod wait;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use esk_core::supervisor::{Supervisor, Watchdog};
use esk_core::telemetry::{init_tracing, Telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = config::IngestConfig::parse();
    init_tracing(config.common.log_format);
    let telemetry = Telemetry::new("ingest");
    let metrics = Arc::new(metrics::IngestMetrics::new(&telemetry.registry));

    let pool = esk_core::db::connect_with_settings(
        &config.common.database_url,
        config.pg_connections,
        &config.session_settings(),
    )
    .await?;
    if config.migrate {
        esk_core::db::migrate(&pool).await?;
    }
    let ingest_log = ingest_log::IngestLog::new(&config)?;
    let producer = ingest_log.producer().clone();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut supervisor = Supervisor::new(shutdown.clone(), telemetry.health.clone());
    let watchdog = Watchdog::new(config.common.stall_after(), telemetry.health.clone());
    let (pipeline, workers) = pipeline::Pipeline::start(
        &config,
        pool.clone(),
        ingest_log,
        metrics.clone(),
        &watchdog,
    );
    for (shard, worker) in workers.into_iter().enumerate() {
        supervisor.spawn(format!("append worker {shard}"), worker);
    }
    supervisor.spawn("watchdog", watchdog.run(shutdown.clone()));
    if config.kafka_appends {
        let consumer = kafka_appends::consumer_loop(
            &config,
            pipeline.clone(),
            producer,
            metrics.clone(),
            shutdown.clone(),
        )?;
        supervisor.spawn("kafka appends consumer", consumer);
    }

    let read_pool =
        esk_core::db::connect(&config.common.database_url, config.pg_read_connections).await?;
    let waits = wait::WaitHub::new(read_pool.clone(), config.max_waiters);
    supervisor.spawn("wait poller", waits.clone().run(shutdown.clone()));
    let app = api::router(api::AppState {
        pipeline,
        limits: config.limits.clone(),
        metrics,
        max_body_bytes: config.max_body_bytes,
        max_concurrency: config.max_http_concurrency,
        body_timeout: std::time::Duration::from_millis(config.body_timeout_ms.max(1)),
    })
    .merge(reads::router(reads::ReadState {
        pool: read_pool,
        waits,
        max_page_bytes: config.max_page_bytes.max(1),
    }))
    .merge(telemetry.router());
    let listener = tokio::net::TcpListener::bind(&config.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.http_addr))?;
    tracing::info!(addr = %config.http_addr, "ingest listening");
    let stop = shutdown.clone();
    let refused = telemetry.refused_connections.clone();
    let limits = config.server.clone();
    supervisor.spawn_fallible("http server", async move {
        esk_core::http_server::serve(listener, app, &limits, refused, stop)
            .await
            .map_err(Into::into)
    });
    telemetry.health.set_ready(true);
    esk_core::supervisor::exit_if_failed(supervisor.run_until_stopped().await);
    Ok(())
}

/// mimalloc: measurably faster than glibc malloc on the allocation-heavy paths (JSON, records).
#[global_allocator]
static GLOBAL_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

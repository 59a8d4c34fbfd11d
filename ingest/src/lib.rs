//! `ingest`: accepts appends over HTTP and Kafka, decides them against the Postgres stream index
//! and produces the accepted events to `ingest-log`. The `ingest` binary parses
//! [`IngestConfig`] and calls [`run`]; tests and tools can run it in-process the same way.

mod api;
mod attempt;
mod auth;
mod claim_mode;
mod config;
mod credential_cache;
mod decide;
mod decide_group;
mod event_claims;
mod filters;
mod group_api;
mod group_attempt;
mod ingest_log;
mod internal_events;
mod jwks;
mod jwt;
mod kafka_appends;
mod ledger;
mod lifecycle;
mod metrics;
mod offsets;
mod openapi;
mod outcome;
mod pipeline;
mod reads;
mod snapshot_store;
mod snapshots;
mod stream_index;
mod subscriptions;
mod wait;

use std::sync::Arc;

use esk_runtime::service::RunError;
use esk_runtime::supervisor::{Supervisor, Watchdog};
use esk_runtime::telemetry::Telemetry;
use tokio_util::sync::CancellationToken;

pub use config::{IngestConfig, JwtSettings};

/// Runs ingest until `shutdown` is cancelled (then drains and returns `Ok`), or until one of its
/// tasks ends early ([`RunError::Stopped`]). Errors before it is serving are returned as they
/// happen, with nothing left running.
pub async fn run(config: IngestConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    let telemetry = Telemetry::new("ingest");
    let metrics = Arc::new(metrics::IngestMetrics::new(&telemetry.registry));
    // Before anything connects: a certificate problem stops the start at once.
    let tls = config.tls.acceptor()?;
    let kafka = config.common.kafka();
    esk_runtime::kafka::check_connection_async(&kafka, esk_runtime::kafka::START_CHECK_TIMEOUT)
        .await?;

    let pool = esk_runtime::db::connect_with_settings(
        &config.common.database_url,
        config.pg_connections,
        &config.session_settings(),
    )
    .await?;
    if config.migrate {
        esk_runtime::db::migrate(&pool).await?;
    }
    let auth = Arc::new(authenticator(&config, &pool).await?);
    let ingest_log = ingest_log::IngestLog::new(&config)?;
    let producer = ingest_log.producer().clone();
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
    supervisor.spawn(
        "kafka security watch",
        esk_runtime::kafka::watch_connection(kafka, telemetry.health.clone(), shutdown.clone()),
    );
    if config.kafka_appends {
        let consumer = kafka_appends::consumer_loop(
            &config,
            &watchdog,
            pipeline.clone(),
            producer,
            auth.clone(),
            metrics.clone(),
            shutdown.clone(),
        )?;
        supervisor.spawn("kafka appends consumer", consumer);
    }
    supervisor.spawn("watchdog", watchdog.run(shutdown.clone()));

    let read_pool =
        esk_runtime::db::connect(&config.common.database_url, config.pg_read_connections).await?;
    let waits = wait::WaitHub::new(read_pool.clone(), config.max_waiters);
    supervisor.spawn("wait poller", waits.clone().run(shutdown.clone()));
    let body_timeout = std::time::Duration::from_millis(config.body_timeout_ms.max(1));
    let app_state = api::AppState {
        pipeline,
        auth: auth.clone(),
        limits: config.limits.clone(),
        metrics,
        max_body_bytes: config.max_body_bytes,
        body_timeout,
        max_append_streams: config.max_append_streams.max(1),
    };
    let lifecycle_state = lifecycle::LifecycleState {
        app: app_state.clone(),
        pool: read_pool.clone(),
    };
    let app = openapi::app(
        app_state,
        lifecycle_state,
        reads::ReadState {
            pool: read_pool.clone(),
            auth: auth.clone(),
            waits,
            max_page_bytes: config.max_page_bytes.max(1),
            limits: config.limits.clone(),
            subscriptions: subscriptions::Subscriptions::new(
                config.subscription_settings(),
                &telemetry.registry,
                shutdown.clone(),
            ),
        },
        snapshots::SnapshotState {
            pool: read_pool,
            auth,
            limits: config.limits.clone(),
            // A snapshot's data is at most an event's size: its body is read no further.
            max_body_bytes: config
                .max_body_bytes
                .min(config.limits.max_event_bytes.saturating_add(64 * 1024)),
            body_timeout,
        },
        config.max_http_concurrency,
    );
    let listener = tokio::net::TcpListener::bind(&config.http_addr)
        .await
        .map_err(RunError::listen(&config.http_addr))?;
    // Metrics and health on their own (loopback by default) port: the API's port, open to
    // producers, tells them nothing about the process.
    let admin = telemetry
        .serve(&config.admin_addr, shutdown.clone())
        .await
        .map_err(RunError::listen(&config.admin_addr))?;
    supervisor.watch("admin server", admin);
    tracing::info!(addr = %config.http_addr, admin = %config.admin_addr, tls = tls.is_some(),
        "ingest listening");
    let stop = shutdown.clone();
    let refused = telemetry.refused_connections.clone();
    let limits = config.server.clone();
    supervisor.spawn_fallible("http server", async move {
        esk_runtime::http_server::serve(listener, app, &limits, tls, refused, stop)
            .await
            .map_err(Into::into)
    });
    telemetry.health.set_ready(true);
    supervisor.run_until_stopped().await?;
    Ok(())
}

/// Tokens checked against `pool` (and JWTs, with a JWKS file), or, with `--insecure-no-auth`,
/// nothing checked and a warning at every start (louder when the API is reachable from other
/// hosts). JWT settings that cannot be used stop ingest here.
async fn authenticator(config: &IngestConfig, pool: &sqlx::PgPool) -> Result<auth::Auth, RunError> {
    if !config.insecure_no_auth {
        let ttl = std::time::Duration::from_secs(config.auth_cache_secs);
        let jwt = jwt::JwtVerifier::from_settings(&config.jwt, ttl)
            .await
            .map_err(|e| RunError::Settings(Box::new(e)))?;
        return Ok(auth::Auth::on(pool.clone(), ttl, jwt));
    }
    if config.listens_on_loopback() {
        tracing::warn!(addr = %config.http_addr,
            "AUTHENTICATION IS OFF (--insecure-no-auth): any local process may append and read");
    } else {
        tracing::error!(addr = %config.http_addr,
            "AUTHENTICATION IS OFF (--insecure-no-auth) ON A NON-LOOPBACK ADDRESS: anyone who \
             can reach this address may append and read every stream; remove the flag");
    }
    Ok(auth::Auth::off())
}

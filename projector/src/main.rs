//! `projector`: checkpointed, backpressure-aware projections. Each configured projection
//! replays the events table until it has caught up, hands over to the canonical topic, and
//! runs live from there with its own consumer group and bounded queue.

mod catch_up;
mod checkpoint;
mod config;
mod dead_letters;
mod event;
mod handlers;
mod live;
mod metrics;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use config::{Command, DeadLetterCommand, ProjectorConfig};
use esk_runtime::supervisor::Supervisor;
use esk_runtime::telemetry::{init_tracing, Telemetry};
use handlers::ProcessError;
use handlers::Projection;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = ProjectorConfig::parse();
    init_tracing(config.common.log_format);
    match run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("projector: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: ProjectorConfig) -> anyhow::Result<()> {
    let specs = config.projections()?;
    let telemetry = Telemetry::new("projector");
    let metrics = Arc::new(metrics::ProjectorMetrics::new(&telemetry.registry));
    let pool =
        esk_runtime::db::connect(&config.common.database_url, config.tuning.pg_connections).await?;
    if config.tuning.migrate {
        esk_runtime::db::migrate(&pool).await?;
    }
    let build = |name: &str| -> anyhow::Result<Projection> {
        let spec = specs
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| anyhow::anyhow!("no projection named {name:?} is configured"))?;
        Projection::new(
            spec,
            &config.tuning,
            &config.common.kafka_brokers,
            metrics.clone(),
            telemetry.health.clone(),
        )
    };
    match config.command.clone().unwrap_or(Command::Run) {
        Command::Run => serve(&config, pool, telemetry, metrics).await,
        Command::Rebuild { name } => {
            let projection = build(&name)?;
            projection.reset(&pool).await?;
            let partitions = partition_count(&config).await?;
            let (head, _) = checkpoint::heads(&pool).await?;
            let mut reporter = catch_up::Reporter::for_terminal(head.max(0) as u64);
            let summary = catch_up::catch_up(
                &pool,
                &projection,
                (config.tuning.replay_batch, config.tuning.replay_batch_bytes),
                partitions,
                &mut reporter,
                // A one-shot command: an outage is waited out until it is interrupted.
                &CancellationToken::new(),
            )
            .await?;
            let rate = summary.events as f64 / summary.seconds.max(1e-9);
            println!(
                "{}",
                serde_json::json!({"projection": name, "events": summary.events, "through": summary.through,
                    "seconds": (summary.seconds * 1000.0).round() / 1000.0, "events_per_s": rate.round()})
            );
            Ok(())
        }
        Command::DeadLetters(DeadLetterCommand::List { name }) => {
            build(&name)?;
            let letters = dead_letters::list(&pool, &name).await?;
            println!("{}", serde_json::to_string_pretty(&letters)?);
            Ok(())
        }
        Command::DeadLetters(DeadLetterCommand::Replay { name }) => {
            let projection = build(&name)?;
            let (replayed, failing) = dead_letters::replay(&pool, &projection).await?;
            println!(
                "{}",
                serde_json::json!({"projection": name, "replayed": replayed, "still_failing": failing})
            );
            anyhow::ensure!(failing == 0, "{failing} dead letters still fail");
            Ok(())
        }
        Command::List => {
            let (head, published) = checkpoint::heads(&pool).await?;
            for spec in &specs {
                let applied = checkpoint::furthest_applied(&pool, &spec.name).await?;
                let live = checkpoint::is_live(&pool, &spec.name).await?;
                let dead = dead_letters::list(&pool, &spec.name).await?.len();
                println!(
                    "{}",
                    serde_json::json!({"projection": spec.name, "live": live, "applied_through": applied,
                        "head": head, "published_through": published, "dead_letters": dead})
                );
            }
            Ok(())
        }
    }
}

async fn partition_count(config: &ProjectorConfig) -> anyhow::Result<i32> {
    let brokers = config.common.kafka_brokers.clone();
    let topic = config.common.topics.events.clone();
    let count =
        tokio::task::spawn_blocking(move || esk_runtime::kafka::partition_count(&brokers, &topic))
            .await??;
    anyhow::ensure!(
        count > 0,
        "topic {} does not exist",
        config.common.topics.events
    );
    Ok(count)
}

async fn serve(
    config: &ProjectorConfig,
    pool: PgPool,
    telemetry: Telemetry,
    metrics: Arc<metrics::ProjectorMetrics>,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    esk_runtime::service::cancel_on_signal(shutdown.clone());
    let server = telemetry
        .serve(&config.tuning.http_addr, shutdown.clone())
        .await?;
    let partitions = partition_count(config).await?;
    let mut supervisor = Supervisor::new(shutdown.clone(), telemetry.health.clone());
    supervisor.watch("telemetry server", server);
    for spec in config.projections()? {
        let projection = Projection::new(
            &spec,
            &config.tuning,
            &config.common.kafka_brokers,
            metrics.clone(),
            telemetry.health.clone(),
        )?;
        let runner = ProjectionRunner {
            pool: pool.clone(),
            projection,
            tuning: config.tuning.clone(),
            brokers: config.common.kafka_brokers.clone(),
            topic: config.common.topics.events.clone(),
            partitions,
        };
        supervisor.spawn(
            format!("projection {}", spec.name),
            runner.run(shutdown.clone()),
        );
    }
    supervisor.spawn(
        "lag monitor",
        monitor_lag(
            pool.clone(),
            config.projections()?,
            metrics,
            shutdown.clone(),
        ),
    );
    telemetry.health.set_ready(true);
    tracing::info!(addr = %config.tuning.http_addr, "projector running");
    if let Err(error) = supervisor.run_until_stopped().await {
        eprintln!("stopping: {error}");
        std::process::exit(esk_runtime::supervisor::EXIT_TASK_ENDED);
    }
    Ok(())
}

struct ProjectionRunner {
    pool: PgPool,
    projection: Projection,
    tuning: config::Tuning,
    brokers: String,
    topic: String,
    partitions: i32,
}

impl ProjectionRunner {
    /// Catch up, go live; if the projection is reset under us, catch up again.
    async fn run(self, shutdown: CancellationToken) {
        let name = self.projection.name.clone();
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let live = checkpoint::is_live(&self.pool, &name)
                .await
                .unwrap_or(false);
            if !live {
                let mut reporter = catch_up::Reporter::Lines {
                    last: std::time::Instant::now(),
                };
                match catch_up::catch_up(
                    &self.pool,
                    &self.projection,
                    (self.tuning.replay_batch, self.tuning.replay_batch_bytes),
                    self.partitions,
                    &mut reporter,
                    &shutdown,
                )
                .await
                {
                    Ok(summary) => {
                        tracing::info!(projection = %name, events = summary.events, through = summary.through, "caught up; going live")
                    }
                    Err(ProcessError::Stopped) => return,
                    Err(error) => {
                        tracing::warn!(projection = %name, %error, "catch-up failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            let run = live::LiveRun {
                pool: &self.pool,
                projection: &self.projection,
                tuning: &self.tuning,
                brokers: &self.brokers,
                topic: &self.topic,
            };
            match run.run(&shutdown).await {
                Ok(live::Exit::Shutdown) => return,
                Ok(live::Exit::NeedsCatchUp) => {
                    tracing::info!(projection = %name, "positions reset; catching up")
                }
                Err(error) => {
                    tracing::warn!(projection = %name, %error, "live projection failed; restarting it");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

async fn monitor_lag(
    pool: PgPool,
    specs: Vec<config::ProjectionSpec>,
    metrics: Arc<metrics::ProjectorMetrics>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok((head, _)) = checkpoint::heads(&pool).await else {
            continue;
        };
        for spec in &specs {
            if let Ok(applied) = checkpoint::furthest_applied(&pool, &spec.name).await {
                metrics
                    .lag_events
                    .with_label_values(&[&spec.name])
                    .set((head - applied).max(0));
            }
        }
    }
}

/// mimalloc: measurably faster than glibc malloc on the allocation-heavy paths (JSON, records).
#[global_allocator]
static GLOBAL_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

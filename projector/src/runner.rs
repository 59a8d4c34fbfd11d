//! `projector run`: every configured projection under one supervisor, each catching up from
//! Postgres, then live on the canonical topic, and catching up again after a rebuild reset it;
//! plus the lag monitor and the `/metrics` + `/health` server.

use std::sync::Arc;
use std::time::Duration;

use esk_runtime::db::DbError;
use esk_runtime::supervisor::{Supervisor, SupervisorError};
use esk_runtime::telemetry::Telemetry;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::catch_up;
use crate::checkpoint;
use crate::config::{ProjectorConfig, Tuning};
use crate::connections::{self, TopicError};
use crate::handlers::HandlerSetupError;
use crate::live;
use crate::metrics::ProjectorMetrics;
use crate::projection::{ProcessError, Projection};
use crate::projections_file::{ConfigError, ProjectionSpec};

/// Why the projector stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The projections file is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Postgres could not be reached or migrated.
    #[error(transparent)]
    Connect(#[from] DbError),
    /// The `/metrics` and `/health` address could not be bound.
    #[error(transparent)]
    Listen(#[from] std::io::Error),
    /// The brokers refused the Kafka security settings at start.
    #[error(transparent)]
    Kafka(#[from] esk_runtime::kafka::KafkaConnectError),
    /// The canonical topic's partitions could not be counted.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// A projection's handler could not be set up.
    #[error(transparent)]
    Handler(#[from] HandlerSetupError),
    /// A supervised task ended or panicked before shutdown (the binary exits with
    /// [`esk_runtime::supervisor::EXIT_TASK_ENDED`]).
    #[error(transparent)]
    TaskEnded(#[from] SupervisorError),
}

/// Runs every configured projection until `shutdown` is cancelled (the binary cancels it on
/// SIGINT and SIGTERM); the first supervised task to end early stops the others.
pub async fn run(config: ProjectorConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    let specs = config.projections()?;
    let telemetry = Telemetry::new("projector");
    let metrics = Arc::new(ProjectorMetrics::new(&telemetry.registry));
    let kafka = config.common.kafka();
    esk_runtime::kafka::check_connection_async(&kafka, esk_runtime::kafka::START_CHECK_TIMEOUT)
        .await?;
    let pool = connections::open_database(&config).await?;
    let server = telemetry
        .serve(&config.tuning.admin_addr, shutdown.clone())
        .await?;
    let partitions = connections::canonical_partitions(&config).await?;
    let mut supervisor = Supervisor::new(shutdown.clone(), telemetry.health.clone());
    supervisor.watch("telemetry server", server);
    for spec in &specs {
        let projection = Projection::new(
            spec,
            &config.tuning,
            &kafka,
            metrics.clone(),
            telemetry.health.clone(),
        )?;
        let runner = ProjectionRunner {
            pool: pool.clone(),
            projection,
            tuning: config.tuning.clone(),
            kafka: kafka.clone(),
            topic: config.common.topics.events.clone(),
            partitions,
        };
        supervisor.spawn(
            format!("projection {}", spec.name),
            runner.run(shutdown.clone()),
        );
    }
    supervisor.spawn(
        "kafka security watch",
        esk_runtime::kafka::watch_connection(kafka, telemetry.health.clone(), shutdown.clone()),
    );
    supervisor.spawn(
        "lag monitor",
        monitor_lag(pool.clone(), specs, metrics, shutdown.clone()),
    );
    telemetry.health.set_ready(true);
    tracing::info!(addr = %config.tuning.admin_addr, "projector running");
    supervisor.run_until_stopped().await?;
    Ok(())
}

/// One projection's life under the supervisor.
struct ProjectionRunner {
    pool: PgPool,
    projection: Projection,
    tuning: Tuning,
    kafka: esk_runtime::kafka::KafkaSettings,
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
                kafka: &self.kafka,
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

/// Sets `esk_projector_lag_events` of every projection every 2 s.
async fn monitor_lag(
    pool: PgPool,
    specs: Vec<ProjectionSpec>,
    metrics: Arc<ProjectorMetrics>,
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

//! One-shot operations on the configured projections: what `projector list|rebuild|dead-letters`
//! and `esk projection` run. Each returns what it found or did; printing is the caller's.

use std::sync::Arc;

use esk_runtime::db::DbError;
use esk_runtime::telemetry::{Health, Telemetry};
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::catch_up::{self, Reporter};
use crate::checkpoint;
use crate::config::ProjectorConfig;
use crate::connections::{self, TopicError};
use crate::dead_letters::{self, DeadLetter};
use crate::handlers::HandlerSetupError;
use crate::metrics::ProjectorMetrics;
use crate::projection::{ProcessError, Projection};
use crate::projections_file::{ConfigError, ProjectionSpec};

/// Why an admin operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The projections file is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Postgres could not be reached or migrated.
    #[error(transparent)]
    Connect(#[from] DbError),
    /// A query failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// No projection of this name is configured.
    #[error("no projection named {0:?} is configured")]
    UnknownProjection(String),
    /// The projection's handler could not be set up.
    #[error(transparent)]
    Handler(#[from] HandlerSetupError),
    /// The canonical topic's partitions could not be counted.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// The rebuild's replay failed.
    #[error(transparent)]
    Replay(#[from] ProcessError),
}

/// Where a configured projection stands (a line of `list`). Fields are in alphabetical order,
/// the key order the command has always printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectionStatus {
    /// The furthest global position it applied.
    pub applied_through: i64,
    /// Its dead letters not replayed yet.
    pub dead_letters: usize,
    /// The store's last global position.
    pub head: i64,
    /// Whether it has handed over to the canonical topic (else it is replaying).
    pub live: bool,
    /// Its name.
    pub projection: String,
    /// How far the publisher has put events on the canonical topic.
    pub published_through: i64,
}

/// What a rebuild did (fields in alphabetical order, as printed).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RebuildSummary {
    /// Events applied.
    pub events: u64,
    /// Events applied per second, rounded.
    pub events_per_s: f64,
    /// The projection rebuilt.
    pub projection: String,
    /// How long the replay took, rounded to milliseconds.
    pub seconds: f64,
    /// The global position the replay reached.
    pub through: i64,
}

/// What a dead-letter replay did (fields in alphabetical order, as printed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayOutcome {
    /// The projection whose dead letters were replayed.
    pub projection: String,
    /// Dead letters applied and marked replayed.
    pub replayed: usize,
    /// Dead letters that failed again and stay.
    pub still_failing: usize,
}

/// The configured projections and a connection to their store.
#[derive(Debug)]
pub struct Admin {
    config: ProjectorConfig,
    specs: Vec<ProjectionSpec>,
    pool: PgPool,
    metrics: Arc<ProjectorMetrics>,
    health: Arc<Health>,
}

impl Admin {
    /// Checks the projections file, connects to Postgres and applies the migrations (unless
    /// `ESK_MIGRATE=false`).
    pub async fn connect(config: ProjectorConfig) -> Result<Self, AdminError> {
        let specs = config.projections()?;
        let telemetry = Telemetry::new("projector");
        let metrics = Arc::new(ProjectorMetrics::new(&telemetry.registry));
        let pool = connections::open_database(&config).await?;
        Ok(Admin {
            config,
            specs,
            pool,
            metrics,
            health: telemetry.health,
        })
    }

    /// Every configured projection's position, with the head and its dead letters.
    pub async fn list(&self) -> Result<Vec<ProjectionStatus>, AdminError> {
        let (head, published) = checkpoint::heads(&self.pool).await?;
        let mut statuses = Vec::with_capacity(self.specs.len());
        for spec in &self.specs {
            statuses.push(ProjectionStatus {
                applied_through: checkpoint::furthest_applied(&self.pool, &spec.name).await?,
                dead_letters: dead_letters::list(&self.pool, &spec.name).await?.len(),
                head,
                live: checkpoint::is_live(&self.pool, &spec.name).await?,
                projection: spec.name.clone(),
                published_through: published,
            });
        }
        Ok(statuses)
    }

    /// Resets the projection's read model and positions and replays it from Postgres (a
    /// progress bar on a terminal, a progress line every 5 s otherwise). A running projector
    /// notices the reset and continues it live.
    pub async fn rebuild(&self, name: &str) -> Result<RebuildSummary, AdminError> {
        let projection = self.projection(name)?;
        projection.reset(&self.pool).await?;
        let partitions = connections::canonical_partitions(&self.config).await?;
        let (head, _) = checkpoint::heads(&self.pool).await?;
        let mut reporter = Reporter::for_terminal(u64::try_from(head).unwrap_or(0));
        let tuning = &self.config.tuning;
        let summary = catch_up::catch_up(
            &self.pool,
            &projection,
            (tuning.replay_batch, tuning.replay_batch_bytes),
            partitions,
            &mut reporter,
            // A one-shot command: an outage is waited out until it is interrupted.
            &CancellationToken::new(),
        )
        .await?;
        let rate = summary.events as f64 / summary.seconds.max(1e-9);
        Ok(RebuildSummary {
            events: summary.events,
            events_per_s: rate.round(),
            projection: name.to_owned(),
            seconds: (summary.seconds * 1000.0).round() / 1000.0,
            through: summary.through,
        })
    }

    /// The projection's dead letters not replayed yet, oldest first.
    pub async fn dead_letters(&self, name: &str) -> Result<Vec<DeadLetter>, AdminError> {
        self.projection(name)?;
        Ok(dead_letters::list(&self.pool, name).await?)
    }

    /// Applies the projection's dead letters again, each up to `ESK_PROJECTOR_MAX_ATTEMPTS`
    /// times; those that pass are marked replayed, the others stay.
    pub async fn replay_dead_letters(&self, name: &str) -> Result<ReplayOutcome, AdminError> {
        let projection = self.projection(name)?;
        let (replayed, still_failing) = projection.replay_dead_letters(&self.pool).await?;
        Ok(ReplayOutcome {
            projection: name.to_owned(),
            replayed,
            still_failing,
        })
    }

    fn spec(&self, name: &str) -> Result<&ProjectionSpec, AdminError> {
        self.specs
            .iter()
            .find(|spec| spec.name == name)
            .ok_or_else(|| AdminError::UnknownProjection(name.to_owned()))
    }

    fn projection(&self, name: &str) -> Result<Projection, AdminError> {
        Ok(Projection::new(
            self.spec(name)?,
            &self.config.tuning,
            &self.config.common.kafka(),
            self.metrics.clone(),
            self.health.clone(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_print_with_the_keys_the_commands_always_printed() -> Result<(), serde_json::Error> {
        let status = ProjectionStatus {
            applied_through: 7,
            dead_letters: 1,
            head: 9,
            live: true,
            projection: "counts".into(),
            published_through: 8,
        };
        assert_eq!(
            serde_json::to_string(&status)?,
            r#"{"applied_through":7,"dead_letters":1,"head":9,"live":true,"projection":"counts","published_through":8}"#
        );
        let rebuild = RebuildSummary {
            events: 3,
            events_per_s: 1500.0,
            projection: "counts".into(),
            seconds: 0.002,
            through: 3,
        };
        assert_eq!(
            serde_json::to_string(&rebuild)?,
            r#"{"events":3,"events_per_s":1500.0,"projection":"counts","seconds":0.002,"through":3}"#
        );
        let replay = ReplayOutcome {
            projection: "hook".into(),
            replayed: 2,
            still_failing: 0,
        };
        assert_eq!(
            serde_json::to_string(&replay)?,
            r#"{"projection":"hook","replayed":2,"still_failing":0}"#
        );
        Ok(())
    }
}

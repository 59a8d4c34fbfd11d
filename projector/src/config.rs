//! The projector's settings: connections, tuning and the projections file, each a flag and an
//! environment variable with a default (`docs/configuration.md`).

use std::path::PathBuf;

use clap::{Args, Parser};
use esk_runtime::config::CommonConfig;

use crate::projections_file::{self, ConfigError, ProjectionSpec};

/// What the projector runs with; the `projector` binary flattens it into its command line, and
/// `esk projection` builds it from its own flags and the environment.
#[derive(Debug, Clone, Args)]
pub struct ProjectorConfig {
    /// Postgres, the brokers, the topic names, logging.
    #[command(flatten)]
    pub common: CommonConfig,
    /// Knobs shared by every projection.
    #[command(flatten)]
    pub tuning: Tuning,
    /// The projections file (TOML). Without one, the two built-in SQL projections run.
    #[arg(long = "config", env = "ESK_PROJECTOR_CONFIG", value_name = "CONFIG")]
    pub projections_file: Option<PathBuf>,
}

impl ProjectorConfig {
    /// The declared projections (or the built-in defaults), checked.
    pub(crate) fn projections(&self) -> Result<Vec<ProjectionSpec>, ConfigError> {
        projections_file::load(self.projections_file.as_deref())
    }
}

/// Knobs shared by every projection.
#[derive(Debug, Clone, Args)]
pub struct Tuning {
    /// Admin listen address: /metrics, /health and /ready. Loopback by default; widen it only
    /// for a scraper on a trusted network.
    #[arg(
        long,
        env = "ESK_PROJECTOR_ADMIN_ADDR",
        default_value = "127.0.0.1:9102"
    )]
    pub admin_addr: String,
    /// Events queued per projection; partitions pause when it is full. Keep it well above the
    /// batch and above what one fetch brings (up to 8 MiB of records: ~20,000 small events):
    /// pausing drops the client's prefetched records, which are then fetched again. The byte
    /// budget (--queue-bytes) is what bounds memory.
    #[arg(long, env = "ESK_PROJECTOR_QUEUE", default_value_t = 200_000)]
    pub queue_capacity: usize,
    /// Most bytes of records queued per projection (events may be a MiB each); partitions
    /// pause beyond it, as beyond the count.
    #[arg(long, env = "ESK_PROJECTOR_QUEUE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub queue_bytes: usize,
    /// Partitions resume once the queue is below this fraction of its capacity.
    #[arg(long, env = "ESK_PROJECTOR_RESUME_BELOW", default_value_t = 0.5)]
    pub resume_below: f64,
    /// Most events handed to a handler at once.
    #[arg(long, env = "ESK_PROJECTOR_BATCH", default_value_t = 2000)]
    pub batch: usize,
    /// Events read per query while replaying from Postgres.
    #[arg(long, env = "ESK_PROJECTOR_REPLAY_BATCH", default_value_t = 10000)]
    pub replay_batch: i64,
    /// Most bytes of events read per query while replaying from Postgres.
    #[arg(long, env = "ESK_PROJECTOR_REPLAY_BATCH_BYTES", default_value_t = esk_runtime::db::DEFAULT_MAX_READ_BYTES)]
    pub replay_batch_bytes: usize,
    /// Attempts at a failing event before it is dead-lettered.
    #[arg(long, env = "ESK_PROJECTOR_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: usize,
    /// First retry delay (ms); doubles up to 10 s.
    #[arg(long, env = "ESK_PROJECTOR_RETRY_MS", default_value_t = 100)]
    pub retry_ms: u64,
    /// Consumer group prefix; each projection's group is `<prefix>-<name>`.
    #[arg(
        long,
        env = "ESK_PROJECTOR_GROUP_PREFIX",
        default_value = "esk-projection"
    )]
    pub group_prefix: String,
    /// Postgres connections.
    #[arg(long, env = "ESK_PROJECTOR_PG_CONNECTIONS", default_value_t = 8)]
    pub pg_connections: u32,
    /// Apply schema migrations at start-up.
    #[arg(long, env = "ESK_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate: bool,
}

impl Tuning {
    /// The tuning the environment sets (`ESK_PROJECTOR_*`, `ESK_MIGRATE`), defaults for the rest:
    /// what a `projector` started with no flags would use.
    pub fn from_env() -> Result<Self, clap::Error> {
        /// A command line of nothing but the tuning, so that clap reads only the environment.
        #[derive(Debug, Parser)]
        struct EnvironmentOnly {
            #[command(flatten)]
            tuning: Tuning,
        }
        EnvironmentOnly::try_parse_from(["projector"]).map(|parsed| parsed.tuning)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_listener_binds_loopback_by_default() {
        let command = Tuning::augment_args(clap::Command::new("projector"));
        let admin: Option<std::net::SocketAddr> = command
            .get_arguments()
            .find(|a| a.get_id() == "admin_addr")
            .and_then(|a| a.get_default_values().first()?.to_str()?.parse().ok());
        assert!(admin.is_some_and(|a| a.ip().is_loopback()), "{admin:?}");
    }
}

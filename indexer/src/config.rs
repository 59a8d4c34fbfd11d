//! The indexer's settings: defaults ← environment ← flags.

use clap::Parser;
use esk_runtime::config::CommonConfig;

/// Settings of the `indexer` binary.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "indexer",
    version,
    about = "Index ingest-log into Postgres, exactly once, and publish committed events"
)]
pub struct IndexerConfig {
    #[command(flatten)]
    pub common: CommonConfig,
    /// Admin listen address: /metrics, /health and /ready. Loopback by default; widen it only
    /// for a scraper on a trusted network.
    #[arg(long, env = "ESK_INDEXER_ADMIN_ADDR", default_value = "127.0.0.1:9101")]
    pub admin_addr: String,
    /// Group id the ingest-log consumer is created with. It joins no group: the elected
    /// committer (a Postgres advisory lock) assigns itself every partition.
    #[arg(long, env = "ESK_INDEXER_GROUP", default_value = "esk-indexer")]
    pub group_id: String,
    /// Most events in one indexing transaction.
    #[arg(long, env = "ESK_INDEXER_MAX_BATCH", default_value_t = 5000)]
    pub max_batch: usize,
    /// Most bytes of records in one indexing transaction (events may be a MiB each).
    #[arg(long, env = "ESK_INDEXER_MAX_BATCH_BYTES", default_value_t = esk_runtime::db::DEFAULT_MAX_READ_BYTES * 2)]
    pub max_batch_bytes: usize,
    /// Most bytes the publisher reads and publishes per round, and keeps of what this process
    /// just committed.
    #[arg(long, env = "ESK_PUBLISH_BATCH_BYTES", default_value_t = esk_runtime::db::DEFAULT_MAX_READ_BYTES * 2)]
    pub publish_batch_bytes: usize,
    /// How long a batch waits for more records once it has taken every record the consumer
    /// already held (ms). 0: commit at once; under load batches still grow, since records
    /// arrive while the previous batch commits.
    #[arg(long, env = "ESK_INDEXER_LINGER_MS", default_value_t = 0)]
    pub linger_ms: u64,
    /// Postgres connections.
    #[arg(long, env = "ESK_INDEXER_PG_CONNECTIONS", default_value_t = 6)]
    pub pg_connections: u32,
    /// Most events the publisher reads and publishes per round.
    #[arg(long, env = "ESK_PUBLISH_BATCH", default_value_t = 5000)]
    pub publish_batch: i64,
    /// How long the publisher waits after a partial round, to publish in larger batches (ms).
    /// 0: publish as soon as the index loop commits (it wakes the publisher); under load rounds
    /// still grow, since batches commit while the previous round is produced.
    #[arg(long, env = "ESK_PUBLISH_LINGER_MS", default_value_t = 0)]
    pub publish_linger_ms: u64,
    /// Run the publisher (one instance is elected among those that do).
    #[arg(long, env = "ESK_PUBLISH", default_value_t = true, action = clap::ArgAction::Set)]
    pub publish: bool,
    /// How long ledger rows are kept for idempotent retries (seconds).
    #[arg(long, env = "ESK_IDEMPOTENCY_WINDOW_SECS", default_value_t = 7 * 24 * 3600)]
    pub idempotency_window_secs: u64,
    /// Accepted appends not indexed after this long are counted as stuck (seconds).
    #[arg(long, env = "ESK_UNINDEXED_ALERT_SECS", default_value_t = 60)]
    pub unindexed_alert_secs: u64,
    /// How often ledger pruning and the unindexed-appends check run (seconds).
    #[arg(long, env = "ESK_LEDGER_MAINTENANCE_SECS", default_value_t = 15)]
    pub ledger_maintenance_secs: u64,
    /// How often the scavenger deletes the events reads hide (seconds; 0 turns it off).
    #[arg(long, env = "ESK_SCAVENGE_INTERVAL_SECS", default_value_t = 60)]
    pub scavenge_interval_secs: u64,
    /// Most events the scavenger deletes per transaction.
    #[arg(long, env = "ESK_SCAVENGE_BATCH", default_value_t = 1000)]
    pub scavenge_batch: i32,
    /// Apply schema migrations at start-up.
    #[arg(long, env = "ESK_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate: bool,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_admin_listener_binds_loopback_by_default() {
        let command = IndexerConfig::command();
        let admin: Option<std::net::SocketAddr> = command
            .get_arguments()
            .find(|a| a.get_id() == "admin_addr")
            .and_then(|a| a.get_default_values().first()?.to_str()?.parse().ok());
        assert!(admin.is_some_and(|a| a.ip().is_loopback()), "{admin:?}");
    }
}

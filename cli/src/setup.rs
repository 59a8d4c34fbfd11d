//! `esk setup` and `esk migrate`.

use anyhow::Context;
use clap::Args;
use esk_runtime::config::CommonConfig;

/// Options of `esk setup`.
#[derive(Debug, Args)]
pub(crate) struct SetupArgs {
    /// Partitions per topic (fixed at creation).
    #[arg(long, env = "ESK_PARTITIONS", default_value_t = 6)]
    partitions: i32,
    /// Replicas per topic (use 3 or more in production).
    #[arg(long, env = "ESK_REPLICATION", default_value_t = 1)]
    replication: i32,
}

pub(crate) async fn setup(common: &CommonConfig, args: &SetupArgs) -> anyhow::Result<()> {
    let topics = common.topics.all();
    esk_runtime::kafka::create_topics(
        &common.kafka_brokers,
        &topics,
        args.partitions,
        args.replication,
    )
    .await
    .with_context(|| format!("creating topics on {}", common.kafka_brokers))?;
    println!("topics ready: {}", topics.join(", "));
    migrate(common).await
}

pub(crate) async fn migrate(common: &CommonConfig) -> anyhow::Result<()> {
    let pool = esk_runtime::db::connect(&common.database_url, 2).await?;
    esk_runtime::db::migrate(&pool).await?;
    println!("schema up to date");
    Ok(())
}

//! `esk indexer quarantine`: the operator's way past a record Postgres refuses. The indexer
//! halts an ingest-log partition at such a record (nothing is skipped on its own); this asks it
//! to set that one record aside in `indexer_quarantine` and go on.

use clap::{Args, Subcommand};
use esk_runtime::config::CommonConfig;
use serde::Serialize;

use crate::exit::Failure;
use crate::output::Output;

/// Options of `esk indexer`.
#[derive(Debug, Args)]
pub(crate) struct IndexerArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Set aside the record a halted partition stopped at (see the indexer's /health or
    /// `esk doctor`). Its bytes are kept in `indexer_quarantine`; its event is not indexed,
    /// which leaves a gap at its version in its stream.
    Quarantine {
        /// The ingest-log partition that halted.
        #[arg(long)]
        partition: i32,
        /// The offset it halted at.
        #[arg(long)]
        offset: i64,
        /// Why (kept with the record).
        #[arg(
            long,
            default_value = "refused by Postgres; quarantined by an operator"
        )]
        reason: String,
    },
}

#[derive(Debug, Serialize)]
struct Requested<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    reason: &'a str,
}

pub(crate) async fn run(
    common: &CommonConfig,
    out: &Output,
    args: IndexerArgs,
) -> anyhow::Result<()> {
    let Action::Quarantine {
        partition,
        offset,
        reason,
    } = args.action;
    let topic = common.topics.ingest_log.as_str();
    let pool = esk_runtime::db::connect(&common.database_url, 1).await?;
    let stored: Option<i64> = sqlx::query_scalar(
        "SELECT next_offset FROM indexer_offsets WHERE topic = $1 AND partition_id = $2",
    )
    .bind(topic)
    .bind(partition)
    .fetch_optional(&pool)
    .await?;
    // Only the record the partition stands at can be set aside: anything else is either
    // indexed already or not reached yet, and skipping it would be silent loss.
    if stored != Some(offset) {
        let at = stored.map_or_else(
            || "has no stored position".to_owned(),
            |o| format!("is at offset {o}"),
        );
        return Err(Failure::usage(format!(
            "partition {partition} of {topic} {at}, not {offset}: only the record a halted partition stopped at can be quarantined"
        )));
    }
    sqlx::query(
        "INSERT INTO indexer_quarantine (topic, partition_id, kafka_offset, reason)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(topic)
    .bind(partition)
    .bind(offset)
    .bind(&reason)
    .execute(&pool)
    .await?;
    let requested = Requested {
        topic,
        partition,
        offset,
        reason: &reason,
    };
    if out.json {
        return out.document(&requested);
    }
    out.line(format!(
        "quarantine requested for {topic} partition {partition} offset {offset}: the indexer sets the record aside and resumes within seconds"
    ))?;
    Ok(())
}

//! `esk indexer quarantine`: the command line of [`indexer::request_quarantine`], the
//! operator's way past a record Postgres refuses.

use clap::{Args, Subcommand};
use esk_runtime::config::CommonConfig;
use indexer::{request_quarantine, QuarantineError, QuarantineRequest};

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
    let request = QuarantineRequest {
        topic: common.topics.ingest_log.clone(),
        partition,
        offset,
        reason,
    };
    let pool = esk_runtime::db::connect(&common.database_url, 1).await?;
    match request_quarantine(&pool, &request).await {
        Ok(()) => {}
        Err(refused @ QuarantineError::NotAtOffset { .. }) => {
            return Err(Failure::usage(refused.to_string()))
        }
        Err(other) => return Err(other.into()),
    }
    if out.json {
        return out.document(&request);
    }
    out.line(format!(
        "quarantine requested for {} partition {partition} offset {offset}: the indexer sets the record aside and resumes within seconds",
        request.topic
    ))?;
    Ok(())
}

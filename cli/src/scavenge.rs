//! `esk scavenge`: delete now, in bounded batches, the events reads already hide (retention
//! rules, deletes), with a progress bar on a terminal. The same statements as the indexer's
//! scavenger task (`esk_runtime::scavenge`); both may run at once (each skips the other's rows).

use clap::Args;
use esk_runtime::config::CommonConfig;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::output::Output;

/// Options of `esk scavenge`.
#[derive(Debug, Args)]
pub(crate) struct ScavengeArgs {
    /// Most events deleted per transaction (1 or more).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i32).range(1..))]
    batch: i32,
}

/// What a run did.
#[derive(Debug, Serialize)]
struct Summary {
    /// Events deleted.
    scavenged: u64,
}

pub(crate) async fn run(
    common: &CommonConfig,
    out: &Output,
    args: ScavengeArgs,
) -> anyhow::Result<()> {
    let batch = args.batch;
    let pool = esk_runtime::db::connect(&common.database_url, 1).await?;
    let total = esk_runtime::scavenge::scavengeable(&pool).await?;
    let bar = if out.is_tty() && !out.json {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("scavenging {bar:40} {pos}/{len} events ({per_sec}, {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut scavenged = 0u64;
    loop {
        let deleted = esk_runtime::scavenge::scavenge_batch(&pool, batch).await?;
        scavenged += deleted;
        bar.inc(deleted);
        if deleted < u64::try_from(batch).unwrap_or(0) {
            break;
        }
    }
    bar.finish_and_clear();
    if out.json {
        return out.document(&Summary { scavenged });
    }
    out.line(format!("scavenged {scavenged} hidden events"))?;
    Ok(())
}

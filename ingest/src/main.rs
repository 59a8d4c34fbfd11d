//! `ingest`: the binary. It parses the configuration, sets up logging and runs
//! [`ingest::run`] until SIGINT or SIGTERM.

use clap::Parser;
use esk_runtime::service::{cancel_on_signal, exit_on_stop};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ingest::IngestConfig::parse();
    esk_runtime::telemetry::init_tracing(config.common.log_format);
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    exit_on_stop(ingest::run(config, shutdown).await)?;
    Ok(())
}

/// mimalloc: measurably faster than glibc malloc on the allocation-heavy paths (JSON, records).
#[global_allocator]
static GLOBAL_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

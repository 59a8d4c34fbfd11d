//! `esk`: the operator's command-line tool.

mod setup;

use clap::{Parser, Subcommand};
use esk_core::config::CommonConfig;

#[derive(Debug, Parser)]
#[command(name = "esk", version, about = "Operate the esk event store")]
struct Cli {
    #[command(flatten)]
    common: CommonConfig,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the topics (if missing) and apply the schema migrations. Idempotent.
    Setup(setup::SetupArgs),
    /// Apply the schema migrations only. Idempotent.
    Migrate,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    esk_core::telemetry::init_tracing(cli.common.log_format);
    let result = match cli.command {
        Command::Setup(args) => setup::setup(&cli.common, &args).await,
        Command::Migrate => setup::migrate(&cli.common).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("esk: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

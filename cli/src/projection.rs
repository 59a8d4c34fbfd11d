//! `esk projection list|status|rebuild|dead-letters`: the projector's own admin operations
//! (`projector::admin`), called in this process with the projector's configuration.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use esk_runtime::config::CommonConfig;
use projector::admin::{Admin, AdminError, ProjectionStatus};
use projector::config::{ProjectorConfig, Tuning};

use crate::exit::Failure;
use crate::output::Output;

/// Options of `esk projection`.
#[derive(Debug, Args)]
pub(crate) struct ProjectionArgs {
    #[command(subcommand)]
    action: Action,
    /// The projections file the projector runs with (none: the built-in projections).
    #[arg(long, env = "ESK_PROJECTOR_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Every configured projection with its position, the head, and its dead letters.
    List,
    /// One projection's position, the head, and its dead letters.
    Status {
        /// The projection's name.
        name: String,
    },
    /// Reset a projection's read model and replay it from Postgres (a running projector then
    /// continues it live).
    Rebuild {
        /// The projection's name.
        name: String,
    },
    /// A projection's dead letters.
    #[command(subcommand)]
    DeadLetters(DeadLetters),
}

#[derive(Debug, Subcommand)]
enum DeadLetters {
    /// Show the dead letters not replayed yet.
    List {
        /// The projection's name.
        name: String,
    },
    /// Apply them again; exits non-zero if some still fail.
    Replay {
        /// The projection's name.
        name: String,
    },
}

/// Runs the projector's admin operation with the same settings a `projector` started here
/// would have (its tuning from the environment), and prints what it returns as `projector`
/// prints it.
pub(crate) async fn run(
    common: &CommonConfig,
    out: &Output,
    args: ProjectionArgs,
) -> anyhow::Result<()> {
    let config = ProjectorConfig {
        common: common.clone(),
        tuning: Tuning::from_env()?,
        projections_file: args.config,
    };
    let admin = Admin::connect(config).await.map_err(failed)?;
    match args.action {
        Action::List => {
            for status in admin.list().await.map_err(failed)? {
                print_status(out, &status)?;
            }
        }
        Action::Status { name } => {
            let statuses = admin.list().await.map_err(failed)?;
            let status = statuses
                .iter()
                .find(|status| status.projection == name)
                .ok_or_else(|| anyhow::anyhow!("no projection named {name:?} is configured"))?;
            print_status(out, status)?;
        }
        Action::Rebuild { name } => {
            println!(
                "{}",
                serde_json::to_string(&admin.rebuild(&name).await.map_err(failed)?)?
            );
        }
        Action::DeadLetters(DeadLetters::List { name }) => {
            let letters = admin.dead_letters(&name).await.map_err(failed)?;
            println!("{}", serde_json::to_string_pretty(&letters)?);
        }
        Action::DeadLetters(DeadLetters::Replay { name }) => {
            let outcome = admin.replay_dead_letters(&name).await.map_err(failed)?;
            println!("{}", serde_json::to_string(&outcome)?);
            anyhow::ensure!(
                outcome.still_failing == 0,
                "{} dead letters still fail",
                outcome.still_failing
            );
        }
    }
    Ok(())
}

/// A failed projector operation exits 1 whatever its cause, as it did when these commands ran
/// the `projector` binary (and a lost database socket is not a closed stdout, which exits 0).
fn failed(error: AdminError) -> anyhow::Error {
    Failure::usage(format!("{:#}", anyhow::Error::new(error)))
}

/// One line per projection: JSON with `--json`, else a line for people.
fn print_status(out: &Output, status: &ProjectionStatus) -> anyhow::Result<()> {
    if out.json {
        println!("{}", serde_json::to_string(status)?);
    } else {
        println!(
            "{:<24} {:<5} applied through {}  head {}  published {}  dead letters {}",
            status.projection,
            if status.live { "live" } else { "replay" },
            status.applied_through,
            status.head,
            status.published_through,
            status.dead_letters
        );
    }
    Ok(())
}

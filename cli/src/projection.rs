//! `esk projection list|status|rebuild|dead-letters`: the projector's own commands, run through
//! the `projector` binary (next to `esk`, else on PATH) with the same configuration.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use esk_runtime::config::CommonConfig;

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

fn projector_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("projector"))
        .filter(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from("projector"))
}

pub(crate) async fn run(
    common: &CommonConfig,
    out: &Output,
    args: ProjectionArgs,
) -> anyhow::Result<()> {
    let (command, filter): (Vec<&str>, Option<&str>) = match &args.action {
        Action::List => (vec!["list"], None),
        Action::Status { name } => (vec!["list"], Some(name.as_str())),
        Action::Rebuild { name } => (vec!["rebuild", name.as_str()], None),
        Action::DeadLetters(DeadLetters::List { name }) => {
            (vec!["dead-letters", "list", name.as_str()], None)
        }
        Action::DeadLetters(DeadLetters::Replay { name }) => {
            (vec!["dead-letters", "replay", name.as_str()], None)
        }
    };
    let binary = projector_binary();
    let mut child = tokio::process::Command::new(&binary);
    child
        .args(&command)
        .env("ESK_DATABASE_URL", &common.database_url)
        .env("ESK_KAFKA_BROKERS", &common.kafka_brokers)
        .env("ESK_TOPIC_EVENTS", &common.topics.events)
        .env("ESK_PROJECTOR_HTTP_ADDR", "127.0.0.1:0")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    if let Some(config) = &args.config {
        child.env("ESK_PROJECTOR_CONFIG", config);
    }
    let rebuild = matches!(args.action, Action::Rebuild { .. });
    if rebuild {
        // The progress bar goes to the terminal as it is.
        child.stdout(std::process::Stdio::inherit());
    }
    let output = child
        .output()
        .await
        .with_context(|| format!("cannot run {}", binary.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !rebuild {
        let mut shown = 0;
        for line in stdout.lines() {
            let value: Option<serde_json::Value> = serde_json::from_str(line).ok();
            if let (Some(name), Some(v)) = (filter, &value) {
                if v["projection"].as_str() != Some(name) {
                    continue;
                }
            }
            shown += 1;
            match (&value, out.json) {
                (Some(v), false) if v.get("applied_through").is_some() => println!(
                    "{:<24} {:<5} applied through {:>12}  head {:>12}  published {:>12}  dead letters {}",
                    v["projection"].as_str().unwrap_or("?"),
                    if v["live"].as_bool() == Some(true) { "live" } else { "replay" },
                    v["applied_through"], v["head"], v["published_through"], v["dead_letters"]
                ),
                _ => println!("{line}"),
            }
        }
        if let Some(name) = filter {
            anyhow::ensure!(shown > 0, "no projection named {name:?} is configured");
        }
    }
    anyhow::ensure!(
        output.status.success(),
        "projector {} failed ({})",
        command.join(" "),
        output.status
    );
    Ok(())
}

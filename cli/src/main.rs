//! `esk`: the command-line tool of the esk event store, for operators (setup, migrate, doctor)
//! and for people working with events (append, read, tail, snapshots, projections).

mod append;
mod append_multi;
mod doctor;
mod events;
mod exit;
mod http;
mod indexer;
mod output;
mod projection;
mod read;
mod roles;
mod scavenge;
mod setup;
mod snapshot;
mod source;
mod stream;
mod tail;
mod token;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use esk_runtime::config::CommonConfig;

use crate::exit::{classify, EXIT_CODES_HELP};
use crate::output::{error_line, Output};

#[derive(Debug, Parser)]
#[command(
    name = "esk",
    version,
    about = "Operate and use the esk event store",
    after_help = EXIT_CODES_HELP
)]
struct Cli {
    #[command(flatten)]
    common: CommonConfig,
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Flags every subcommand accepts.
#[derive(Debug, Args)]
struct Global {
    /// Ingest's HTTP API (append, read, tail): http://host:port, or https://host:port when
    /// ingest serves TLS.
    #[arg(
        long,
        env = "ESK_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// PEM file of a CA to trust for an https:// --url (the CA that signed ingest's
    /// --tls-cert-file), besides the public roots.
    #[arg(long, env = "ESK_CA_FILE", global = true)]
    ca_file: Option<std::path::PathBuf>,
    /// Bearer token for ingest's API (append, read, tail), from `esk token create`.
    #[arg(long, env = "ESK_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Machine-readable output: one JSON document (tail: one JSON line per event).
    #[arg(long, global = true)]
    json: bool,
}

impl Global {
    /// The client of ingest's API these flags describe.
    fn client(&self) -> anyhow::Result<esk_client::Client> {
        http::client(&self.url, self.token.as_deref(), self.ca_file.as_deref())
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the topics (if missing) and apply the schema migrations. Idempotent.
    Setup(setup::SetupArgs),
    /// Apply the schema migrations only. Idempotent.
    Migrate,
    /// Append one event (or several from a file) to a stream.
    Append(append::AppendArgs),
    /// Append to several streams at once, all or nothing, from a JSON file.
    AppendMulti(append_multi::AppendMultiArgs),
    /// Read a stream, `$all` or a category.
    Read(read::ReadArgs),
    /// Print events as they arrive, until Ctrl-C.
    Tail(tail::TailArgs),
    /// A stream's snapshot (its state as of a version): put, get.
    Snapshot(snapshot::SnapshotArgs),
    /// A stream's metadata (retention rules, custom data) and deletes.
    Stream(stream::StreamArgs),
    /// Check Postgres, the broker, the topics and the services; exit 4 on a problem.
    Doctor(doctor::DoctorArgs),
    /// Projections: list, status, rebuild, dead letters (the projector's admin operations).
    Projection(projection::ProjectionArgs),
    /// The indexer's operator actions: quarantine the record a halted partition stopped at.
    Indexer(indexer::IndexerArgs),
    /// API tokens: create (printed once), list, revoke.
    Token(token::TokenArgs),
    /// Delete now the events that retention rules and deletes hide (the indexer also does it
    /// every ESK_SCAVENGE_INTERVAL_SECS), with progress.
    Scavenge(scavenge::ScavengeArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // clap exits 2 on usage errors; 2 means "conflict" here.
            return if e.use_stderr() {
                exit::Exit::Usage.into()
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match classify(&e) {
            None => ExitCode::SUCCESS,
            Some(exit) => {
                error_line(format!("{e:#}"));
                exit.into()
            }
        },
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let out = Output::detect(cli.global.json);
    match cli.command {
        Command::Setup(args) => {
            esk_runtime::telemetry::init_tracing(cli.common.log_format);
            setup::setup(&cli.common, &args).await
        }
        Command::Migrate => {
            esk_runtime::telemetry::init_tracing(cli.common.log_format);
            setup::migrate(&cli.common).await
        }
        Command::Append(args) => append::run(&cli.global.client()?, &out, args).await,
        Command::AppendMulti(args) => append_multi::run(&cli.global.client()?, &out, args).await,
        Command::Read(args) => read::run(&cli.global.client()?, &out, args).await,
        Command::Tail(args) => tail::run(&cli.global.client()?, &out, args).await,
        Command::Snapshot(args) => snapshot::run(&cli.global.client()?, &out, args).await,
        Command::Stream(args) => stream::run(&cli.global.client()?, &out, args).await,
        Command::Doctor(args) => doctor::run(&cli.common, &out, args).await,
        Command::Projection(args) => {
            // Logged as the projector logs them (a rebuild's progress lines, its warnings).
            esk_runtime::telemetry::init_tracing(cli.common.log_format);
            projection::run(&cli.common, &out, args).await
        }
        Command::Indexer(args) => indexer::run(&cli.common, &out, args).await,
        Command::Token(args) => token::run(&cli.common, &out, args).await,
        Command::Scavenge(args) => scavenge::run(&cli.common, &out, args).await,
    }
}

/// mimalloc: measurably faster than glibc malloc on the allocation-heavy paths (JSON, records).
#[global_allocator]
static GLOBAL_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

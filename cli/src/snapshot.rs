//! `esk snapshot put|get`: a stream's snapshot, its state as of one of its versions
//! (docs/snapshots.md).

use std::io::Read;

use clap::{Args, Subcommand};
use esk_client::Client;
use esk_model::api::{PutSnapshotRequest, Snapshot};
use esk_model::event::Version;
use owo_colors::Style;
use serde_json::value::RawValue;

use crate::exit::Failure;
use crate::http::OrFailure;
use crate::output::{note, Output};

/// Options of `esk snapshot`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  esk snapshot put Order-1 --version 41 --data '{\"total\":12.50,\"items\":3}'
  fold-order Order-1 | esk snapshot put Order-1 --version 41
  esk snapshot get Order-1 --json")]
pub(crate) struct SnapshotArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Store a snapshot of a stream as of VERSION (an indexed event of the stream). A snapshot
    /// at that version or a newer one is kept instead (the answer says which).
    Put {
        /// The stream.
        stream: String,
        /// The version of the last event folded into the state.
        #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
        version: i64,
        /// The state, any JSON, stored as written [default: read from stdin].
        #[arg(long)]
        data: Option<String>,
    },
    /// Print a stream's snapshot (exit 1 when it has none).
    Get {
        /// The stream.
        stream: String,
    },
}

pub(crate) async fn run(client: &Client, out: &Output, args: SnapshotArgs) -> anyhow::Result<()> {
    match args.action {
        Action::Put {
            stream,
            version,
            data,
        } => put(client, out, &stream, version, data).await,
        Action::Get { stream } => get(client, out, &stream).await,
    }
}

async fn put(
    client: &Client,
    out: &Output,
    stream: &str,
    version: i64,
    data: Option<String>,
) -> anyhow::Result<()> {
    let text = match data {
        Some(text) => text,
        None => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| Failure::usage(format!("cannot read stdin: {e}")))?;
            text
        }
    };
    let data: Box<RawValue> = serde_json::from_str(&text)
        .map_err(|e| Failure::usage(format!("the data is not valid JSON: {e}")))?;
    let version =
        Version::try_from(version).map_err(|e| Failure::usage(format!("--version: {e}")))?;
    let answer = client
        .put_snapshot(stream, &PutSnapshotRequest { version, data })
        .await
        .or_failure(client)?;
    if out.json {
        return out.document(&answer);
    }
    if answer.stored {
        out.line(format!(
            "{} stored the snapshot of {} at version {}",
            out.paint("✔", Style::new().green().bold()),
            out.paint(stream, Style::new().cyan()),
            answer.version
        ))
    } else {
        note(format!(
            "kept the snapshot of {stream} at version {}: it is not older than version {version}",
            answer.version
        ));
        Ok(())
    }
}

async fn get(client: &Client, out: &Output, stream: &str) -> anyhow::Result<()> {
    let Some(snapshot) = client.get_snapshot(stream).await.or_failure(client)? else {
        return Err(Failure::usage(format!(
            "snapshot_not_found: {stream:?} has no snapshot"
        )));
    };
    if out.json {
        return out.document(&snapshot);
    }
    print_snapshot(out, &snapshot)
}

fn print_snapshot(out: &Output, snapshot: &Snapshot) -> anyhow::Result<()> {
    out.line(format!(
        "{} at version {} (stored {})",
        out.paint(&snapshot.stream_id, Style::new().cyan()),
        snapshot.version,
        out.paint(snapshot.created_at.to_rfc3339(), Style::new().dimmed()),
    ))?;
    out.line(snapshot.data.get())
}

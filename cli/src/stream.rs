//! `esk stream metadata get|set` and `esk stream delete`: a stream's lifecycle (its retention
//! rules and custom data, soft and hard deletes) through esk-client.

use clap::{Args, Subcommand};
use esk_client::Client;
use esk_model::event::{ExpectedVersion, Version};
use esk_model::lifecycle::{
    DeleteMode, PutMetadataRequest, StreamMetadata, StreamMetadataResponse,
};
use owo_colors::Style;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::append::parse_expected_version;
use crate::exit::Failure;
use crate::http::OrFailure;
use crate::output::Output;

/// Options of `esk stream`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  esk stream metadata set Order-1 --max-count 100 --custom '{\"owner\":\"billing\"}'
  esk stream metadata get Order-1 --json
  esk stream delete Order-1 --expected-version 41 --hard")]
pub(crate) struct StreamArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// A stream's metadata: its retention rules and custom data.
    Metadata {
        #[command(subcommand)]
        action: MetadataAction,
    },
    /// Delete a stream: soft (hidden until the next append, which recreates it) or --hard
    /// (for good: every later append and read is refused).
    Delete {
        /// The stream.
        stream: String,
        /// The stream's version it must be at.
        #[arg(long, short = 'e', value_name = "any|stream_exists|N", default_value = "any",
            value_parser = parse_expected_version)]
        expected_version: ExpectedVersion,
        /// A tombstone instead of a soft delete.
        #[arg(long)]
        hard: bool,
        /// Idempotency key: a retry with the same key gets the first outcome.
        #[arg(long, value_name = "UUID")]
        append_id: Option<Uuid>,
    },
}

#[derive(Debug, Subcommand)]
enum MetadataAction {
    /// Print a stream's metadata.
    Get {
        /// The stream.
        stream: String,
    },
    /// Replace a stream's metadata (rules left out are unset).
    Set {
        /// The stream.
        stream: String,
        /// Only the newest N events stay visible.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..))]
        max_count: Option<i64>,
        /// Events older than SECS seconds are hidden.
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(i64).range(1..))]
        max_age: Option<i64>,
        /// Events below version V are hidden.
        #[arg(long, value_name = "V", value_parser = clap::value_parser!(i64).range(0..))]
        truncate_before: Option<i64>,
        /// The user's own data: a JSON object, kept as written.
        #[arg(long, value_name = "JSON")]
        custom: Option<String>,
        /// The metadata's version this change replaces.
        #[arg(long, value_name = "any|no_stream|N", value_parser = parse_expected_version)]
        expected_metadata_version: Option<ExpectedVersion>,
        /// Idempotency key: a retry with the same key gets the first outcome.
        #[arg(long, value_name = "UUID")]
        append_id: Option<Uuid>,
    },
}

pub(crate) async fn run(client: &Client, out: &Output, args: StreamArgs) -> anyhow::Result<()> {
    match args.action {
        Action::Metadata {
            action: MetadataAction::Get { stream },
        } => {
            let answer = client.get_metadata(&stream).await.or_failure(client)?;
            print_metadata(out, &answer)
        }
        Action::Metadata {
            action:
                MetadataAction::Set {
                    stream,
                    max_count,
                    max_age,
                    truncate_before,
                    custom,
                    expected_metadata_version,
                    append_id,
                },
        } => {
            let custom = custom
                .map(|text| {
                    let value: Box<RawValue> = serde_json::from_str(&text)
                        .map_err(|e| Failure::usage(format!("--custom is not valid JSON: {e}")))?;
                    if !value.get().trim_start().starts_with('{') {
                        return Err(Failure::usage("--custom must be a JSON object"));
                    }
                    Ok(value)
                })
                .transpose()?;
            let truncate_before = truncate_before
                .map(Version::try_from)
                .transpose()
                .map_err(|e| Failure::usage(format!("--truncate-before: {e}")))?;
            let request = PutMetadataRequest {
                expected_metadata_version,
                append_id,
                metadata: StreamMetadata {
                    max_age_s: max_age,
                    max_count,
                    truncate_before,
                    custom,
                },
            };
            let answer = client
                .put_metadata(&stream, &request)
                .await
                .or_failure(client)?;
            print_metadata(out, &answer)
        }
        Action::Delete {
            stream,
            expected_version,
            hard,
            append_id,
        } => {
            let mode = if hard {
                DeleteMode::Hard
            } else {
                DeleteMode::Soft
            };
            let answer = client
                .delete_stream(&stream, expected_version, mode, append_id)
                .await
                .or_failure(client)?;
            if out.json {
                return out.document(&answer);
            }
            out.line(format!(
                "{} deleted {} ({}; metadata version {})",
                out.paint("✔", Style::new().green().bold()),
                out.paint(&answer.stream_id, Style::new().cyan()),
                answer.mode.as_str(),
                answer.metadata_version
            ))
        }
    }
}

fn print_metadata(out: &Output, answer: &StreamMetadataResponse) -> anyhow::Result<()> {
    if out.json {
        return out.document(answer);
    }
    let unset = || "-".to_owned();
    let metadata = &answer.metadata;
    out.line(format!(
        "{} metadata version {}",
        out.paint(&answer.stream_id, Style::new().cyan()),
        serde_json::to_string(&answer.metadata_version).unwrap_or_else(|_| unset())
    ))?;
    out.line(format!(
        "max_count {}  max_age_s {}  truncate_before {}",
        metadata.max_count.map_or_else(unset, |n| n.to_string()),
        metadata.max_age_s.map_or_else(unset, |n| n.to_string()),
        metadata
            .truncate_before
            .map_or_else(unset, |v| v.to_string()),
    ))?;
    out.line(format!(
        "custom {}",
        metadata
            .custom
            .as_ref()
            .map_or_else(unset, |c| c.get().to_owned())
    ))
}

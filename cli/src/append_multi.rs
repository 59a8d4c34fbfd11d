//! `esk append-multi`: several streams in one append, all or nothing (`POST /appends`).

use std::path::PathBuf;

use clap::Args;
use esk_client::Client;
use esk_model::api::{EventData, MultiAppendRequest, MultiAppendResponse, StreamAppend};
use esk_model::event::{derived_group_append_id, ExpectedVersion};
use owo_colors::Style;
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::append::{read_input, retry_hint};
use crate::exit::Failure;
use crate::http::OrFailure;
use crate::output::Output;

/// Options of `esk append-multi`.
#[derive(Debug, Args)]
#[command(after_help = "\
FILE holds the body of POST /appends; events without an id get a random one:
  {\"appends\": [
    {\"stream_id\": \"Order-1\", \"expected_version\": 0, \"events\": [{\"type\": \"OrderPaid\", \"data\": {}}]},
    {\"stream_id\": \"Invoice-7\", \"expected_version\": \"no_stream\", \"events\": [{\"type\": \"InvoiceIssued\", \"data\": {}}]}]}

Examples:
  esk append-multi --file payment.json
  cat payment.json | esk append-multi --file -")]
pub(crate) struct AppendMultiArgs {
    /// Read the request from FILE (`-`: stdin).
    #[arg(long, short = 'f', value_name = "FILE")]
    file: PathBuf,
    /// Idempotency key: a retry with the same key gets the first outcome [default: the file's
    /// `append_id`, else derived from every stream and event id].
    #[arg(long, value_name = "UUID")]
    append_id: Option<Uuid>,
}

/// The file: the body of `POST /appends`, event ids optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRequest {
    #[serde(default)]
    append_id: Option<Uuid>,
    appends: Vec<FilePart>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePart {
    stream_id: String,
    expected_version: ExpectedVersion,
    events: Vec<FileEvent>,
}

/// An event as written: payloads stay their text (`RawValue`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEvent {
    #[serde(default)]
    id: Option<Uuid>,
    #[serde(rename = "type")]
    event_type: String,
    data: Box<RawValue>,
    #[serde(default)]
    metadata: Option<Box<RawValue>>,
}

pub(crate) async fn run(
    client: &Client,
    out: &Output,
    args: AppendMultiArgs,
) -> anyhow::Result<()> {
    let (name, text) = read_input(&args.file)?;
    let file: FileRequest = serde_json::from_str(&text)
        .map_err(|e| Failure::usage(format!("{name} is not a multi-stream append: {e}")))?;
    let appends: Vec<StreamAppend> = file
        .appends
        .into_iter()
        .map(|part| StreamAppend {
            stream_id: part.stream_id,
            expected_version: part.expected_version,
            events: part
                .events
                .into_iter()
                .map(|e| EventData {
                    id: e.id.unwrap_or_else(Uuid::new_v4),
                    event_type: e.event_type,
                    data: e.data,
                    metadata: e.metadata,
                })
                .collect(),
        })
        .collect();
    let append_id = args.append_id.or(file.append_id).unwrap_or_else(|| {
        derived_group_append_id(
            appends
                .iter()
                .map(|p| (p.stream_id.as_str(), p.events.iter().map(|e| e.id))),
        )
    });
    let request = MultiAppendRequest {
        append_id: Some(append_id),
        appends,
    };
    let appended: MultiAppendResponse = client
        .append_multi(&request)
        .await
        .or_failure(client)
        .map_err(|e| retry_hint(e, append_id, &[]))?;
    if out.json {
        return out.document(&appended);
    }
    let events: usize = request.appends.iter().map(|p| p.events.len()).sum();
    out.line(format!(
        "{} appended {events} event{} to {} streams at once",
        out.paint("✔", Style::new().green().bold()),
        if events == 1 { "" } else { "s" },
        appended.results.len(),
    ))?;
    for result in &appended.results {
        out.line(format!(
            "  {}: versions {}–{}",
            out.paint(&result.stream_id, Style::new().cyan()),
            result.first_version,
            result.last_version
        ))?;
    }
    out.line(format!(
        "  append id {}",
        out.paint(appended.append_id, Style::new().dimmed())
    ))?;
    Ok(())
}

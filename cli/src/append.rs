//! `esk append`: one event from flags, or several from a JSON file, in one append.

use std::io::Read;
use std::path::PathBuf;

use clap::Args;
use esk_client::{Client, EncodedAppend};
use esk_model::api::{AppendResponse, EventData};
use esk_model::event::{derived_append_id, ExpectedVersion, ParseExpectedVersionError};
use esk_model::raw_json::{kind, Kind, Members};
use owo_colors::Style;
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::exit::{classify, Exit, Failure};
use crate::http::OrFailure;
use crate::output::Output;

/// Options of `esk append`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  esk append Order-1 --type OrderPlaced --data '{\"sku\":\"a\",\"qty\":2}' --expected-version no_stream
  esk append Order-1 --type ItemAdded --data '{}' --metadata '{\"correlation_id\":\"c-42\"}' -e 0
  echo '[{\"type\":\"A\",\"data\":{}},{\"type\":\"B\",\"data\":{}}]' | esk append Order-2 --file -")]
pub(crate) struct AppendArgs {
    /// Stream to append to; its category is the part before the first `-`.
    stream: String,
    /// Event type.
    #[arg(
        long = "type",
        short = 't',
        value_name = "TYPE",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    event_type: Option<String>,
    /// Event payload, a JSON value.
    #[arg(
        long,
        short = 'd',
        value_name = "JSON",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    data: Option<String>,
    /// Event metadata, a JSON object (`correlation_id` and `causation_id` live here).
    #[arg(long, short = 'm', value_name = "JSON", conflicts_with = "file")]
    metadata: Option<String>,
    /// Event id [default: a new random UUID].
    #[arg(long, value_name = "UUID", conflicts_with = "file")]
    id: Option<Uuid>,
    /// Read the events from FILE (`-`: stdin): a JSON array of {"type", "data", "metadata"?,
    /// "id"?}; events without an id get a random one.
    #[arg(long, short = 'f', value_name = "FILE")]
    file: Option<PathBuf>,
    /// Concurrency check: `any`, `no_stream`, `stream_exists`, or N, the version of the
    /// stream's last event (a stream with one event is at 0).
    #[arg(
        long,
        short = 'e',
        value_name = "any|no_stream|stream_exists|N",
        default_value = "any",
        value_parser = parse_expected_version
    )]
    expected_version: ExpectedVersion,
    /// Idempotency key: a retry with the same key gets the first outcome [default: derived
    /// from the stream and event ids].
    #[arg(long, value_name = "UUID")]
    append_id: Option<Uuid>,
}

/// `--expected-version`: the server's spellings ([`ExpectedVersion`]'s one codec), plus the
/// hyphenated words command-line flags usually have. The body always carries the server's
/// spelling, so the server never sees a hyphen.
pub(crate) fn parse_expected_version(
    raw: &str,
) -> Result<ExpectedVersion, ParseExpectedVersionError> {
    let server_spelling = match raw {
        "no-stream" => "no_stream",
        "stream-exists" => "stream_exists",
        other => other,
    };
    server_spelling.parse()
}

/// The request body: an [`esk_model::api::AppendRequest`] whose events stay the JSON text they
/// were given as (serialized as is), so payloads reach the store exactly as typed (no float
/// re-formatting, no key re-ordering) and events of a file are judged by the server, whose
/// messages name the offending field (`events[1].type`).
#[derive(Debug, Serialize)]
struct AppendBody<'a> {
    expected_version: ExpectedVersion,
    append_id: Uuid,
    events: &'a [Box<RawValue>],
}

/// The `--json` document: ingest's answer and the ids of the events appended.
#[derive(Debug, Serialize)]
struct Appended<'a> {
    #[serde(flatten)]
    answer: &'a AppendResponse,
    event_ids: &'a [Uuid],
}

pub(crate) async fn run(client: &Client, out: &Output, args: AppendArgs) -> anyhow::Result<()> {
    let events = match &args.file {
        Some(file) => events_from_file(file)?,
        None => vec![event_from_flags(&args)?],
    };
    let ids = event_ids(&events)?;
    let append_id = args
        .append_id
        .unwrap_or_else(|| derived_append_id(&args.stream, ids.iter().copied()));
    let body = AppendBody {
        expected_version: args.expected_version,
        append_id,
        events: &events,
    };
    let body = EncodedAppend::from_json(serde_json::to_vec(&body)?);
    let appended = client
        .append_encoded(&args.stream, &body)
        .await
        .or_failure(client)
        .map_err(|e| retry_hint(e, append_id, &ids))?;
    if out.json {
        return out.document(&Appended {
            answer: &appended,
            event_ids: &ids,
        });
    }
    let count = ids.len();
    let versions = if appended.first_version == appended.last_version {
        format!("version {}", appended.first_version)
    } else {
        format!(
            "versions {}–{}",
            appended.first_version, appended.last_version
        )
    };
    out.line(format!(
        "{} appended {count} event{} to {}: {versions}",
        out.paint("✔", Style::new().green().bold()),
        if count == 1 { "" } else { "s" },
        out.paint(&appended.stream_id, Style::new().cyan()),
    ))?;
    out.line(format!(
        "  append id {}",
        out.paint(appended.append_id, Style::new().dimmed())
    ))?;
    if let [id] = ids.as_slice() {
        out.line(format!(
            "  event id  {}",
            out.paint(id, Style::new().dimmed())
        ))?;
    }
    Ok(())
}

/// When the outcome is unknown or the store was unavailable, says how to retry safely.
pub(crate) fn retry_hint(error: anyhow::Error, append_id: Uuid, ids: &[Uuid]) -> anyhow::Error {
    if classify(&error) != Some(Exit::Unavailable) {
        return error;
    }
    let ids = match ids {
        [id] => format!(" --id {id}"),
        _ => String::new(),
    };
    Failure::unavailable(format!(
        "{error}\n     to retry without writing twice: --append-id {append_id}{ids}"
    ))
}

/// A JSON value from a flag, kept as its text.
fn parse_json(flag: &str, raw: &str) -> anyhow::Result<Box<RawValue>> {
    serde_json::from_str(raw).map_err(|e| Failure::usage(format!("{flag} is not valid JSON: {e}")))
}

fn event_from_flags(args: &AppendArgs) -> anyhow::Result<Box<RawValue>> {
    let (Some(event_type), Some(data)) = (&args.event_type, &args.data) else {
        return Err(Failure::usage("give --type and --data, or --file"));
    };
    let event = EventData {
        id: args.id.unwrap_or_else(Uuid::new_v4),
        event_type: event_type.clone(),
        data: parse_json("--data", data)?,
        metadata: args
            .metadata
            .as_deref()
            .map(|m| parse_json("--metadata", m))
            .transpose()?,
    };
    // Kept as text like the events of a file; the payloads are copied as they were typed.
    Ok(serde_json::value::to_raw_value(&event)?)
}

/// The text of FILE (`-`: stdin), with the name to quote in messages.
pub(crate) fn read_input(file: &PathBuf) -> anyhow::Result<(String, String)> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Failure::usage(format!("cannot read stdin: {e}")))?;
        return Ok(("stdin".to_owned(), text));
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", file.display())))?;
    Ok((file.display().to_string(), text))
}

fn events_from_file(file: &PathBuf) -> anyhow::Result<Vec<Box<RawValue>>> {
    let (name, text) = read_input(file)?;
    let not_json = |e: serde_json::Error| Failure::usage(format!("{name} is not valid JSON: {e}"));
    let value: Box<RawValue> = serde_json::from_str(&text).map_err(not_json)?;
    let events: Vec<Box<RawValue>> = match kind(&value) {
        Kind::Array => serde_json::from_str(value.get()).map_err(not_json)?,
        Kind::Object => vec![value],
        _ => {
            return Err(Failure::usage(format!(
                "{name} must hold a JSON array of events"
            )))
        }
    };
    if events.is_empty() {
        return Err(Failure::usage(format!("{name} holds no events")));
    }
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| {
            let members = Members::of(&event)
                .ok()
                .flatten()
                .ok_or_else(|| Failure::usage(format!("{name}: event {i} is not a JSON object")))?;
            if members.last("id").is_some() {
                return Ok(event);
            }
            // Give it an id as its first member; the rest stays as written.
            let rest = event.get()[1..].trim_start();
            let separator = if rest.starts_with('}') { "" } else { "," };
            let text = format!("{{\"id\":\"{}\"{separator}{rest}", Uuid::new_v4());
            Ok(RawValue::from_string(text)?)
        })
        .collect()
}

/// The events' ids, which the default append id is derived from.
fn event_ids(events: &[Box<RawValue>]) -> anyhow::Result<Vec<Uuid>> {
    events
        .iter()
        .enumerate()
        .map(|(i, event)| {
            Members::of(event)
                .ok()
                .flatten()
                .and_then(|m| m.last("id"))
                .and_then(|id| serde_json::from_str::<String>(id.get()).ok())
                .and_then(|id| id.parse().ok())
                .ok_or_else(|| Failure::usage(format!("event {i}: `id` must be a UUID string")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_versions_parse() {
        assert_eq!(parse_expected_version("any"), Ok(ExpectedVersion::Any));
        assert_eq!(
            parse_expected_version("no_stream"),
            Ok(ExpectedVersion::NoStream)
        );
        assert_eq!(
            parse_expected_version("stream-exists"),
            Ok(ExpectedVersion::StreamExists)
        );
        assert_eq!(
            parse_expected_version("7"),
            Ok(ExpectedVersion::Exact(7.into()))
        );
        assert!(parse_expected_version("-1").is_err());
        assert!(parse_expected_version("later").is_err());
    }

    #[test]
    fn file_events_get_ids() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("esk-cli-{}", Uuid::new_v4()));
        std::fs::write(
            &dir,
            r#"[{"type":"A","data":{}},{"id":"6f1c0a3e-2b1d-4c55-9a53-0d1f7e0f6b11","type":"B","data":1}]"#,
        )?;
        let events = events_from_file(&dir)?;
        std::fs::remove_file(&dir)?;
        let ids = event_ids(&events)?;
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[1].to_string(), "6f1c0a3e-2b1d-4c55-9a53-0d1f7e0f6b11");
        let bad = RawValue::from_string(r#"{"id": 5}"#.to_owned())?;
        assert!(event_ids(&[bad]).is_err());
        Ok(())
    }

    #[test]
    fn payloads_keep_their_text() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("esk-cli-{}", Uuid::new_v4()));
        std::fs::write(
            &dir,
            r#"[{"type":"A","data":{"r":0.17393510096763853,"k":1,"k":2}}, { }]"#,
        )?;
        let events = events_from_file(&dir)?;
        std::fs::remove_file(&dir)?;
        assert!(events[0]
            .get()
            .ends_with(r#","type":"A","data":{"r":0.17393510096763853,"k":1,"k":2}}"#));
        assert!(events[1].get().starts_with(r#"{"id":""#) && events[1].get().ends_with("\"}"));
        Ok(())
    }
}

//! How events look to people: a table for `read`, one line each for `tail`.

use comfy_table::Color;
use esk_model::wire::CanonicalEvent;
use owo_colors::Style;

use crate::output::{truncate, Output};

/// Longest `data` shown in a table cell on a terminal.
const DATA_WIDTH: usize = 80;

fn time(event: &CanonicalEvent) -> String {
    event
        .created_at
        .format("%Y-%m-%d %H:%M:%S%.3fZ")
        .to_string()
}

/// The events as a table.
pub(crate) fn table(out: &Output, events: &[CanonicalEvent]) -> comfy_table::Table {
    let mut table = out.table(
        &["POSITION", "STREAM", "VERSION", "TYPE", "CREATED", "DATA"],
        5,
    );
    for event in events {
        let data = if out.is_tty() {
            truncate(event.data.get(), DATA_WIDTH)
        } else {
            event.data.get().to_owned()
        };
        table.add_row(vec![
            out.cell(event.global_position, Color::DarkGrey),
            out.cell(&event.stream_id, Color::Cyan),
            out.cell(event.version, Color::Reset),
            out.cell(&event.event_type, Color::Green),
            out.cell(time(event), Color::DarkGrey),
            out.cell(data, Color::Reset),
        ]);
    }
    table
}

/// One event on one line: `position  stream@version  type  created  data`.
pub(crate) fn line(out: &Output, event: &CanonicalEvent) -> String {
    format!(
        "{}  {}@{}  {}  {}  {}",
        out.paint(event.global_position, Style::new().dimmed()),
        out.paint(&event.stream_id, Style::new().cyan()),
        event.version,
        out.paint(&event.event_type, Style::new().green().bold()),
        out.paint(time(event), Style::new().dimmed()),
        event.data.get(),
    )
}

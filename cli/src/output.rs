//! Where results go: tables and colour on a terminal, plain text in a pipe, JSON with `--json`.

use std::io::{IsTerminal, Write};

use comfy_table::presets::{NOTHING, UTF8_FULL_CONDENSED};
use comfy_table::{Attribute, Cell, Color, ColumnConstraint, ContentArrangement, Table, Width};
use owo_colors::{OwoColorize, Style};
use serde::Serialize;

/// How to print, decided once from the flags and the environment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    /// `--json`: machine-readable output only.
    pub(crate) json: bool,
    /// ANSI colour on stdout.
    color: bool,
    /// stdout is a terminal.
    tty: bool,
}

/// Narrowest terminal that tables are fitted to.
const MIN_FIT_WIDTH: u16 = 60;

/// Narrowest the wrapping column of a table gets, even if the table overflows the terminal.
const MIN_FLEXIBLE_WIDTH: u16 = 24;

/// `NO_COLOR` set to anything non-empty turns colour off (<https://no-color.org>).
fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

impl Output {
    pub(crate) fn detect(json: bool) -> Self {
        let tty = std::io::stdout().is_terminal();
        Output {
            json,
            color: tty && !json && !no_color(),
            tty,
        }
    }

    pub(crate) fn is_tty(&self) -> bool {
        self.tty
    }

    /// `text` in `style` when colour is on.
    pub(crate) fn paint(&self, text: impl std::fmt::Display, style: Style) -> String {
        if self.color {
            text.style(style).to_string()
        } else {
            text.to_string()
        }
    }

    /// A table with `header`: boxed and fitted to the terminal (only column `flexible` wraps),
    /// or bare left-aligned columns in a pipe.
    pub(crate) fn table(&self, header: &[&str], flexible: usize) -> Table {
        let mut table = Table::new();
        if self.tty {
            table.load_preset(UTF8_FULL_CONDENSED);
            // An unknown or tiny terminal (a pseudo-terminal without a size) would squeeze
            // every column to one character: keep the natural widths then.
            if table.width().is_some_and(|w| w >= MIN_FIT_WIDTH) {
                table.set_content_arrangement(ContentArrangement::Dynamic);
            }
        } else {
            table.load_preset(NOTHING).force_no_tty();
        }
        table.set_header(header.iter().map(|h| {
            let cell = Cell::new(h);
            if self.color {
                cell.add_attribute(Attribute::Bold)
            } else {
                cell
            }
        }));
        for (i, column) in table.column_iter_mut().enumerate() {
            column.set_constraint(if i == flexible {
                ColumnConstraint::LowerBoundary(Width::Fixed(MIN_FLEXIBLE_WIDTH))
            } else {
                ColumnConstraint::ContentWidth
            });
            if !self.tty {
                column.set_padding((0, 2));
            }
        }
        table
    }

    /// A table cell in `color` when colour is on.
    pub(crate) fn cell(&self, text: impl ToString, color: Color) -> Cell {
        let cell = Cell::new(text);
        if self.color {
            cell.fg(color)
        } else {
            cell
        }
    }

    /// One line of text on stdout.
    pub(crate) fn line(&self, text: impl std::fmt::Display) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}")?;
        out.flush()?;
        Ok(())
    }

    /// A table on stdout (in a pipe without trailing blanks).
    pub(crate) fn print_table(&self, table: &Table) -> anyhow::Result<()> {
        if self.tty {
            return self.line(table);
        }
        let mut out = std::io::stdout().lock();
        for line in table.lines() {
            writeln!(out, "{}", line.trim_end())?;
        }
        out.flush()?;
        Ok(())
    }

    /// One JSON document: indented on a terminal, one line in a pipe.
    pub(crate) fn document(&self, value: &impl Serialize) -> anyhow::Result<()> {
        let text = if self.tty {
            serde_json::to_string_pretty(value)?
        } else {
            serde_json::to_string(value)?
        };
        self.line(text)
    }

    /// One JSON value on one line (`tail --json`).
    pub(crate) fn json_line(&self, value: &impl Serialize) -> anyhow::Result<()> {
        self.line(serde_json::to_string(value)?)
    }
}

/// Prints `esk: <message>` on stderr (the prefix red on a terminal).
pub(crate) fn error_line(message: impl std::fmt::Display) {
    let color = std::io::stderr().is_terminal() && !no_color();
    let prefix = if color {
        "esk:".style(Style::new().red().bold()).to_string()
    } else {
        "esk:".to_owned()
    };
    // An error may quote a URL with its credentials.
    let message = esk_runtime::redact::redact_text(&message.to_string());
    eprintln!("{prefix} {message}");
}

/// Prints `esk: <message>` on stderr without colour: progress notes (`tail` start, retries).
pub(crate) fn note(message: impl std::fmt::Display) {
    eprintln!("esk: {message}");
}

/// Shortens `text` to `max` characters, marking the cut with `…`.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(max.saturating_sub(1)).collect();
    short.push('…');
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_marks_the_cut() {
        assert_eq!(truncate("abcdef", 10), "abcdef");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("ééééé", 3), "éé…");
    }
}

//! `esk doctor`: checks Postgres, the broker and the services, and prints a checklist.

mod broker;
mod postgres;
mod services;

use clap::Args;
use esk_runtime::config::CommonConfig;
use owo_colors::Style;
use serde::Serialize;
use serde_json::Value;

use crate::exit::{Exit, Failure};
use crate::output::Output;

/// Options of `esk doctor`.
#[derive(Debug, Args)]
#[command(after_help = "\
Hard checks (exit 4 when one fails): Postgres reachable, migrations applied, broker reachable,
the four topics present, a service that answers /health with \"unhealthy\".
Warnings (exit 0): a service that cannot be reached, the publisher far behind, no indexer
offsets yet.")]
pub(crate) struct DoctorArgs {
    /// Ingest's admin listener (`/health`, `/metrics`; not its API address).
    #[arg(
        long,
        env = "ESK_INGEST_ADMIN_URL",
        default_value = "http://127.0.0.1:9180"
    )]
    ingest_admin_url: String,
    /// The indexer's admin listener (`/health`, `/metrics`).
    #[arg(long, env = "ESK_INDEXER_URL", default_value = "http://127.0.0.1:9101")]
    indexer_url: String,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Ok,
    Warn,
    Fail,
}

/// One line of the checklist.
#[derive(Debug, Serialize)]
pub(crate) struct Check {
    name: String,
    status: Status,
    detail: String,
    /// Numbers behind the detail, for scripts.
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<Value>,
}

/// The checks of one part of the system.
#[derive(Debug, Serialize)]
pub(crate) struct Section {
    name: &'static str,
    target: String,
    checks: Vec<Check>,
}

impl Section {
    fn new(name: &'static str, target: impl Into<String>) -> Self {
        Section {
            name,
            target: redact(&target.into()),
            checks: Vec::new(),
        }
    }

    fn add(&mut self, name: impl Into<String>, status: Status, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.into(),
            status,
            // Error messages may quote a URL with its credentials.
            detail: esk_runtime::redact::redact_text(&detail.into()),
            value: None,
        });
    }

    fn ok(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.add(name, Status::Ok, detail);
    }

    fn warn(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.add(name, Status::Warn, detail);
    }

    fn fail(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.add(name, Status::Fail, detail);
    }

    /// Attaches numbers to the last check.
    fn value(&mut self, value: Value) {
        if let Some(check) = self.checks.last_mut() {
            check.value = Some(value);
        }
    }

    fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }
}

#[derive(Debug, Serialize)]
struct Report {
    ok: bool,
    failures: usize,
    warnings: usize,
    sections: Vec<Section>,
}

pub(crate) async fn run(
    common: &CommonConfig,
    out: &Output,
    args: DoctorArgs,
) -> anyhow::Result<()> {
    let kafka = common.kafka();
    let (pg, kafka, http) = tokio::join!(
        postgres::check(&common.database_url, &common.topics.ingest_log),
        broker::check(&kafka, &common.topics),
        services::check(&args.ingest_admin_url, &args.indexer_url),
    );
    let sections = vec![pg, kafka, http];
    let failures = sections.iter().map(|s| s.count(Status::Fail)).sum();
    let warnings = sections.iter().map(|s| s.count(Status::Warn)).sum();
    let report = Report {
        ok: failures == 0,
        failures,
        warnings,
        sections,
    };
    if out.json {
        out.document(&report)?;
    } else {
        render(out, &report)?;
    }
    if failures > 0 {
        return Err(Failure::of(
            Exit::Problem,
            format!(
                "doctor found {failures} problem{}",
                if failures == 1 { "" } else { "s" }
            ),
        ));
    }
    Ok(())
}

fn mark(out: &Output, status: Status) -> String {
    match status {
        Status::Ok => out.paint("✔", Style::new().green().bold()),
        Status::Warn => out.paint("!", Style::new().yellow().bold()),
        Status::Fail => out.paint("✖", Style::new().red().bold()),
    }
}

fn render(out: &Output, report: &Report) -> anyhow::Result<()> {
    let width = report
        .sections
        .iter()
        .flat_map(|s| &s.checks)
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0);
    for section in &report.sections {
        out.line(format!(
            "{}  {}",
            out.paint(section.name, Style::new().bold()),
            out.paint(&section.target, Style::new().dimmed())
        ))?;
        for check in &section.checks {
            let detail = match check.status {
                Status::Ok => check.detail.clone(),
                Status::Warn => out.paint(&check.detail, Style::new().yellow()),
                Status::Fail => out.paint(&check.detail, Style::new().red()),
            };
            out.line(format!(
                "  {} {:width$}  {detail}",
                mark(out, check.status),
                check.name
            ))?;
        }
    }
    let warnings = match report.warnings {
        0 => String::new(),
        1 => ", 1 warning".to_owned(),
        n => format!(", {n} warnings"),
    };
    let summary = match report.failures {
        0 => format!("{} all hard checks passed{warnings}", mark(out, Status::Ok)),
        n => format!(
            "{} {n} problem{}{warnings}",
            mark(out, Status::Fail),
            if n == 1 { "" } else { "s" }
        ),
    };
    out.line("")?;
    out.line(summary)
}

/// The URL without its password or secret query parameters.
fn redact(url: &str) -> String {
    esk_runtime::redact::redact_url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("postgres://esk:secret@127.0.0.1:5433/esk"),
            "postgres://esk:***@127.0.0.1:5433/esk"
        );
        assert_eq!(
            redact("postgres://esk@host/db?x=1"),
            "postgres://esk@host/db?x=1"
        );
        assert_eq!(redact("not a url"), "not a url");
        assert_eq!(
            redact("postgres://esk@host/db?sslmode=require&password=secret"),
            "postgres://esk@host/db?sslmode=require&password=***"
        );
    }
}

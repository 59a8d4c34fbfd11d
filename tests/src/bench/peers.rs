//! The peer anchors: real event stores users would pick (Emmett on Node, Python's
//! `eventsourcing`), run by their scripts in `ESK_ANCHORS_DIR` (`run_emmett.sh`,
//! `run_eventsourcing.sh`, which install the pinned library into `~/.cache/esk-anchors` the first
//! time) with the anchors' workload, each on a fresh database of its own, with `--verify`.
//!
//! A peer that cannot run (its runtime missing, its install failing without network, its
//! verification failing) prints `{"anchor": <name>, "error": <why>}` and the run carries on.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::line::Line;
use super::services::run_keeping_stderr;
use super::{database, emit, say, Bench, ANCHOR_BATCH, ANCHOR_CLIENTS};

/// Time a peer's script gets on top of its measured seconds: a first install (npm ci, pip) and
/// its verification.
const INSTALL_ALLOWANCE: Duration = Duration::from_secs(600);

/// A peer event store run as an anchor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    /// The `anchor` of its line and the tail of its ratio's name (`ingest-vs-<name>`).
    pub(crate) name: &'static str,
    script: &'static str,
    database: &'static str,
    /// Programs its script needs on `PATH`.
    needs: &'static [&'static str],
}

/// Every peer the anchors' README lists, in the order they run.
pub(crate) const PEERS: [Peer; 2] = [
    Peer {
        name: "emmett",
        script: "run_emmett.sh",
        database: "esk_bench_emmett",
        needs: &["bash", "node", "npm"],
    },
    Peer {
        name: "eventsourcing",
        script: "run_eventsourcing.sh",
        database: "esk_bench_eventsourcing",
        needs: &["bash", "python3"],
    },
];

impl Bench {
    /// Runs every peer, printing its line (or its error line); returns each with its line, or
    /// an empty line when it could not run.
    pub(crate) async fn anchor_peers(&self) -> Vec<(Peer, Line)> {
        let mut lines = Vec::with_capacity(PEERS.len());
        for peer in PEERS {
            let line = match self.anchor_peer(peer).await {
                Ok(line) => line,
                Err(why) => {
                    say(&format!("anchor {} could not run: {why}", peer.name));
                    let mut line = Line::default();
                    line.set("anchor", peer.name).set("error", why);
                    line
                }
            };
            emit(&line.to_text());
            lines.push((peer, line));
        }
        lines
    }

    /// One peer, on its fresh database; its line, or why it could not run.
    async fn anchor_peer(&self, peer: Peer) -> Result<Line, String> {
        let script = self.settings.anchors_dir.join(peer.script);
        if !script.is_file() {
            return Err(format!("{} not found", script.display()));
        }
        if let Some(missing) = peer.needs.iter().find(|program| !on_path(program)) {
            return Err(format!("{missing} not found on PATH"));
        }
        let url = database::url_for(&self.settings.admin_database_url, peer.database)
            .map_err(|e| format!("{e:#}"))?;
        database::recreate(&self.admin, peer.database)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let seconds = &self.settings.seconds;
        say(&format!(
            "anchor: {}, {seconds}s, {ANCHOR_CLIENTS} clients, batch {ANCHOR_BATCH}, on {} (installs into ~/.cache/esk-anchors the first time)",
            peer.script, peer.database
        ));
        let args = vec![
            script.display().to_string(),
            "--dsn".into(),
            url,
            "--seconds".into(),
            seconds.clone(),
            "--clients".into(),
            ANCHOR_CLIENTS.to_string(),
            "--batch".into(),
            ANCHOR_BATCH.to_string(),
            "--verify".into(),
        ];
        let limit = INSTALL_ALLOWANCE + Duration::from_secs_f64(self.settings.seconds_value());
        let explained = run_keeping_stderr(Path::new("bash"), &args, &[], limit)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let finished = explained.finished;
        if !finished.status.success() {
            let why = explained.last_stderr.unwrap_or_default();
            return Err(format!(
                "{} failed ({}): {why}",
                peer.script, finished.status
            ));
        }
        let text = finished
            .last_line
            .ok_or_else(|| format!("{} printed no result", peer.script))?;
        let printed = Line::parse(&text).map_err(|e| format!("{e:#}"))?;
        peer_line(peer.name, &printed)
    }
}

/// The peer's line as the bench prints it: `anchor` is the peer's short name, the library and
/// version its script printed there move to `library`, and `verified` says `--verify` passed
/// (the script exits non-zero otherwise).
pub(crate) fn peer_line(name: &str, printed: &Line) -> Result<Line, String> {
    if printed.number("events_per_s").is_none() {
        return Err(format!("no events_per_s in its result: {printed}"));
    }
    let mut line = printed.clone();
    line.set("anchor", name)
        .set("library", printed.value("anchor"))
        .set("verified", Value::Bool(true));
    Ok(line)
}

/// Whether `program` is an executable file in a directory of `PATH`.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;

    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(program))
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_lines_name_the_peer_and_keep_the_library() -> anyhow::Result<()> {
        let printed = Line::parse(
            r#"{"anchor":"emmett-postgresql-0.42.0","clients":16,"batch":5,"events_per_s":4567,"appends_per_s":913,"p50_ms":14.04,"p99_ms":57.1}"#,
        )?;
        let line = peer_line("emmett", &printed).map_err(anyhow::Error::msg)?;
        assert_eq!(
            line.to_text(),
            r#"{"anchor": "emmett", "clients": 16, "batch": 5, "events_per_s": 4567, "appends_per_s": 913, "p50_ms": 14.04, "p99_ms": 57.1, "library": "emmett-postgresql-0.42.0", "verified": true}"#
        );
        let broken = Line::parse(r#"{"anchor": "x", "error": "boom"}"#)?;
        assert!(peer_line("x", &broken).is_err());
        Ok(())
    }

    #[test]
    fn finds_programs_on_the_path() {
        assert!(on_path("sh"));
        assert!(!on_path("esk-no-such-program"));
    }
}

//! CPU time per event of the processes a benchmark runs (ingest, indexer, projector) and of the
//! broker (the local stack's Tansu, from `$ESK_STATE_DIR/tansu.pid`): user + system time of
//! every thread of each process, read from `/proc/<pid>/stat` before and after a run, divided
//! by the events of the run. Linux only; a process whose figures cannot be read is left out.

use std::path::Path;

use serde_json::Value;

use super::line::{round, Line};

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, fixed at 100 for user space on
/// Linux whatever the kernel's own tick rate).
const TICKS_PER_SECOND: f64 = 100.0;

/// A process whose CPU time is measured, under the name it gets in the line.
#[derive(Debug, Clone)]
pub(crate) struct Watched {
    name: &'static str,
    pid: u32,
}

impl Watched {
    pub(crate) fn new(name: &'static str, pid: u32) -> Self {
        Watched { name, pid }
    }

    /// The local stack's broker, if its pid file names a live process.
    pub(crate) fn broker(state_dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(state_dir.join("tansu.pid")).ok()?;
        let pid = text.trim().parse().ok()?;
        cpu_seconds(pid).map(|_| Watched::new("broker", pid))
    }
}

/// CPU seconds of every watched process at one moment.
#[derive(Debug, Clone)]
pub(crate) struct Sample(Vec<(Watched, Option<f64>)>);

impl Sample {
    pub(crate) fn take(watched: &[Watched]) -> Self {
        Sample(
            watched
                .iter()
                .map(|w| (w.clone(), cpu_seconds(w.pid)))
                .collect(),
        )
    }

    /// The line `name`: per process, CPU seconds since `self` (`<name>_cpu_s`), the cores it
    /// used over `seconds` (`<name>_cores`) and microseconds per event (`<name>_us_per_event`).
    pub(crate) fn report(&self, name: &str, events: i64, seconds: f64) -> Line {
        let now = Sample::take(&self.0.iter().map(|(w, _)| w.clone()).collect::<Vec<_>>());
        let mut line = Line::bench(name);
        line.set("events", events).set("seconds", round(seconds, 2));
        for ((watched, before), (_, after)) in self.0.iter().zip(&now.0) {
            let used = match (before, after) {
                (Some(before), Some(after)) => Some(after - before),
                _ => None,
            };
            let per = |value: Option<f64>, digits| {
                value.map_or(Value::Null, |v| Value::from(round(v, digits)))
            };
            let cores = used.filter(|_| seconds > 0.0).map(|u| u / seconds);
            let per_event = used.filter(|_| events > 0).map(|u| u * 1e6 / events as f64);
            line.set(&format!("{}_cpu_s", watched.name), per(used, 2))
                .set(&format!("{}_cores", watched.name), per(cores, 3))
                .set(&format!("{}_us_per_event", watched.name), per(per_event, 1));
        }
        line
    }
}

/// User + system CPU seconds of every thread of `pid`, so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// utime and stime are fields 14 and 15; the command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_system_time_after_the_command_name() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 1 2 3";
        assert_eq!(parse_stat(stat), Some(3.0));
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        assert!(cpu_seconds(std::process::id()).is_some());
    }
}

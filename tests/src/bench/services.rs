//! The processes a benchmark runs: services in the background (logs in the state dir, stopped
//! with SIGTERM), one-shot commands in the foreground (stdout captured, stderr passed through),
//! and `/metrics` scrapes.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use super::prometheus::Scrape;
use super::say;
use crate::process::{Listen, Process};

/// How long a service may take to answer `/health`.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a service has to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Lines of a log shown when its service died.
const LOG_TAIL: usize = 20;

/// A service (ingest, indexer, projector) running in the background; SIGKILLed if dropped
/// without [`Service::stop`].
#[derive(Debug)]
pub(crate) struct Service {
    name: &'static str,
    pub(crate) process: Process,
}

impl Service {
    /// Starts `binary` with `env` on free ports given in the variables of `listen`, its output
    /// in `log`.
    pub(crate) fn start(
        name: &'static str,
        binary: &Path,
        env: &[(String, String)],
        listen: Listen,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let process = Process::start(binary, env, listen, &[], log)?;
        Ok(Service { name, process })
    }

    /// Its base URL (the API's, for ingest).
    pub(crate) fn url(&self) -> &str {
        &self.process.http
    }

    /// Its admin listener's base URL (`/metrics`, `/health`).
    pub(crate) fn admin_url(&self) -> &str {
        &self.process.admin
    }

    /// Its log.
    pub(crate) fn log(&self) -> &Path {
        &self.process.log
    }

    /// Waits until `/health` answers; fails (with the log's tail) if the service exits first
    /// or takes longer than a minute.
    pub(crate) async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = tokio::time::Instant::now() + HEALTH_TIMEOUT;
        let health = format!("{}/health", self.admin_url());
        loop {
            if let Ok(reply) = client.get(&health).send().await {
                if reply.status().is_success() {
                    return Ok(());
                }
            }
            let problem = if self.process.exit_status().is_some() {
                "exited before it was healthy"
            } else if tokio::time::Instant::now() >= deadline {
                "not healthy after 60s"
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            show_tail(self.log());
            bail!("{} {problem} (log: {})", self.name, self.log().display());
        }
    }

    /// Whether it is still running; if not, says so and shows the log's tail.
    pub(crate) fn check_alive(&mut self) -> bool {
        if self.process.exit_status().is_none() {
            return true;
        }
        say(&format!(
            "{} died during the run; last lines of {}:",
            self.name,
            self.log().display()
        ));
        show_tail(self.log());
        false
    }

    /// SIGTERM, SIGKILL after 10 s; then reports the log's error/panic lines.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.process.pid();
        if self.process.terminate(STOP_GRACE).await? {
            say(&format!(
                "{} (pid {pid}) ignored SIGTERM for {}s, sent SIGKILL",
                self.name,
                STOP_GRACE.as_secs()
            ));
        }
        report_log_problems(self.log());
        Ok(())
    }

    /// Its `/metrics` now (empty if the scrape failed, as said on stderr).
    pub(crate) async fn scrape(&self) -> Scrape {
        scrape(self.admin_url()).await
    }
}

/// Scrapes `url/metrics`; a failure is said and gives an empty scrape.
pub(crate) async fn scrape(url: &str) -> Scrape {
    let text = async {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?
            .get(format!("{url}/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await
    };
    match text.await {
        Ok(text) => Scrape::parse(&text),
        Err(e) => {
            say(&format!("could not scrape {url}/metrics: {e}"));
            Scrape::default()
        }
    }
}

fn show_tail(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    for line in &lines[lines.len().saturating_sub(LOG_TAIL)..] {
        eprintln!("{line}");
    }
}

/// Says how many lines of `log` mention error or panic, and shows the first five.
pub(crate) fn report_log_problems(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let problems: Vec<&str> = text
        .lines()
        .filter(|line| {
            let lower = line.to_lowercase();
            lower.contains("error") || lower.contains("panic")
        })
        .collect();
    if !problems.is_empty() {
        say(&format!(
            "{} has {} line(s) mentioning error/panic; first ones:",
            log.display(),
            problems.len()
        ));
        for line in problems.iter().take(5) {
            eprintln!("{line}");
        }
    }
}

/// What a foreground command did.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) status: ExitStatus,
    /// The last non-empty line of its stdout (its JSON line), if any.
    pub(crate) last_line: Option<String>,
}

/// `program` with `args` (and `env` on top of ours): stdin empty, stdout captured, killed when
/// dropped (so when the bench is interrupted).
fn command(program: &Path, args: &[String], env: &[(String, String)]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// The last non-empty line of `text`.
fn last_line(text: &str) -> Option<String> {
    text.lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .map(str::to_owned)
}

/// Runs `program` with `args` (and `env` on top of ours) to its end: stdin empty, stdout
/// captured, stderr passed through. Killed if the bench is interrupted.
pub(crate) async fn run(
    program: &Path,
    args: &[String],
    env: &[(String, String)],
) -> anyhow::Result<Finished> {
    // Not `output()`: it pipes stderr too, and a failing tool's reasons would be lost.
    let output = command(program, args, env)
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run {}", program.display()))?
        .wait_with_output()
        .await
        .with_context(|| format!("running {}", program.display()))?;
    Ok(Finished {
        status: output.status,
        last_line: last_line(&String::from_utf8_lossy(&output.stdout)),
    })
}

/// What [`run_keeping_stderr`] saw.
#[derive(Debug)]
pub(crate) struct Explained {
    pub(crate) finished: Finished,
    /// The last non-empty line it wrote to stderr (why it failed, when it did).
    pub(crate) last_stderr: Option<String>,
}

/// [`run`], with stderr passed through line by line and its last line kept, and killed after
/// `limit`.
pub(crate) async fn run_keeping_stderr(
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    limit: Duration,
) -> anyhow::Result<Explained> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

    let mut child = command(program, args, env)
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", program.display()))?;
    let (Some(mut stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        bail!("{} started without its pipes", program.display());
    };
    let read_stdout = async {
        let mut text = String::new();
        stdout.read_to_string(&mut text).await.map(|_| text)
    };
    let pass_stderr = async {
        let mut lines = BufReader::new(stderr).lines();
        let mut last = None;
        while let Some(line) = lines.next_line().await? {
            eprintln!("{line}");
            if !line.trim().is_empty() {
                last = Some(line);
            }
        }
        Ok::<_, std::io::Error>(last)
    };
    let to_end = async {
        let (text, last_stderr) = tokio::try_join!(read_stdout, pass_stderr)?;
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((text, last_stderr, status))
    };
    let outcome = tokio::time::timeout(limit, to_end).await;
    match outcome {
        Ok(outcome) => {
            let (text, last_stderr, status) =
                outcome.with_context(|| format!("running {}", program.display()))?;
            Ok(Explained {
                finished: Finished {
                    status,
                    last_line: last_line(&text),
                },
                last_stderr,
            })
        }
        Err(_) => {
            // Only the direct child: what it started and left behind ends on its own.
            let _ = child.start_kill();
            bail!(
                "{} did not finish within {}s (killed)",
                program.display(),
                limit.as_secs()
            )
        }
    }
}

/// [`run`], failing unless the command succeeds.
pub(crate) async fn run_ok(
    what: &str,
    program: &Path,
    args: &[String],
    env: &[(String, String)],
) -> anyhow::Result<Finished> {
    let finished = run(program, args, env).await?;
    if !finished.status.success() {
        bail!("{what} failed ({})", finished.status);
    }
    Ok(finished)
}

/// Runs `program` to its end with its stdout sent to our stderr (a preparation step whose
/// output is progress, like `esk setup`); fails unless it succeeds.
pub(crate) async fn run_to_stderr(
    what: &str,
    program: &Path,
    args: &[String],
    env: &[(String, String)],
) -> anyhow::Result<()> {
    let status = command(program, args, env)
        .stdout(Stdio::from(std::io::stderr()))
        .stderr(Stdio::inherit())
        .status()
        .await
        .with_context(|| format!("cannot run {}", program.display()))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["-c".into(), script.into()]
    }

    #[tokio::test]
    async fn keeps_the_last_stderr_line_of_a_failure() -> anyhow::Result<()> {
        let script = sh("echo first; echo result; echo progress >&2; echo why >&2; exit 3");
        let limit = Duration::from_secs(30);
        let explained = run_keeping_stderr(Path::new("sh"), &script, &[], limit).await?;
        assert_eq!(explained.finished.status.code(), Some(3));
        assert_eq!(explained.finished.last_line.as_deref(), Some("result"));
        assert_eq!(explained.last_stderr.as_deref(), Some("why"));
        Ok(())
    }

    #[tokio::test]
    async fn kills_what_outlives_its_limit() {
        let started = std::time::Instant::now();
        let limit = Duration::from_millis(300);
        let outcome = run_keeping_stderr(Path::new("sh"), &sh("exec sleep 30"), &[], limit).await;
        let error = outcome.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("did not finish within"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

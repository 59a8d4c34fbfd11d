//! Spawning the real binaries (`target/<profile>/ingest` etc.) as child processes, so tests can
//! kill -9 them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running binary; killed when dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// Its API's base URL (`http://127.0.0.1:PORT`); for a process without an API (indexer,
    /// projector), its admin URL.
    pub http: String,
    /// Its admin listener's base URL (`/metrics`, `/health`, `/ready`).
    pub admin: String,
    /// Where its output goes.
    pub log: PathBuf,
    /// The bearer token its clients send (`ESK_TOKEN` in the environment it was started with).
    pub token: Option<String>,
}

/// The environment variables a binary takes its listen addresses from.
#[derive(Debug, Clone, Copy)]
pub struct Listen {
    /// The admin listener (`/metrics`, `/health`, `/ready`).
    pub admin: &'static str,
    /// The API listener, for a binary that has one.
    pub api: Option<&'static str>,
}

/// Ingest: its API and its admin listener.
pub const INGEST: Listen = Listen {
    admin: "ESK_INGEST_ADMIN_ADDR",
    api: Some("ESK_INGEST_HTTP_ADDR"),
};
/// The indexer: an admin listener only.
pub const INDEXER: Listen = Listen {
    admin: "ESK_INDEXER_ADMIN_ADDR",
    api: None,
};
/// The projector: an admin listener only.
pub const PROJECTOR: Listen = Listen {
    admin: "ESK_PROJECTOR_ADMIN_ADDR",
    api: None,
};

/// The directory of the workspace's binaries (next to the test executable's `deps/`).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let deps = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("test executable has no directory"))?;
    let dir = if deps.ends_with("deps") {
        deps.parent().unwrap_or(deps)
    } else {
        deps
    };
    Ok(dir.to_path_buf())
}

/// How many times `Process::spawn` starts a binary whose port was taken before it bound it.
const PORT_RACE_ATTEMPTS: u32 = 3;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl Process {
    /// Starts `binary` with `env` and free addresses in the variables of `listen`; waits until
    /// `/health` answers on the admin address.
    pub async fn spawn(
        binary: &str,
        env: &[(String, String)],
        listen: Listen,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let path = bin_dir()?.join(binary);
        anyhow::ensure!(
            path.exists(),
            "{} is not built: run `cargo build --workspace` first",
            path.display()
        );
        let log = std::env::temp_dir().join(format!("esk-{binary}-{}.log", free_port()?));
        // The caller's RUST_LOG (else info) wins over one in `env`.
        let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        let mut env = env.to_vec();
        env.push(("RUST_LOG".into(), rust_log));
        // `free_port` only finds a port that was free: until the child binds it, another
        // process (or an outgoing connection's local port) can take it. Such a start is tried
        // again with new ports; any other failure is returned as it is.
        let mut attempt = 1;
        loop {
            let mut process = Self::start(&path, &env, listen, args, log.clone())?;
            match process.wait_healthy(Duration::from_secs(60)).await {
                Ok(()) => return Ok(process),
                Err(_) if attempt < PORT_RACE_ATTEMPTS && process.lost_its_port() => {
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Whether it exited because an address it was given was taken meanwhile.
    fn lost_its_port(&mut self) -> bool {
        self.exit_status().is_some() && self.log_text().contains("Address already in use")
    }

    /// Starts the binary at `path` without waiting for it: `env` on top of this process's
    /// environment, then a free `127.0.0.1` address in each variable of `listen`; stdout and
    /// stderr into `log` (truncated).
    pub fn start(
        path: &Path,
        env: &[(String, String)],
        listen: Listen,
        args: &[&str],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let admin = format!("127.0.0.1:{}", free_port()?);
        let api = match listen.api {
            Some(var) => Some((var, format!("127.0.0.1:{}", free_port()?))),
            None => None,
        };
        let file = std::fs::File::create(&log)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", log.display()))?;
        let mut command = Command::new(path);
        command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            // The addresses it is looked for at win over those in `env`.
            .env(listen.admin, &admin)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        if let Some((var, addr)) = &api {
            command.env(var, addr);
        }
        let child = command
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", path.display()))?;
        let admin = format!("http://{admin}");
        Ok(Process {
            child,
            http: api.map_or_else(|| admin.clone(), |(_, addr)| format!("http://{addr}")),
            admin,
            token: env
                .iter()
                .rev()
                .find(|(k, _)| k == "ESK_TOKEN")
                .map(|(_, v)| v.clone()),
            log,
        })
    }

    /// Waits until `/health` answers 200 on the admin address.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "process exited with {status} before it was healthy; log:\n{}",
                    self.log_text()
                );
            }
            if let Ok(r) = client.get(format!("{}/health", self.admin)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("not healthy after {timeout:?}; log:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its exit status if it has exited (without waiting), else None.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in KiB (Linux), read from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Asks the process to stop (SIGTERM) and waits until it has exited; SIGKILL if it is still
    /// running after `grace`. Returns whether it needed the SIGKILL.
    pub async fn terminate(&mut self, grace: Duration) -> anyhow::Result<bool> {
        if self.child.try_wait()?.is_some() {
            return Ok(false);
        }
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status()?;
        if status.success() {
            let deadline = tokio::time::Instant::now() + grace;
            while tokio::time::Instant::now() < deadline {
                if self.child.try_wait()?.is_some() {
                    return Ok(false);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        } else if self.child.try_wait()?.is_some() {
            return Ok(false);
        }
        let _ = self.child.kill();
        self.child.wait()?;
        Ok(true)
    }

    /// Waits for the process to exit on its own (at most `timeout`) and returns its exit code
    /// (`None`: killed by a signal).
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("still running after {timeout:?}; log:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process's output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! Spawning the real binaries (`target/<profile>/ingest` etc.) as child processes, so tests can
//! kill -9 them.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running binary; killed when dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// Its HTTP base URL (`http://127.0.0.1:PORT`).
    pub http: String,
    /// Where its output goes.
    pub log: PathBuf,
}

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

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl Process {
    /// Starts `binary` with `env` and an HTTP address in `addr_var`; waits until `/health`
    /// answers.
    pub async fn spawn(
        binary: &str,
        env: &[(String, String)],
        addr_var: &str,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let path = bin_dir()?.join(binary);
        anyhow::ensure!(
            path.exists(),
            "{} is not built: run `cargo build --workspace` first",
            path.display()
        );
        let port = free_port()?;
        let log = std::env::temp_dir().join(format!("esk-{binary}-{port}.log"));
        let file = std::fs::File::create(&log)?;
        let mut command = Command::new(&path);
        command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(addr_var, format!("127.0.0.1:{port}"))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = command.spawn()?;
        let mut process = Process {
            child,
            http: format!("http://127.0.0.1:{port}"),
            log,
        };
        process.wait_healthy(Duration::from_secs(60)).await?;
        Ok(process)
    }

    /// Waits until `/health` answers 200.
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
            if let Ok(r) = client.get(format!("{}/health", self.http)).send().await {
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

//! A private Tansu on its own port, with its storage in a directory of its own, so a test can
//! kill it or start it with other options (`--authentication`) while the shared broker stays
//! untouched. The binary is the durable build (libsql storage) of `deploy/local/stack
//! durable-broker`, path in `ESK_TANSU_DURABLE_BIN`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A Tansu process (and how to start it again) on `127.0.0.1:port`.
#[derive(Debug)]
pub struct PrivateBroker {
    bin: PathBuf,
    dir: PathBuf,
    /// The port it listens on.
    pub port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl PrivateBroker {
    /// The durable Tansu binary.
    pub fn bin() -> anyhow::Result<PathBuf> {
        let bin = std::env::var_os("ESK_TANSU_DURABLE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/esk/tansu-0.6.0-libsql/bin/tansu"));
        anyhow::ensure!(
            bin.exists(),
            "no durable Tansu at {}: run `deploy/local/stack durable-broker` (deploy/local/test does)",
            bin.display()
        );
        Ok(bin)
    }

    /// Starts `bin` on `port` with its storage and log in `dir` and `args` added to its
    /// command line; returns once it listens.
    pub async fn start(
        bin: PathBuf,
        dir: PathBuf,
        port: u16,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let mut broker = PrivateBroker {
            bin,
            dir,
            port,
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        broker.launch().await?;
        Ok(broker)
    }

    /// `127.0.0.1:port`, for `ESK_KAFKA_BROKERS`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the process (again, after [`PrivateBroker::kill9`]) on the same storage.
    pub async fn launch(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))?;
        let child = Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .args(&self.args)
            .current_dir(&self.dir)
            .env_remove("SCHEMA_REGISTRY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "private broker did not listen: {}",
                std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

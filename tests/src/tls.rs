//! TLS material for tests: a CA and a server certificate it signed for `127.0.0.1` and
//! `localhost`, made by `deploy/local/stack tls-certs` (the recipe of the stack's own Postgres
//! certificates), and the CA of the stack's Postgres.

use std::path::PathBuf;

use uuid::Uuid;

use crate::soak::{repo_root, state_dir};

/// A fresh CA and a server certificate in a temporary directory, removed on drop.
#[derive(Debug)]
pub struct Certificates {
    /// The directory holding them.
    pub dir: PathBuf,
    /// The CA's certificate (PEM): what a client trusts.
    pub ca: PathBuf,
    /// The server's certificate (PEM), signed by the CA.
    pub cert: PathBuf,
    /// The server certificate's private key (PEM).
    pub key: PathBuf,
}

impl Certificates {
    /// A new CA of its own, and a server certificate for `127.0.0.1` and `localhost`.
    pub async fn generate() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("esk-tls-{}", Uuid::new_v4().simple()));
        let root = repo_root();
        let output = tokio::process::Command::new(root.join("deploy/local/stack"))
            .arg("tls-certs")
            .arg(&dir)
            .current_dir(&root)
            .output()
            .await?;
        anyhow::ensure!(
            output.status.success(),
            "stack tls-certs failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(Certificates {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
            dir,
        })
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The CA of the stack's Postgres certificate: `ESK_PG_CA_FILE` (from the stack's env file),
/// else `<state dir>/tls/ca.pem`, once the server is seen to accept TLS. A stack started before
/// it served TLS fails here, saying to rerun `deploy/local/stack up` (which turns TLS on for a
/// running cluster too).
pub async fn postgres_ca() -> anyhow::Result<PathBuf> {
    let rerun = "rerun `deploy/local/stack up` (it turns TLS on for the running cluster) and \
                 `source .stack/env`";
    let path = std::env::var_os("ESK_PG_CA_FILE")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| state_dir().join("tls/ca.pem"));
    anyhow::ensure!(
        path.is_file(),
        "the stack's Postgres has no TLS CA at {} (ESK_PG_CA_FILE): {rerun}",
        path.display()
    );
    let url = with_params(&crate::base_database_url(), "sslmode=require");
    if let Err(error) = esk_runtime::db::connect(&url, 1).await {
        anyhow::bail!("the stack's Postgres does not serve TLS ({error}): {rerun}");
    }
    Ok(path)
}

/// `url` with `params` (`name=value&...`) added to its query.
pub fn with_params(url: &str, params: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{params}")
}

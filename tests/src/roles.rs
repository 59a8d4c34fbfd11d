//! What the tests of Postgres roles share (`least_privilege`, `secrets`): a connection allowed
//! to create roles, database URLs for another database, and cleaning up, since roles are
//! cluster-wide and must never be left behind.

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::{base_database_url, TestContext};

/// A URL allowed to create databases and roles: `ESK_TEST_ADMIN_DATABASE_URL`, else the stack's
/// own user (the local stack gives it CREATEROLE).
pub fn admin_url() -> String {
    std::env::var("ESK_TEST_ADMIN_DATABASE_URL").unwrap_or_else(|_| base_database_url())
}

/// `url` pointing at database `name` (its query string kept).
pub fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let (prefix, _) = base
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("database url has no database name"))?;
    Ok(format!("{prefix}/{name}{query}"))
}

/// Runs `run` with a fresh role prefix (`<tag>_xxxxxxxx`) and the test's database name, then
/// drops that database and those roles whether `run` passed or not (roles are cluster-wide).
pub async fn run_then_drop<F, Fut>(ctx: &TestContext, tag: &str, run: F) -> anyhow::Result<()>
where
    F: FnOnce(String, String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let prefix = format!("{tag}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let database = ctx
        .database_url
        .rsplit_once('/')
        .map(|(_, name)| name.to_string())
        .ok_or_else(|| anyhow::anyhow!("no database name"))?;
    let outcome = run(prefix.clone(), database.clone()).await;
    let cleanup = drop_everything(&prefix, &database).await;
    outcome?;
    cleanup
}

/// Drops `database` and the roles `esk setup --roles --role-prefix <prefix>` creates.
pub async fn drop_everything(prefix: &str, database: &str) -> anyhow::Result<()> {
    let admin: PgPool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin_url())
        .await?;
    sqlx::query(&format!(
        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
    ))
    .execute(&admin)
    .await?;
    for name in ["ingest", "indexer", "projector", "readonly", "owner"] {
        sqlx::query(&format!("DROP ROLE IF EXISTS \"{prefix}_{name}\""))
            .execute(&admin)
            .await?;
    }
    admin.close().await;
    Ok(())
}

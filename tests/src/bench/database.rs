//! The bench databases: URLs, (re)creating them, one-value queries and polling a count until it
//! reaches a target.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sqlx::PgPool;

use super::say;
use crate::process::Process;

/// How often [`poll_until`] asks.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Tries to drop a busy database before giving up.
const DROP_TRIES: u32 = 10;

/// `url` with its database name replaced by `name` (query string kept).
pub(crate) fn url_for(url: &str, name: &str) -> anyhow::Result<String> {
    let (base, query) = url.split_at(url.find('?').unwrap_or(url.len()));
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    match base.rfind('/') {
        Some(slash) if slash >= after_scheme => Ok(format!("{}/{name}{query}", &base[..slash])),
        _ => bail!("database url has no database name: {url}"),
    }
}

/// A pool of one connection on `url`.
pub(crate) async fn connect(url: &str) -> anyhow::Result<PgPool> {
    esk_runtime::db::connect(url, 1)
        .await
        .with_context(|| format!("cannot connect to {}", redacted(url)))
}

/// `url` without its password, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Drops (with FORCE) and creates the database `name` from the admin database.
pub(crate) async fn recreate(admin: &PgPool, name: &str) -> anyhow::Result<()> {
    say(&format!("recreating database {name}"));
    for attempt in 1..=DROP_TRIES {
        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        match sqlx::raw_sql(&drop).execute(admin).await {
            Ok(_) => {
                sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
                    .execute(admin)
                    .await
                    .with_context(|| format!("cannot create database {name}"))?;
                return Ok(());
            }
            // An autovacuum worker (a superuser backend we may not terminate) can hold the
            // database for a while after a restart: retry instead of failing the run.
            Err(e) => {
                say(&format!(
                    "database {name} is busy (try {attempt}): {e}; waiting"
                ));
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        }
    }
    bail!("cannot drop database {name}")
}

/// One integer from `sql` (NULL is 0).
pub(crate) async fn value(pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
    let wrapped = format!("SELECT coalesce(({sql})::int8, 0)");
    sqlx::query_scalar(&wrapped)
        .fetch_one(pool)
        .await
        .with_context(|| format!("query failed: {sql}"))
}

/// Runs statements that may not run in a transaction (VACUUM, ANALYZE).
pub(crate) async fn execute(pool: &PgPool, sql: &str) -> anyhow::Result<()> {
    sqlx::raw_sql(sql)
        .execute(pool)
        .await
        .with_context(|| format!("{sql} failed"))?;
    Ok(())
}

/// Whether `events` has planner statistics (autovacuum may or may not have analyzed it yet).
pub(crate) async fn events_analyzed(pool: &PgPool) -> anyhow::Result<bool> {
    sqlx::query_scalar(
        "SELECT coalesce(bool_or(last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL), false) \
         FROM pg_stat_user_tables WHERE relname = 'events'",
    )
    .fetch_one(pool)
    .await
    .context("cannot read pg_stat_user_tables")
}

/// When a polled count was first above zero.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct First {
    /// Seconds from the poll's start, to the ms.
    pub(crate) seconds: f64,
    pub(crate) value: i64,
}

/// What a [`poll_until`] saw last.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Poll {
    pub(crate) value: i64,
    /// Seconds from the poll's start, to the ms.
    pub(crate) seconds: f64,
    pub(crate) first: Option<First>,
    /// Whether the value reached the target.
    pub(crate) reached: bool,
    /// Why not, if it did not.
    pub(crate) error: Option<String>,
}

impl Poll {
    /// The poll as the shell script printed it, for messages.
    pub(crate) fn describe(&self) -> String {
        format!(
            "value {} after {}s{}",
            self.value,
            self.seconds,
            self.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        )
    }
}

/// Polls `sql` every 100 ms until it reaches `target`, `timeout` passes since `start`, or the
/// `watched` process exits. Times are measured from `start`.
pub(crate) async fn poll_until(
    pool: &PgPool,
    sql: &str,
    target: i64,
    start: Instant,
    timeout: Duration,
    mut watched: Option<&mut Process>,
) -> anyhow::Result<Poll> {
    let mut first = None;
    loop {
        let value = value(pool, sql).await?;
        let elapsed = start.elapsed();
        let seconds = super::line::round(elapsed.as_secs_f64(), 3);
        if first.is_none() && value > 0 {
            first = Some(First { seconds, value });
        }
        let error = if value >= target {
            None
        } else if let Some(pid) = watched
            .as_deref_mut()
            .and_then(|p| p.exit_status().map(|_| p.pid()))
        {
            Some(format!("process {pid} exited"))
        } else if elapsed >= timeout {
            Some(format!("timeout after {}s", timeout.as_secs()))
        } else {
            tokio::time::sleep(POLL_INTERVAL).await;
            continue;
        };
        return Ok(Poll {
            value,
            seconds,
            first,
            reached: error.is_none(),
            error,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() -> anyhow::Result<()> {
        assert_eq!(
            url_for("postgres://u:p@h:5433/esk", "esk_bench_x")?,
            "postgres://u:p@h:5433/esk_bench_x"
        );
        assert_eq!(
            url_for("postgres://h/esk?sslmode=disable", "b")?,
            "postgres://h/b?sslmode=disable"
        );
        assert!(url_for("postgres://h", "b").is_err());
        assert_eq!(redacted("postgres://u:p@h/esk"), "postgres://u@h/esk");
        Ok(())
    }
}

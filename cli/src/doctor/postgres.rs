//! Postgres checks: reachable, migrated, how big, and how far the indexer and publisher are.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;

use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection};

use super::{redact, Section};
use crate::exit::root_cause;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Counting rows stops here; an estimate is shown instead.
const STATEMENT_TIMEOUT: &str = "10s";
/// Publisher lag (positions) above which the doctor warns.
const PUBLISH_LAG_WARNING: i64 = 10_000;

pub(super) async fn check(url: &str, ingest_log: &str) -> Section {
    let mut section = Section::new("Postgres", redact(url));
    let mut conn = match connect(url).await {
        Ok(conn) => conn,
        Err(problem) => {
            section.fail("connect", problem);
            return section;
        }
    };
    match sqlx::query_scalar::<_, String>("SELECT version()")
        .fetch_one(&mut conn)
        .await
    {
        Ok(version) => {
            let short = version.split(" on ").next().unwrap_or(&version).to_owned();
            section.ok("connect", short);
            section.value(json!({ "version": version }));
        }
        Err(e) => section.fail("connect", format!("SELECT version() failed: {e}")),
    }
    let _ = sqlx::query(&format!("SET statement_timeout = '{STATEMENT_TIMEOUT}'"))
        .execute(&mut conn)
        .await;
    if migrations(&mut conn, &mut section).await {
        sizes(&mut conn, &mut section).await;
        publisher(&mut conn, &mut section).await;
        indexer_offsets(&mut conn, &mut section, ingest_log).await;
    }
    let _ = sqlx::Connection::close(conn).await;
    section
}

async fn connect(url: &str) -> Result<PgConnection, String> {
    let options =
        PgConnectOptions::from_str(url).map_err(|e| format!("invalid database url: {e}"))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(format!("cannot connect: {}", root_cause(&e))),
        Err(_) => Err(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())),
    }
}

/// Whether the schema is there (so the other checks can run).
async fn migrations(conn: &mut PgConnection, section: &mut Section) -> bool {
    let known: BTreeSet<i64> = esk_runtime::db::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .collect();
    let exists: Result<bool, _> =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await;
    match exists {
        Ok(true) => {}
        Ok(false) => {
            section.fail("migrations", "none applied: run `esk migrate`");
            return false;
        }
        Err(e) => {
            section.fail("migrations", format!("cannot read: {e}"));
            return false;
        }
    }
    let rows: Vec<(i64, bool)> =
        match sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                section.fail("migrations", format!("cannot read _sqlx_migrations: {e}"));
                return false;
            }
        };
    let applied: BTreeSet<i64> = rows.iter().filter(|(_, ok)| *ok).map(|(v, _)| *v).collect();
    let dirty: Vec<i64> = rows
        .iter()
        .filter(|(_, ok)| !*ok)
        .map(|(v, _)| *v)
        .collect();
    let pending: Vec<i64> = known.difference(&applied).copied().collect();
    let unknown: Vec<i64> = applied.difference(&known).copied().collect();
    let summary = format!(
        "{} applied, {} known to this esk",
        applied.len(),
        known.len()
    );
    if !dirty.is_empty() {
        section.fail(
            "migrations",
            format!("{summary}; {dirty:?} failed part-way: repair by hand, then `esk migrate`"),
        );
    } else if !pending.is_empty() {
        section.fail(
            "migrations",
            format!("{summary}; {pending:?} pending: run `esk migrate`"),
        );
    } else if !unknown.is_empty() {
        section.warn(
            "migrations",
            format!("{summary}; {unknown:?} come from a newer esk"),
        );
    } else {
        section.ok("migrations", summary);
    }
    section.value(json!({
        "rows": rows.len(),
        "applied": applied.len(),
        "known": known.len(),
        "pending": pending,
    }));
    !applied.is_empty()
}

/// An exact count, or the planner's estimate when counting takes too long.
async fn count(conn: &mut PgConnection, table: &str, filter: &str) -> Result<(i64, bool), String> {
    let exact = sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {table} {filter}"))
        .fetch_one(&mut *conn)
        .await;
    match exact {
        Ok(n) => Ok((n, true)),
        Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("57014") => {
            sqlx::query_scalar::<_, i64>(
                "SELECT greatest(reltuples, 0)::int8 FROM pg_class WHERE oid = to_regclass($1)",
            )
            .bind(table)
            .fetch_one(&mut *conn)
            .await
            .map(|n| (n, false))
            .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

async fn sizes(conn: &mut PgConnection, section: &mut Section) {
    for (name, table, filter) in [
        ("events", "events", ""),
        ("streams", "streams", "WHERE version >= 0"),
        ("ledger rows", "append_ledger", ""),
    ] {
        match count(conn, table, filter).await {
            Ok((n, exact)) => {
                let about = if exact { "" } else { "about " };
                section.ok(name, format!("{about}{n}"));
                section.value(json!({ "count": n, "exact": exact }));
            }
            Err(e) => section.fail(name, format!("cannot count {table}: {e}")),
        }
    }
}

async fn publisher(conn: &mut PgConnection, section: &mut Section) {
    let row: Result<(Option<i64>, Option<i64>), _> = sqlx::query_as(
        "SELECT (SELECT last_position FROM global_position_counter),
                (SELECT global_position FROM published_through)",
    )
    .fetch_one(&mut *conn)
    .await;
    let (last, published) = match row {
        Ok((Some(last), Some(published))) => (last, published),
        Ok(_) => {
            section.fail(
                "publisher",
                "global_position_counter or published_through has no row",
            );
            return;
        }
        Err(e) => {
            section.fail("publisher", format!("cannot read: {e}"));
            return;
        }
    };
    let lag = last - published;
    let detail = format!("published through {published} of {last} indexed (lag {lag})");
    if lag < 0 {
        section.fail("publisher", format!("{detail}: ahead of the store"));
    } else if lag > PUBLISH_LAG_WARNING {
        section.warn("publisher", format!("{detail}: is an indexer running?"));
    } else {
        section.ok("publisher", detail);
    }
    section.value(json!({ "last_position": last, "published_through": published, "lag": lag }));
}

async fn indexer_offsets(conn: &mut PgConnection, section: &mut Section, ingest_log: &str) {
    let rows: Vec<(String, i32, i64)> = match sqlx::query_as(
        "SELECT topic, partition_id, next_offset FROM indexer_offsets ORDER BY topic, partition_id",
    )
    .fetch_all(&mut *conn)
    .await
    {
        Ok(rows) => rows,
        Err(e) => {
            section.fail("indexer offsets", format!("cannot read: {e}"));
            return;
        }
    };
    let ours: Vec<String> = rows
        .iter()
        .filter(|(topic, _, _)| topic == ingest_log)
        .map(|(_, partition, offset)| format!("p{partition}→{offset}"))
        .collect();
    let others = rows.len() - ours.len();
    let others = match others {
        0 => String::new(),
        n => format!(" (and {n} rows for other topics)"),
    };
    if ours.is_empty() {
        section.warn(
            "indexer offsets",
            format!("none for {ingest_log} yet: has the indexer run?{others}"),
        );
    } else {
        section.ok(
            "indexer offsets",
            format!("{ingest_log}: {}{others}", ours.join(" ")),
        );
    }
    let value: Vec<_> = rows
        .iter()
        .map(|(topic, partition, offset)| {
            json!({ "topic": topic, "partition": partition, "next_offset": offset })
        })
        .collect();
    section.value(json!(value));
}

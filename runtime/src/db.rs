//! Postgres access: pools and the schema migrations (sqlx, `migrations/` at the repo root).

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

/// The schema migrations, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Failures reaching or preparing the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The connection string does not parse.
    #[error("invalid database url: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    /// The server could not be reached or refused us. A failed TLS handshake (an untrusted
    /// or mismatched server certificate under `sslmode=verify-full`, a server without TLS
    /// under `sslmode=require`) is a [`sqlx::Error::Tls`] here.
    #[error("cannot connect to Postgres: {0}")]
    Connect(#[source] sqlx::Error),
    /// A migration failed.
    #[error("schema migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Opens a pool of at most `max_connections`. Custom plans are forced: generic plans for
/// statements over `unnest(...)` arrays fell back to sequential scans as tables grew.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    connect_with_settings(url, max_connections, &[]).await
}

/// Like [`connect`], with extra session settings (`lock_timeout`, ...) on every connection.
///
/// TLS follows the URL: `sslmode=verify-full&sslrootcert=/path/ca.pem` checks the server's
/// certificate against that CA and its name against the URL's host; `require` encrypts without
/// checking; the default, `prefer`, encrypts when the server offers TLS.
pub async fn connect_with_settings(
    url: &str,
    max_connections: u32,
    settings: &[(&str, String)],
) -> Result<PgPool, DbError> {
    let options: PgConnectOptions = url.parse().map_err(DbError::InvalidUrl)?;
    let options = options
        .options([("plan_cache_mode", "force_custom_plan")])
        .options(settings.iter().map(|(k, v)| (*k, v.as_str())))
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(2));
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(|error| DbError::Connect(tls_failure_as_tls(error)))
}

/// sqlx reports a handshake that rustls refused (an untrusted certificate, a wrong host name)
/// as an I/O error; it is a TLS one, and a caller should be able to tell it from a server that
/// is not there.
fn tls_failure_as_tls(error: sqlx::Error) -> sqlx::Error {
    match error {
        sqlx::Error::Io(io)
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>()) =>
        {
            match io.into_inner() {
                Some(inner) => sqlx::Error::Tls(inner),
                None => sqlx::Error::Io(std::io::ErrorKind::InvalidData.into()),
            }
        }
        other => other,
    }
}

/// Applies every pending migration; applying twice is a no-op.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// The `events` columns [`canonical_event_from_row`] reads, in its order.
pub const EVENT_COLUMNS: &str = "global_position, event_id, stream_id, event_type, \
     data::text AS data, metadata::text AS metadata, version, created_at";

/// Reads a [`CanonicalEvent`](esk_model::wire::CanonicalEvent) from an `events` row selected as
/// [`EVENT_COLUMNS`] (or the same columns in that order; a NULL `data` reads as JSON null:
/// payload-less replays). Columns are read by position: by name, the lookups were a tenth of the
/// publisher's CPU.
pub fn canonical_event_from_row(
    row: &sqlx::postgres::PgRow,
) -> Result<esk_model::wire::CanonicalEvent, sqlx::Error> {
    use serde_json::value::RawValue;
    use sqlx::Row;
    let decode = |e: serde_json::Error| sqlx::Error::Decode(Box::new(e));
    let data: Option<String> = row.try_get(4)?;
    Ok(esk_model::wire::CanonicalEvent {
        global_position: row.try_get(0)?,
        event_id: row.try_get(1)?,
        stream_id: row.try_get(2)?,
        event_type: row.try_get(3)?,
        data: RawValue::from_string(data.unwrap_or_else(|| "null".into())).map_err(decode)?,
        metadata: row
            .try_get::<Option<String>, _>(5)?
            .map(RawValue::from_string)
            .transpose()
            .map_err(decode)?,
        version: row.try_get(6)?,
        created_at: row.try_get(7)?,
    })
}

/// Largest sum of event payloads one read holds in memory by default (a page, a publish
/// round, a replay page): counts alone do not bound memory when an event may be 1 MiB.
pub const DEFAULT_MAX_READ_BYTES: usize = 16 * 1024 * 1024;

/// Events read from `rows` (selected as [`EVENT_COLUMNS`], in order) until their payloads
/// reach `max_bytes` (at least one is read). Returns the events and whether it stopped early
/// for the budget (then more rows may follow the last one). Rows past the budget are never
/// decoded: the stream is dropped.
pub async fn collect_events_within<'a>(
    mut rows: futures::stream::BoxStream<'a, Result<sqlx::postgres::PgRow, sqlx::Error>>,
    max_bytes: usize,
) -> Result<(Vec<esk_model::wire::CanonicalEvent>, bool), sqlx::Error> {
    use futures::TryStreamExt;
    let mut events = Vec::new();
    let mut bytes = 0usize;
    while let Some(row) = rows.try_next().await? {
        let event = canonical_event_from_row(&row)?;
        bytes += event.size_bytes();
        events.push(event);
        if bytes >= max_bytes {
            return Ok((events, true));
        }
    }
    Ok((events, false))
}

/// Whether a Postgres failure may pass if the same work is tried again (the server or the
/// connection was unavailable, or the transaction lost a race), as opposed to the server
/// refusing this data or this statement, which would fail the same way every time.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| transient_sqlstate(&code)),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed
        | sqlx::Error::Protocol(_) => true,
        _ => false,
    }
}

/// The SQLSTATE of a unique violation (a key someone already holds).
pub const UNIQUE_VIOLATION: &str = "23505";

/// SQLSTATEs that mean "try again": connection exceptions (08), serialization failure,
/// deadlock and statement completion unknown (40001, 40P01, 40003), insufficient resources
/// (53), operator intervention such as a shutdown or a statement timeout (57), lock not
/// available (55P03), idle-in-transaction timeout (25P03), system errors (58). Everything else
/// (data exceptions 22, integrity violations 23, syntax, permissions, ...) would fail again.
pub fn transient_sqlstate(code: &str) -> bool {
    matches!(code, "40001" | "40P01" | "40003" | "55P03" | "25P03")
        || ["08", "53", "57", "58"]
            .iter()
            .any(|class| code.starts_with(class))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_sqlstates() {
        for code in [
            "08006", "40001", "40P01", "53300", "57P01", "57014", "55P03", "58030",
        ] {
            assert!(transient_sqlstate(code), "{code}");
        }
        for code in [
            "22021", "22P02", "23505", "23502", "42P01", "42501", "XX000",
        ] {
            assert!(!transient_sqlstate(code), "{code}");
        }
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
    }

    #[test]
    fn a_refused_certificate_is_a_tls_error() {
        let refused = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, refused);
        let error = tls_failure_as_tls(sqlx::Error::Io(io));
        assert!(matches!(error, sqlx::Error::Tls(_)), "{error:?}");
        assert!(error.to_string().contains("certificate"), "{error}");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let error = tls_failure_as_tls(sqlx::Error::Io(refused));
        assert!(matches!(error, sqlx::Error::Io(_)), "{error:?}");
    }
}

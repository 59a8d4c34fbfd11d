//! The append ledger: claiming append ids (step 2) and recording outcomes (step 4).

use std::collections::HashMap;

use esk_model::event::{Append, StreamVersion, Version};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::decide::LedgerEntry;
use crate::outcome::{AppendOutcome, Rejection};

/// Inserts a pending row per append, in append-id order (so concurrent attempts cannot
/// deadlock); waits for an in-flight attempt holding the same id. Returns the ids claimed now.
pub(crate) async fn claim(
    conn: &mut PgConnection,
    attempt_id: Uuid,
    appends: &[&Append],
) -> Result<Vec<Uuid>, sqlx::Error> {
    let ids: Vec<Uuid> = appends.iter().map(|a| a.append_id).collect();
    let streams: Vec<&str> = appends.iter().map(|a| a.stream_id.as_str()).collect();
    let fingerprints: Vec<Uuid> = appends.iter().map(|a| a.fingerprint()).collect();
    let counts: Vec<i32> = appends
        .iter()
        .map(|a| i32::try_from(a.events.len()).unwrap_or(i32::MAX))
        .collect();
    sqlx::query_scalar(
        "INSERT INTO append_ledger (append_id, attempt_id, stream_id, fingerprint, event_count, status)
         SELECT a, $1, s, f, c, 'pending'
         FROM unnest($2::uuid[], $3::text[], $4::uuid[], $5::int[]) AS t(a, s, f, c)
         ORDER BY a
         ON CONFLICT (append_id) DO NOTHING
         RETURNING append_id",
    )
    .bind(attempt_id)
    .bind(&ids)
    .bind(&streams)
    .bind(&fingerprints)
    .bind(&counts)
    .fetch_all(conn)
    .await
}

/// Reads the rows of appends decided earlier.
pub(crate) async fn load(
    conn: &mut PgConnection,
    append_ids: &[Uuid],
) -> Result<HashMap<Uuid, LedgerEntry>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT append_id, fingerprint, status, first_version, last_version, reject_code, actual_version
         FROM append_ledger WHERE append_id = ANY($1)",
    )
    .bind(append_ids)
    .fetch_all(conn)
    .await?;
    let mut entries = HashMap::with_capacity(rows.len());
    for row in rows {
        let status: String = row.try_get("status")?;
        let outcome = match status.as_str() {
            "accepted" => Some(AppendOutcome::Accepted {
                first_version: version_column(&row, "first_version")?,
                last_version: version_column(&row, "last_version")?,
            }),
            "rejected" => {
                let code: Option<String> = row.try_get("reject_code")?;
                // NULL: the stream did not exist (or the rejection has no version).
                let actual = match row.try_get::<Option<i64>, _>("actual_version")? {
                    None => StreamVersion::NoStream,
                    Some(stored) => StreamVersion::At(stored_version("actual_version", stored)?),
                };
                code.and_then(|c| Rejection::from_ledger(&c, actual))
                    .map(AppendOutcome::Rejected)
            }
            _ => None,
        };
        entries.insert(
            row.try_get("append_id")?,
            LedgerEntry {
                fingerprint: row.try_get("fingerprint")?,
                outcome,
            },
        );
    }
    Ok(entries)
}

/// A version column of a ledger row.
fn version_column(row: &PgRow, column: &str) -> Result<Version, sqlx::Error> {
    stored_version(column, row.try_get(column)?)
}

/// A stored version, refused as undecodable when negative.
fn stored_version(column: &str, stored: i64) -> Result<Version, sqlx::Error> {
    Version::try_from(stored).map_err(|e| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: Box::new(e),
    })
}

/// Writes the end of step 4 in one statement: the new version of every stream this attempt
/// moved (rows it holds locked) and the final outcome of every append it claimed (rows it
/// inserted). Both sets of rows are this transaction's own, so nothing is waited for and the
/// two updates cannot interleave with anyone else's.
pub(crate) async fn record_outcomes_and_versions(
    conn: &mut PgConnection,
    outcomes: &[(Uuid, AppendOutcome)],
    stream_versions: &[(&str, Version)],
) -> Result<(), sqlx::Error> {
    let mut ids = Vec::with_capacity(outcomes.len());
    let mut statuses = Vec::with_capacity(outcomes.len());
    let mut firsts: Vec<Option<i64>> = Vec::with_capacity(outcomes.len());
    let mut lasts: Vec<Option<i64>> = Vec::with_capacity(outcomes.len());
    let mut codes: Vec<Option<&str>> = Vec::with_capacity(outcomes.len());
    let mut actuals: Vec<Option<i64>> = Vec::with_capacity(outcomes.len());
    for (id, outcome) in outcomes {
        ids.push(*id);
        match outcome {
            AppendOutcome::Accepted {
                first_version,
                last_version,
            } => {
                statuses.push("accepted");
                firsts.push(Some(first_version.get()));
                lasts.push(Some(last_version.get()));
                codes.push(None);
                actuals.push(None);
            }
            AppendOutcome::Rejected(rejection) => {
                statuses.push("rejected");
                firsts.push(None);
                lasts.push(None);
                codes.push(Some(rejection.code()));
                actuals.push(match rejection {
                    Rejection::WrongExpectedVersion {
                        actual: StreamVersion::At(version),
                    } => Some(version.get()),
                    _ => None,
                });
            }
        }
    }
    let (streams, versions): (Vec<&str>, Vec<i64>) = stream_versions
        .iter()
        .map(|(stream, version)| (*stream, version.get()))
        .unzip();
    sqlx::query(
        "WITH stream_versions AS (
             UPDATE streams AS s SET version = v.version
             FROM unnest($7::text[], $8::int8[]) AS v(stream_id, version)
             WHERE s.stream_id = v.stream_id
         )
         UPDATE append_ledger AS l
         SET status = u.st, first_version = u.f, last_version = u.l,
             reject_code = u.c, actual_version = u.av
         FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::int8[])
              AS u(a, st, f, l, c, av)
         WHERE l.append_id = u.a",
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&firsts)
    .bind(&lasts)
    .bind(&codes)
    .bind(&actuals)
    .bind(&streams)
    .bind(&versions)
    .execute(conn)
    .await?;
    Ok(())
}

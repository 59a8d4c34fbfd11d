//! The append ledger: claiming append ids (step 2) and recording outcomes (step 4).

use std::collections::HashMap;

use esk_model::api::{StreamAppendResult, StreamConflict};
use esk_model::event::{Append, GroupAppend, StreamVersion, Version};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::claim_mode::OnHeld;
use crate::decide::LedgerEntry;
use crate::outcome::{AppendOutcome, GroupOutcome, GroupRejection, Rejection};

/// Inserts a pending row per append, in append-id order (so concurrent attempts cannot
/// deadlock); waits for an in-flight attempt holding the same id. Returns the ids claimed now.
pub(crate) async fn claim(
    conn: &mut PgConnection,
    attempt_id: Uuid,
    appends: &[&Append],
    on_held: OnHeld,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let rows: Vec<Claim<'_>> = appends
        .iter()
        .map(|a| Claim {
            append_id: a.append_id,
            stream_id: &a.stream_id,
            fingerprint: a.fingerprint(),
            event_count: a.events.len(),
        })
        .collect();
    claim_rows(conn, attempt_id, &rows, on_held).await
}

/// Claims the one ledger row of a multi-stream append (rule 1): its fingerprint covers every
/// part, it names the first stream, and counts every event. True when claimed now; false when
/// an earlier attempt decided it (waiting for one still in flight).
pub(crate) async fn claim_group(
    conn: &mut PgConnection,
    attempt_id: Uuid,
    group: &GroupAppend,
) -> Result<bool, sqlx::Error> {
    let row = Claim {
        append_id: group.append_id,
        stream_id: group.first_stream(),
        fingerprint: group.fingerprint(),
        event_count: group.event_count(),
    };
    Ok(!claim_rows(conn, attempt_id, &[row], OnHeld::Skip)
        .await?
        .is_empty())
}

/// A ledger row to claim.
struct Claim<'a> {
    append_id: Uuid,
    stream_id: &'a str,
    fingerprint: Uuid,
    event_count: usize,
}

/// The claim statement. Either form waits for an in-flight holder of an id; with
/// [`OnHeld::Skip`] an id held once that holder is done is left out of the answer.
async fn claim_rows(
    conn: &mut PgConnection,
    attempt_id: Uuid,
    rows: &[Claim<'_>],
    on_held: OnHeld,
) -> Result<Vec<Uuid>, sqlx::Error> {
    macro_rules! claim_sql {
        ($on_held:literal) => {
            concat!(
                "INSERT INTO append_ledger (append_id, attempt_id, stream_id, fingerprint, event_count, status)
                 SELECT a, $1, s, f, c, 'pending'
                 FROM unnest($2::uuid[], $3::text[], $4::uuid[], $5::int[]) AS t(a, s, f, c)
                 ORDER BY a ",
                $on_held,
                " RETURNING append_id"
            )
        };
    }
    let sql = match on_held {
        OnHeld::Fail => claim_sql!(""),
        OnHeld::Skip => claim_sql!("ON CONFLICT (append_id) DO NOTHING"),
    };
    let ids: Vec<Uuid> = rows.iter().map(|r| r.append_id).collect();
    let streams: Vec<&str> = rows.iter().map(|r| r.stream_id).collect();
    let fingerprints: Vec<Uuid> = rows.iter().map(|r| r.fingerprint).collect();
    let counts: Vec<i32> = rows
        .iter()
        .map(|r| i32::try_from(r.event_count).unwrap_or(i32::MAX))
        .collect();
    sqlx::query_scalar(sql)
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
        "SELECT append_id, fingerprint, status, first_version, last_version, reject_code,
                actual_version, parts IS NOT NULL AS grouped
         FROM append_ledger WHERE append_id = ANY($1)",
    )
    .bind(append_ids)
    .fetch_all(conn)
    .await?;
    let mut entries = HashMap::with_capacity(rows.len());
    for row in rows {
        let status: String = row.try_get("status")?;
        // A multi-stream append's row: its fingerprint never matches a single append's, so
        // the retry is told `append_id_reused` (`LedgerEntry::outcome_for`).
        let grouped: bool = row.try_get("grouped")?;
        let outcome = match status.as_str() {
            _ if grouped => None,
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

/// An outcome statement that first writes the new versions of the streams the attempt holds
/// locked: `$1` their ids, `$2` their versions ([`stream_version_columns`]); the statement's own
/// parameters start at `$3`.
macro_rules! with_stream_versions {
    ($statement:literal) => {
        concat!(
            "WITH stream_versions AS (
                 UPDATE streams AS s SET version = v.version
                 FROM unnest($1::text[], $2::int8[]) AS v(stream_id, version)
                 WHERE s.stream_id = v.stream_id
             ) ",
            $statement
        )
    };
}

/// The `$1` and `$2` of [`with_stream_versions`].
fn stream_version_columns<'a>(stream_versions: &[(&'a str, Version)]) -> (Vec<&'a str>, Vec<i64>) {
    stream_versions
        .iter()
        .map(|(stream, version)| (*stream, version.get()))
        .unzip()
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
    let (streams, versions) = stream_version_columns(stream_versions);
    sqlx::query(with_stream_versions!(
        "UPDATE append_ledger AS l
         SET status = u.st, first_version = u.f, last_version = u.l,
             reject_code = u.c, actual_version = u.av
         FROM unnest($3::uuid[], $4::text[], $5::int8[], $6::int8[], $7::text[], $8::int8[])
              AS u(a, st, f, l, c, av)
         WHERE l.append_id = u.a"
    ))
    .bind(&streams)
    .bind(&versions)
    .bind(&ids)
    .bind(&statuses)
    .bind(&firsts)
    .bind(&lasts)
    .bind(&codes)
    .bind(&actuals)
    .execute(conn)
    .await?;
    Ok(())
}

/// A multi-stream append's committed ledger row, as a retry sees it.
#[derive(Debug, Clone)]
pub(crate) struct GroupLedgerEntry {
    /// Fingerprint of the append that claimed the id first.
    pub(crate) fingerprint: Uuid,
    /// Its recorded outcome; `None` for a row still pending, of a single append, or with a
    /// code this ingest does not know.
    pub(crate) outcome: Option<GroupOutcome>,
}

impl GroupLedgerEntry {
    /// The outcome a retry of `group` gets: the original one, or `append_id_reused` when the
    /// id was used for different events (or for a single append).
    pub(crate) fn outcome_for(&self, group: &GroupAppend) -> Option<GroupOutcome> {
        if self.fingerprint != group.fingerprint() {
            return Some(GroupOutcome::Rejected(GroupRejection::of(
                Rejection::AppendIdReused,
            )));
        }
        self.outcome.clone()
    }
}

/// Reads the ledger row of a multi-stream append decided earlier.
pub(crate) async fn load_group(
    conn: &mut PgConnection,
    append_id: Uuid,
) -> Result<Option<GroupLedgerEntry>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT fingerprint, status, reject_code, parts::text AS parts
         FROM append_ledger WHERE append_id = $1",
    )
    .bind(append_id)
    .fetch_optional(conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let status: String = row.try_get("status")?;
    let parts: Option<String> = row.try_get("parts")?;
    let decode = |e: serde_json::Error| sqlx::Error::ColumnDecode {
        index: "parts".to_owned(),
        source: Box::new(e),
    };
    let outcome = match (status.as_str(), parts) {
        ("accepted", Some(parts)) => Some(GroupOutcome::Accepted(
            serde_json::from_str::<Vec<StreamAppendResult>>(&parts).map_err(decode)?,
        )),
        ("rejected", Some(parts)) => {
            let streams: Vec<StreamConflict> = serde_json::from_str(&parts).map_err(decode)?;
            let code: Option<String> = row.try_get("reject_code")?;
            let actual = streams
                .first()
                .map_or(StreamVersion::NoStream, |s| s.actual_version);
            code.and_then(|c| Rejection::from_ledger(&c, actual))
                .map(|rejection| GroupOutcome::Rejected(GroupRejection { rejection, streams }))
        }
        _ => None,
    };
    Ok(Some(GroupLedgerEntry {
        fingerprint: row.try_get("fingerprint")?,
        outcome,
    }))
}

/// Writes the end of step 4 for a multi-stream append in one statement: the new versions of
/// its streams (rows this attempt holds locked) and its outcome in its ledger row, `parts`
/// holding the per-stream results (accepted) or the streams at fault (rejected; `[]` when the
/// rejection names none), `first_version`/`last_version` those of the first stream.
pub(crate) async fn record_group(
    conn: &mut PgConnection,
    append_id: Uuid,
    outcome: &GroupOutcome,
    stream_versions: &[(&str, Version)],
) -> Result<(), sqlx::Error> {
    let encode = |e: serde_json::Error| sqlx::Error::Encode(Box::new(e));
    let (status, code, parts) = match outcome {
        GroupOutcome::Accepted(results) => (
            "accepted",
            None,
            serde_json::to_string(results).map_err(encode)?,
        ),
        GroupOutcome::Rejected(rejected) => (
            "rejected",
            Some(rejected.rejection.code()),
            serde_json::to_string(&rejected.streams).map_err(encode)?,
        ),
    };
    // The first stream's versions in the row's own columns: ledger pruning and the
    // unindexed-append alert look for the row's stream at its last version, and M's parts are
    // indexed together, so the first stream's last event stands for all of M.
    let (first, last) = match outcome {
        GroupOutcome::Accepted(results) => results.first().map_or((None, None), |r| {
            (Some(r.first_version.get()), Some(r.last_version.get()))
        }),
        GroupOutcome::Rejected(_) => (None, None),
    };
    let (streams, versions) = stream_version_columns(stream_versions);
    sqlx::query(with_stream_versions!(
        "UPDATE append_ledger SET status = $4, reject_code = $5, parts = $6::jsonb,
                first_version = $7, last_version = $8
         WHERE append_id = $3"
    ))
    .bind(&streams)
    .bind(&versions)
    .bind(append_id)
    .bind(status)
    .bind(code)
    .bind(parts)
    .bind(first)
    .bind(last)
    .execute(conn)
    .await?;
    Ok(())
}

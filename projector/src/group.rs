//! Multi-stream appends on the canonical topic (rule 7 for projections). A group's records are
//! spread over partitions by stream; each names the group in its headers. The first record of
//! a group a live projection meets makes it apply the whole group (from the batch's records when
//! they are all there, else its rows read from `events` by positions first..=last, as the parts
//! on other partitions may not have arrived: `live.rs`), and the group is recorded in `applied_groups` in the transaction of the checkpoint: the group's
//! records that arrive later, on other partitions, are skipped. Rows are pruned once every
//! partition has read past the group.

use esk_runtime::records::CanonicalGroup;
use rdkafka::message::Message;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// A multi-stream append, as a canonical record's headers name it.
pub(crate) type GroupRef = CanonicalGroup;

/// The group `record` belongs to, if its headers name one. Headers that name one but do not
/// parse are logged and ignored: the record is then applied alone, as before groups.
pub(crate) fn of<M: Message>(record: &M) -> Option<GroupRef> {
    match CanonicalGroup::from_headers(record.headers()?) {
        Ok(group) => group,
        Err(error) => {
            tracing::warn!(
                partition = record.partition(),
                offset = record.offset(),
                "{error}; applying it alone"
            );
            None
        }
    }
}

/// Which of `groups` the projection applied already (their first positions).
pub(crate) async fn applied(
    pool: &PgPool,
    projection: &str,
    groups: &[GroupRef],
) -> Result<Vec<i64>, sqlx::Error> {
    let firsts: Vec<i64> = groups.iter().map(|g| g.span.first).collect();
    sqlx::query_scalar(
        "SELECT first_position FROM applied_groups
         WHERE projection = $1 AND first_position = ANY($2)",
    )
    .bind(projection)
    .bind(&firsts)
    .fetch_all(pool)
    .await
}

/// Records `groups` as applied by the projection, in the caller's transaction; returns the
/// first positions of those no other transaction recorded first (a concurrent consumer's row
/// makes this wait for its outcome).
pub(crate) async fn claim(
    conn: &mut PgConnection,
    projection: &str,
    groups: &[GroupRef],
) -> Result<Vec<i64>, sqlx::Error> {
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    let firsts: Vec<i64> = groups.iter().map(|g| g.span.first).collect();
    let lasts: Vec<i64> = groups.iter().map(|g| g.span.last).collect();
    let ids: Vec<Uuid> = groups.iter().map(|g| g.append_id).collect();
    sqlx::query_scalar(
        "INSERT INTO applied_groups (projection, first_position, last_position, group_append_id)
         SELECT $1, f, l, a FROM unnest($2::int8[], $3::int8[], $4::uuid[]) AS g(f, l, a)
         ON CONFLICT (projection, first_position) DO NOTHING
         RETURNING first_position",
    )
    .bind(projection)
    .bind(&firsts)
    .bind(&lasts)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await
}

/// Forgets the groups every partition of the projection has read past, in the caller's
/// transaction (after its checkpoint): a partition is past a group when its applied position
/// is at or beyond the group's last, or when it has read everything the publisher wrote to it
/// once the group was published (its records on that partition came before).
pub(crate) async fn prune(conn: &mut PgConnection, projection: &str) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM applied_groups g
         WHERE g.projection = $1
           AND (SELECT global_position FROM published_through) >= g.last_position
           AND NOT EXISTS (
               SELECT 1 FROM projection_partitions pp
               JOIN publisher_partitions pub ON pub.partition_id = pp.partition_id
               WHERE pp.projection = $1 AND pp.position < g.last_position
                 AND pp.next_offset <= pub.last_offset)",
    )
    .bind(projection)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// Forgets every group of the projection (before a rebuild), in the caller's transaction.
pub(crate) async fn reset(conn: &mut PgConnection, projection: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM applied_groups WHERE projection = $1")
        .bind(projection)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The groups of a live batch: those it applies (to record), and whether it met any group
/// record at all (then groups may have been passed, and are pruned).
#[derive(Debug, Default)]
pub(crate) struct BatchGroups {
    /// Groups the batch applies whole.
    pub(crate) apply: Vec<GroupRef>,
    /// The batch had a record of some group (applied now or before).
    pub(crate) seen: bool,
}

impl BatchGroups {
    /// Records the groups the batch applies, in the caller's transaction; returns those another
    /// consumer of the projection recorded first (their events must not be applied again).
    pub(crate) async fn claim(
        &self,
        conn: &mut PgConnection,
        projection: &str,
    ) -> Result<Vec<GroupRef>, sqlx::Error> {
        let claimed = claim(conn, projection, &self.apply).await?;
        Ok(self
            .apply
            .iter()
            .filter(|g| !claimed.contains(&g.span.first))
            .copied()
            .collect())
    }

    /// Prunes the passed groups when the batch met any, in the caller's transaction (after the
    /// checkpoint that moved the partitions).
    pub(crate) async fn prune(
        &self,
        conn: &mut PgConnection,
        projection: &str,
    ) -> Result<(), sqlx::Error> {
        if self.seen {
            prune(conn, projection).await?;
        }
        Ok(())
    }
}

/// Whether `position` belongs to one of `groups`.
pub(crate) fn in_any(groups: &[GroupRef], position: i64) -> bool {
    groups.iter().any(|g| g.contains(position))
}

#[cfg(test)]
mod tests {
    use esk_model::wire::header;
    use esk_runtime::pages::GroupSpan;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

    use super::*;

    fn record(headers: &[(&str, &str)]) -> OwnedMessage {
        let headers = headers.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(*value),
            })
        });
        OwnedMessage::new(
            Some(b"{}".to_vec()),
            Some(b"Order-1".to_vec()),
            "events".into(),
            Timestamp::NotAvailable,
            0,
            7,
            Some(headers),
        )
    }

    #[test]
    fn a_record_names_its_group_by_its_headers() {
        let id = "6f1c9a3e-9d1e-4c3b-8a55-0f2a4b6c8d10";
        let grouped = record(&[
            (header::GLOBAL_POSITION, "11"),
            (header::GROUP_APPEND_ID, id),
            (header::GROUP_FIRST_POSITION, "10"),
            (header::GROUP_LAST_POSITION, "12"),
            (header::GROUP_EVENTS, "3"),
        ]);
        let group = of(&grouped).expect("a group");
        assert_eq!(
            group.span,
            GroupSpan {
                first: 10,
                last: 12
            }
        );
        assert_eq!(group.append_id.to_string(), id);
        assert!(group.contains(10) && group.contains(12) && !group.contains(13));
        assert!(in_any(&[group], 11) && !in_any(&[group], 9));
    }

    #[test]
    fn a_single_append_or_unreadable_group_headers_name_no_group() {
        let id = "6f1c9a3e-9d1e-4c3b-8a55-0f2a4b6c8d10";
        assert_eq!(of(&record(&[(header::GLOBAL_POSITION, "3")])), None);
        for broken in [
            vec![
                (header::GROUP_APPEND_ID, "not a uuid"),
                (header::GROUP_FIRST_POSITION, "1"),
                (header::GROUP_LAST_POSITION, "2"),
            ],
            vec![
                (header::GROUP_APPEND_ID, id),
                (header::GROUP_LAST_POSITION, "2"),
            ],
            vec![
                (header::GROUP_APPEND_ID, id),
                (header::GROUP_FIRST_POSITION, "5"),
                (header::GROUP_LAST_POSITION, "2"),
            ],
        ] {
            assert_eq!(of(&record(&broken)), None, "{broken:?}");
        }
    }
}

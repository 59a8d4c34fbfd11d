//! Where a consumer's partition offsets live in Postgres, and the compare-and-set that moves
//! them. The statements are written once here, from a table's names, for every table that
//! keeps offsets (`indexer_offsets`, `projection_partitions`).

use sqlx::{PgConnection, PgExecutor, Row};

use super::{Spans, Stored};

/// The next offset stored for a partition that is not pinned yet (written by a projection's
/// hand-over when nothing was published to the partition): the first write pins it wherever
/// its batch starts.
const UNPINNED_OFFSET: i64 = -1;

/// What a partition without a row means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingRow {
    /// Not pinned yet: its first write inserts the row at the batch's start, then moves it
    /// (the indexer reads `ingest-log` from wherever its consumer group starts).
    Unpinned,
    /// No position at all: [`OffsetStore::load`] answers `None` and a write fails with
    /// [`NotOwner`] (a projection that has not handed over to Kafka).
    NoPosition,
}

/// A table with one row per (scope, partition) and the columns `partition_id`,
/// `next_offset` and `updated_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetTable {
    /// The table's name.
    pub table: &'static str,
    /// The column naming whose offsets a row holds (`topic`, `projection`).
    pub scope_column: &'static str,
    /// The column of the highest position applied from the partition, if the table keeps one.
    pub position_column: Option<&'static str>,
    /// What a partition without a row means.
    pub missing_row: MissingRow,
}

/// Another consumer moved these partitions' stored offsets: this one no longer owns them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("partitions {partitions:?} are owned by another consumer")]
pub struct NotOwner {
    /// The partitions lost, in order.
    pub partitions: Vec<i32>,
}

/// Why a compare-and-set did not move the stored offsets.
#[derive(Debug, thiserror::Error)]
pub enum CasError {
    /// A partition's stored offset was not at its batch's start: roll back, forget it, re-read.
    #[error(transparent)]
    NotOwner(#[from] NotOwner),
    /// The statement failed.
    #[error("postgres: {0}")]
    Database(#[from] sqlx::Error),
}

/// The statements of one [`OffsetTable`].
#[derive(Debug, Clone)]
pub struct OffsetStore {
    table: OffsetTable,
    load: String,
    /// Inserts missing rows at their batch's start ([`MissingRow::Unpinned`] tables only).
    pin: Option<String>,
    compare_and_set: String,
}

impl OffsetStore {
    /// Writes the statements for `table`.
    pub fn new(table: OffsetTable) -> Self {
        let OffsetTable {
            table: name,
            scope_column: scope,
            position_column,
            missing_row,
        } = table;
        let load = format!(
            "SELECT next_offset, {} FROM {name} WHERE {scope} = $1 AND partition_id = $2",
            position_column.unwrap_or("NULL::int8")
        );
        let pin = (missing_row == MissingRow::Unpinned).then(|| {
            format!(
                "INSERT INTO {name} ({scope}, partition_id, next_offset)
                 SELECT $1, p, s FROM unnest($2::int4[], $3::int8[]) AS t(p, s)
                 ON CONFLICT ({scope}, partition_id) DO NOTHING"
            )
        });
        // A position only grows (greatest ignores NULL: a span without one leaves it).
        let (set_position, positions, position_alias) = match position_column {
            Some(column) => (
                format!(", {column} = greatest(o.{column}, t.pos)"),
                ", $5::int8[]",
                ", pos",
            ),
            None => (String::new(), "", ""),
        };
        let compare_and_set = format!(
            "UPDATE {name} AS o SET next_offset = t.n{set_position}, updated_at = now()
             FROM unnest($2::int4[], $3::int8[], $4::int8[]{positions}) AS t(p, s, n{position_alias})
             WHERE o.{scope} = $1 AND o.partition_id = t.p
               AND (o.next_offset = t.s OR o.next_offset = {UNPINNED_OFFSET})
             RETURNING o.partition_id"
        );
        OffsetStore {
            table,
            load,
            pin,
            compare_and_set,
        }
    }

    /// The table the statements are for.
    pub fn table(&self) -> &OffsetTable {
        &self.table
    }

    /// The stored position of `partition` for `scope`; `None` when there is no row and the
    /// table says that means no position ([`MissingRow::NoPosition`]).
    pub async fn load<'e>(
        &self,
        executor: impl PgExecutor<'e>,
        scope: &str,
        partition: i32,
    ) -> Result<Option<Stored>, sqlx::Error> {
        let row = sqlx::query(&self.load)
            .bind(scope)
            .bind(partition)
            .fetch_optional(executor)
            .await?;
        let Some(row) = row else {
            return Ok(match self.table.missing_row {
                MissingRow::Unpinned => Some(Stored::UNPINNED),
                MissingRow::NoPosition => None,
            });
        };
        let next: i64 = row.try_get(0)?;
        Ok(Some(Stored {
            next: (next != UNPINNED_OFFSET).then_some(next),
            applied_through: row.try_get(1)?,
        }))
    }

    /// Moves the stored offset of every partition in `spans` from its span's start to its
    /// next offset (and its applied position up), on `conn`: the caller's transaction, which
    /// must roll back on [`CasError::NotOwner`].
    pub async fn compare_and_set(
        &self,
        conn: &mut PgConnection,
        scope: &str,
        spans: &Spans,
    ) -> Result<(), CasError> {
        let partitions = spans.partitions();
        let starts: Vec<i64> = spans.iter().map(|(_, s)| s.start).collect();
        let nexts: Vec<i64> = spans.iter().map(|(_, s)| s.next).collect();
        if let Some(pin) = &self.pin {
            sqlx::query(pin)
                .bind(scope)
                .bind(&partitions)
                .bind(&starts)
                .execute(&mut *conn)
                .await?;
        }
        let query = sqlx::query_scalar(&self.compare_and_set)
            .bind(scope)
            .bind(&partitions)
            .bind(&starts)
            .bind(&nexts);
        let owned: Vec<i32> = if self.table.position_column.is_some() {
            let positions: Vec<Option<i64>> =
                spans.iter().map(|(_, s)| s.applied_through).collect();
            query.bind(positions).fetch_all(&mut *conn).await?
        } else {
            query.fetch_all(&mut *conn).await?
        };
        let lost = crate::kafka::unmatched_partitions(partitions, &owned);
        if lost.is_empty() {
            Ok(())
        } else {
            Err(NotOwner { partitions: lost }.into())
        }
    }
}

//! Pages of the `events` table that never end inside a multi-stream append (rule 7 of the
//! multi-stream design; invariant I7: a reader sees all of a group or none of it).
//!
//! Every page query of the services goes through [`read_page`]: `$all`, filtered, category,
//! type and stream reads, subscription batches and projection replays. A page is cut by its
//! `LIMIT`, its byte budget or its window; when the last row it kept belongs to a group whose
//! positions go on past that row, the page is extended with the rows of the same selection
//! from the rest of the group (its positions are contiguous, its events committed in one
//! transaction, so they are all there). The extension is not cut by the budget: a group is
//! bounded by the size of one append.

use esk_model::wire::CanonicalEvent;
use futures::TryStreamExt;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{PgPool, Postgres, Row};

use crate::db::canonical_event_from_row;

/// A statement over `events` being bound.
pub type PgQuery<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// The group columns read after the event columns (at indexes 8 and 9).
const GROUP_COLUMNS: &str = "group_first_position, group_last_position";

/// Which rows of `events` a reader selects, whatever its cursor: a stream, a filter, the
/// visibility rules. The same selection narrows the page and its extension.
pub trait Selection: Send + Sync {
    /// The conditions as ` AND ...` over `events` (empty for every row), parameters numbered
    /// from `first`.
    fn sql(&self, first: usize) -> String;
    /// Binds the parameters of [`Selection::sql`], in its order.
    fn bind<'q>(&self, query: PgQuery<'q>) -> PgQuery<'q>;
}

/// Every row.
#[derive(Debug, Clone, Copy, Default)]
pub struct Everything;

impl Selection for Everything {
    fn sql(&self, _first: usize) -> String {
        String::new()
    }

    fn bind<'q>(&self, query: PgQuery<'q>) -> PgQuery<'q> {
        query
    }
}

/// The column a page is ordered and bounded by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// `global_position`: `$all`, categories, types, subscriptions, replays.
    Position,
    /// `version`: one stream (its selection names it).
    Version,
}

impl Key {
    fn column(self) -> &'static str {
        match self {
            Key::Position => "global_position",
            Key::Version => "version",
        }
    }
}

/// Where a page reads: keys from `low` to `high` (both inclusive), at most `limit` rows and
/// about `max_bytes` of payload (at least one row), ascending or descending.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// The key bounding and ordering the page.
    pub key: Key,
    /// Descending from `high` when true, else ascending from `low`.
    pub backward: bool,
    /// The lowest key read.
    pub low: i64,
    /// The highest key read.
    pub high: i64,
    /// Most rows before the extension.
    pub limit: i64,
    /// Payload bytes after which the page stops (then `cut`).
    pub max_bytes: usize,
}

impl Window {
    /// Ascending `key`s from `low`, unbounded above.
    pub fn forward(key: Key, low: i64, limit: i64, max_bytes: usize) -> Self {
        Window {
            key,
            backward: false,
            low,
            high: i64::MAX,
            limit,
            max_bytes,
        }
    }
}

/// A group's positions: `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupSpan {
    /// The group's first global position.
    pub first: i64,
    /// The group's last global position.
    pub last: i64,
}

/// A page: its events in the window's order, whole groups only.
#[derive(Debug, Default)]
pub struct Page {
    /// The events.
    pub events: Vec<CanonicalEvent>,
    /// The byte budget stopped the page (more rows may follow its last one).
    pub cut: bool,
    /// The limit or the byte budget stopped the page: more rows may follow.
    pub more: bool,
    /// When the page was extended to the end of a group: the position that end is at (its last
    /// position forward, its first backward). The page covers the selection up to there, so a
    /// cursor by position continues past it, never inside the group.
    pub group_end: Option<i64>,
}

impl Page {
    /// The last global position the page covers, forward: its last event's, or the end of the
    /// group it was extended to. None for an empty page.
    pub fn covered_through(&self) -> Option<i64> {
        let last = self.events.last()?.global_position;
        Some(self.group_end.map_or(last, |end| end.max(last)))
    }
}

/// Reads the page of `selection` in `window`, as `columns` (the event columns of
/// [`crate::db::EVENT_COLUMNS`], in that order), extended to the end of the group its last row
/// is in (rule 7).
pub async fn read_page(
    pool: &PgPool,
    columns: &str,
    selection: &dyn Selection,
    window: Window,
) -> Result<Page, sqlx::Error> {
    let key = window.key.column();
    let order = if window.backward { "DESC" } else { "" };
    let sql = format!(
        "SELECT {columns}, {GROUP_COLUMNS} FROM events WHERE {key} >= $1 AND {key} <= $2{}
         ORDER BY {key} {order} LIMIT $3",
        selection.sql(4)
    );
    let query = sqlx::query(&sql)
        .bind(window.low)
        .bind(window.high)
        .bind(window.limit);
    let rows = selection.bind(query).fetch(pool);
    let (mut events, cut, last_group) = collect(rows, window.max_bytes).await?;
    let more = cut || events.len() as i64 >= window.limit;
    let Some((last, group)) = events.last().map(|e| e.global_position).zip(last_group) else {
        return Ok(Page {
            events,
            cut,
            more,
            group_end: None,
        });
    };
    // The rest of the group, in the page's direction (none when the row is its end).
    let (low, high, end) = if window.backward {
        (group.first, last - 1, group.first)
    } else {
        (last + 1, group.last, group.last)
    };
    if low > high {
        return Ok(Page {
            events,
            cut,
            more,
            group_end: None,
        });
    }
    // The rest was in the page already unless the limit, the budget or a position bound
    // stopped it before the group's end.
    let bound_cuts = window.key == Key::Position
        && if window.backward {
            window.low > group.first
        } else {
            window.high < group.last
        };
    if more || bound_cuts {
        events.extend(read_range(pool, columns, selection, (low, high), window.backward).await?);
    }
    Ok(Page {
        events,
        cut,
        more,
        group_end: Some(end),
    })
}

type Collected = (Vec<CanonicalEvent>, bool, Option<GroupSpan>);

/// Events from `rows` until their payloads reach `max_bytes` (at least one), whether the budget
/// stopped them, and the group of the last one kept.
async fn collect(
    mut rows: futures::stream::BoxStream<'_, Result<PgRow, sqlx::Error>>,
    max_bytes: usize,
) -> Result<Collected, sqlx::Error> {
    let mut events = Vec::new();
    let mut bytes = 0usize;
    let mut group = None;
    while let Some(row) = rows.try_next().await? {
        let event = canonical_event_from_row(&row)?;
        let first: Option<i64> = row.try_get(8)?;
        let last: Option<i64> = row.try_get(9)?;
        group = first
            .zip(last)
            .map(|(first, last)| GroupSpan { first, last });
        bytes = bytes.saturating_add(event.size_bytes());
        events.push(event);
        if bytes >= max_bytes {
            return Ok((events, true, group));
        }
    }
    Ok((events, false, group))
}

/// A group's rows of `selection`, in position order, as `columns`: how a consumer that got part
/// of a group elsewhere (a partition of the canonical topic) reads all of it.
pub async fn read_group(
    pool: &PgPool,
    columns: &str,
    selection: &dyn Selection,
    group: GroupSpan,
) -> Result<Vec<CanonicalEvent>, sqlx::Error> {
    read_range(pool, columns, selection, (group.first, group.last), false).await
}

/// Every row of `selection` with a position in `low..=high`, whatever their size.
async fn read_range(
    pool: &PgPool,
    columns: &str,
    selection: &dyn Selection,
    (low, high): (i64, i64),
    backward: bool,
) -> Result<Vec<CanonicalEvent>, sqlx::Error> {
    let order = if backward { "DESC" } else { "" };
    let sql = format!(
        "SELECT {columns}, {GROUP_COLUMNS} FROM events
         WHERE global_position >= $1 AND global_position <= $2{}
         ORDER BY global_position {order}",
        selection.sql(3)
    );
    let query = sqlx::query(&sql).bind(low).bind(high);
    let rows = selection.bind(query).fetch(pool);
    Ok(collect(rows, usize::MAX).await?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: i64) -> CanonicalEvent {
        serde_json::from_value(serde_json::json!({
            "global_position": position,
            "event_id": "00000000-0000-0000-0000-000000000001",
            "stream_id": "Order-1",
            "type": "Placed",
            "data": {},
            "metadata": null,
            "version": 0,
            "created_at": "2024-01-01T00:00:00Z",
        }))
        .expect("an event")
    }

    #[test]
    fn a_page_covers_through_the_end_of_the_group_it_was_extended_to() {
        let page = |positions: &[i64], group_end| Page {
            events: positions.iter().copied().map(event).collect(),
            cut: false,
            more: true,
            group_end,
        };
        assert_eq!(page(&[], None).covered_through(), None);
        assert_eq!(page(&[3, 5], None).covered_through(), Some(5));
        // A filtered page: the group's last selected row is 5, its last row 8.
        assert_eq!(page(&[3, 5], Some(8)).covered_through(), Some(8));
    }
}

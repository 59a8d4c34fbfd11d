//! The shared partition cursor against Postgres: the offsets compare-and-set in the caller's
//! transaction, `NotOwner` when another consumer moved a partition, and each table's rule for
//! a partition that is not pinned yet (the indexer's `indexer_offsets`, the projector's
//! `projection_partitions`).

use std::time::Duration;

use esk_runtime::partition_cursor::{
    CasError, MissingRow, NotOwner, OffsetStore, OffsetTable, Spans, Stored,
};
use esk_tests::TestContext;
use sqlx::PgPool;

const TOPIC: &str = "ingest-log";
const PROJECTION: &str = "orders";

/// `indexer_offsets` as the indexer describes it.
fn indexer_offsets() -> OffsetStore {
    OffsetStore::new(OffsetTable {
        table: "indexer_offsets",
        scope_column: "topic",
        position_column: None,
        missing_row: MissingRow::Unpinned,
    })
}

/// `projection_partitions` as the projector describes it.
fn projection_partitions() -> OffsetStore {
    OffsetStore::new(OffsetTable {
        table: "projection_partitions",
        scope_column: "projection",
        position_column: Some("position"),
        missing_row: MissingRow::NoPosition,
    })
}

/// A batch of `offsets` in `partition`.
fn spans(partition: i32, offsets: std::ops::Range<i64>) -> Spans {
    let mut spans = Spans::default();
    for offset in offsets {
        spans.add(partition, offset);
    }
    spans
}

/// Runs one compare-and-set in its own transaction, committed only if it succeeds.
async fn write(
    pool: &PgPool,
    store: &OffsetStore,
    scope: &str,
    spans: &Spans,
) -> Result<(), CasError> {
    let mut tx = pool.begin().await?;
    store.compare_and_set(&mut tx, scope, spans).await?;
    tx.commit().await?;
    Ok(())
}

fn not_owner(result: Result<(), CasError>) -> Option<Vec<i32>> {
    match result {
        Err(CasError::NotOwner(NotOwner { partitions })) => Some(partitions),
        _ => None,
    }
}

async fn hand_over(pool: &PgPool, partition: i32, next: i64, position: i64) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO projection_partitions (projection, partition_id, next_offset, position)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(PROJECTION)
    .bind(partition)
    .bind(next)
    .bind(position)
    .execute(pool)
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_first_write_pins_an_unpinned_partition_at_its_batch_start() -> anyhow::Result<()> {
    let ctx = TestContext::without_topics("cursor_pin").await?;
    let store = indexer_offsets();
    assert_eq!(
        store.load(&ctx.pool, TOPIC, 0).await?,
        Some(Stored::UNPINNED),
        "no row: not pinned yet"
    );
    write(&ctx.pool, &store, TOPIC, &spans(0, 7..10)).await?;
    assert_eq!(
        store.load(&ctx.pool, TOPIC, 0).await?,
        Some(Stored {
            next: Some(10),
            applied_through: None
        })
    );
    write(&ctx.pool, &store, TOPIC, &spans(0, 10..12)).await?;
    assert_eq!(
        store.load(&ctx.pool, TOPIC, 0).await?.and_then(|s| s.next),
        Some(12)
    );
    Ok(())
}

#[tokio::test]
async fn a_write_from_anywhere_but_the_stored_offset_is_not_owner_and_moves_nothing(
) -> anyhow::Result<()> {
    let ctx = TestContext::without_topics("cursor_not_owner").await?;
    let store = indexer_offsets();
    let mut both = spans(0, 0..5);
    both.add(1, 0);
    write(&ctx.pool, &store, TOPIC, &both).await?;

    // Partition 1 moved on under us (another consumer wrote 1..3); partition 0 did not.
    write(&ctx.pool, &store, TOPIC, &spans(1, 1..3)).await?;
    let mut stale = spans(0, 5..8);
    stale.add(1, 1);
    let lost = not_owner(write(&ctx.pool, &store, TOPIC, &stale).await);
    assert_eq!(
        lost,
        Some(vec![1]),
        "only the partition owned elsewhere is named"
    );
    assert_eq!(
        store.load(&ctx.pool, TOPIC, 0).await?.and_then(|s| s.next),
        Some(5),
        "the transaction rolled back: the owned partition did not move either"
    );
    assert_eq!(
        store.load(&ctx.pool, TOPIC, 1).await?.and_then(|s| s.next),
        Some(3)
    );
    // A replayed batch (the same start again) is not owned either.
    let lost = not_owner(write(&ctx.pool, &store, TOPIC, &spans(0, 0..5)).await);
    assert_eq!(lost, Some(vec![0]));
    Ok(())
}

#[tokio::test]
async fn the_write_belongs_to_the_callers_transaction() -> anyhow::Result<()> {
    let ctx = TestContext::without_topics("cursor_rollback").await?;
    let store = indexer_offsets();
    let mut tx = ctx.pool.begin().await?;
    store
        .compare_and_set(&mut tx, TOPIC, &spans(2, 0..3))
        .await?;
    tx.rollback().await?;
    assert_eq!(
        store.load(&ctx.pool, TOPIC, 2).await?,
        Some(Stored::UNPINNED),
        "rolled back with the work: not even pinned"
    );
    Ok(())
}

#[tokio::test]
async fn of_two_consumers_racing_for_one_partition_the_second_is_not_owner() -> anyhow::Result<()> {
    let ctx = TestContext::without_topics("cursor_race").await?;
    let store = indexer_offsets();
    // The first consumer pins the partition and moves it, and has not committed yet.
    let mut first = ctx.pool.begin().await?;
    store
        .compare_and_set(&mut first, TOPIC, &spans(0, 0..4))
        .await?;
    // A zombie with the same batch waits on the uncommitted row...
    let pool = ctx.pool.clone();
    let zombie = tokio::spawn(async move {
        let store = indexer_offsets();
        write(&pool, &store, TOPIC, &spans(0, 0..4)).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !zombie.is_finished(),
        "the second writer waits for the first"
    );
    first.commit().await?;
    // ...and finds it moved once the first commits.
    let lost = not_owner(zombie.await?);
    assert_eq!(lost, Some(vec![0]));
    assert_eq!(
        store.load(&ctx.pool, TOPIC, 0).await?.and_then(|s| s.next),
        Some(4)
    );
    Ok(())
}

#[tokio::test]
async fn a_projection_without_a_row_has_no_position_and_cannot_write() -> anyhow::Result<()> {
    let ctx = TestContext::without_topics("cursor_no_row").await?;
    let store = projection_partitions();
    assert_eq!(store.load(&ctx.pool, PROJECTION, 0).await?, None);
    let lost = not_owner(write(&ctx.pool, &store, PROJECTION, &spans(0, 0..2)).await);
    assert_eq!(lost, Some(vec![0]), "no row is not pinned: it is not ours");
    Ok(())
}

#[tokio::test]
async fn a_handed_over_unpinned_partition_takes_the_first_batch_wherever_it_starts(
) -> anyhow::Result<()> {
    let ctx = TestContext::without_topics("cursor_hand_over").await?;
    let store = projection_partitions();
    hand_over(&ctx.pool, 0, -1, 40).await?;
    assert_eq!(
        store.load(&ctx.pool, PROJECTION, 0).await?,
        Some(Stored {
            next: None,
            applied_through: Some(40)
        })
    );
    let first = spans(0, 12..15);
    write(&ctx.pool, &store, PROJECTION, &first).await?;
    assert_eq!(
        store.load(&ctx.pool, PROJECTION, 0).await?,
        Some(Stored {
            next: Some(15),
            applied_through: Some(40)
        }),
        "pinned; a batch without an applied position leaves the stored one"
    );
    // Pinned now: the same start again belongs to someone else.
    let lost = not_owner(write(&ctx.pool, &store, PROJECTION, &first).await);
    assert_eq!(lost, Some(vec![0]));
    Ok(())
}

#[tokio::test]
async fn a_stored_applied_position_only_grows() -> anyhow::Result<()> {
    let ctx = TestContext::without_topics("cursor_position").await?;
    let store = projection_partitions();
    hand_over(&ctx.pool, 1, 0, 100).await?;
    // A batch of repeats only: its applied position is below the stored one.
    let mut repeats = Spans::default();
    repeats.add(1, 0).applied_through = Some(90);
    repeats.add(1, 1);
    write(&ctx.pool, &store, PROJECTION, &repeats).await?;
    assert_eq!(
        store.load(&ctx.pool, PROJECTION, 1).await?,
        Some(Stored {
            next: Some(2),
            applied_through: Some(100)
        })
    );
    let mut newer = Spans::default();
    newer.add(1, 2).applied_through = Some(130);
    write(&ctx.pool, &store, PROJECTION, &newer).await?;
    assert_eq!(
        store
            .load(&ctx.pool, PROJECTION, 1)
            .await?
            .and_then(|s| s.applied_through),
        Some(130)
    );
    Ok(())
}

//! `esk_claim_and_lock` (migration 0012), ingest's steps 2–4 in one round trip, against
//! Postgres: it claims, then claims events, then locks, in that order, and it leaves step 4 to
//! the attempt whenever something was not claimed. Its callers' behaviour (retries, duplicate
//! event ids, conflicts, deletes) is tested through the HTTP and Kafka entry points; this file
//! pins what the statement itself does, including waiting for an in-flight holder of an id.

use std::time::Duration;

use esk_tests::TestContext;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

/// One append of the call: its id, stream and event ids.
struct Part {
    append_id: Uuid,
    stream: &'static str,
    events: Vec<Uuid>,
}

fn part(stream: &'static str, events: usize) -> Part {
    Part {
        append_id: Uuid::new_v4(),
        stream,
        events: (0..events).map(|_| Uuid::new_v4()).collect(),
    }
}

/// What one call returned, by row kind.
#[derive(Debug, Default)]
struct Returned {
    appends: Vec<Uuid>,
    events: Vec<(Uuid, Uuid)>,
    /// (stream, version) in the order the rows came back.
    streams: Vec<(String, i64)>,
}

async fn call(
    conn: &mut PgConnection,
    parts: &[&Part],
    lock_streams: &[&str],
) -> anyhow::Result<Returned> {
    let ids: Vec<Uuid> = parts.iter().map(|p| p.append_id).collect();
    let streams: Vec<&str> = parts.iter().map(|p| p.stream).collect();
    let fingerprints: Vec<Uuid> = parts.iter().map(|_| Uuid::new_v4()).collect();
    let counts: Vec<i32> = parts.iter().map(|p| p.events.len() as i32).collect();
    let event_ids: Vec<Uuid> = parts.iter().flat_map(|p| p.events.clone()).collect();
    let event_appends: Vec<Uuid> = parts
        .iter()
        .flat_map(|p| p.events.iter().map(|_| p.append_id))
        .collect();
    let rows = sqlx::query(
        "SELECT kind, id, owner, stream_id, version
         FROM esk_claim_and_lock($1, $2, $3, $4, $5, $6, $7, $8, -1)",
    )
    .bind(Uuid::new_v4())
    .bind(&ids)
    .bind(&streams)
    .bind(&fingerprints)
    .bind(&counts)
    .bind(&event_ids)
    .bind(&event_appends)
    .bind(lock_streams)
    .fetch_all(conn)
    .await?;
    let mut returned = Returned::default();
    for row in rows {
        let kind: i8 = row.try_get("kind")?;
        match kind as u8 {
            b'a' => returned.appends.push(row.try_get("id")?),
            b'e' => returned
                .events
                .push((row.try_get("id")?, row.try_get("owner")?)),
            b's' => returned
                .streams
                .push((row.try_get("stream_id")?, row.try_get("version")?)),
            other => anyhow::bail!("unknown row kind {other}"),
        }
    }
    Ok(returned)
}

#[tokio::test]
async fn everything_claimed_locks_every_stream_given_in_sorted_order() -> anyhow::Result<()> {
    let ctx = TestContext::without_topics("fold_all").await?;
    sqlx::query("INSERT INTO streams (stream_id, version) VALUES ('b-existing', 4)")
        .execute(&ctx.pool)
        .await?;
    let (one, two) = (part("c-new", 2), part("b-existing", 1));
    let mut tx = ctx.pool.begin().await?;
    let returned = call(&mut tx, &[&one, &two], &["b-existing", "c-new"]).await?;
    let mut appends = returned.appends.clone();
    appends.sort();
    let mut expected = vec![one.append_id, two.append_id];
    expected.sort();
    assert_eq!(appends, expected);
    assert_eq!(returned.events.len(), 3);
    for (event, owner) in &returned.events {
        let part = [&one, &two]
            .into_iter()
            .find(|p| p.events.contains(event))
            .expect("a claimed event is one of the call's");
        assert_eq!(*owner, part.append_id);
    }
    assert_eq!(
        returned.streams,
        vec![("b-existing".to_owned(), 4), ("c-new".to_owned(), -1)],
        "every stream locked, in order, the new one as a placeholder"
    );
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM append_ledger WHERE status = 'pending'")
            .fetch_one(&mut *tx)
            .await?;
    assert_eq!(pending, 2);
    tx.rollback().await?;
    Ok(())
}

#[tokio::test]
async fn a_decided_append_or_a_taken_event_id_leaves_step_4_to_the_attempt() -> anyhow::Result<()> {
    let ctx = TestContext::without_topics("fold_partial").await?;
    let first = part("s-1", 2);
    let mut conn = ctx.pool.acquire().await?;
    let all = call(&mut conn, &[&first], &["s-1"]).await?;
    assert_eq!(all.streams.len(), 1);

    // The same append id again, beside a new append: only the new one is claimed, its events
    // are claimed, and nothing is locked.
    let fresh = part("s-2", 2);
    let retried = call(&mut conn, &[&first, &fresh], &["s-1", "s-2"]).await?;
    assert_eq!(retried.appends, vec![fresh.append_id]);
    let mut claimed: Vec<Uuid> = retried.events.iter().map(|(e, _)| *e).collect();
    claimed.sort();
    let mut expected = fresh.events.clone();
    expected.sort();
    assert_eq!(
        claimed, expected,
        "only the events of the append claimed now"
    );
    assert!(retried.streams.is_empty(), "step 4 is the attempt's");

    // A new append reusing an event id someone holds: claimed, the other id claimed, no lock.
    let reuser = Part {
        append_id: Uuid::new_v4(),
        stream: "s-3",
        events: vec![Uuid::new_v4(), first.events[0]],
    };
    let duplicate = call(&mut conn, &[&reuser], &["s-3"]).await?;
    assert_eq!(duplicate.appends, vec![reuser.append_id]);
    assert_eq!(duplicate.events, vec![(reuser.events[0], reuser.append_id)]);
    assert!(duplicate.streams.is_empty());
    let placeholders: i64 =
        sqlx::query_scalar("SELECT count(*) FROM streams WHERE stream_id <> 's-1'")
            .fetch_one(&mut *conn)
            .await?;
    assert_eq!(
        placeholders, 0,
        "no stream row for the calls that left step 4"
    );
    Ok(())
}

#[tokio::test]
async fn an_in_flight_holder_of_the_append_id_is_waited_for() -> anyhow::Result<()> {
    let ctx = TestContext::without_topics("fold_wait").await?;
    let held = part("w-1", 1);
    let mut holder = ctx.pool.begin().await?;
    let first = call(&mut holder, &[&held], &["w-1"]).await?;
    assert_eq!(first.appends, vec![held.append_id]);

    let pool = ctx.pool.clone();
    let retry = Part {
        append_id: held.append_id,
        stream: "w-1",
        events: held.events.clone(),
    };
    let waiting = tokio::spawn(async move {
        let mut conn = pool.acquire().await?;
        call(&mut conn, &[&retry], &["w-1"]).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the second claim must wait for the holder's transaction"
    );
    holder.commit().await?;
    let second = tokio::time::timeout(Duration::from_secs(10), waiting).await???;
    assert!(
        second.appends.is_empty(),
        "decided by the holder: not claimed again"
    );
    assert!(second.events.is_empty());
    assert!(second.streams.is_empty());
    Ok(())
}

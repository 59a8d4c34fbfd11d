//! Memory is bounded by bytes, not only by counts: with events of about a MiB, read pages,
//! indexing batches, publish rounds and projection queues stop at their byte budgets, so every
//! process stays under a stated resident size while hundreds of megabytes flow through, and
//! pages cut short by their budget still lead on (`next`) to every event.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use esk_tests::indexer::{self, wait_indexed};
use esk_tests::ingest::{self, Client};
use esk_tests::process::Process;
use esk_tests::{eventually, projector, TestContext};
use serde_json::{json, Value};
use uuid::Uuid;

/// Events of this many bytes each, and how many.
const EVENT_BYTES: usize = 1_000_000;
const EVENTS: usize = 300;
/// The resident size no process may pass (the stated bound).
const RSS_BOUND_MIB: u64 = 512;

/// Samples a process's resident size every 100 ms until stopped; keeps the peak.
fn watch_rss(pid: u32, stop: Arc<AtomicBool>) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let peak = Arc::new(AtomicU64::new(0));
    let seen = peak.clone();
    let handle = tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            if let Some(kib) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<u64>().ok())
                })
            {
                seen.fetch_max(kib, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (peak, handle)
}

async fn all_pages(client: &Client, first: &str) -> anyhow::Result<(usize, usize)> {
    let (mut events, mut pages) = (HashSet::new(), 0);
    let mut path = Some(first.to_owned());
    while let Some(current) = path.take() {
        let page = client.get(&current).await?;
        anyhow::ensure!(page.status == 200, "{current}: {:?}", page.body);
        pages += 1;
        for event in page.body["events"].as_array().into_iter().flatten() {
            events.insert(event["event_id"].as_str().unwrap_or_default().to_owned());
        }
        if let Some(next) = page.body["next"].as_i64() {
            let base = current.split('?').next().unwrap_or(&current);
            path = Some(format!("{base}?from={next}&limit=1000"));
        }
    }
    Ok((events.len(), pages))
}

#[tokio::test]
async fn megabyte_events_keep_every_process_under_its_memory_bound() -> anyhow::Result<()> {
    let ctx = TestContext::new("memory_budget").await?;
    let ingest_process = ingest::spawn(&ctx, &[("ESK_INGEST_KAFKA_APPENDS", "false")]).await?;
    let indexer_process = indexer::spawn(&ctx, &[]).await?;
    let projector_process = projector::spawn(&ctx, None, &[]).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let watched: Vec<(&str, &Process)> = vec![
        ("ingest", &ingest_process),
        ("indexer", &indexer_process),
        ("projector", &projector_process),
    ];
    let watchers: Vec<_> = watched
        .iter()
        .map(|(name, p)| (*name, watch_rss(p.pid(), stop.clone())))
        .collect();

    let client = Client::new(&ingest_process);
    let blob = "m".repeat(EVENT_BYTES);
    let mut writers = Vec::new();
    for writer in 0..6 {
        let client = client.clone();
        let blob = blob.clone();
        writers.push(tokio::spawn(async move {
            for i in (writer..EVENTS).step_by(6) {
                let body = json!({"expected_version": "any", "events": [
                    {"id": Uuid::new_v4(), "type": "Big", "data": {"i": i, "blob": blob}}]});
                let reply = client.append("Mem-1", &body).await?;
                anyhow::ensure!(reply.status == 201, "{:?}", reply.body);
            }
            anyhow::Ok(())
        }));
    }
    for writer in writers {
        writer.await??;
    }
    wait_indexed(&ctx, EVENTS as i64, Duration::from_secs(120)).await?;
    // Published and projected too.
    let projected = eventually(Duration::from_secs(120), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(count), 0)::int8 FROM projection_category_type_counts",
        )
        .fetch_one(&ctx.pool)
        .await
        .ok()?;
        (n == EVENTS as i64).then_some(())
    })
    .await;
    assert!(projected.is_some(), "the projection caught up");

    // Pages ask for 1,000 events; their byte budget cuts them, and `next` leads on.
    let (stream_events, stream_pages) =
        all_pages(&client, "/streams/Mem-1/events?limit=1000").await?;
    let (all_events, _) = all_pages(&client, "/streams/$all/events?limit=1000").await?;
    let (category_events, _) = all_pages(&client, "/categories/Mem/events?limit=1000").await?;
    assert_eq!(
        (stream_events, all_events, category_events),
        (EVENTS, EVENTS, EVENTS)
    );
    assert!(stream_pages > 5, "pages were cut by bytes: {stream_pages}");
    let first = client.get("/streams/$all/events?limit=1000").await?;
    let first_len = first.body["events"].as_array().map_or(0, Vec::len);
    assert!(
        (1..EVENTS).contains(&first_len) && first.body["next"] != Value::Null,
        "{first_len} events on the first page"
    );

    stop.store(true, Ordering::SeqCst);
    let mut peaks = Vec::new();
    for (name, (peak, handle)) in watchers {
        handle.await?;
        peaks.push((name, peak.load(Ordering::SeqCst) / 1024));
    }
    eprintln!("peak resident sizes (MiB): {peaks:?}");
    for (name, mib) in &peaks {
        assert!(
            *mib > 0 && *mib < RSS_BOUND_MIB,
            "{name} peaked at {mib} MiB; the bound is {RSS_BOUND_MIB} MiB ({peaks:?})"
        );
    }
    Ok(())
}

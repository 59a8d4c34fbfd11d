//! Ingest under faults: kill -9 mid-load, then restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use esk_tests::ingest::{self, events, Client};
use esk_tests::{kafka, TestContext};
use serde_json::{json, Value};
use uuid::Uuid;

/// What a writer knows about one of its appends.
#[derive(Debug, Clone)]
enum Known {
    /// 201 with these versions.
    Acked { first: i64, last: i64 },
    /// Sent, no answer (the process died under it).
    Unknown,
}

#[derive(Debug, Clone)]
struct Sent {
    stream: String,
    body: Value,
    known: Known,
}

#[tokio::test]
async fn survives_ingest_kill_mid_load() -> anyhow::Result<()> {
    let ctx = TestContext::new("ingest_kill").await?;
    let env: &[(&str, &str)] = &[("ESK_INGEST_KAFKA_APPENDS", "false")];
    let mut process = ingest::spawn(&ctx, env).await?;
    let client = Client::new(&process);
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let client = client.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut sent: HashMap<Uuid, Sent> = HashMap::new();
            let mut stream_n = 0;
            let mut version: Option<i64> = None;
            while !stop.load(Ordering::SeqCst) {
                if version.is_some_and(|v| v >= 19) {
                    stream_n += 1;
                    version = None;
                }
                let stream = format!("Kill-{w}-{stream_n}");
                let append_id = Uuid::new_v4();
                let expected = version.map_or(json!("no_stream"), |v| json!(v));
                let body = json!({"expected_version": expected, "append_id": append_id, "events": events(2)});
                match client.append(&stream, &body).await {
                    Ok(reply) if reply.status == 201 => {
                        let first = reply.body["first_version"].as_i64().unwrap_or(-9);
                        let last = reply.body["last_version"].as_i64().unwrap_or(-9);
                        version = Some(last);
                        sent.insert(append_id, Sent { stream, body, known: Known::Acked { first, last } });
                    }
                    Ok(reply) => anyhow::bail!("unexpected reply {} {:?}", reply.status, reply.body),
                    Err(_) => {
                        // The process died under this request; its writer stops here.
                        sent.insert(append_id, Sent { stream, body, known: Known::Unknown });
                        break;
                    }
                }
            }
            Ok(sent)
        }));
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    process.kill9()?;
    stop.store(true, Ordering::SeqCst);
    let mut sent: HashMap<Uuid, Sent> = HashMap::new();
    for writer in writers {
        sent.extend(writer.await??);
    }
    let acked = sent
        .values()
        .filter(|s| matches!(s.known, Known::Acked { .. }))
        .count();
    assert!(
        acked > 50,
        "the load ran before the kill ({acked} acknowledged)"
    );

    let restarted = ingest::spawn(&ctx, env).await?;
    let client = Client::new(&restarted);
    let ledger: HashMap<Uuid, ingest::LedgerRow> = ingest::ledger(&ctx)
        .await?
        .into_iter()
        .map(|r| (r.append_id, r))
        .collect();

    // Every acknowledged append is in the ledger with its versions; nothing the client never
    // saw acknowledged is there unless it was in flight at the kill.
    for (append_id, s) in &sent {
        if let Known::Acked { first, last } = s.known {
            let row = ledger.get(append_id).ok_or_else(|| {
                anyhow::anyhow!("acked append {append_id} missing from the ledger")
            })?;
            assert_eq!(
                (row.status.as_str(), row.first_version, row.last_version),
                ("accepted", Some(first), Some(last))
            );
        }
    }
    for append_id in ledger.keys() {
        assert!(
            sent.contains_key(append_id),
            "ledger row {append_id} was never sent"
        );
    }
    // Retrying the in-flight ones gets the outcome the ledger holds, or applies them now.
    for (append_id, s) in &sent {
        if matches!(s.known, Known::Unknown) {
            let reply = client.append(&s.stream, &s.body).await?;
            assert_eq!(reply.status, 201, "{:?}", reply.body);
            if let Some(row) = ledger.get(append_id) {
                assert_eq!(
                    reply.body["first_version"].as_i64(),
                    row.first_version,
                    "retry answered from the ledger"
                );
            }
        }
    }
    // Every accepted append's events are on ingest-log from the attempt the ledger names.
    let ledger = ingest::ledger(&ctx).await?;
    let records = kafka::read_topic_until_idle(
        &ctx.brokers,
        &ctx.topics.ingest_log,
        Duration::from_secs(3),
        Duration::from_secs(60),
    )?;
    let mut on_log: HashMap<(Uuid, Uuid), usize> = HashMap::new();
    for event in kafka::ingest_log_events(&records)? {
        *on_log
            .entry((event.append_id, event.attempt_id))
            .or_default() += 1;
    }
    let mut per_stream: HashMap<&str, Vec<(i64, i64)>> = HashMap::new();
    for row in &ledger {
        assert_eq!(row.status, "accepted");
        assert_eq!(
            on_log.get(&(row.append_id, row.attempt_id)),
            Some(&2),
            "events of {} on ingest-log",
            row.append_id
        );
        per_stream.entry(&row.stream_id).or_default().push((
            row.first_version.unwrap_or(-9),
            row.last_version.unwrap_or(-9),
        ));
    }
    // Versions per stream are contiguous from 0 and match the stream index.
    for (stream, mut ranges) in per_stream {
        ranges.sort_unstable();
        let mut next = 0;
        for (first, last) in &ranges {
            assert_eq!(*first, next, "stream {stream}: {ranges:?}");
            next = last + 1;
        }
        assert_eq!(ingest::stream_version(&ctx, stream).await?, Some(next - 1));
    }
    Ok(())
}

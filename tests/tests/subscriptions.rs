//! HTTP subscriptions (Server-Sent Events) against the real stack: a resume with
//! `Last-Event-ID` across a disconnect while appends continue sees every position exactly
//! once; a subscriber that stops reading is disconnected with a reason while the serving
//! process's memory stays flat; heartbeats while idle; scopes, bad input and the cap on
//! subscriptions; esk-client's subscriptions.

use std::time::Duration;

use esk_client::Filters;
use esk_runtime::scope::Scope;
use esk_runtime::tokens;
use esk_tests::indexer;
use esk_tests::ingest::{self, Client};
use esk_tests::TestContext;
use futures::TryStreamExt;
use serde_json::{json, Value};

const HTTP_ONLY: (&str, &str) = ("ESK_INGEST_KAFKA_APPENDS", "false");

/// One SSE message as the wire has it.
#[derive(Debug, Default, Clone)]
struct Message {
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
    comments: Vec<String>,
}

/// A raw SSE response, read only when asked.
struct Sse {
    response: reqwest::Response,
    buffer: String,
}

impl Sse {
    async fn open(
        http: &reqwest::Client,
        url: &str,
        last_event_id: Option<i64>,
    ) -> anyhow::Result<Sse> {
        let mut request = http.get(url);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await?;
        anyhow::ensure!(
            response.status() == 200,
            "{url}: {} {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        anyhow::ensure!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Ok(Sse {
            response,
            buffer: String::new(),
        })
    }

    /// The next message (comments included), or None at the end of the body.
    async fn next(&mut self, within: Duration) -> anyhow::Result<Option<Message>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut message = Message::default();
                for line in block.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
                    match field {
                        "" => message.comments.push(value),
                        "id" => message.id = Some(value),
                        "event" => message.event = Some(value),
                        "data" => message.data = Some(value),
                        _ => {}
                    }
                }
                return Ok(Some(message));
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .map_err(|_| anyhow::anyhow!("no SSE message within {within:?}"))??;
            match chunk {
                Some(bytes) => self.buffer.push_str(std::str::from_utf8(&bytes)?),
                None => return Ok(None),
            }
        }
    }
}

/// The ids of `messages` that are events (have data), checked against their envelopes.
fn event_ids(messages: &[Message], id_field: &str) -> anyhow::Result<Vec<i64>> {
    let mut ids = Vec::new();
    for message in messages {
        let Some(data) = &message.data else { continue };
        let envelope: Value = serde_json::from_str(data)?;
        let id: i64 = message
            .id
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("an event without an id"))?
            .parse()?;
        anyhow::ensure!(envelope[id_field] == json!(id), "id {id} is not {envelope}");
        anyhow::ensure!(
            message.event.as_deref() == envelope["type"].as_str(),
            "event {:?} is not the type of {envelope}",
            message.event
        );
        ids.push(id);
    }
    Ok(ids)
}

/// No gap, no repeat: exactly `first..=last`, in order.
fn assert_exactly_once(ids: &[i64], first: i64, last: i64) {
    let expected: Vec<i64> = (first..=last).collect();
    if ids != expected {
        let repeats = ids.windows(2).filter(|w| w[1] <= w[0]).count();
        let gaps = ids.windows(2).filter(|w| w[1] > w[0] + 1).count();
        panic!(
            "{} ids, expected {first}..={last}: {repeats} repeats, {gaps} gaps, first {:?}, last {:?}",
            ids.len(),
            ids.first(),
            ids.last()
        );
    }
}

async fn append(client: &Client, stream: &str, events: Vec<Value>) -> anyhow::Result<()> {
    let reply = client
        .append(
            stream,
            &json!({"expected_version": "any", "events": events}),
        )
        .await?;
    anyhow::ensure!(reply.status == 201, "append: {reply:?}");
    Ok(())
}

#[tokio::test]
async fn a_resume_with_last_event_id_sees_every_position_exactly_once() -> anyhow::Result<()> {
    let ctx = TestContext::new("sse_resume").await?;
    let ingest = ingest::spawn(&ctx, &[HTTP_ONLY]).await?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    let client = Client::new(&ingest);
    let http = ctx.http()?;
    const APPENDS: i64 = 60;
    const PER: i64 = 2;
    let appender = {
        let client = client.clone();
        tokio::spawn(async move {
            for i in 0..APPENDS {
                let stream = if i % 3 == 0 { "Invoice-1" } else { "Order-1" };
                let kind = if i % 2 == 0 { "Placed" } else { "Paid" };
                let events = (0..PER).map(|_| ingest::event(kind)).collect();
                append(&client, stream, events).await?;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            anyhow::Ok(())
        })
    };
    // The client crate's subscription, filtered, alongside.
    let api = client.api()?.clone();
    let typed = tokio::spawn(async move {
        first_events(
            api.subscribe_all(&Filters::all().categories(["Invoice"]), Some(1)),
            20 * PER as usize,
        )
        .await
    });

    let url = format!("{}/subscriptions/$all?from=1", ingest.http);
    let mut messages = Vec::new();
    let mut last: Option<i64> = None;
    let mut reconnects = 0;
    while event_ids(&messages, "global_position")?.len() < (APPENDS * PER) as usize {
        let mut sse = Sse::open(&http, &url, last).await?;
        // Read a few events, then drop the connection while appends go on.
        let mut taken = 0;
        while taken < 25 {
            let Some(message) = sse.next(Duration::from_secs(30)).await? else {
                break;
            };
            if let Some(id) = &message.id {
                last = Some(id.parse()?);
            }
            if message.data.is_some() {
                taken += 1;
            }
            messages.push(message);
            if event_ids(&messages, "global_position")?.len() >= (APPENDS * PER) as usize {
                break;
            }
        }
        drop(sse);
        reconnects += 1;
    }
    appender.await??;
    assert!(
        reconnects >= 3,
        "only {reconnects} connections: no resume tested"
    );
    assert_exactly_once(&event_ids(&messages, "global_position")?, 1, APPENDS * PER);

    // esk-client: only the category asked, in order, each once.
    let typed = tokio::time::timeout(Duration::from_secs(60), typed).await???;
    let invoices = event_ids_of(&typed);
    assert_eq!(invoices.len(), 20 * PER as usize);
    assert!(typed.iter().all(|e| e.stream_id == "Invoice-1"));
    assert!(invoices.windows(2).all(|w| w[0] < w[1]), "{invoices:?}");

    // A stream subscription: ids are versions, from the version asked.
    let mut sse = Sse::open(
        &http,
        &format!("{}/subscriptions/streams/Order-1?from=5", ingest.http),
        None,
    )
    .await?;
    let mut stream_messages = Vec::new();
    while event_ids(&stream_messages, "version")?.len() < 10 {
        match sse.next(Duration::from_secs(10)).await? {
            Some(message) => stream_messages.push(message),
            None => anyhow::bail!("the stream subscription ended"),
        }
    }
    assert_exactly_once(&event_ids(&stream_messages, "version")?, 5, 14);
    Ok(())
}

fn event_ids_of(events: &[esk_model::wire::CanonicalEvent]) -> Vec<i64> {
    events.iter().map(|e| e.global_position).collect()
}

/// The first `n` events of a subscription.
async fn first_events(
    mut events: esk_client::Events,
    n: usize,
) -> Result<Vec<esk_model::wire::CanonicalEvent>, esk_client::ClientError> {
    let mut first = Vec::new();
    while first.len() < n {
        match events.try_next().await? {
            Some(event) => first.push(event),
            None => break,
        }
    }
    Ok(first)
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_disconnected_with_a_reason_and_memory_stays_flat(
) -> anyhow::Result<()> {
    let ctx = TestContext::new("sse_slow").await?;
    let writer = ingest::spawn(&ctx, &[HTTP_ONLY]).await?;
    // The subscription is served by its own process, so its memory is the subscription's.
    let reader = ingest::spawn(
        &ctx,
        &[
            HTTP_ONLY,
            ("ESK_INGEST_SUBSCRIPTION_BUFFER", "8"),
            ("ESK_INGEST_SUBSCRIPTION_SLOW_MS", "1000"),
        ],
    )
    .await?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    let client = Client::new(&writer);
    let http = ctx.http()?;

    let mut sse = Sse::open(
        &http,
        &format!("{}/subscriptions/$all?from=1", reader.http),
        None,
    )
    .await?;
    let first = sse.next(Duration::from_secs(10)).await?;
    assert!(first.is_some_and(|m| m.id.is_some() && m.data.is_none()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = reader.rss_kib().ok_or_else(|| anyhow::anyhow!("no RSS"))?;

    // 96 MiB of events while the subscriber reads nothing: far more than its buffer and the
    // sockets' buffers hold.
    let payload = "x".repeat(256 * 1024);
    const APPENDS: i64 = 96;
    for _ in 0..APPENDS {
        let events = (0..4)
            .map(|_| json!({"id": uuid::Uuid::new_v4(), "type": "Big", "data": {"blob": payload}}))
            .collect();
        append(&client, "Blob-1", events).await?;
    }
    let total = APPENDS * 4;
    anyhow::ensure!(
        client
            .api()?
            .wait_for_position(total, Duration::from_secs(60))
            .await?,
        "not indexed"
    );
    // Well past the slow limit.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = reader.rss_kib().ok_or_else(|| anyhow::anyhow!("no RSS"))?;

    // Now read what is left: some events, the reason, the end.
    let mut messages = Vec::new();
    while let Some(message) = sse.next(Duration::from_secs(30)).await? {
        messages.push(message);
    }
    let reason = messages
        .iter()
        .flat_map(|m| m.comments.iter())
        .find(|c| c.starts_with("closed "))
        .cloned();
    let reason = reason.ok_or_else(|| anyhow::anyhow!("no reason before the end"))?;
    assert!(reason.starts_with("closed slow_subscriber: "), "{reason}");
    let ids = event_ids(&messages, "global_position")?;
    assert!(
        (ids.len() as i64) < total,
        "{} of {total} events delivered: the subscriber was not cut off",
        ids.len()
    );
    let growth_mib = after.saturating_sub(before) / 1024;
    // Allocator arenas and one catch-up page (4 MiB of rows) account for a steady 20-odd MiB;
    // what matters is that it is far below what waited.
    assert!(
        growth_mib < 40,
        "the serving process grew {growth_mib} MiB while 96 MiB waited for a stopped reader"
    );
    // Its slot is free again, and a resume continues after the last id it had.
    let resume_from = ids.last().copied().unwrap_or(0);
    let mut again = Sse::open(
        &http,
        &format!("{}/subscriptions/$all", reader.http),
        Some(resume_from),
    )
    .await?;
    let mut resumed = Vec::new();
    while event_ids(&resumed, "global_position")?.len() < 3 {
        match again.next(Duration::from_secs(30)).await? {
            Some(message) => resumed.push(message),
            None => anyhow::bail!("the resumed subscription ended"),
        }
    }
    assert_eq!(
        event_ids(&resumed, "global_position")?,
        vec![resume_from + 1, resume_from + 2, resume_from + 3]
    );
    // The metrics agree: one subscription ended (the slow one), one is open (the resumed one).
    let metrics = indexer::metrics(&reader).await?;
    assert_eq!(
        metrics.get("esk_ingest_subscriptions_ended_total"),
        Some(&1.0)
    );
    assert_eq!(metrics.get("esk_ingest_subscriptions_open"), Some(&1.0));
    Ok(())
}

#[tokio::test]
async fn heartbeats_arrive_while_idle() -> anyhow::Result<()> {
    let ctx = TestContext::new("sse_heartbeat").await?;
    let ingest = ingest::spawn(
        &ctx,
        &[HTTP_ONLY, ("ESK_INGEST_SUBSCRIPTION_HEARTBEAT_MS", "300")],
    )
    .await?;
    let http = ctx.http()?;
    let mut sse = Sse::open(&http, &format!("{}/subscriptions/$all", ingest.http), None).await?;
    let started = tokio::time::Instant::now();
    let mut heartbeats = 0;
    while heartbeats < 4 {
        let message = sse
            .next(Duration::from_secs(5))
            .await?
            .ok_or_else(|| anyhow::anyhow!("ended"))?;
        assert!(
            message.data.is_none(),
            "an event on an empty store: {message:?}"
        );
        if message.comments.iter().any(|c| c == "heartbeat") {
            heartbeats += 1;
        }
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "4 heartbeats every 300 ms took {took:?}"
    );
    Ok(())
}

#[tokio::test]
async fn scopes_bad_input_and_the_cap_are_enforced() -> anyhow::Result<()> {
    let ctx = TestContext::new("sse_refusals").await?;
    let ingest = ingest::spawn(&ctx, &[HTTP_ONLY, ("ESK_INGEST_MAX_SUBSCRIPTIONS", "2")]).await?;
    let scopes = |list: &[&str]| -> anyhow::Result<Vec<Scope>> {
        list.iter().map(|s| Ok(s.parse()?)).collect()
    };
    let orders = tokens::create(&ctx.pool, "orders", &scopes(&["read:Order-*"])?, None).await?;
    let one = tokens::create(&ctx.pool, "one", &scopes(&["read:Order-1"])?, None).await?;
    let status = |token: String, path: &'static str| {
        let base = ingest.http.clone();
        async move {
            let http = esk_tests::bearer_client(&token)?;
            let response = http.get(format!("{base}{path}")).send().await?;
            let status = response.status().as_u16();
            let body: Value = if status == 200 {
                Value::Null
            } else {
                response.json().await?
            };
            anyhow::Ok((status, body["error"]["code"].as_str().map(str::to_owned)))
        }
    };
    let forbidden = Some("forbidden".to_owned());
    for (token, path, expected) in [
        (&orders, "/subscriptions/$all", (403, forbidden.clone())),
        (
            &orders,
            "/subscriptions/$all?types=A",
            (403, forbidden.clone()),
        ),
        (
            &orders,
            "/subscriptions/$all?categories=Order,User",
            (403, forbidden.clone()),
        ),
        (
            &orders,
            "/subscriptions/streams/User-1",
            (403, forbidden.clone()),
        ),
        (
            &one,
            "/subscriptions/streams/Order-2",
            (403, forbidden.clone()),
        ),
        (
            &one,
            "/subscriptions/$all?categories=Order",
            (403, forbidden.clone()),
        ),
        (&orders, "/subscriptions/$all?categories=Order", (200, None)),
        (&one, "/subscriptions/streams/Order-1", (200, None)),
    ] {
        assert_eq!(status(token.clone(), path).await?, expected, "{path}");
    }
    let admin = ctx.token.clone();
    for (path, code) in [
        ("/subscriptions/$all?types=", "invalid_filter"),
        ("/subscriptions/$all?categories=A-1", "invalid_filter"),
        ("/subscriptions/$all?types=A%0AB", "invalid_filter"),
        ("/subscriptions/$all?from=x", "invalid_parameter"),
        ("/subscriptions/$all?from=-3", "invalid_parameter"),
        ("/subscriptions/$all?limit=3", "invalid_parameter"),
        (
            "/subscriptions/streams/Order-1?types=A",
            "invalid_parameter",
        ),
    ] {
        assert_eq!(
            status(admin.clone(), path).await?,
            (400, Some(code.to_owned())),
            "{path}"
        );
    }
    let http = ctx.http()?;
    let response = http
        .get(format!("{}/subscriptions/$all", ingest.http))
        .header("last-event-id", "abc")
        .send()
        .await?;
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<Value>().await?["error"]["code"],
        "invalid_parameter"
    );

    // Two may be open (once the slots of the refused and dropped ones above are free); the
    // third is refused until one closes.
    let url = format!("{}/subscriptions/$all", ingest.http);
    let open = || {
        let (http, url) = (http.clone(), url.clone());
        async move { Sse::open(&http, &url, None).await.ok() }
    };
    let first = esk_tests::eventually(Duration::from_secs(10), open)
        .await
        .ok_or_else(|| anyhow::anyhow!("no first subscription"))?;
    let _second = esk_tests::eventually(Duration::from_secs(10), open)
        .await
        .ok_or_else(|| anyhow::anyhow!("no second subscription"))?;
    let (code, error) = status(admin.clone(), "/subscriptions/$all").await?;
    assert_eq!(
        (code, error.as_deref()),
        (503, Some("too_many_subscriptions"))
    );
    drop(first);
    let reopened =
        esk_tests::eventually(Duration::from_secs(10), || {
            let admin = admin.clone();
            let status = &status;
            async move {
                matches!(status(admin, "/subscriptions/$all").await, Ok((200, _))).then_some(())
            }
        })
        .await;
    assert!(
        reopened.is_some(),
        "the closed subscription's slot was not freed"
    );
    Ok(())
}

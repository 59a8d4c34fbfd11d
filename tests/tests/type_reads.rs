//! Type reads (`GET /types/{event_type}/events`) and the `types` / `categories` filters of
//! `$all` reads against the real stack: exactly the matching events in position order with
//! correct `next` paging, every bad input a typed 400, and scopes.

use esk_model::wire::CanonicalEvent;
use esk_runtime::scope::Scope;
use esk_runtime::tokens;
use esk_tests::indexer;
use esk_tests::ingest::{self, urlencode, Client};
use esk_tests::process::Process;
use esk_tests::TestContext;
use serde_json::{json, Value};

/// Ingest and the indexer on a new database and topics.
async fn stack(name: &str) -> anyhow::Result<(TestContext, Process, Process, Client)> {
    let ctx = TestContext::new(name).await?;
    let ingest = ingest::spawn(&ctx, &[("ESK_INGEST_KAFKA_APPENDS", "false")]).await?;
    let indexer = indexer::spawn(&ctx, &[]).await?;
    let client = Client::new(&ingest);
    Ok((ctx, ingest, indexer, client))
}

/// Appends events of `types` to the streams in turn (interleaved), and waits until all are
/// indexed; returns every event of the store, by position.
async fn mixed_history(client: &Client) -> anyhow::Result<Vec<CanonicalEvent>> {
    let streams = ["Order-1", "Invoice-1", "Order-2", "User-1"];
    let types = ["Placed", "Paid", "Shipped"];
    let mut last = 0;
    for round in 0..5 {
        for (i, stream) in streams.iter().enumerate() {
            let events: Vec<Value> = (0..3)
                .map(|k| ingest::event(types[(round + i + k) % types.len()]))
                .collect();
            let reply = client
                .append(
                    stream,
                    &json!({"expected_version": "any", "events": events}),
                )
                .await?;
            anyhow::ensure!(reply.status == 201, "append: {reply:?}");
            last += 3;
        }
    }
    let api = client.api()?;
    anyhow::ensure!(
        api.wait_for_position(last, std::time::Duration::from_secs(30))
            .await?,
        "position {last} not indexed in 30 s"
    );
    let all: Vec<CanonicalEvent> =
        futures::TryStreamExt::try_collect(api.all_events(None, None)).await?;
    anyhow::ensure!(
        all.len() as i64 == last,
        "{} events, {last} appended",
        all.len()
    );
    Ok(all)
}

/// Every event of `path` (with its query), following `next` pages of `limit`; checks each
/// page's `next`.
async fn read_pages(client: &Client, path: &str, limit: usize) -> anyhow::Result<Vec<Value>> {
    let mut events = Vec::new();
    let mut from = 0i64;
    let joiner = if path.contains('?') { '&' } else { '?' };
    loop {
        let reply = client
            .get(&format!("{path}{joiner}from={from}&limit={limit}"))
            .await?;
        anyhow::ensure!(reply.status == 200, "{path}: {reply:?}");
        let page = reply.body["events"].as_array().cloned().unwrap_or_default();
        let next = reply.body["next"].as_i64();
        match (page.last(), next) {
            (Some(last), Some(next)) => {
                anyhow::ensure!(page.len() == limit, "{path}: a short page has a next");
                anyhow::ensure!(
                    last["global_position"].as_i64() == Some(next - 1),
                    "{path}: next {next} does not follow {last}"
                );
                from = next;
            }
            (_, None) => {
                events.extend(page);
                return Ok(events);
            }
            (None, Some(next)) => anyhow::bail!("{path}: an empty page has next {next}"),
        }
        events.extend(page);
    }
}

#[tokio::test]
async fn filtered_reads_return_exactly_the_matching_events_in_position_order() -> anyhow::Result<()>
{
    let (_ctx, _ingest, _indexer, client) = stack("type_reads").await?;
    let all = mixed_history(&client).await?;
    let category =
        |e: &CanonicalEvent| e.stream_id.split('-').next().unwrap_or_default().to_owned();
    type Pick = Box<dyn Fn(&CanonicalEvent) -> bool>;
    let cases: Vec<(&str, Pick)> = vec![
        ("/types/Paid/events", Box::new(|e| e.event_type == "Paid")),
        (
            "/streams/$all/events?types=Placed",
            Box::new(|e| e.event_type == "Placed"),
        ),
        (
            "/streams/$all/events?types=Placed,Shipped",
            Box::new(|e| e.event_type != "Paid"),
        ),
        (
            "/streams/$all/events?categories=Order",
            Box::new(move |e| category(e) == "Order"),
        ),
        (
            "/streams/$all/events?types=Paid&categories=Invoice,User-*",
            Box::new(move |e| e.event_type == "Paid" && category(e) != "Order"),
        ),
        (
            "/types/Shipped/events?categories=Order",
            Box::new(move |e| e.event_type == "Shipped" && category(e) == "Order"),
        ),
        ("/types/Nothing/events", Box::new(|_| false)),
    ];
    for (path, pick) in cases {
        let expected: Vec<Value> = all
            .iter()
            .filter(|e| pick(e))
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?;
        for limit in [1, 4, 1000] {
            let got = read_pages(&client, path, limit).await?;
            assert_eq!(
                got, expected,
                "{path} in pages of {limit}: not exactly the matching events in order"
            );
        }
        if !path.contains("Nothing") {
            assert!(
                !expected.is_empty(),
                "{path} selects nothing: a vacuous case"
            );
        }
    }
    // Past the end: an empty page, no next.
    let reply = client
        .get(&format!("/types/Paid/events?from={}", all.len() + 1))
        .await?;
    assert_eq!(
        (reply.status, reply.body["next"].clone()),
        (200, Value::Null)
    );
    assert_eq!(reply.body["events"], json!([]));
    assert_eq!(reply.body["source"], "Paid");
    Ok(())
}

#[tokio::test]
async fn bad_filters_and_parameters_are_typed_400s() -> anyhow::Result<()> {
    let (_ctx, _ingest, _indexer, client) = stack("type_reads_bad").await?;
    let long = "T".repeat(257);
    let cases = [
        ("/streams/$all/events?types=", "invalid_filter"),
        ("/streams/$all/events?categories=", "invalid_filter"),
        ("/streams/$all/events?types=A,,B", "invalid_filter"),
        ("/streams/$all/events?categories=Order-1", "invalid_filter"),
        ("/streams/$all/events?types=A%07B", "invalid_filter"),
        ("/streams/$all/events?colors=red", "invalid_parameter"),
        ("/streams/$all/events?from=abc", "invalid_parameter"),
        ("/streams/$all/events?types=A&limit=0", "invalid_parameter"),
        (
            "/streams/$all/events?types=A&limit=1001",
            "invalid_parameter",
        ),
        (&format!("/types/{long}/events"), "invalid_filter"),
        ("/types/A%07B/events", "invalid_filter"),
        ("/types/%E2%80%AEA/events", "invalid_filter"),
        ("/types/%20/events", "invalid_filter"),
        ("/types/A/events?types=B", "invalid_parameter"),
        ("/types/A/events?from=-1", "invalid_parameter"),
        ("/types/A/events?from=1.5", "invalid_parameter"),
        ("/types/A/events?categories=", "invalid_filter"),
    ];
    for (path, code) in cases {
        let reply = client.get(path).await?;
        assert_eq!(
            (reply.status, reply.code()),
            (400, Some(code)),
            "{path}: {reply:?}"
        );
        assert!(
            reply.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{path}: no message"
        );
    }
    let reply = client
        .get(&format!("/types/{}/events", urlencode("Order Placed")))
        .await?;
    assert_eq!(
        reply.status, 200,
        "a type with a space is a type: {reply:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_filter_needs_read_on_every_category_it_names_or_on_everything() -> anyhow::Result<()> {
    let (ctx, ingest, _indexer, _client) = stack("type_reads_scopes").await?;
    let scope: Scope = "read:Order-*".parse()?;
    let token = tokens::create(&ctx.pool, "orders", &[scope], None).await?;
    let orders = Client::with_token(&ingest.http, Some(&token));
    for (path, status) in [
        ("/streams/$all/events?categories=Order", 200),
        ("/streams/$all/events?categories=Order-*&types=Paid", 200),
        ("/types/Paid/events?categories=Order", 200),
        ("/streams/$all/events", 403),
        ("/streams/$all/events?types=Paid", 403),
        ("/streams/$all/events?categories=Order,Invoice", 403),
        ("/types/Paid/events", 403),
        ("/types/Paid/events?categories=User", 403),
    ] {
        let reply = orders.get(path).await?;
        assert_eq!(reply.status, status, "{path}: {reply:?}");
        if status == 403 {
            assert_eq!(reply.code(), Some("forbidden"), "{path}");
        }
    }
    let anonymous = Client::for_url(&ingest.http);
    assert_eq!(anonymous.get("/types/Paid/events").await?.status, 401);
    Ok(())
}

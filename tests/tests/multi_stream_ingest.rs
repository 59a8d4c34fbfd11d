//! Multi-stream appends, the ingest side (rules 1–2 of the multi-stream design): `POST
//! /appends` and the Kafka form write several streams all or nothing under one ledger row,
//! answer a retry from it, refuse bad input with typed errors, and produce every part to its
//! stream's partition in records that all name the group.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use esk_model::wire::header;
use esk_runtime::kafka::partition_for_key;
use esk_tests::indexer::{self, wait_indexed};
use esk_tests::ingest::{self, events, urlencode, Client, Reply};
use esk_tests::{kafka, TestContext, TEST_PARTITIONS};
use rdkafka::Message;
use serde_json::{json, Value};
use uuid::Uuid;

/// HTTP only.
const HTTP_ONLY: &[(&str, &str)] = &[("ESK_INGEST_KAFKA_APPENDS", "false")];

async fn append_multi(client: &Client, body: &Value) -> anyhow::Result<Reply> {
    client
        .post_raw("/appends", "application/json", serde_json::to_vec(body)?)
        .await
}

fn part(stream: &str, expected: Value, events: Vec<Value>) -> Value {
    json!({"stream_id": stream, "expected_version": expected, "events": events})
}

/// The ledger row of an append: (status, reject_code, stream_id, event_count, parts).
async fn ledger_row(
    ctx: &TestContext,
    append_id: Uuid,
) -> anyhow::Result<Option<(String, Option<String>, String, i32, Option<Value>)>> {
    Ok(sqlx::query_as(
        "SELECT status, reject_code, stream_id, event_count, parts
         FROM append_ledger WHERE append_id = $1",
    )
    .bind(append_id)
    .fetch_optional(&ctx.pool)
    .await?)
}

/// The `ingest-log` records naming `append_id` as their group, read until the topic is idle.
fn group_records(
    ctx: &TestContext,
    append_id: Uuid,
) -> anyhow::Result<Vec<rdkafka::message::OwnedMessage>> {
    let records = kafka::read_topic_until_idle(
        &ctx.brokers,
        &ctx.topics.ingest_log,
        Duration::from_secs(3),
        Duration::from_secs(60),
    )?;
    let id = append_id.to_string();
    Ok(records
        .into_iter()
        .filter(|r| kafka::header_map(r).get(header::GROUP_APPEND_ID) == Some(&id))
        .collect())
}

/// Checks M's records: one per partition its streams map to, each on its streams' partition,
/// every one naming the group and how many records the attempt produced, all of one attempt;
/// together they hold exactly `expected` (stream, version) pairs.
fn check_group_records(
    records: &[rdkafka::message::OwnedMessage],
    expected: &BTreeSet<(String, i64)>,
) -> anyhow::Result<()> {
    let partitions: BTreeSet<i32> = expected
        .iter()
        .map(|(stream, _)| partition_for_key(stream.as_bytes(), TEST_PARTITIONS))
        .collect();
    let touched: Vec<i32> = records.iter().map(|r| r.partition()).collect();
    assert_eq!(
        touched.len(),
        partitions.len(),
        "one record per partition touched: {touched:?}"
    );
    assert_eq!(touched.iter().copied().collect::<BTreeSet<_>>(), partitions);
    let mut attempts = BTreeSet::new();
    let mut written = BTreeSet::new();
    for record in records {
        let headers = kafka::header_map(record);
        assert_eq!(
            headers.get(header::GROUP_RECORDS),
            Some(&records.len().to_string()),
            "{headers:?}"
        );
        attempts.insert(headers.get(header::ATTEMPT_ID).cloned());
        for event in kafka::ingest_log_events(std::slice::from_ref(record))? {
            assert_eq!(
                partition_for_key(event.stream_id.as_bytes(), TEST_PARTITIONS),
                record.partition(),
                "{} on its stream's partition",
                event.stream_id
            );
            written.insert((event.stream_id, event.version));
        }
    }
    assert_eq!(attempts.len(), 1, "one attempt: {attempts:?}");
    assert_eq!(&written, expected);
    Ok(())
}

#[tokio::test]
async fn a_multi_stream_append_writes_every_stream_once_and_its_records_name_the_group(
) -> anyhow::Result<()> {
    let ctx = TestContext::new("multi_accept").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    let client = Client::new(&ingest_process);
    let before = client
        .append(
            "Order-1",
            &json!({"expected_version": "no_stream", "events": events(2)}),
        )
        .await?;
    assert_eq!(before.status, 201, "{:?}", before.body);

    let body = json!({"appends": [
        part("Order-1", json!(1), events(2)),
        part("Invoice-1", json!("no_stream"), events(1)),
        part("Payment-1", json!("any"), events(3)),
    ]});
    let reply = append_multi(&client, &body).await?;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    let append_id: Uuid = serde_json::from_value(reply.body["append_id"].clone())?;
    assert_eq!(
        reply.body["results"],
        json!([
            {"stream_id": "Order-1", "first_version": 2, "last_version": 3},
            {"stream_id": "Invoice-1", "first_version": 0, "last_version": 0},
            {"stream_id": "Payment-1", "first_version": 0, "last_version": 2},
        ])
    );

    // A retry: the same answer from the one ledger row, nothing new written.
    let again = append_multi(&client, &body).await?;
    assert_eq!((again.status, &again.body), (201, &reply.body));
    let (status, code, stream, count, parts) =
        ledger_row(&ctx, append_id).await?.expect("a ledger row");
    assert_eq!(
        (status.as_str(), code, stream.as_str(), count),
        ("accepted", None, "Order-1", 6)
    );
    assert_eq!(parts, Some(reply.body["results"].clone()));
    // The first stream's versions in the row's own columns, for ledger pruning and the
    // unindexed-append alert.
    let columns: (Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT first_version, last_version FROM append_ledger WHERE append_id = $1",
    )
    .bind(append_id)
    .fetch_one(&ctx.pool)
    .await?;
    assert_eq!(columns, (Some(2), Some(3)));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM append_ledger")
        .fetch_one(&ctx.pool)
        .await?;
    assert_eq!(rows, 2, "one row for the single append, one for M");
    for (stream, version) in [("Order-1", 3), ("Invoice-1", 0), ("Payment-1", 2)] {
        assert_eq!(ingest::stream_version(&ctx, stream).await?, Some(version));
    }

    // Every stream reads its events once indexed.
    wait_indexed(&ctx, 8, Duration::from_secs(60)).await?;
    for (stream, versions) in [
        ("Order-1", vec![0, 1, 2, 3]),
        ("Invoice-1", vec![0]),
        ("Payment-1", vec![0, 1, 2]),
    ] {
        let page = client
            .get(&format!("/streams/{}/events", urlencode(stream)))
            .await?;
        assert_eq!(page.status, 200, "{:?}", page.body);
        let read: Vec<i64> = page.body["events"]
            .as_array()
            .map(|e| e.iter().filter_map(|e| e["version"].as_i64()).collect())
            .unwrap_or_default();
        assert_eq!(read, versions, "{stream}");
    }

    let expected: BTreeSet<(String, i64)> = [
        ("Order-1", 2),
        ("Order-1", 3),
        ("Invoice-1", 0),
        ("Payment-1", 0),
        ("Payment-1", 1),
        ("Payment-1", 2),
    ]
    .into_iter()
    .map(|(s, v)| (s.to_owned(), v))
    .collect();
    check_group_records(&group_records(&ctx, append_id)?, &expected)?;
    Ok(())
}

#[tokio::test]
async fn one_failed_expectation_writes_nothing_and_the_retry_gets_the_same_409(
) -> anyhow::Result<()> {
    let ctx = TestContext::new("multi_conflict").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let client = Client::new(&ingest_process);
    let before = client
        .append(
            "Order-2",
            &json!({"expected_version": "no_stream", "events": events(1)}),
        )
        .await?;
    assert_eq!(before.status, 201, "{:?}", before.body);

    let new_events = events(1);
    let body = json!({"appends": [
        part("Invoice-2", json!("no_stream"), new_events.clone()),
        part("Order-2", json!(5), events(1)),
        part("Payment-2", json!("stream_exists"), events(1)),
    ]});
    let reply = append_multi(&client, &body).await?;
    assert_eq!(reply.status, 409, "{:?}", reply.body);
    assert_eq!(reply.code(), Some("wrong_expected_version"));
    assert_eq!(
        reply.body["error"]["streams"],
        json!([
            {"stream_id": "Order-2", "expected_version": 5, "actual_version": 0},
            {"stream_id": "Payment-2", "expected_version": "stream_exists", "actual_version": null},
        ])
    );

    // Nothing written: no stream moved or appeared, the rejection is recorded, no record.
    assert_eq!(ingest::stream_version(&ctx, "Order-2").await?, Some(0));
    assert_eq!(ingest::stream_version(&ctx, "Invoice-2").await?, None);
    assert_eq!(ingest::stream_version(&ctx, "Payment-2").await?, None);
    let append_id = esk_model::event::derived_group_append_id(
        ["Invoice-2", "Order-2", "Payment-2"]
            .into_iter()
            .zip(body["appends"].as_array().into_iter().flatten())
            .map(|(stream, part)| {
                let ids: Vec<Uuid> = part["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| serde_json::from_value(e["id"].clone()).ok())
                    .collect();
                (stream, ids)
            }),
    );
    let (status, code, _, _, parts) = ledger_row(&ctx, append_id).await?.expect("a ledger row");
    assert_eq!(
        (status.as_str(), code.as_deref()),
        ("rejected", Some("wrong_expected_version"))
    );
    assert_eq!(parts, Some(reply.body["error"]["streams"].clone()));
    assert!(
        group_records(&ctx, append_id)?.is_empty(),
        "nothing produced"
    );

    // The retry gets the same 409, even once the streams would admit it.
    let fix = client
        .append(
            "Payment-2",
            &json!({"expected_version": "no_stream", "events": events(1)}),
        )
        .await?;
    assert_eq!(fix.status, 201, "{:?}", fix.body);
    let again = append_multi(&client, &body).await?;
    assert_eq!((again.status, &again.body), (409, &reply.body));

    // The rejected append's event ids were released: a new append may use them.
    let reuse = client
        .append(
            "Invoice-2",
            &json!({"expected_version": "no_stream", "events": new_events}),
        )
        .await?;
    assert_eq!(reuse.status, 201, "{:?}", reuse.body);
    Ok(())
}

#[tokio::test]
async fn bad_multi_stream_appends_get_typed_errors_and_write_nothing() -> anyhow::Result<()> {
    let ctx = TestContext::new("multi_bad").await?;
    let ingest_process = ingest::spawn(
        &ctx,
        &[
            ("ESK_INGEST_KAFKA_APPENDS", "false"),
            ("ESK_INGEST_MAX_APPEND_STREAMS", "4"),
        ],
    )
    .await?;
    let client = Client::new(&ingest_process);
    let any = || json!("any");
    let five: Vec<Value> = (0..5)
        .map(|i| part(&format!("Many-{i}"), any(), events(1)))
        .collect();
    let shared_event = ingest::event("Happened");
    let cases = [
        (json!({"appends": []}), 422, "empty_appends"),
        (
            json!({"appends": [part("Bad-1", any(), events(1)), part("Bad-1", any(), events(1))]}),
            422,
            "duplicate_stream",
        ),
        (
            json!({"appends": [part("Bad-2", any(), events(1)), part("$$Bad-2", any(), events(1))]}),
            422,
            "invalid_stream_id",
        ),
        (json!({ "appends": five }), 422, "too_many_streams"),
        (
            json!({"appends": [
                part("Bad-3", any(), vec![shared_event.clone()]),
                part("Bad-4", any(), vec![shared_event]),
            ]}),
            422,
            "duplicate_event_id_in_append",
        ),
        (
            json!({"appends": [part("Bad-5", any(), events(1)), part("Bad-6", any(), vec![])]}),
            422,
            "empty_events",
        ),
        (
            json!({"appends": [part("Bad-7", json!("later"), events(1))]}),
            422,
            "invalid_expected_version",
        ),
    ];
    for (body, status, code) in &cases {
        let reply = append_multi(&client, body).await?;
        assert_eq!(
            (reply.status, reply.code()),
            (*status, Some(*code)),
            "{body}: {:?}",
            reply.body
        );
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM append_ledger")
        .fetch_one(&ctx.pool)
        .await?;
    assert_eq!(rows, 0, "nothing reached the ledger");

    // A hard-deleted stream refuses the whole append, naming it.
    let created = client
        .append(
            "Gone-1",
            &json!({"expected_version": "no_stream", "events": events(1)}),
        )
        .await?;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let deleted = client.delete("/streams/Gone-1?mode=hard").await?;
    assert_eq!(deleted.status, 200, "{:?}", deleted.body);
    let reply = append_multi(
        &client,
        &json!({"appends": [part("Alive-1", any(), events(1)), part("Gone-1", any(), events(1))]}),
    )
    .await?;
    assert_eq!(
        (reply.status, reply.code()),
        (410, Some("stream_deleted")),
        "{:?}",
        reply.body
    );
    assert_eq!(reply.body["error"]["streams"][0]["stream_id"], "Gone-1");
    assert_eq!(ingest::stream_version(&ctx, "Alive-1").await?, None);
    Ok(())
}

#[tokio::test]
async fn a_thousand_streams_in_one_append_are_accepted_once_in_one_record_per_partition(
) -> anyhow::Result<()> {
    let ctx = TestContext::new("multi_thousand").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let client = Client::new(&ingest_process);
    let streams: Vec<String> = (0..1000).map(|i| format!("Wide-{i}")).collect();
    let parts: Vec<Value> = streams
        .iter()
        .map(|s| part(s, json!("no_stream"), events(1)))
        .collect();
    // Sent twice at once: one attempt decides it, the other is answered from its ledger row.
    let body = json!({ "appends": parts });
    let (reply, twin) =
        futures::future::join(append_multi(&client, &body), append_multi(&client, &body)).await;
    let (reply, twin) = (reply?, twin?);
    assert_eq!(reply.status, 201, "{:?}", reply.body["error"]);
    assert_eq!((twin.status, &twin.body), (201, &reply.body));
    let results = reply.body["results"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(results.len(), 1000);
    for (result, stream) in results.iter().zip(&streams) {
        assert_eq!(
            result,
            &json!({"stream_id": stream, "first_version": 0, "last_version": 0})
        );
    }
    let append_id: Uuid = serde_json::from_value(reply.body["append_id"].clone())?;
    let expected: BTreeSet<(String, i64)> = streams.iter().map(|s| (s.clone(), 0)).collect();
    check_group_records(&group_records(&ctx, append_id)?, &expected)?;
    Ok(())
}

#[tokio::test]
async fn kafka_multi_stream_requests_get_every_streams_result_or_the_conflicts(
) -> anyhow::Result<()> {
    let ctx = TestContext::new("multi_kafka").await?;
    let _ingest = ingest::spawn(&ctx, &[]).await?;
    let producer = kafka::producer(&ctx.brokers)?;
    let accepted = json!({"schema_version": 1, "request_id": "m-ok", "reply_to": "client-m",
    "appends": [
        part("Kafm-1", json!("no_stream"), events(2)),
        part("Kafm-2", json!("no_stream"), events(1)),
    ]});
    let stale = json!({"schema_version": 1, "request_id": "m-stale", "reply_to": "client-m",
    "appends": [
        part("Kafm-3", json!("no_stream"), events(1)),
        part("Kafm-1", json!("no_stream"), events(1)),
    ]});
    let twice = json!({"schema_version": 1, "request_id": "m-twice", "reply_to": "client-m",
    "appends": [
        part("Kafm-4", json!("any"), events(1)),
        part("Kafm-4", json!("any"), events(1)),
    ]});
    let requests = [&accepted, &stale, &twice, &accepted, &stale];
    for request in requests {
        kafka::produce_append(
            &producer,
            &ctx.topics.appends,
            &ctx.token,
            "client-m",
            &serde_json::to_vec(request)?,
        )
        .await?;
        // Sequential, so the redeliveries come after the originals were decided.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let results = kafka::read_topic(
        &ctx.brokers,
        &ctx.topics.append_results,
        requests.len(),
        Duration::from_secs(60),
    )?;
    assert_eq!(results.len(), requests.len(), "one outcome per request");
    let mut by_request: HashMap<String, Vec<Value>> = HashMap::new();
    for record in &results {
        let value = kafka::json_payload(record)?;
        let id = value["request_id"].as_str().unwrap_or("none").to_owned();
        by_request.entry(id).or_default().push(value);
    }
    for ok in &by_request["m-ok"] {
        assert_eq!(ok["outcome"], "accepted", "{ok}");
        assert_eq!(
            ok["results"],
            json!([
                {"stream_id": "Kafm-1", "first_version": 0, "last_version": 1},
                {"stream_id": "Kafm-2", "first_version": 0, "last_version": 0},
            ])
        );
    }
    assert_eq!(by_request["m-ok"].len(), 2);
    assert_eq!(by_request["m-stale"].len(), 2);
    for rejected in &by_request["m-stale"] {
        assert_eq!(rejected["outcome"], "rejected", "{rejected}");
        assert_eq!(rejected["error"]["code"], "wrong_expected_version");
        assert_eq!(
            rejected["error"]["streams"],
            json!([{"stream_id": "Kafm-1", "expected_version": "no_stream", "actual_version": 1}])
        );
    }
    let twice_result = &by_request["m-twice"][0];
    assert_eq!(twice_result["outcome"], "rejected");
    assert_eq!(twice_result["error"]["code"], "duplicate_stream");
    assert_eq!(ingest::stream_version(&ctx, "Kafm-3").await?, None);
    assert_eq!(ingest::stream_version(&ctx, "Kafm-4").await?, None);
    Ok(())
}

#[tokio::test]
async fn the_typed_client_appends_to_several_streams_and_reads_the_conflicts() -> anyhow::Result<()>
{
    use esk_model::api::{EventData, MultiAppendRequest, StreamAppend};
    use esk_model::event::{ExpectedVersion, StreamVersion};

    let ctx = TestContext::new("multi_client").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let client = Client::new(&ingest_process);
    let api = client.api()?;
    let event = || -> anyhow::Result<EventData> {
        Ok(EventData {
            id: Uuid::new_v4(),
            event_type: "Happened".into(),
            data: serde_json::value::RawValue::from_string("{}".into())?,
            metadata: None,
        })
    };
    let request = |expected: ExpectedVersion| -> anyhow::Result<MultiAppendRequest> {
        Ok(MultiAppendRequest {
            append_id: None,
            appends: vec![
                StreamAppend {
                    stream_id: "Typed-1".into(),
                    expected_version: expected,
                    events: vec![event()?, event()?],
                },
                StreamAppend {
                    stream_id: "Typed-2".into(),
                    expected_version: ExpectedVersion::Any,
                    events: vec![event()?],
                },
            ],
        })
    };
    let first = request(ExpectedVersion::NoStream)?;
    let accepted = api.append_multi(&first).await?;
    assert_eq!(accepted.results.len(), 2);
    assert_eq!(accepted.results[0].last_version, 1.into());
    assert_eq!(accepted.results[1].first_version, 0.into());
    assert_eq!(api.append_multi(&first).await?, accepted, "a retry");

    let refused = api
        .append_multi(&request(ExpectedVersion::NoStream)?)
        .await
        .expect_err("Typed-1 exists");
    assert!(refused.is_conflict(), "{refused}");
    let streams = refused
        .error_body()
        .and_then(|b| b.streams.clone())
        .unwrap_or_default();
    assert_eq!(streams.len(), 1);
    assert_eq!(streams[0].stream_id, "Typed-1");
    assert_eq!(streams[0].actual_version, StreamVersion::At(1.into()));
    assert_eq!(ingest::stream_version(&ctx, "Typed-2").await?, Some(0));
    Ok(())
}

#[tokio::test]
async fn a_token_needs_the_append_scope_on_every_stream() -> anyhow::Result<()> {
    let ctx = TestContext::new("multi_scope").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let scopes: Vec<esk_runtime::scope::Scope> = vec!["append:Order-*".parse()?];
    let billing = esk_runtime::tokens::create(&ctx.pool, "billing", &scopes, None).await?;
    let client = Client::with_token(&ingest_process.http, Some(&billing));
    let reply = append_multi(
        &client,
        &json!({"appends": [
            part("Order-5", json!("any"), events(1)),
            part("Invoice-5", json!("any"), events(1)),
        ]}),
    )
    .await?;
    assert_eq!(
        (reply.status, reply.code()),
        (403, Some("forbidden")),
        "{:?}",
        reply.body
    );
    assert_eq!(ingest::stream_version(&ctx, "Order-5").await?, None);
    let reply = append_multi(
        &client,
        &json!({"appends": [
            part("Order-5", json!("any"), events(1)),
            part("Order-6", json!("any"), events(1)),
        ]}),
    )
    .await?;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    let anonymous = Client::for_url(&ingest_process.http);
    let reply = append_multi(
        &anonymous,
        &json!({"appends": [part("Order-7", json!("any"), events(1))]}),
    )
    .await?;
    assert_eq!(reply.status, 401, "{:?}", reply.body);
    Ok(())
}

//! The Kafka entry point: append requests from the `appends` topic, exactly one outcome per
//! request on `append-results`, request offsets committed only after the outcome is delivered.
//!
//! Request (JSON, `schema_version` 1): `{"schema_version": 1, "request_id": str?, "reply_to":
//! str?, "stream_id": str, "expected_version": ..., "append_id": uuid?, "events": [...]}`, or
//! in place of `expected_version` and `events` a lifecycle change of the stream:
//! `"metadata": {...}` (the body of `PUT /streams/{id}/metadata`) or `"delete": {"mode":
//! "soft"|"hard", "expected_version": ...}` (see `esk_model::lifecycle`).
//! A multi-stream append: `{"schema_version": 1, "request_id"?, "reply_to"?, "append_id"?,
//! "appends": [{"stream_id", "expected_version", "events"}, ...]}` (the body of `POST
//! /appends`); its result carries `results` (one per stream) or, rejected, the error's
//! `streams`.
//! The result is keyed by `reply_to` (else the request's key) and carries `request_id`; it goes
//! to the caller's own results topic when its token has one, else to the shared topic.
//! The record's `authorization` header carries `Bearer <token>`, checked as over HTTP: without
//! a valid token or the append scope the result is a rejection (`unauthorized`, `forbidden`)
//! and nothing is written.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use esk_model::event::{Append, GroupAppend};
use esk_model::group::{parse_group, APPENDS_FIELD};
use esk_model::lifecycle::parse_lifecycle_request;
use esk_model::validate::{
    parse_append, parse_object, parse_stream_id_member, InvalidAppend, Limits, TraceDefaults,
};
use esk_model::wire::{AppendResult, Outcome, APPEND_SCHEMA_VERSION};
use esk_runtime::scope::Need;
use esk_runtime::supervisor::{Progress, Watchdog};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::{Auth, AuthError};
use crate::config::IngestConfig;
use crate::metrics::IngestMetrics;
use crate::offsets::OffsetTracker;
use crate::outcome::{AppendOutcome, AppendReply, GroupOutcome, GroupReply, Unavailable};
use crate::pipeline::{AppendCommand, GroupCommand, Pipeline};

/// Where a request came from and where its answer goes.
#[derive(Debug, Clone)]
struct RequestContext {
    partition: i32,
    offset: i64,
    request_id: Option<String>,
    reply_key: Option<Vec<u8>>,
    stream_id: Option<String>,
    /// The caller's own results topic (`esk token create --results-topic`), else the shared one.
    results_topic: Option<String>,
}

/// Everything the per-request tasks share.
struct Shared {
    consumer: StreamConsumer,
    producer: FutureProducer,
    results_topic: String,
    appends_topic: String,
    tracker: Mutex<OffsetTracker>,
    pipeline: Pipeline,
    auth: Arc<Auth>,
    metrics: Arc<IngestMetrics>,
    shutdown: CancellationToken,
    /// Requests consumed and not yet answered; bounded so an outage cannot pile them up (I6).
    in_flight: Arc<Semaphore>,
    /// Results that cannot be delivered, per topic, for `/health`.
    deliveries: DeliveryWatch,
}

/// Watches result deliveries per results topic: a topic whose results have failed to be
/// delivered for longer than the stall limit (a deleted per-token topic, a broker refusing it)
/// makes `/health` unhealthy, naming the topic, even while other topics' results flow.
struct DeliveryWatch {
    watchdog: Watchdog,
    topics: Mutex<HashMap<String, Arc<TopicDeliveries>>>,
}

/// One results topic's deliveries.
struct TopicDeliveries {
    progress: Arc<Progress>,
    /// Results being retried after a failed delivery.
    failing: AtomicUsize,
}

impl DeliveryWatch {
    /// The watch of `topic`, registered with the watchdog the first time.
    fn topic(&self, topic: &str) -> Option<Arc<TopicDeliveries>> {
        let mut topics = self.topics.lock().ok()?;
        let entry = topics.entry(topic.to_owned()).or_insert_with(|| {
            Arc::new(TopicDeliveries {
                progress: self.watchdog.register(format!("results to {topic}")),
                failing: AtomicUsize::new(0),
            })
        });
        Some(entry.clone())
    }
}

impl TopicDeliveries {
    /// A delivery failed; `first`: the first failure of this result.
    fn failed(&self, first: bool, error: &impl std::fmt::Display) {
        if first {
            self.failing.fetch_add(1, Ordering::SeqCst);
        }
        self.progress.busy();
        self.progress.blocked_by(error);
    }

    /// A result was delivered; `had_failed`: after failures of its own.
    fn delivered(&self, had_failed: bool) {
        self.progress.progressed();
        if had_failed && self.failing.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.progress.idle();
        }
    }
}

/// Subscribes to the appends topic and returns the consuming loop, for the caller to run
/// supervised.
pub(crate) fn consumer_loop(
    config: &IngestConfig,
    watchdog: &Watchdog,
    pipeline: Pipeline,
    producer: FutureProducer,
    auth: Arc<Auth>,
    metrics: Arc<IngestMetrics>,
    shutdown: CancellationToken,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static, rdkafka::error::KafkaError> {
    let consumer: StreamConsumer =
        esk_runtime::kafka::consumer_config(&config.common.kafka(), &config.group_id).create()?;
    consumer.subscribe(&[&config.common.topics.appends])?;
    let shared = Arc::new(Shared {
        consumer,
        producer,
        results_topic: config.common.topics.append_results.clone(),
        appends_topic: config.common.topics.appends.clone(),
        tracker: Mutex::new(OffsetTracker::default()),
        pipeline,
        auth,
        metrics,
        shutdown,
        in_flight: Arc::new(Semaphore::new(config.max_kafka_in_flight.max(1))),
        deliveries: DeliveryWatch {
            watchdog: watchdog.clone(),
            topics: Mutex::default(),
        },
    });
    Ok(consume(
        shared,
        config.limits.clone(),
        config.max_append_streams.max(1),
    ))
}

/// A decoded request: an append to one stream (or a lifecycle change), or a multi-stream
/// append.
#[derive(Debug)]
enum Request {
    Single(Append),
    Group(GroupAppend),
}

async fn consume(shared: Arc<Shared>, limits: Limits, max_streams: usize) {
    loop {
        let message = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            m = shared.consumer.recv() => m,
        };
        let message = match message {
            Ok(m) => m,
            Err(error) => {
                tracing::warn!(%error, "appends consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let permit = match shared.in_flight.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Backpressure: stop fetching until earlier requests are answered.
                esk_runtime::kafka::set_paused(&shared.consumer, &shared.appends_topic, true);
                let permit = shared.in_flight.clone().acquire_owned().await;
                esk_runtime::kafka::set_paused(&shared.consumer, &shared.appends_topic, false);
                match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                }
            }
        };
        let size = message.payload().map_or(0, <[u8]>::len);
        let held = match shared.pipeline.try_hold_bytes(size) {
            Some(held) => held,
            None => {
                // Backpressure: stop fetching until earlier requests free their bytes.
                esk_runtime::kafka::set_paused(&shared.consumer, &shared.appends_topic, true);
                let held = shared.pipeline.hold_bytes(size).await;
                esk_runtime::kafka::set_paused(&shared.consumer, &shared.appends_topic, false);
                match held {
                    Some(held) => held,
                    None => break,
                }
            }
        };
        let mut context = RequestContext {
            partition: message.partition(),
            offset: message.offset(),
            request_id: None,
            reply_key: message.key().map(<[u8]>::to_vec),
            stream_id: None,
            results_topic: None,
        };
        if let Ok(mut tracker) = shared.tracker.lock() {
            tracker.begin(context.partition, context.offset);
        }
        let decoded = decode_request(message.payload(), &limits, max_streams, &mut context);
        let authorization = authorization(&message);
        drop(message);
        // The caller first: a request without a valid token is refused whatever it holds.
        let caller = loop {
            match shared.auth.authenticate(authorization.as_deref()).await {
                // Not an outcome: wait for the token store (this pauses consumption).
                Err(AuthError::Unavailable) => tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                },
                caller => break caller,
            }
        };
        let decoded = match caller {
            Err(e) => Err(Refusal::Auth(e)),
            Ok(principal) => {
                context.results_topic = principal.results_topic().map(str::to_owned);
                decoded.map_err(Refusal::Invalid).and_then(|request| {
                    // A lifecycle change needs the append scope on the stream it is about; a
                    // multi-stream append on every stream.
                    let subjects: Vec<&str> = match &request {
                        Request::Single(append) => vec![append.subject()],
                        Request::Group(group) => {
                            group.parts.iter().map(|p| p.stream_id.as_str()).collect()
                        }
                    };
                    for subject in subjects {
                        principal
                            .require(Need::Append(subject))
                            .map_err(Refusal::Auth)?;
                    }
                    Ok(request)
                })
            }
        };
        match decoded {
            Err(refusal) => {
                shared.metrics.invalid(refusal.code());
                let result = refusal_result(&context, &refusal);
                let shared = shared.clone();
                tokio::spawn(async move {
                    respond(shared, context, result).await;
                    drop((permit, held));
                });
            }
            Ok(Request::Group(group)) => {
                let (command, reply) = GroupCommand::new(group.clone());
                if let Err(command) = shared.pipeline.try_submit_group(command) {
                    esk_runtime::kafka::set_paused(&shared.consumer, &shared.appends_topic, true);
                    let submitted = shared.pipeline.submit_group(command).await;
                    esk_runtime::kafka::set_paused(&shared.consumer, &shared.appends_topic, false);
                    if submitted.is_err() {
                        break;
                    }
                }
                let shared = shared.clone();
                tokio::spawn(async move {
                    await_group_and_respond(shared, context, group, reply).await;
                    drop((permit, held));
                });
            }
            Ok(Request::Single(append)) => {
                let (command, reply) = AppendCommand::new(append.clone());
                if let Err(command) = shared.pipeline.try_submit(command) {
                    // Backpressure: stop fetching while the pipeline is full.
                    esk_runtime::kafka::set_paused(&shared.consumer, &shared.appends_topic, true);
                    let submitted = shared.pipeline.submit(command).await;
                    esk_runtime::kafka::set_paused(&shared.consumer, &shared.appends_topic, false);
                    if submitted.is_err() {
                        break;
                    }
                }
                let shared = shared.clone();
                tokio::spawn(async move {
                    await_and_respond(shared, context, append, reply).await;
                    drop((permit, held));
                });
            }
        }
    }
    tracing::info!("appends consumer stopped");
}

/// Reads a request; an undecodable or invalid one is answered with a typed rejection.
fn decode_request(
    payload: Option<&[u8]>,
    limits: &Limits,
    max_streams: usize,
    context: &mut RequestContext,
) -> Result<Request, InvalidAppend> {
    let object = parse_object(payload.ok_or(InvalidAppend::EmptyRequest)?)?;
    let text = |key: &str| {
        object
            .last(key)
            .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
    };
    context.request_id = text("request_id");
    if let Some(reply_to) = text("reply_to") {
        context.reply_key = Some(reply_to.into_bytes());
    }
    match object.last("schema_version") {
        Some(v) if v.get() == APPEND_SCHEMA_VERSION.to_string() => {}
        Some(v) => return Err(InvalidAppend::UnsupportedSchemaVersion(v.get().to_owned())),
        None => return Err(InvalidAppend::MissingField("schema_version".into())),
    }
    if object.last(APPENDS_FIELD).is_some() {
        let extra = ["schema_version", "request_id", "reply_to"];
        let group = parse_group(
            &object,
            &extra,
            limits,
            max_streams,
            TraceDefaults::default(),
        )?;
        return Ok(Request::Group(group));
    }
    let stream_id = parse_stream_id_member(&object)?;
    context.stream_id = Some(stream_id.clone());
    let extra = ["schema_version", "request_id", "reply_to", "stream_id"];
    let default_id = || lifecycle_append_id(&stream_id, context);
    if let Some(change) = parse_lifecycle_request(&stream_id, &object, &extra, default_id, limits)?
    {
        return Ok(Request::Single(change));
    }
    parse_append(
        &stream_id,
        &object,
        &extra,
        limits,
        TraceDefaults::default(),
    )
    .map(Request::Single)
}

/// Namespace of the append ids of lifecycle requests that carry none.
const REQUEST_APPEND_NAMESPACE: Uuid = Uuid::from_u128(0x8b1f_2c6e_45d9_4e07_a3b2_71c4_e09d_5a36);

/// The append id of a lifecycle request without one: derived from its `request_id` (a client
/// re-sending the request is idempotent), else from the record's partition and offset (a
/// redelivered record is idempotent). Events have ids to derive from; a change has not.
fn lifecycle_append_id(stream_id: &str, context: &RequestContext) -> Uuid {
    let name = match &context.request_id {
        Some(request_id) => format!("request\0{stream_id}\0{request_id}"),
        None => format!("record\0{}\0{}", context.partition, context.offset),
    };
    Uuid::new_v5(&REQUEST_APPEND_NAMESPACE, name.as_bytes())
}

fn base_result(context: &RequestContext, outcome: Outcome) -> AppendResult {
    AppendResult {
        schema_version: APPEND_SCHEMA_VERSION,
        request_id: context.request_id.clone(),
        request_partition: context.partition,
        request_offset: context.offset,
        stream_id: context.stream_id.clone(),
        append_id: None,
        outcome,
        first_version: None,
        last_version: None,
        results: None,
        error: None,
    }
}

/// Why a request is refused before it reaches the pipeline.
#[derive(Debug)]
enum Refusal {
    /// Undecodable or invalid.
    Invalid(InvalidAppend),
    /// No valid token, or no append scope for the stream.
    Auth(AuthError),
}

impl Refusal {
    fn code(&self) -> &'static str {
        match self {
            Refusal::Invalid(invalid) => invalid.code(),
            Refusal::Auth(auth) => auth.code(),
        }
    }
}

/// The record's `authorization` header, if it has one.
fn authorization(message: &impl Message) -> Option<Vec<u8>> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case("authorization"))
        .and_then(|h| h.value.map(<[u8]>::to_vec))
        // A header without a value is a malformed token, not a missing one.
        .or_else(|| {
            headers
                .iter()
                .any(|h| h.key.eq_ignore_ascii_case("authorization"))
                .then(Vec::new)
        })
}

fn refusal_result(context: &RequestContext, refusal: &Refusal) -> AppendResult {
    let mut result = base_result(context, Outcome::Rejected);
    let (code, message) = match refusal {
        Refusal::Invalid(invalid) => (invalid.code(), invalid.to_string()),
        Refusal::Auth(auth) => (auth.code(), auth.message()),
    };
    result.error = Some(esk_model::wire::ErrorBody {
        code: code.into(),
        message,
        actual_version: None,
        streams: None,
    });
    result
}

/// Waits for a definite outcome of the request `append_id` names. "Unavailable" is not one:
/// the request is submitted again with `resubmit` (idempotent by its append id), with backoff,
/// until it gets one. `None`: shutdown, or the pipeline is gone.
async fn until_definite<O, F, Fut>(
    shared: &Shared,
    append_id: Uuid,
    mut reply: tokio::sync::oneshot::Receiver<Result<O, Unavailable>>,
    mut resubmit: F,
) -> Option<O>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<
        Output = Option<tokio::sync::oneshot::Receiver<Result<O, Unavailable>>>,
    >,
{
    let mut backoff = esk_runtime::retry::until_stopped(Duration::from_millis(100));
    loop {
        match reply.await {
            Ok(Ok(outcome)) => return Some(outcome),
            Ok(Err(unavailable)) => {
                tracing::warn!(%append_id, code = unavailable.code, "append unavailable; resubmitting");
            }
            Err(_) => {
                tracing::warn!(%append_id, "pipeline dropped an append; resubmitting")
            }
        }
        let delay = backoff
            .next()
            .unwrap_or(esk_runtime::retry::MAX_RETRY_DELAY);
        tokio::select! {
            _ = shared.shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        reply = resubmit().await?;
    }
}

/// Waits for the append's outcome ([`until_definite`]), then delivers its result.
async fn await_and_respond(
    shared: Arc<Shared>,
    context: RequestContext,
    append: Append,
    reply: tokio::sync::oneshot::Receiver<AppendReply>,
) {
    let resubmit = || {
        let (command, next) = AppendCommand::new(append.clone());
        let pipeline = &shared.pipeline;
        async move { pipeline.submit(command).await.ok().map(|()| next) }
    };
    let Some(outcome) = until_definite(&shared, append.append_id, reply, resubmit).await else {
        return;
    };
    let mut result = base_result(&context, Outcome::Accepted);
    result.append_id = Some(append.append_id);
    match outcome {
        AppendOutcome::Accepted {
            first_version,
            last_version,
        } => {
            result.first_version = Some(first_version.get());
            result.last_version = Some(last_version.get());
        }
        AppendOutcome::Rejected(rejection) => {
            result.outcome = Outcome::Rejected;
            result.error = Some(rejection.to_error_body());
        }
    }
    respond(shared, context, result).await;
}

/// Waits for a multi-stream append's outcome ([`until_definite`]), then delivers its result.
async fn await_group_and_respond(
    shared: Arc<Shared>,
    context: RequestContext,
    group: GroupAppend,
    reply: tokio::sync::oneshot::Receiver<GroupReply>,
) {
    let resubmit = || {
        let (command, next) = GroupCommand::new(group.clone());
        let pipeline = &shared.pipeline;
        async move { pipeline.submit_group(command).await.ok().map(|()| next) }
    };
    let Some(outcome) = until_definite(&shared, group.append_id, reply, resubmit).await else {
        return;
    };
    let mut result = base_result(&context, Outcome::Accepted);
    result.append_id = Some(group.append_id);
    match outcome {
        GroupOutcome::Accepted(results) => result.results = Some(results),
        GroupOutcome::Rejected(rejected) => {
            result.outcome = Outcome::Rejected;
            result.error = Some(rejected.to_error_body());
        }
    }
    respond(shared, context, result).await;
}

/// Delivers the result, then lets the request's offset be committed.
async fn respond(shared: Arc<Shared>, context: RequestContext, result: AppendResult) {
    let payload = match serde_json::to_vec(&result) {
        Ok(p) => p,
        Err(error) => {
            tracing::error!(%error, "cannot encode an append result");
            return;
        }
    };
    let mut backoff = esk_runtime::retry::until_stopped(Duration::from_millis(100));
    let topic = context
        .results_topic
        .as_deref()
        .unwrap_or(&shared.results_topic);
    let mut failures = 0usize;
    loop {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(&payload);
        if let Some(key) = &context.reply_key {
            record = record.key(key.as_slice());
        }
        match shared.producer.send(record, Duration::from_secs(30)).await {
            Ok(_) => {
                if let Some(watch) = shared.deliveries.topic(topic) {
                    watch.delivered(failures > 0);
                }
                break;
            }
            Err((error, _)) => {
                tracing::warn!(%error, topic, "cannot deliver an append result; retrying");
                if let Some(watch) = shared.deliveries.topic(topic) {
                    watch.failed(
                        failures == 0,
                        &format_args!("cannot deliver to {topic}: {error}"),
                    );
                }
                failures += 1;
                let delay = backoff
                    .next()
                    .unwrap_or(esk_runtime::retry::MAX_RETRY_DELAY);
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    let commit_to = shared
        .tracker
        .lock()
        .ok()
        .and_then(|mut t| t.finish(context.partition, context.offset));
    if let Some(next) = commit_to {
        // rd_kafka_offset_store takes the last processed offset and commits it + 1.
        if let Err(error) =
            shared
                .consumer
                .store_offset(&shared.appends_topic, context.partition, next - 1)
        {
            // The partition moved to another member; it will redeliver and the ledger answers.
            tracing::debug!(%error, partition = context.partition, "cannot store offset");
        }
    }
}

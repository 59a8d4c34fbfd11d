//! The recorded history of a soak (every append sent, with its final observed outcome) and the
//! checker that compares it with what the store holds once the load is over.
//!
//! Each check that fails adds a named [`Violation`]; the kinds are listed on [`check`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::indexer::{check_canonical_topic, check_table, CanonicalTopic};
use crate::TestContext;

/// How an append was sent (its first submission; retries and duplicates may use the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// `POST /streams/{id}/events`.
    Http,
    /// A request on the `appends` topic, answered on `append-results`.
    Kafka,
}

/// The final observed outcome of an append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    /// Acknowledged with these versions.
    Accepted {
        /// First version written.
        first_version: i64,
        /// Last version written.
        last_version: i64,
    },
    /// Refused with this error code.
    Rejected {
        /// The error code (`wrong_expected_version`, ...).
        code: String,
    },
    /// No definite answer by the end.
    Unknown,
}

impl Outcome {
    /// Whether this is a definite answer.
    pub fn is_definite(&self) -> bool {
        !matches!(self, Outcome::Unknown)
    }

    /// The outcome an HTTP reply states, or None when the client should retry (503, 408, 5xx,
    /// or a 201 it cannot read).
    pub fn from_http(status: u16, body: &Value) -> Option<Outcome> {
        match status {
            201 => match (
                body["first_version"].as_i64(),
                body["last_version"].as_i64(),
            ) {
                (Some(first_version), Some(last_version)) => Some(Outcome::Accepted {
                    first_version,
                    last_version,
                }),
                _ => None,
            },
            408 | 429 | 500..=599 => None,
            400..=499 => Some(Outcome::Rejected {
                code: body
                    .pointer("/error/code")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("http_{status}"), str::to_owned),
            }),
            _ => None,
        }
    }

    /// The outcome an `append-results` record states.
    pub fn from_result(value: &Value) -> Outcome {
        match value["outcome"].as_str() {
            Some("accepted") => match (
                value["first_version"].as_i64(),
                value["last_version"].as_i64(),
            ) {
                (Some(first_version), Some(last_version)) => Outcome::Accepted {
                    first_version,
                    last_version,
                },
                _ => Outcome::Unknown,
            },
            Some("rejected") => Outcome::Rejected {
                code: value
                    .pointer("/error/code")
                    .and_then(Value::as_str)
                    .unwrap_or("no_code")
                    .to_owned(),
            },
            _ => Outcome::Unknown,
        }
    }
}

/// One append as the client sent it, and what it learnt of its outcome.
#[derive(Debug, Clone)]
pub struct AppendRecord {
    /// The idempotency key (always set explicitly by the soak).
    pub append_id: Uuid,
    /// The stream.
    pub stream_id: String,
    /// Its events' ids, in order.
    pub event_ids: Vec<Uuid>,
    /// `"no_stream"` or an exact version.
    pub expected_version: Value,
    /// How it was first sent.
    pub via: Via,
    /// Sent on purpose with a stale exact expected version (must be rejected).
    pub stale: bool,
    /// Final observed outcome.
    pub outcome: Outcome,
}

/// One failed check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Its name (`acknowledged_append_missing`, ...).
    pub kind: String,
    /// What was seen.
    pub detail: String,
}

/// Violations found so far; at most [`Violations::PER_KIND`] details are kept per kind, the
/// rest are counted.
#[derive(Debug, Default)]
pub struct Violations {
    kept: Vec<Violation>,
    per_kind: BTreeMap<String, usize>,
}

impl Violations {
    /// Details kept per kind.
    pub const PER_KIND: usize = 10;

    /// Records one.
    pub fn add(&mut self, kind: &str, detail: impl Into<String>) {
        let n = self.per_kind.entry(kind.to_owned()).or_default();
        *n += 1;
        if *n <= Self::PER_KIND {
            self.kept.push(Violation {
                kind: kind.to_owned(),
                detail: detail.into(),
            });
        }
    }

    /// Whether none was recorded.
    pub fn is_empty(&self) -> bool {
        self.per_kind.is_empty()
    }

    /// Moves every violation of `other` into this one.
    pub fn extend(&mut self, other: Violations) {
        for v in other.kept {
            self.add(&v.kind, v.detail);
        }
        for (kind, n) in other.per_kind {
            let kept = n.min(Self::PER_KIND);
            *self.per_kind.entry(kind).or_default() += n - kept;
        }
    }

    /// The list: the kept details, then one line per kind that had more.
    pub fn into_list(self) -> Vec<Violation> {
        let mut list = self.kept;
        for (kind, n) in self.per_kind {
            if n > Self::PER_KIND {
                list.push(Violation {
                    detail: format!("{} more of this kind", n - Self::PER_KIND),
                    kind,
                });
            }
        }
        list
    }
}

/// Counts of the appends in a history.
#[derive(Debug, Default, Clone, Serialize)]
pub struct AppendFigures {
    /// Distinct appends (duplicate submissions and retries not counted again).
    pub total: u64,
    /// Acknowledged.
    pub accepted: u64,
    /// Rejected, by error code.
    pub rejected: BTreeMap<String, u64>,
    /// No definite answer by the end.
    pub unknown: u64,
    /// First sent over HTTP.
    pub http: u64,
    /// First sent over Kafka.
    pub kafka: u64,
    /// Acknowledged over Kafka.
    pub kafka_accepted: u64,
    /// Events in acknowledged appends.
    pub accepted_events: u64,
}

/// Every append of a soak, shared by its writers and the results reader.
#[derive(Debug, Default)]
pub struct History {
    appends: Mutex<HashMap<Uuid, AppendRecord>>,
    violations: Mutex<Violations>,
}

impl History {
    /// Records an append about to be sent (its outcome is normally Unknown yet).
    pub fn record(&self, record: AppendRecord) {
        if let Ok(mut appends) = self.appends.lock() {
            appends.insert(record.append_id, record);
        }
    }

    /// Sets an append's outcome. The first definite outcome stays; a later different definite
    /// one is an `outcome_changed` violation; Unknown changes nothing.
    pub fn resolve(&self, append_id: Uuid, outcome: Outcome) {
        if !outcome.is_definite() {
            return;
        }
        let changed = match self.appends.lock() {
            Ok(mut appends) => match appends.get_mut(&append_id) {
                Some(record) if record.outcome.is_definite() && record.outcome != outcome => {
                    Some(format!(
                        "append {append_id} on {}: first {:?}, then {outcome:?}",
                        record.stream_id, record.outcome
                    ))
                }
                Some(record) => {
                    record.outcome = outcome;
                    None
                }
                None => Some(format!("outcome for an append never recorded: {append_id}")),
            },
            Err(_) => None,
        };
        if let Some(detail) = changed {
            self.violation("outcome_changed", detail);
        }
    }

    /// Records a violation seen while the load runs.
    pub fn violation(&self, kind: &str, detail: impl Into<String>) {
        if let Ok(mut v) = self.violations.lock() {
            v.add(kind, detail);
        }
    }

    /// Takes the violations recorded so far.
    pub fn take_violations(&self) -> Violations {
        self.violations
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }

    /// A copy of every record.
    pub fn records(&self) -> Vec<AppendRecord> {
        self.appends
            .lock()
            .map(|a| a.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The counts.
    pub fn figures(&self) -> AppendFigures {
        let mut f = AppendFigures::default();
        if let Ok(appends) = self.appends.lock() {
            for r in appends.values() {
                f.total += 1;
                match r.via {
                    Via::Http => f.http += 1,
                    Via::Kafka => f.kafka += 1,
                }
                match &r.outcome {
                    Outcome::Accepted { .. } => {
                        f.accepted += 1;
                        f.accepted_events += r.event_ids.len() as u64;
                        if r.via == Via::Kafka {
                            f.kafka_accepted += 1;
                        }
                    }
                    Outcome::Rejected { code } => *f.rejected.entry(code.clone()).or_default() += 1,
                    Outcome::Unknown => f.unknown += 1,
                }
            }
        }
        f
    }
}

/// What a poller of `global_position > X` saw during the whole soak.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PollObservation {
    /// Rows returned, in order.
    pub rows_seen: i64,
    /// The last position seen.
    pub last: i64,
    /// Failed polls (the Postgres restart, ...), each followed by a reconnect.
    pub errors: u64,
    /// Positions that were not `last + 1` (at most 20 kept).
    pub anomalies: Vec<String>,
    /// How many such positions there were.
    pub anomaly_count: u64,
}

impl PollObservation {
    /// Takes the next row the poller got.
    pub fn observe(&mut self, position: i64) {
        if position != self.last + 1 {
            self.anomaly_count += 1;
            if self.anomalies.len() < 20 {
                self.anomalies
                    .push(format!("got {position} after {}", self.last));
            }
        }
        self.rows_seen += 1;
        self.last = self.last.max(position);
    }
}

/// Checks a finished soak's history against the store, once everything the ledger accepted
/// is indexed (`events_indexed` rows). `projection_timeout` bounds the wait for the projector.
///
/// Violation kinds:
/// - `acknowledged_append_missing` / `_duplicated` / `_misplaced`: an acknowledged append's
///   event is not in `events`, is there twice, or is not at its stream and version
///   (first..last in order, positions increasing);
/// - `rejected_append_present`, `rejected_append_on_topic`: an event of a rejected append is in
///   `events` or on the canonical topic;
/// - `unknown_append_partial`, `unknown_append_misplaced`: an unknown-outcome append is partly
///   there, or not at consecutive versions of its stream;
/// - `event_not_sent`: an event in `events` that no append of the history holds;
/// - `ledger_disagrees`: the ledger's decision differs from the acknowledged one, or an
///   unknown append's presence differs from the ledger's decision;
/// - `stream_versions`: [`check_table`] failed (versions not contiguous from 0, not matching
///   `streams`, positions not 1..=N, duplicate event ids);
/// - `poller_skipped`, `poller_incomplete`: the live poller did not see exactly 1..=N in order;
/// - `canonical_topic`: [`check_canonical_topic`] failed (reordered partition, missing event);
/// - `projection_counts`, `projection_summary`: a built-in SQL projection differs from its
///   recomputation from `events`.
pub async fn check(
    ctx: &TestContext,
    records: &[AppendRecord],
    poll: &PollObservation,
    events_indexed: i64,
    projection_timeout: Duration,
) -> anyhow::Result<Violations> {
    let mut v = Violations::default();
    let started = std::time::Instant::now();
    let stage = |what: &str| {
        eprintln!(
            "soak: check: {what} ({:.1}s)",
            started.elapsed().as_secs_f64()
        )
    };

    if let Err(e) = check_table(ctx).await {
        v.add("stream_versions", e.to_string());
    }

    if poll.anomaly_count > 0 {
        v.add(
            "poller_skipped",
            format!("{} anomalies: {:?}", poll.anomaly_count, poll.anomalies),
        );
    }
    if poll.rows_seen != events_indexed || poll.last != events_indexed {
        v.add(
            "poller_incomplete",
            format!(
                "saw {} rows up to {}, {events_indexed} indexed",
                poll.rows_seen, poll.last
            ),
        );
    }

    stage("table and poller checked; reading the canonical topic");
    let topic = match check_canonical_topic(ctx, events_indexed).await {
        Ok(topic) => topic,
        Err(e) => {
            v.add("canonical_topic", e.to_string());
            CanonicalTopic::default()
        }
    };

    stage("canonical topic checked; checking every append");
    check_records(ctx, records, &topic, &mut v).await?;
    stage("appends checked; waiting for the projections");
    check_projections(ctx, projection_timeout, &mut v).await?;
    stage("projections checked");
    Ok(v)
}

type EventRow = (Uuid, String, i64, i64);

async fn check_records(
    ctx: &TestContext,
    records: &[AppendRecord],
    topic: &CanonicalTopic,
    v: &mut Violations,
) -> anyhow::Result<()> {
    let rows: Vec<EventRow> =
        sqlx::query_as("SELECT event_id, stream_id, version, global_position FROM events")
            .fetch_all(&ctx.pool)
            .await?;
    let mut events: HashMap<Uuid, Vec<(String, i64, i64)>> = HashMap::new();
    for (id, stream, version, position) in rows {
        events
            .entry(id)
            .or_default()
            .push((stream, version, position));
    }
    type LedgerRow = (Uuid, String, Option<i64>, Option<i64>, Option<String>);
    type Decision = (String, Option<i64>, Option<i64>, Option<String>);
    let ledger: HashMap<Uuid, Decision> = sqlx::query_as::<_, LedgerRow>(
        "SELECT append_id, status, first_version, last_version, reject_code FROM append_ledger",
    )
    .fetch_all(&ctx.pool)
    .await?
    .into_iter()
    .map(|(id, status, first, last, code)| (id, (status, first, last, code)))
    .collect();

    let mut sent: HashSet<Uuid> = HashSet::new();
    for r in records {
        sent.extend(r.event_ids.iter().copied());
        let id = r.append_id;
        let stream = &r.stream_id;
        let decided = ledger.get(&id);
        match &r.outcome {
            Outcome::Accepted {
                first_version,
                last_version,
            } => {
                if *last_version - *first_version + 1 != r.event_ids.len() as i64 {
                    v.add(
                        "acknowledged_append_misplaced",
                        format!(
                            "append {id} on {stream}: {} events acknowledged as {first_version}..{last_version}",
                            r.event_ids.len()
                        ),
                    );
                }
                let mut last_position = 0;
                for (i, event_id) in r.event_ids.iter().enumerate() {
                    let want = *first_version + i as i64;
                    match events.get(event_id).map(Vec::as_slice) {
                        None | Some([]) => v.add(
                            "acknowledged_append_missing",
                            format!("append {id} on {stream}: event {event_id} (version {want}) not in events"),
                        ),
                        Some([(s, version, position)]) => {
                            if s != stream || *version != want || *position <= last_position {
                                v.add(
                                    "acknowledged_append_misplaced",
                                    format!("append {id}: event {event_id} at {s}@{version} (position {position}), acknowledged as {stream}@{want}"),
                                );
                            }
                            last_position = *position;
                        }
                        Some(many) => v.add(
                            "acknowledged_append_duplicated",
                            format!("append {id}: event {event_id} in events {} times: {many:?}", many.len()),
                        ),
                    }
                }
                let agrees = decided.is_some_and(|(status, first, last, _)| {
                    status == "accepted"
                        && *first == Some(*first_version)
                        && *last == Some(*last_version)
                });
                if !agrees {
                    v.add(
                        "ledger_disagrees",
                        format!("append {id} on {stream} acknowledged {first_version}..{last_version}, ledger {decided:?}"),
                    );
                }
            }
            Outcome::Rejected { code } => {
                for event_id in &r.event_ids {
                    if events.contains_key(event_id) {
                        v.add(
                            "rejected_append_present",
                            format!(
                                "append {id} on {stream} rejected ({code}) but event {event_id} is in events"
                            ),
                        );
                    }
                    if topic.event_ids.contains(event_id) {
                        v.add(
                            "rejected_append_on_topic",
                            format!("append {id} on {stream} rejected ({code}) but event {event_id} is on the canonical topic"),
                        );
                    }
                }
                // Only decisions the ledger records (input errors never reach it).
                if code == "wrong_expected_version" {
                    let agrees = decided.is_some_and(|(status, _, _, c)| {
                        status == "rejected" && c.as_deref() == Some(code)
                    });
                    if !agrees {
                        v.add(
                            "ledger_disagrees",
                            format!("append {id} on {stream} rejected {code}, ledger {decided:?}"),
                        );
                    }
                }
            }
            Outcome::Unknown => {
                let found: Vec<&(String, i64, i64)> = r
                    .event_ids
                    .iter()
                    .filter_map(|e| events.get(e).and_then(|rows| rows.first()))
                    .collect();
                if !found.is_empty() && found.len() != r.event_ids.len() {
                    v.add(
                        "unknown_append_partial",
                        format!(
                            "append {id} on {stream}: {} of {} events in events",
                            found.len(),
                            r.event_ids.len()
                        ),
                    );
                } else if let Some((_, first, _)) = found.first() {
                    let consecutive = found
                        .iter()
                        .enumerate()
                        .all(|(i, (s, version, _))| s == stream && *version == first + i as i64);
                    if !consecutive {
                        v.add(
                            "unknown_append_misplaced",
                            format!("append {id} on {stream}: events at {found:?}"),
                        );
                    }
                }
                let ledger_accepted = decided.is_some_and(|(status, _, _, _)| status == "accepted");
                if ledger_accepted == found.is_empty() {
                    v.add(
                        "ledger_disagrees",
                        format!(
                            "unknown append {id} on {stream}: {} events present, ledger {decided:?}",
                            found.len()
                        ),
                    );
                }
            }
        }
    }
    for (event_id, rows) in &events {
        if !sent.contains(event_id) {
            v.add(
                "event_not_sent",
                format!("event {event_id} in events ({rows:?}) belongs to no append sent"),
            );
        }
    }
    Ok(())
}

type Counts = Vec<(String, String, i64)>;
type Summary = Vec<(String, i64, String)>;

async fn counts(ctx: &TestContext) -> anyhow::Result<(Counts, Counts)> {
    let expected: Counts = sqlx::query_as(
        "SELECT category, event_type, count(*) FROM events GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(&ctx.pool)
    .await?;
    let projected: Counts = sqlx::query_as(
        "SELECT category, event_type, count FROM projection_category_type_counts
         WHERE projection = 'counts' ORDER BY 1, 2",
    )
    .fetch_all(&ctx.pool)
    .await?;
    Ok((expected, projected))
}

async fn summaries(ctx: &TestContext) -> anyhow::Result<(Summary, Summary)> {
    let expected: Summary = sqlx::query_as(
        "SELECT DISTINCT ON (stream_id) stream_id, version, event_type FROM events
         ORDER BY stream_id, version DESC",
    )
    .fetch_all(&ctx.pool)
    .await?;
    let projected: Summary = sqlx::query_as(
        "SELECT stream_id, version, last_event_type FROM projection_stream_summary
         WHERE projection = 'stream-summary' ORDER BY stream_id",
    )
    .fetch_all(&ctx.pool)
    .await?;
    Ok((expected, projected))
}

/// The first few rows where two sorted lists differ.
fn differences<T: PartialEq + std::fmt::Debug>(expected: &[T], projected: &[T]) -> String {
    let mut out = Vec::new();
    for i in 0..expected.len().max(projected.len()) {
        let (e, p) = (expected.get(i), projected.get(i));
        if e != p {
            out.push(format!("expected {e:?}, projected {p:?}"));
            if out.len() == 5 {
                break;
            }
        }
    }
    format!(
        "{} rows expected, {} projected; {}",
        expected.len(),
        projected.len(),
        out.join("; ")
    )
}

/// Waits (at most `timeout`) until both built-in projections equal their recomputation from
/// `events`; a difference left then is a violation.
async fn check_projections(
    ctx: &TestContext,
    timeout: Duration,
    v: &mut Violations,
) -> anyhow::Result<()> {
    // Polled every second, not every 50 ms: both recomputations scan `events`.
    let deadline = tokio::time::Instant::now() + timeout;
    let mut matched = false;
    while !matched && tokio::time::Instant::now() < deadline {
        matched = match (counts(ctx).await, summaries(ctx).await) {
            (Ok((e, p)), Ok((se, sp))) => e == p && se == sp,
            _ => false,
        };
        if !matched {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    if !matched {
        let (e, p) = counts(ctx).await?;
        if e != p {
            v.add("projection_counts", differences(&e, &p));
        }
        let (se, sp) = summaries(ctx).await?;
        if se != sp {
            v.add("projection_summary", differences(&se, &sp));
        }
    }
    Ok(())
}

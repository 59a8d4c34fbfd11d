//! The JSON lines the benchmarks print, built from loadgen's lines, polls and scrapes (same keys,
//! same order and same rounding as the shell script's helpers).

use serde_json::Value;

use super::database::Poll;
use super::line::{rate, round, Line};
use super::prometheus::{bucket_delta, quantile, Scrape};

/// `{"bench":"indexer","events":N,"seconds":..,"events_per_s":..,"steady_events_per_s":..,
/// "first_row_s":..}`.
pub(crate) fn indexer(events: u64, poll: &Poll) -> Line {
    let mut line = Line::bench("indexer");
    line.set("events", events)
        .set("seconds", poll.seconds)
        .set("events_per_s", rate(events as f64, Some(poll.seconds)));
    if let Some(first) = &poll.first {
        let steady = poll.seconds - first.seconds;
        line.set(
            "steady_events_per_s",
            rate((events as i64 - first.value) as f64, Some(steady)),
        )
        .set("first_row_s", first.seconds);
    }
    line
}

/// Averages from the indexer's `/metrics` histograms; `steady_seconds` > 0 adds the share of
/// that window spent in transactions.
pub(crate) fn indexer_metrics(name: &str, metrics: &Scrape, steady_seconds: f64) -> Line {
    let (events_sum, batches) = metrics.histogram("esk_indexer_batch_events");
    let (copy_sum, copies) = metrics.histogram("esk_indexer_copy_seconds");
    let (tx_sum, txs) = metrics.histogram("esk_indexer_transaction_seconds");
    let average = |sum: f64, count: f64, scale: f64, digits: i32| -> Value {
        if count != 0.0 {
            Value::from(round(scale * sum / count, digits))
        } else {
            Value::Null
        }
    };
    let mut line = Line::bench(name);
    line.set("batches", batches as i64)
        .set("avg_batch_events", average(events_sum, batches, 1.0, 1))
        .set("avg_copy_ms", average(copy_sum, copies, 1000.0, 2))
        .set("avg_transaction_ms", average(tx_sum, txs, 1000.0, 2))
        .set("copy_s", round(copy_sum, 2))
        .set("transaction_s", round(tx_sum, 2));
    if steady_seconds > 0.0 {
        // The rest of the steady window went to consuming, decoding and classifying.
        line.set(
            "transaction_share_of_steady",
            round(tx_sum / steady_seconds, 3),
        );
    }
    let count = |name: &str| metrics.value_of(name) as i64;
    line.set("phantoms", count("esk_indexer_phantoms_dropped_total"))
        .set("errors", count("esk_indexer_errors_total"))
        .set(
            "zombie_rollbacks",
            count("esk_indexer_zombie_rollbacks_total"),
        );
    line
}

/// The ingest histograms averaged by `ingest_averages` (key, metric, label).
const INGEST_SPECS: [(&str, &str, &str); 6] = [
    ("append_latency", "esk_ingest_append_latency_seconds", ""),
    ("batch_appends", "esk_ingest_batch_appends", ""),
    ("attempt", "esk_ingest_attempt_seconds", ""),
    (
        "decide",
        "esk_ingest_attempt_stage_seconds",
        "stage=\"decide\"",
    ),
    (
        "produce",
        "esk_ingest_attempt_stage_seconds",
        "stage=\"produce\"",
    ),
    (
        "commit",
        "esk_ingest_attempt_stage_seconds",
        "stage=\"commit\"",
    ),
];

/// Averages (sum/count) of the ingest's histograms, over the difference of two scrapes when
/// `before` is given; seconds are shown in ms, with their p50 and p99 (interpolated within the
/// buckets, as Prometheus's `histogram_quantile`).
pub(crate) fn ingest_averages(name: &str, after: &Scrape, before: Option<&Scrape>) -> Line {
    let empty = Scrape::default();
    let before = before.unwrap_or(&empty);
    let mut line = Line::bench(name);
    for (key, metric, label) in INGEST_SPECS {
        let delta = |suffix: &str| {
            let name = format!("{metric}{suffix}");
            after.total(&name, label) - before.total(&name, label)
        };
        let (sum, count) = (delta("_sum"), delta("_count"));
        if metric.ends_with("_seconds") {
            let avg = (count != 0.0).then(|| round(1000.0 * sum / count, 2));
            line.set(&format!("{key}_avg_ms"), avg);
            let buckets = bucket_delta(before, after, metric, label);
            for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
                let ms = quantile(q, &buckets).map(|s| round(1000.0 * s, 2));
                line.set(&format!("{key}_{name}_ms"), ms);
            }
        } else {
            let avg = (count != 0.0).then(|| round(sum / count, 1));
            line.set(&format!("{key}_avg"), avg);
        }
        line.set(&format!("{key}_count"), count as i64);
    }
    line
}

/// The end-to-end line: loadgen's figures, then how long indexing (and projecting) took from
/// loadgen's start.
pub(crate) fn end_to_end(
    name: &str,
    load: &Line,
    accepted: i64,
    indexed: &Poll,
    projected: Option<&Poll>,
) -> Line {
    let projected = projected.filter(|p| p.reached);
    let mut line = Line::bench(name);
    line.set("writers", load.value("writers"))
        .set("batch", load.value("batch"))
        .set("load_seconds", load.value("seconds"))
        .set("accepted_events_per_s", load.value("events_per_s"))
        .set("append_p50_ms", load.value("p50_ms"))
        .set("append_p99_ms", load.value("p99_ms"))
        .set("accepted_events", accepted)
        .set("indexed_events", indexed.value)
        .set("indexed_seconds", indexed.seconds)
        .set(
            "events_per_s",
            rate(accepted as f64, indexed.reached.then_some(indexed.seconds)),
        )
        .set("projected_seconds", projected.map(|p| p.seconds))
        .set(
            "projected_events_per_s",
            rate(accepted as f64, projected.map(|p| p.seconds)),
        )
        .set("conflicts", load.value("conflicts"))
        .set("retries_503", load.value("retries_503"))
        .set("errors", load.value("errors"));
    line
}

/// The live lag line: p50/p99 of `esk_projector_event_lag_seconds` (acceptance → applied by a
/// live projection, as `p50_s`/`p99_s`) and of `esk_indexer_ack_to_indexed_seconds` (ingest's
/// produce, just before the acknowledgement → indexed, as `ack_to_indexed_p50_s`/`_p99_s`),
/// observed between two scrapes of the projector and the indexer (merged).
pub(crate) fn lag(load: &Line, rate_appends_per_s: f64, before: &Scrape, after: &Scrape) -> Line {
    let projected = bucket_delta(before, after, "esk_projector_event_lag_seconds", "");
    let indexed = bucket_delta(before, after, "esk_indexer_ack_to_indexed_seconds", "");
    let observations = |delta: &[(f64, f64)]| delta.last().map_or(0, |&(_, count)| count as i64);
    let q = |q: f64, delta: &[(f64, f64)]| quantile(q, delta).map(|v| round(v, 4));
    let mut line = Line::bench("projector-live-lag");
    line.set("writers", load.value("writers"))
        .set("rate_appends_per_s", rate_appends_per_s)
        .set("achieved_appends_per_s", load.value("appends_per_s"))
        .set("rate_events_per_s", load.value("events_per_s"))
        .set("seconds", load.value("seconds"))
        .set("observations", observations(&projected))
        .set("p50_s", q(0.5, &projected))
        .set("p99_s", q(0.99, &projected))
        .set("indexed_observations", observations(&indexed))
        .set("ack_to_indexed_p50_s", q(0.5, &indexed))
        .set("ack_to_indexed_p99_s", q(0.99, &indexed))
        .set("append_p99_ms", load.value("p99_ms"))
        .set("errors", load.value("errors"));
    line
}

/// `{"bench":name,"ratio_<field>":ours/anchor,...}` against the anchor's `events_per_s`.
pub(crate) fn ratio(name: &str, ours: &Line, anchor: &Line, fields: &[&str]) -> Line {
    let base = anchor.number("events_per_s").filter(|b| *b != 0.0);
    let mut line = Line::bench(name);
    for field in fields {
        let value = match (ours.number(field), base) {
            (Some(value), Some(base)) => Value::from(round(value / base, 2)),
            _ => Value::Null,
        };
        line.set(&format!("ratio_{field}"), value);
    }
    line
}

/// The rates of an on/off comparison (authentication, the type index, multi-stream appends),
/// one per run, taken over rounds that alternate which side runs first ([`OnOff::sides`]) so
/// drift on the machine falls on both sides.
#[derive(Debug, Default)]
pub(crate) struct OnOff {
    on: Vec<f64>,
    off: Vec<f64>,
}

impl OnOff {
    /// The sides of `round`, in the order they run: on first in even rounds, off first in odd.
    pub(crate) fn sides(round: usize) -> [bool; 2] {
        if round.is_multiple_of(2) {
            [true, false]
        } else {
            [false, true]
        }
    }

    /// Notes the rate of one run of side `on`.
    pub(crate) fn add(&mut self, on: bool, rate: f64) {
        if on {
            self.on.push(rate);
        } else {
            self.off.push(rate);
        }
    }

    /// The comparison's line ([`on_off_cost`]).
    pub(crate) fn cost(&self, name: &str) -> Line {
        on_off_cost(name, &self.on, &self.off)
    }
}

/// `{"bench": name, ...}`: the sum of the rates of the runs with a feature on over the sum of
/// those with it off, and what it costs in percent (authentication, the type index).
pub(crate) fn on_off_cost(name: &str, on: &[f64], off: &[f64]) -> Line {
    let (on_sum, off_sum): (f64, f64) = (on.iter().sum(), off.iter().sum());
    let ratio = (off_sum > 0.0).then(|| on_sum / off_sum);
    let mut line = Line::bench(name);
    line.set("ratio_events_per_s", ratio.map(|r| round(r, 3)))
        .set("cost_percent", ratio.map(|r| round((1.0 - r) * 100.0, 1)))
        .set(
            "on_events_per_s",
            on.iter().map(|r| round(*r, 0)).collect::<Vec<_>>(),
        )
        .set(
            "off_events_per_s",
            off.iter().map(|r| round(*r, 0)).collect::<Vec<_>>(),
        );
    line
}

/// `{"bench":name}` followed by the keys of `result` and `extra`.
pub(crate) fn wrap(name: &str, result: &Line, extra: &Line) -> Line {
    let mut line = Line::bench(name);
    line.extend(result).extend(extra);
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::database::First;

    #[test]
    fn indexer_line() {
        let poll = Poll {
            value: 100,
            seconds: 3.0,
            first: Some(First {
                seconds: 1.0,
                value: 20,
            }),
            reached: true,
            error: None,
        };
        assert_eq!(
            indexer(100, &poll).to_text(),
            r#"{"bench": "indexer", "events": 100, "seconds": 3.0, "events_per_s": 33, "steady_events_per_s": 40, "first_row_s": 1.0}"#
        );
    }

    #[test]
    fn ratio_line() -> anyhow::Result<()> {
        let ours = Line::parse(r#"{"events_per_s": 50, "steady_events_per_s": null}"#)?;
        let anchor = Line::parse(r#"{"anchor": "x", "events_per_s": 200}"#)?;
        assert_eq!(
            ratio(
                "r",
                &ours,
                &anchor,
                &["events_per_s", "steady_events_per_s"]
            )
            .to_text(),
            r#"{"bench": "r", "ratio_events_per_s": 0.25, "ratio_steady_events_per_s": null}"#
        );
        Ok(())
    }

    #[test]
    fn averages_of_a_difference() {
        let before =
            Scrape::parse("esk_ingest_attempt_seconds_sum 1\nesk_ingest_attempt_seconds_count 2\n");
        let after = Scrape::parse("esk_ingest_attempt_seconds_sum 2\nesk_ingest_attempt_seconds_count 4\nesk_ingest_batch_appends_sum 9\nesk_ingest_batch_appends_count 2\n");
        let line = ingest_averages("x", &after, Some(&before));
        assert_eq!(line.value("attempt_avg_ms"), Value::from(500.0));
        assert_eq!(line.value("attempt_count"), Value::from(2));
        assert_eq!(line.value("batch_appends_avg"), Value::from(4.5));
        assert_eq!(line.value("append_latency_avg_ms"), Value::Null);
    }

    #[test]
    fn on_off_cost_over_the_sums() {
        let line = on_off_cost("auth-on-vs-off", &[950.0, 1000.0], &[1000.0, 1000.0]);
        assert_eq!(
            line.to_text(),
            r#"{"bench": "auth-on-vs-off", "ratio_events_per_s": 0.975, "cost_percent": 2.5, "on_events_per_s": [950.0, 1000.0], "off_events_per_s": [1000.0, 1000.0]}"#
        );
        assert_eq!(
            on_off_cost("auth-on-vs-off", &[1.0], &[]).value("ratio_events_per_s"),
            Value::Null
        );
    }
}

//! 6. the latency curve: open-loop load at fractions of the measured end-to-end maximum, on
//!    the end-to-end services (ingest, indexer publishing, projector with its two
//!    projections), with append latency and acceptance → projected latency at each step,
//!    rendered as a PNG.
//!
//! The maximum is the `end-to-end` line's `projected_events_per_s` (else its `events_per_s`)
//! when `e2e` ran in the same run; otherwise a short closed-loop run of loadgen (the e2e
//! writers and appends in flight, at most [`PROBE_SECONDS`]) until everything it got accepted is
//! projected. Each step offers `fraction × maximum` events/s with loadgen's `--rate` (a token
//! bucket, so sends do not wait for answers as long as enough appends may be in flight: see
//! [`concurrency`]), then waits until all is projected. Append latency is loadgen's own (first
//! send to final answer); acceptance → projected is the projector's
//! `esk_projector_event_lag_seconds` histogram (from the events' `created_at`, stamped as ingest
//! writes the attempt to `ingest-log`, just before the commit that acknowledges it, to the live
//! projection's apply) between a scrape before the step and one after its events were all
//! applied; acknowledgement → indexed is the indexer's `esk_indexer_ack_to_indexed_seconds`
//! (from the `ingest-log` record's timestamp, ingest's produce just before it acknowledges, to
//! the indexing commit) over the same scrapes.

use std::time::Instant;

use anyhow::Context;
use serde_json::Value;

use super::e2e::{paced, E2e, LAG_WARMUP_SECONDS};
use super::line::{round, Line};
use super::prometheus::{bucket_delta, quantile, Scrape};
use super::{emit, plot, say, Bench, ANCHOR_BATCH};

/// The fractions of the maximum the steps offer, in the order they run.
pub(crate) const FRACTIONS: [f64; 5] = [0.1, 0.25, 0.5, 0.75, 0.9];
/// Longest closed-loop run that measures the maximum when `e2e` did not run.
pub(crate) const PROBE_SECONDS: f64 = 10.0;
/// How long an append may take before the offered rate suffers: a step keeps enough appends
/// in flight for its rate over this many seconds.
const LATENCY_BUDGET_SECONDS: f64 = 0.5;
/// The projector's histogram of acceptance at ingest → applied by a live projection.
const PROJECTED_LAG: &str = "esk_projector_event_lag_seconds";
/// The indexer's histogram of acknowledgement at ingest → indexed.
const INDEXED_LAG: &str = "esk_indexer_ack_to_indexed_seconds";

/// What one step measured.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CurvePoint {
    pub(crate) fraction: f64,
    /// Events per second offered.
    pub(crate) offered: f64,
    pub(crate) append_p50_ms: Option<f64>,
    pub(crate) append_p99_ms: Option<f64>,
    pub(crate) projected_p50_ms: Option<f64>,
    pub(crate) projected_p99_ms: Option<f64>,
    pub(crate) indexed_p50_ms: Option<f64>,
    pub(crate) indexed_p99_ms: Option<f64>,
    /// Events the projector's histogram observed during the step.
    pub(crate) observations: i64,
    writers: u32,
    in_flight: u32,
    /// loadgen's line (for its seconds, conflicts, retries and errors).
    load: Line,
}

impl CurvePoint {
    /// A step's point from loadgen's line and the scrapes around the step (the projector's
    /// and the indexer's, merged).
    pub(crate) fn new(step: &Step, load: &Line, before: &Scrape, after: &Scrape) -> Self {
        let delta = bucket_delta(before, after, PROJECTED_LAG, "");
        let indexed = bucket_delta(before, after, INDEXED_LAG, "");
        let ms_of = |q: f64, delta: &[(f64, f64)]| quantile(q, delta).map(|s| round(1000.0 * s, 1));
        let ms = |q: f64| ms_of(q, &delta);
        // loadgen prints 0 ms when it measured no append: no latency, not a fast one.
        let append = |key: &str| {
            load.number(key)
                .filter(|_| load.number("appends_per_s") > Some(0.0))
        };
        CurvePoint {
            fraction: step.fraction,
            offered: step.events_per_s,
            append_p50_ms: append("p50_ms"),
            append_p99_ms: append("p99_ms"),
            projected_p50_ms: ms(0.5),
            projected_p99_ms: ms(0.99),
            indexed_p50_ms: ms_of(0.5, &indexed),
            indexed_p99_ms: ms_of(0.99, &indexed),
            observations: delta.last().map_or(0, |&(_, count)| count as i64),
            writers: step.writers,
            in_flight: step.in_flight,
            load: load.clone(),
        }
    }

    /// `{"bench": "latency-curve", "fraction": .., "rate_events_per_s": .., ...}`.
    pub(crate) fn line(&self) -> Line {
        let mut line = Line::bench("latency-curve");
        line.set("fraction", self.fraction)
            .set("rate_events_per_s", self.offered.round() as i64)
            .set("achieved_events_per_s", self.load.value("events_per_s"))
            .set("append_p50_ms", self.append_p50_ms)
            .set("append_p99_ms", self.append_p99_ms)
            .set("ack_to_projected_p50_ms", self.projected_p50_ms)
            .set("ack_to_projected_p99_ms", self.projected_p99_ms)
            .set("projected_observations", self.observations)
            .set("ack_to_indexed_p50_ms", self.indexed_p50_ms)
            .set("ack_to_indexed_p99_ms", self.indexed_p99_ms)
            .set("writers", self.writers)
            .set("in_flight_per_writer", self.in_flight)
            .set("seconds", self.load.value("seconds"))
            .set("conflicts", self.load.value("conflicts"))
            .set("retries_503", self.load.value("retries_503"))
            .set("errors", self.load.value("errors"));
        line
    }
}

/// One step's load: the rate offered and the loadgen writers offering it (`in_flight` appends
/// each).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Step {
    pub(crate) fraction: f64,
    pub(crate) events_per_s: f64,
    pub(crate) appends_per_s: f64,
    pub(crate) writers: u32,
    pub(crate) in_flight: u32,
}

impl Step {
    /// `fraction` of `maximum` events/s, offered by `writers` loadgen writers (more appends in
    /// flight each if they need them, up to `most_in_flight` in all).
    pub(crate) fn new(maximum: f64, fraction: f64, writers: u32, most_in_flight: u32) -> Self {
        let events_per_s = maximum * fraction;
        let appends_per_s = events_per_s / f64::from(ANCHOR_BATCH);
        Step {
            fraction,
            events_per_s,
            appends_per_s,
            writers,
            in_flight: concurrency(appends_per_s, writers, most_in_flight),
        }
    }

    /// loadgen's arguments (besides URL, writers and workload) for `seconds` of this step.
    fn args(&self, seconds: &str) -> Vec<String> {
        let mut args = paced(&format!("{:.3}", self.appends_per_s), seconds);
        args.extend(["--in-flight".to_owned(), self.in_flight.to_string()]);
        args
    }
}

/// Appends in flight per writer so that `writers` writers keep offering `appends_per_s` while
/// appends take up to [`LATENCY_BUDGET_SECONDS`] (a writer's lane waits for its answer), but no
/// more than `most` in all (at least one each): the closed-loop run that measured the maximum
/// had as many, and more would only queue up in front of ingest (whose HTTP listener takes at
/// most `ESK_HTTP_MAX_CONNECTIONS`, 1,024 by default).
pub(crate) fn concurrency(appends_per_s: f64, writers: u32, most: u32) -> u32 {
    let writers = writers.max(1);
    let needed = (appends_per_s * LATENCY_BUDGET_SECONDS).ceil();
    let per_writer = (needed / f64::from(writers)).ceil() as u32;
    per_writer.min(most / writers).max(1)
}

/// The maximum the curve takes its fractions of, from the `end-to-end` line: the rate with
/// everything projected, else with everything indexed.
pub(crate) fn maximum_of(end_to_end: &Line) -> Option<f64> {
    ["projected_events_per_s", "events_per_s"]
        .iter()
        .find_map(|key| end_to_end.number(key).filter(|rate| *rate > 0.0))
}

/// `{"bench": "latency-curve-max", "source": .., "events_per_s": ..}` and what it came from.
fn maximum_line(source: &str, events_per_s: Option<f64>) -> Line {
    let mut line = Line::bench("latency-curve-max");
    line.set("source", source)
        .set("events_per_s", events_per_s.map(|r| r.round() as i64));
    line
}

impl Bench {
    /// The curve on `e2e`'s services: prints the maximum's line and one line per step, and
    /// writes the PNG. `end_to_end` is this run's `end-to-end` line, if `e2e` ran.
    pub(crate) async fn latency_curve(
        &mut self,
        e2e: &mut E2e,
        end_to_end: Option<&Line>,
    ) -> anyhow::Result<()> {
        let measured = end_to_end.and_then(maximum_of);
        let max_line = match measured {
            Some(rate) => maximum_line("end-to-end", Some(rate)),
            None => self.probe_maximum(e2e).await?,
        };
        emit(&max_line.to_text());
        let Some(maximum) = max_line.number("events_per_s").filter(|r| *r > 0.0) else {
            self.fail("latency curve: no maximum throughput to take fractions of");
            return Ok(());
        };
        let most_in_flight = self.settings.e2e_writers * self.settings.e2e_in_flight;
        let steps =
            FRACTIONS.map(|f| Step::new(maximum, f, self.settings.lag_writers, most_in_flight));
        e2e.drain().await?;
        say(&format!(
            "latency curve: warm-up at {:.0} events/s for {LAG_WARMUP_SECONDS}s (not measured)",
            steps[0].events_per_s
        ));
        let warmup = self
            .loadgen(
                e2e,
                steps[0].writers,
                &steps[0].args(&LAG_WARMUP_SECONDS.to_string()),
            )
            .await?;
        if !warmup.status.success() {
            say(&format!("warm-up loadgen exited with {}", warmup.status));
        }
        let mut points = Vec::with_capacity(steps.len());
        for step in &steps {
            let point = self.curve_step(e2e, step).await?;
            emit(&point.line().to_text());
            points.push(point);
        }
        let path = self.settings.curve_png.clone();
        let caption = format!(
            "esk: latency against offered load (max {maximum:.0} events/s, {})",
            chrono::Utc::now().format("%Y-%m-%d")
        );
        match plot::render(&path, &points, &caption) {
            Ok(()) => say(&format!("latency curve: wrote {}", path.display())),
            Err(e) => self.fail(&format!(
                "latency curve: cannot write {}: {e:#}",
                path.display()
            )),
        }
        Ok(())
    }

    /// One step: loadgen at the step's rate for `ESK_BENCH_SECONDS`, then until all is
    /// projected.
    async fn curve_step(&mut self, e2e: &mut E2e, step: &Step) -> anyhow::Result<CurvePoint> {
        e2e.drain().await?;
        let before = e2e.lag_scrape().await?;
        let seconds = self.settings.seconds.clone();
        say(&format!(
            "latency curve: {:.0}% of the maximum, {:.0} events/s ({:.1} appends/s, {} writers × {} in flight) for {seconds}s",
            100.0 * step.fraction,
            step.events_per_s,
            step.appends_per_s,
            step.writers,
            step.in_flight
        ));
        let finished = self
            .loadgen(e2e, step.writers, &step.args(&seconds))
            .await?;
        if !finished.status.success() {
            self.fail(&format!("loadgen exited with {}", finished.status));
        }
        let load = match &finished.last_line {
            Some(text) => Line::parse(text)?,
            None => {
                self.fail("loadgen printed no result");
                Line::default()
            }
        };
        say(&format!("loadgen: {load}"));
        e2e.drain().await?;
        let after = e2e.lag_scrape().await?;
        Ok(CurvePoint::new(step, &load, &before, &after))
    }

    /// The maximum when `e2e` did not run: a closed-loop loadgen run of at most
    /// [`PROBE_SECONDS`], accepted events over the time until all of them are projected.
    async fn probe_maximum(&mut self, e2e: &mut E2e) -> anyhow::Result<Line> {
        e2e.drain().await?;
        let earlier = e2e.accepted().await?;
        let seconds = self.settings.seconds_value().min(PROBE_SECONDS);
        let (writers, in_flight) = (self.settings.e2e_writers, self.settings.e2e_in_flight);
        say(&format!(
            "latency curve: measuring the maximum, closed loop, {seconds}s (after a warm-up), {writers} writers × {in_flight} in flight; then until all is projected"
        ));
        let start = Instant::now();
        let args = [
            "--seconds".to_owned(),
            seconds.to_string(),
            "--in-flight".into(),
            in_flight.to_string(),
        ];
        let finished = self.loadgen(e2e, writers, &args).await?;
        if !finished.status.success() {
            self.fail(&format!("loadgen exited with {}", finished.status));
        }
        let accepted = e2e.accepted().await?;
        let projected = e2e
            .projected(accepted, start)
            .await?
            .context("the latency curve needs the projector")?;
        if !projected.reached {
            self.fail(&format!("not all projected: {}", projected.describe()));
        }
        let events = accepted - earlier;
        let rate = projected
            .reached
            .then(|| events as f64 / projected.seconds)
            .filter(|r| r.is_finite());
        let mut line = maximum_line("closed-loop", rate);
        line.set("accepted_events", events)
            .set("projected_seconds", round(projected.seconds, 2))
            .set("writers", writers)
            .set("in_flight_per_writer", in_flight)
            .set(
                "load",
                finished
                    .last_line
                    .and_then(|text| serde_json::from_str::<Value>(&text).ok())
                    .unwrap_or(Value::Null),
            );
        Ok(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_offer_their_fraction_with_enough_in_flight() {
        let step = Step::new(20_000.0, 0.5, 64, 2048);
        assert_eq!(step.events_per_s, 10_000.0);
        assert_eq!(step.appends_per_s, 2_000.0);
        // 2,000 appends/s answered within half a second: 1,000 in flight, 16 per writer.
        assert_eq!(step.in_flight, 16);
        // No more than the closed-loop run had.
        assert_eq!(Step::new(20_000.0, 0.5, 64, 512).in_flight, 8);
        assert_eq!(
            step.args("15"),
            [
                "--rate",
                "2000.000",
                "--seconds",
                "15",
                "--warmup-seconds",
                "0",
                "--in-flight",
                "16"
            ]
        );
        assert_eq!(concurrency(10.0, 64, 512), 1);
        assert_eq!(concurrency(129.0 * 2.0, 64, 512), 3);
        assert_eq!(concurrency(100.0, 0, 512), 50);
        // At least one each, even when the writers alone exceed the most.
        assert_eq!(concurrency(100_000.0, 64, 16), 1);
    }

    #[test]
    fn the_maximum_prefers_the_projected_rate() -> anyhow::Result<()> {
        let projected = Line::parse(r#"{"events_per_s": 30000, "projected_events_per_s": 25000}"#)?;
        assert_eq!(maximum_of(&projected), Some(25_000.0));
        let indexed = Line::parse(r#"{"events_per_s": 30000, "projected_events_per_s": null}"#)?;
        assert_eq!(maximum_of(&indexed), Some(30_000.0));
        let none = Line::parse(r#"{"events_per_s": null}"#)?;
        assert_eq!(maximum_of(&none), None);
        Ok(())
    }

    #[test]
    fn a_point_takes_percentiles_from_the_histograms_difference() -> anyhow::Result<()> {
        let before = Scrape::parse(
            "esk_projector_event_lag_seconds_bucket{le=\"0.01\"} 100\n\
             esk_projector_event_lag_seconds_bucket{le=\"0.1\"} 100\n\
             esk_projector_event_lag_seconds_bucket{le=\"+Inf\"} 100\n",
        );
        // 1,000 more: 400 under 10 ms, 580 in (10 ms, 100 ms], 20 above.
        let after = Scrape::parse(
            "esk_projector_event_lag_seconds_bucket{le=\"0.01\"} 500\n\
             esk_projector_event_lag_seconds_bucket{le=\"0.1\"} 1080\n\
             esk_projector_event_lag_seconds_bucket{le=\"+Inf\"} 1100\n",
        );
        let load = Line::parse(
            r#"{"bench": "ingest-http", "writers": 64, "seconds": 15.0, "events_per_s": 9990, "appends_per_s": 1998, "p50_ms": 4.5, "p99_ms": 20.25, "conflicts": 0, "retries_503": 0, "errors": 0}"#,
        )?;
        let point = CurvePoint::new(&Step::new(20_000.0, 0.5, 64, 2048), &load, &before, &after);
        // rank 500 lies in (10, 100] ms: 10 + 90 × (500 − 400) / 580
        assert_eq!(
            point.projected_p50_ms,
            Some(round(10.0 + 90.0 * 100.0 / 580.0, 1))
        );
        // rank 990 lies in the +Inf bucket: its lower bound
        assert_eq!(point.projected_p99_ms, Some(100.0));
        assert_eq!(point.observations, 1000);
        assert_eq!(
            point.line().to_text(),
            r#"{"bench": "latency-curve", "fraction": 0.5, "rate_events_per_s": 10000, "achieved_events_per_s": 9990, "append_p50_ms": 4.5, "append_p99_ms": 20.25, "ack_to_projected_p50_ms": 25.5, "ack_to_projected_p99_ms": 100.0, "projected_observations": 1000, "ack_to_indexed_p50_ms": null, "ack_to_indexed_p99_ms": null, "writers": 64, "in_flight_per_writer": 16, "seconds": 15.0, "conflicts": 0, "retries_503": 0, "errors": 0}"#
        );
        Ok(())
    }

    #[test]
    fn a_step_without_appends_has_no_latencies() -> anyhow::Result<()> {
        let load = Line::parse(
            r#"{"events_per_s": 0, "appends_per_s": 0, "p50_ms": 0.0, "p99_ms": 0.0}"#,
        )?;
        let empty = Scrape::default();
        let point = CurvePoint::new(&Step::new(1_000.0, 0.1, 64, 512), &load, &empty, &empty);
        assert_eq!(point.append_p99_ms, None);
        assert_eq!(point.projected_p99_ms, None);
        assert_eq!(point.line().value("ack_to_projected_p50_ms"), Value::Null);
        Ok(())
    }
}

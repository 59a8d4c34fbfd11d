//! Catch-up and rebuild: replay the events table by global position in batches, then hand over
//! to the canonical topic at the offsets that match the last replayed position.

use std::time::{Duration, Instant};

use esk_model::wire::CanonicalEvent;
use esk_runtime::db::collect_events_within;
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{self, Progress};
use crate::event::{event_columns, ProjectedEvent};
use crate::filter::Filter;
use crate::projection::{ProcessError, Projection};

/// How progress is shown: a bar on a terminal, a line every few seconds otherwise.
#[derive(Debug)]
pub(crate) enum Reporter {
    Bar(ProgressBar),
    Lines { last: Instant },
}

impl Reporter {
    pub(crate) fn for_terminal(total: u64) -> Self {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} replay [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})",
            ) {
                bar.set_style(style);
            }
            Reporter::Bar(bar)
        } else {
            Reporter::Lines {
                last: Instant::now(),
            }
        }
    }

    fn report(&mut self, name: &str, through: i64, head: i64) {
        match self {
            Reporter::Bar(bar) => {
                bar.set_length(head.max(0) as u64);
                bar.set_position(through.max(0) as u64);
            }
            Reporter::Lines { last } => {
                if last.elapsed() >= Duration::from_secs(5) {
                    *last = Instant::now();
                    tracing::info!(projection = name, through, head, "replaying");
                }
            }
        }
    }

    fn finish(&self) {
        if let Reporter::Bar(bar) = self {
            bar.finish();
        }
    }
}

/// What a replay did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplaySummary {
    pub(crate) events: u64,
    pub(crate) through: i64,
    pub(crate) seconds: f64,
}

/// Replays from the stored replay position until the projection has caught up with
/// `published_through` (and the head as it was), then hands over to Kafka.
pub(crate) async fn catch_up(
    pool: &PgPool,
    projection: &Projection,
    (batch, max_bytes): (i64, usize),
    partitions: i32,
    reporter: &mut Reporter,
    shutdown: &CancellationToken,
) -> Result<ReplaySummary, ProcessError> {
    let started = Instant::now();
    let mut applied = 0u64;
    loop {
        let mut through = checkpoint::replay_position(pool, &projection.name).await?;
        let (head, _) = checkpoint::heads(pool).await?;
        // Replay up to the head as it was when this pass began.
        while through < head {
            let (events, cut) = fetch(pool, projection, through, head, batch, max_bytes).await?;
            // The page covered every position up to here (positions have no gaps); a page cut
            // short by its byte budget covered up to its last event.
            let next = match events.last() {
                Some(last) if cut => last.global_position,
                _ => head.min(through + batch),
            };
            let events: Vec<ProjectedEvent> = events
                .into_iter()
                .map(|event| ProjectedEvent {
                    event,
                    source: None,
                })
                .collect();
            let matching: Vec<ProjectedEvent> = events
                .into_iter()
                .filter(|e| projection.filter.matches(&e.event))
                .collect();
            match projection
                .process(
                    pool,
                    &matching,
                    &[],
                    &Progress::Replay {
                        from: through,
                        through: next,
                    },
                    shutdown,
                )
                .await
            {
                Ok(()) => {
                    applied += matching.len() as u64;
                    projection
                        .metrics
                        .events_applied
                        .with_label_values(&[&projection.name])
                        .inc_by(matching.len() as u64);
                    projection
                        .metrics
                        .replayed
                        .with_label_values(&[&projection.name])
                        .inc_by(matching.len() as u64);
                    through = next;
                    reporter.report(&projection.name, through, head);
                }
                Err(ProcessError::NotOwner(_)) => {
                    // Another replay of this projection moved the position: continue from it.
                    through = checkpoint::replay_position(pool, &projection.name).await?;
                }
                Err(error) => return Err(error),
            }
        }
        if checkpoint::hand_over(pool, &projection.name, through, partitions).await? {
            reporter.finish();
            return Ok(ReplaySummary {
                events: applied,
                through,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        // The publisher moved past what we replayed: replay the rest first.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn fetch(
    pool: &PgPool,
    projection: &Projection,
    after: i64,
    head: i64,
    batch: i64,
    max_bytes: usize,
) -> Result<(Vec<CanonicalEvent>, bool), sqlx::Error> {
    let sql = format!(
        // Positions are gap-free, so bounding the range by the page size keeps every page a
        // short primary-key range scan, whatever the planner's statistics say (an unanalysed
        // table otherwise got a scan-and-sort of the whole remaining range per page).
        "SELECT {} FROM events
         WHERE global_position > $1 AND global_position <= least($4, $1 + $2) AND {}
         ORDER BY global_position LIMIT $2",
        event_columns(projection.needs_data()),
        projection.filter.sql()
    );
    let query = sqlx::query(&sql).bind(after).bind(batch);
    let query = match &projection.filter {
        Filter::All => query.bind(Option::<String>::None),
        Filter::Category(c) => query.bind(Some(c.clone())),
        Filter::EventTypes(types) => {
            let rows = sqlx::query(&sql)
                .bind(after)
                .bind(batch)
                .bind(types)
                .bind(head)
                .fetch(pool);
            return collect_events_within(rows, max_bytes).await;
        }
    };
    collect_events_within(query.bind(head).fetch(pool), max_bytes).await
}

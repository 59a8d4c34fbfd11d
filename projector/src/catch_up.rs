//! Catch-up and rebuild: replay the events table by global position in batches, then hand over
//! to the canonical topic at the offsets that match the last replayed position.

use std::time::{Duration, Instant};

use esk_runtime::pages::{self, Key, Window};
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{self, Progress};
use crate::event::{event_columns, ProjectedEvent};
use crate::group::BatchGroups;
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
            // Positions are gap-free, so bounding the range by the page size keeps every page
            // a short primary-key range scan, whatever the planner's statistics say (an
            // unanalysed table otherwise got a scan-and-sort of the whole remaining range).
            let high = head.min(through.saturating_add(batch));
            let window = Window {
                high,
                ..Window::forward(Key::Position, through + 1, batch, max_bytes)
            };
            let columns = event_columns(projection.needs_data());
            let page = pages::read_page(pool, columns, &projection.filter, window).await?;
            // The page covered every position up to its window's end (positions have no gaps);
            // one cut short by its byte budget covered up to its last event; either way, to
            // the end of the group it was extended to (rule 7), never into one.
            let next = match page.covered_through() {
                Some(last) if page.cut => last,
                _ => page.group_end.map_or(high, |end| end.max(high)),
            };
            let events: Vec<ProjectedEvent> = page
                .events
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
                    // Replay pages hold whole groups and never end inside one: nothing to record.
                    (
                        &Progress::Replay {
                            from: through,
                            through: next,
                        },
                        &BatchGroups::default(),
                    ),
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

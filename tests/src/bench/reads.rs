//! reads: how fast filtered reads page through a store, over HTTP, against the unfiltered `$all`
//! read of the same store in the same run. The store is written straight into `events` (not
//! timed): `ESK_BENCH_READS_EVENTS` events in streams of ten, 89% of type `Common`, 10%
//! `Uncommon` and 1% `Rare`, a quarter of the streams in category `Invoice`, the rest `Order`.
//! Each read follows `next` with pages of 1,000 until it has read its cap (or the end).

use std::time::Instant;

use anyhow::{bail, Context};
use esk_model::api::PositionedPage;

use super::database;
use super::line::{rate, round, Line};
use super::{emit, report, say, Bench};

/// Events per page.
const PAGE: u32 = 1000;
/// Most events one read takes (a read of a common type would otherwise read the whole store).
const READ_CAP: usize = 100_000;

/// One read: its bench name and its path and query (before `from` and `limit`).
struct Read {
    name: &'static str,
    path: &'static str,
    query: &'static str,
}

const READS: [Read; 5] = [
    Read {
        name: "reads-all",
        path: "/streams/$all/events",
        query: "",
    },
    Read {
        name: "reads-type-rare",
        path: "/types/Rare/events",
        query: "",
    },
    Read {
        name: "reads-type-common",
        path: "/types/Common/events",
        query: "",
    },
    Read {
        name: "reads-all-types-uncommon-rare",
        path: "/streams/$all/events",
        query: "types=Uncommon,Rare&",
    },
    Read {
        name: "reads-all-category-invoice",
        path: "/streams/$all/events",
        query: "categories=Invoice&",
    },
];

impl Bench {
    /// Fills a fresh store, starts ingest on it and times each read of [`READS`]; prints a line
    /// per read and its ratio to the unfiltered read.
    pub(crate) async fn reads(&mut self) -> anyhow::Result<()> {
        let events = self.settings.reads_events;
        let auth = self.settings.auth;
        let mut ingest = self
            .start_ingest("esk_bench_reads", "reads", auth, "bench-reads.log")
            .await?;
        let url = database::url_for(&self.settings.admin_database_url, "esk_bench_reads")?;
        let pool = database::connect(&url).await?;
        say(&format!(
            "reads: writing {events} events into esk_bench_reads.events (not timed)"
        ));
        let count = i64::try_from(events).context("ESK_BENCH_READS_EVENTS is too large")?;
        sqlx::query(
            "INSERT INTO events (global_position, event_id, stream_id, category, event_type, data,
                                 metadata, version, created_at, kafka_partition, kafka_offset)
             SELECT g, gen_random_uuid(),
                    CASE WHEN (g / 10) % 4 = 0 THEN 'Invoice-' ELSE 'Order-' END || (g / 10),
                    CASE WHEN (g / 10) % 4 = 0 THEN 'Invoice' ELSE 'Order' END,
                    CASE WHEN g % 100 = 0 THEN 'Rare' WHEN g % 100 <= 10 THEN 'Uncommon'
                         ELSE 'Common' END,
                    json_build_object('n', g, 'note', 'a payload of a typical small size'),
                    NULL, g % 10, now(), 0, g
             FROM generate_series(1, $1::int8) AS g",
        )
        .bind(count)
        .execute(&pool)
        .await?;
        sqlx::query("UPDATE global_position_counter SET last_position = $1")
            .bind(count)
            .execute(&pool)
            .await?;
        database::execute(&pool, "VACUUM ANALYZE events").await?;
        pool.close().await;

        let http = reqwest::Client::new();
        let mut baseline = None;
        for read in &READS {
            let line = self.timed_read(&http, ingest.url(), read).await?;
            emit(&line.to_text());
            match &baseline {
                None => baseline = Some(line),
                Some(all) => {
                    let name = format!("{}-vs-all", read.name);
                    emit(&report::ratio(&name, &line, all, &["events_per_s"]).to_text());
                }
            }
        }
        if !ingest.check_alive() {
            self.failed = true;
        }
        ingest.stop().await?;
        Ok(())
    }

    /// Follows `read` from position 0 until [`READ_CAP`] events or the end.
    async fn timed_read(
        &self,
        http: &reqwest::Client,
        base: &str,
        read: &Read,
    ) -> anyhow::Result<Line> {
        let mut pages_ms = Vec::new();
        let mut events = 0usize;
        let mut from = Some(0i64);
        let start = Instant::now();
        while let (Some(position), true) = (from, events < READ_CAP) {
            let url = format!(
                "{base}{}?{}from={position}&limit={PAGE}",
                read.path, read.query
            );
            let mut request = http.get(&url);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            let page_start = Instant::now();
            let response = request.send().await?;
            let status = response.status();
            if !status.is_success() {
                bail!("{url}: {status}: {}", response.text().await?);
            }
            let page: PositionedPage = response.json().await?;
            pages_ms.push(page_start.elapsed().as_secs_f64() * 1000.0);
            events += page.events.len();
            from = page.next;
        }
        let seconds = start.elapsed().as_secs_f64();
        pages_ms.sort_by(f64::total_cmp);
        let percentile = |q: f64| {
            let index = ((pages_ms.len() as f64 - 1.0) * q).round() as usize;
            pages_ms.get(index).map(|ms| round(*ms, 2))
        };
        let mut line = Line::bench(read.name);
        line.set("events", events as u64)
            .set("pages", pages_ms.len() as u64)
            .set("seconds", round(seconds, 3))
            .set("events_per_s", rate(events as f64, Some(seconds)))
            .set("page_p50_ms", percentile(0.5))
            .set("page_p99_ms", percentile(0.99));
        Ok(line)
    }
}

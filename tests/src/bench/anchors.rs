//! The anchor benchmarks (`seed_template_bench.py`, `pg_copy_limit.py` in `ESK_ANCHORS_DIR`),
//! run as they are, on the `esk_bench_anchor` database.

use anyhow::Context;

use super::line::Line;
use super::services::run_ok;
use super::{emit, say, Bench, ANCHOR_BATCH, ANCHOR_CLIENTS};

impl Bench {
    /// The seed's append logic straight to Postgres; prints and returns its line.
    pub(crate) async fn anchor_seed(&self) -> anyhow::Result<Line> {
        let seconds = &self.settings.seconds;
        say(&format!(
            "anchor: seed_template_bench.py, {seconds}s, {ANCHOR_CLIENTS} clients, batch {ANCHOR_BATCH}"
        ));
        self.anchor(
            "seed_template_bench.py",
            &[
                "--clients".into(),
                ANCHOR_CLIENTS.to_string(),
                "--batch".into(),
                ANCHOR_BATCH.to_string(),
            ],
        )
        .await
    }

    /// A bare COPY loop into the seeds' schema (the indexer's ceiling); prints and returns its
    /// line.
    pub(crate) async fn anchor_copy(&self) -> anyhow::Result<Line> {
        say(&format!(
            "anchor: pg_copy_limit.py, {}s",
            self.settings.seconds
        ));
        self.anchor("pg_copy_limit.py", &[]).await
    }

    async fn anchor(&self, script: &str, extra: &[String]) -> anyhow::Result<Line> {
        let mut args = vec![
            self.settings.anchors_dir.join(script).display().to_string(),
            "--dsn".into(),
            self.anchor_database_url.clone(),
            "--seconds".into(),
            self.settings.seconds.clone(),
        ];
        args.extend_from_slice(extra);
        let finished = run_ok(script, &self.python.program, &args, &self.python.env()).await?;
        let text = finished
            .last_line
            .with_context(|| format!("{script} printed no result"))?;
        emit(&text);
        Line::parse(&text)
    }
}

//! The benchmark's settings, read from the environment and checked before anything runs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::say;

/// One benchmark `ESK_BENCH_WHICH` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Benchmark {
    Ingest,
    Auth,
    Indexer,
    Projector,
    E2eCore,
    E2e,
    Lag,
    Curve,
    Reads,
    TypeIndex,
    Multi,
}

impl Benchmark {
    /// All of them, in the order they run.
    const ALL: [Benchmark; 11] = [
        Benchmark::Ingest,
        Benchmark::Auth,
        Benchmark::Indexer,
        Benchmark::Projector,
        Benchmark::E2eCore,
        Benchmark::E2e,
        Benchmark::Lag,
        Benchmark::Curve,
        Benchmark::Reads,
        Benchmark::TypeIndex,
        Benchmark::Multi,
    ];

    fn name(self) -> &'static str {
        match self {
            Benchmark::Ingest => "ingest",
            Benchmark::Auth => "auth",
            Benchmark::Indexer => "indexer",
            Benchmark::Projector => "projector",
            Benchmark::E2eCore => "e2e-core",
            Benchmark::E2e => "e2e",
            Benchmark::Lag => "lag",
            Benchmark::Curve => "curve",
            Benchmark::Reads => "reads",
            Benchmark::TypeIndex => "type-index",
            Benchmark::Multi => "multi",
        }
    }

    fn known() -> String {
        Self::ALL.map(Benchmark::name).join(", ")
    }
}

/// Everything the run needs to know before it starts.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Measured seconds per benchmark, as given (passed on to loadgen and the anchors).
    pub(crate) seconds: String,
    which: Vec<Benchmark>,
    pub(crate) indexer_events: u64,
    /// Events in the store of the reads benchmark.
    pub(crate) reads_events: u64,
    pub(crate) e2e_writers: u32,
    pub(crate) ingest_in_flight: u32,
    pub(crate) e2e_in_flight: u32,
    /// Appends per second of the lag benchmark, as given, and as a number.
    pub(crate) lag_rate: (String, f64),
    pub(crate) lag_writers: u32,
    pub(crate) anchors_dir: PathBuf,
    pub(crate) state_dir: PathBuf,
    pub(crate) partitions: i32,
    pub(crate) keep_topics: bool,
    /// Where the latency curve's PNG is written (`ESK_BENCH_CURVE_PNG`, else
    /// `$ESK_STATE_DIR/latency-curve.png`).
    pub(crate) curve_png: PathBuf,
    /// The stack's own database: where bench databases are dropped and created from.
    pub(crate) admin_database_url: String,
    pub(crate) brokers: String,
    /// Where the release binaries (ingest, indexer, projector, esk, loadgen,
    /// fill_ingest_log) are.
    pub(crate) bin_dir: PathBuf,
    /// Prefix of this run's topics and consumer groups (`bench-<unix seconds>`).
    pub(crate) run_id: String,
    /// Whether ingest checks bearer tokens (`ESK_BENCH_AUTH`, on by default, like a
    /// deployment); `off` runs it with `--insecure-no-auth`, for the cost of the check.
    pub(crate) auth: bool,
}

impl Settings {
    /// Reads the settings (see the module documentation of [`super`]).
    pub fn from_env() -> anyhow::Result<Self> {
        let seconds = var("ESK_BENCH_SECONDS").unwrap_or_else(|| "15".into());
        if !is_decimal(&seconds) {
            bail!("ESK_BENCH_SECONDS must be a number of seconds, got '{seconds}'");
        }
        let mut which = parse_which(&var("ESK_BENCH_WHICH").unwrap_or_default())?;
        if which.contains(&Benchmark::Projector) && !which.contains(&Benchmark::Indexer) {
            say("projector replays the indexer benchmark's events: running indexer too");
            which.push(Benchmark::Indexer);
        }
        let lag_rate = var("ESK_BENCH_LAG_RATE").unwrap_or_else(|| "400".into());
        let lag_rate_value = lag_rate.parse::<f64>().unwrap_or(0.0);
        if !is_decimal(&lag_rate) || lag_rate_value <= 0.0 {
            bail!(
                "ESK_BENCH_LAG_RATE must be a positive number of appends per second, got '{lag_rate}'"
            );
        }
        let root = crate::soak::repo_root();
        let anchors_dir = var("ESK_ANCHORS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("../shared/anchors"));
        if !["seed_template_bench.py", "pg_copy_limit.py"]
            .iter()
            .all(|script| anchors_dir.join(script).is_file())
        {
            bail!(
                "anchor scripts not found in {} (set ESK_ANCHORS_DIR)",
                anchors_dir.display()
            );
        }
        let anchors_dir = anchors_dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", anchors_dir.display()))?;
        let state_dir = match var("ESK_STATE_DIR") {
            Some(dir) => absolute(Path::new(&dir))?,
            None => root.join(".stack"),
        };
        let curve_png = match var("ESK_BENCH_CURVE_PNG") {
            Some(path) => absolute(Path::new(&path))?,
            None => state_dir.join("latency-curve.png"),
        };
        let admin_database_url = var("ESK_DATABASE_URL").context(
            "ESK_DATABASE_URL is not set (deploy/local/bench sources the stack's env file)",
        )?;
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("the clock is before 1970")?
            .as_secs();
        Ok(Settings {
            seconds,
            which,
            indexer_events: positive("ESK_BENCH_INDEXER_EVENTS", 1_000_000)?,
            reads_events: positive("ESK_BENCH_READS_EVENTS", 500_000)?,
            e2e_writers: positive("ESK_BENCH_E2E_WRITERS", 16)?,
            ingest_in_flight: positive("ESK_BENCH_INGEST_IN_FLIGHT", 32)?,
            e2e_in_flight: positive("ESK_BENCH_E2E_IN_FLIGHT", 32)?,
            lag_rate: (lag_rate, lag_rate_value),
            lag_writers: positive("ESK_BENCH_LAG_WRITERS", 64)?,
            anchors_dir,
            state_dir,
            partitions: positive("ESK_PARTITIONS", 6)?,
            curve_png,
            keep_topics: matches!(
                var("ESK_BENCH_KEEP_TOPICS").as_deref(),
                Some("1" | "true" | "yes")
            ),
            admin_database_url,
            brokers: var("ESK_KAFKA_BROKERS").unwrap_or_else(|| "127.0.0.1:9092".into()),
            bin_dir: crate::process::bin_dir()?,
            run_id: format!("bench-{unix}"),
            auth: match var("ESK_BENCH_AUTH").as_deref() {
                None | Some("on") => true,
                Some("off") => false,
                Some(other) => bail!("ESK_BENCH_AUTH must be on or off, got '{other}'"),
            },
        })
    }

    /// `ESK_BENCH_SECONDS` as a number (checked to be a decimal when read).
    pub(crate) fn seconds_value(&self) -> f64 {
        self.seconds.parse().unwrap_or(0.0)
    }

    /// Whether `ESK_BENCH_WHICH` asks for `benchmark` (or implies it).
    pub(crate) fn wants(&self, benchmark: Benchmark) -> bool {
        self.which.contains(&benchmark)
    }

    /// A release binary next to this one.
    pub(crate) fn binary(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

/// A set, non-empty environment variable.
fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A positive integer from the environment, or its default.
fn positive<T>(name: &str, default: T) -> anyhow::Result<T>
where
    T: std::str::FromStr + PartialOrd + Default,
{
    let Some(text) = var(name) else {
        return Ok(default);
    };
    match text.parse::<T>() {
        Ok(value) if value > T::default() && !text.starts_with(['+', '0']) => Ok(value),
        _ => bail!("{name} must be a positive integer, got '{text}'"),
    }
}

/// `^[0-9]+([.][0-9]+)?$`, as the shell script checked.
fn is_decimal(text: &str) -> bool {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, "1"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(whole) && digits(fraction)
}

/// The benchmarks named in `ESK_BENCH_WHICH` (comma or space separated; empty: all of them).
fn parse_which(text: &str) -> anyhow::Result<Vec<Benchmark>> {
    if text.is_empty() {
        return Ok(Benchmark::ALL.to_vec());
    }
    let mut which = Vec::new();
    for name in text.split([',', ' ', '\t', '\n']).filter(|n| !n.is_empty()) {
        let Some(benchmark) = Benchmark::ALL.into_iter().find(|b| b.name() == name) else {
            bail!(
                "unknown benchmark '{name}' in ESK_BENCH_WHICH (known: {})",
                Benchmark::known()
            );
        };
        if !which.contains(&benchmark) {
            which.push(benchmark);
        }
    }
    if which.is_empty() {
        bail!(
            "ESK_BENCH_WHICH names no benchmark (known: {})",
            Benchmark::known()
        );
    }
    Ok(which)
}

/// A path made absolute against the current directory (as the shell script did).
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir()?.join(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        assert!(is_decimal("15"));
        assert!(is_decimal("0.5"));
        assert!(!is_decimal("1."));
        assert!(!is_decimal(".5"));
        assert!(!is_decimal("-1"));
        assert!(!is_decimal(""));
    }

    #[test]
    fn which() -> anyhow::Result<()> {
        assert_eq!(parse_which("")?, Benchmark::ALL.to_vec());
        assert_eq!(
            parse_which("e2e-core, ingest")?,
            vec![Benchmark::E2eCore, Benchmark::Ingest]
        );
        assert_eq!(
            parse_which("curve lag")?,
            vec![Benchmark::Curve, Benchmark::Lag]
        );
        assert!(parse_which("ingest,nope").is_err());
        assert!(parse_which(" , ").is_err());
        Ok(())
    }
}

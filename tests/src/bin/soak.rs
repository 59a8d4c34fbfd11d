//! `soak`: the chaos soak with a history checker (`deploy/local/soak` builds and runs it).
//!
//! Runs a mixed HTTP + Kafka append workload against two ingest processes, two indexers and the
//! projector on their own database and topics of the running local stack, kills -9 a random
//! process every few seconds, restarts Postgres once and pauses the broker once, then checks
//! the recorded history against the store (see `esk_tests::soak` and `esk_tests::history`).
//!
//! Settings: `ESK_SOAK_SECONDS` (load length, default 600), `ESK_SOAK_WRITERS` (default 12),
//! `ESK_SOAK_SEED`; the stack's `ESK_DATABASE_URL`, `ESK_KAFKA_BROKERS` and `ESK_STATE_DIR`.
//!
//! Output: progress lines on stderr every ~10 s, then one JSON line on stdout with the figures
//! and the violations. Exit status 1 if there is any violation, 2 if the soak could not run.

use std::process::ExitCode;

use esk_tests::soak::{self, SoakConfig};

#[tokio::main]
async fn main() -> ExitCode {
    let mut config = match SoakConfig::from_env(600) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    // Not `esk_t_`: `deploy/local/test` drops those when it starts, maybe mid-soak.
    if std::env::var_os("ESK_SOAK_DATABASE_PREFIX").is_none() {
        config.database_prefix = "esk_soak_".into();
    }
    let result = tokio::select! {
        result = soak::run(config) => result,
        _ = tokio::signal::ctrl_c() => {
            soak::resume_paused_broker();
            eprintln!("soak: interrupted");
            return ExitCode::from(130);
        }
    };
    // Whatever happened, the broker is not left paused.
    soak::resume_paused_broker();
    match result {
        Ok(report) => {
            match serde_json::to_string(&report) {
                Ok(line) => println!("{line}"),
                Err(e) => {
                    eprintln!("soak: cannot print the report: {e}");
                    return ExitCode::from(2);
                }
            }
            if report.violations.is_empty() {
                eprintln!("soak: no violations");
                ExitCode::SUCCESS
            } else {
                eprintln!("soak: violations: {:?}", soak::violation_kinds(&report));
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("soak: could not run: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// mimalloc, like the other binaries.
#[global_allocator]
static GLOBAL_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

//! `bench`: the benchmarks of `deploy/local/bench` (which brings the stack up, builds the
//! release binaries and runs this one). What it measures, the JSON lines it prints on stdout and
//! its settings: see `esk_tests::bench`. Progress goes to stderr.
//!
//! Exit status: 0 when every benchmark ran without failures, 1 otherwise, 130/143 when
//! interrupted (the services it started are stopped and its topics deleted).

use std::process::ExitCode;

use esk_tests::bench::{Bench, Settings};
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().len() > 1 {
        eprintln!("bench: takes no arguments; see the documentation of esk_tests::bench (or deploy/local/bench) for settings");
        return ExitCode::FAILURE;
    }
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(e) => return failed(&e),
    };
    let mut interrupt = match Interrupt::new() {
        Ok(interrupt) => interrupt,
        Err(e) => return failed(&e),
    };
    let mut bench = tokio::select! {
        prepared = Bench::prepare(settings) => match prepared {
            Ok(bench) => bench,
            Err(e) => return failed(&e),
        },
        code = interrupt.wait() => return code,
    };
    let outcome = tokio::select! {
        result = bench.run() => match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => failed(&e),
        },
        code = interrupt.wait() => code,
    };
    bench.clean_up().await;
    outcome
}

fn failed(error: &anyhow::Error) -> ExitCode {
    eprintln!("bench: {error:#}");
    ExitCode::FAILURE
}

/// SIGINT and SIGTERM, answered with the shell's exit codes.
#[derive(Debug)]
struct Interrupt {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupt {
    fn new() -> anyhow::Result<Self> {
        Ok(Interrupt {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    async fn wait(&mut self) -> ExitCode {
        let code = tokio::select! {
            _ = self.int.recv() => 130,
            _ = self.term.recv() => 143,
        };
        eprintln!("bench: interrupted; stopping");
        ExitCode::from(code)
    }
}

/// mimalloc, like the other binaries.
#[global_allocator]
static GLOBAL_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

//! A short chaos soak (its own test binary: it pauses the broker and restarts Postgres, which
//! would disturb tests running beside it). The long one is `deploy/local/soak`.

use std::time::Duration;

use esk_tests::soak::{self, SoakConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chaos_soak_keeps_every_invariant() -> anyhow::Result<()> {
    let report = soak::run(SoakConfig::new(Duration::from_secs(70))).await;
    soak::resume_paused_broker();
    let report = report?;
    println!("{}", serde_json::to_string(&report)?);
    assert!(
        report.violations.is_empty(),
        "violations: {:#?}",
        report.violations
    );
    // A checker that had nothing to check proves nothing: the run must have been meaningful.
    assert!(
        report.appends.accepted >= 300,
        "accepted appends: {}",
        report.appends.accepted
    );
    assert!(
        report.appends.kafka_accepted >= 50,
        "appends accepted over Kafka: {}",
        report.appends.kafka_accepted
    );
    for kind in ["kill", "postgres_restart", "broker_pause"] {
        assert!(report.faults_of(kind) >= 1, "no {kind} fault happened");
    }
    assert!(report.faults_of("kill") >= 5, "kills: {:?}", report.faults);
    let conflicts = report
        .appends
        .rejected
        .get("wrong_expected_version")
        .copied()
        .unwrap_or(0);
    assert!(conflicts >= 10, "stale appends rejected: {conflicts}");
    assert!(
        report.duplicates.matched >= 10,
        "duplicate submissions answered with the original outcome: {:?}",
        report.duplicates
    );
    assert!(report.events_indexed > 0);
    assert_eq!(report.poller.last, report.events_indexed);
    Ok(())
}

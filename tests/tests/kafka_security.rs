//! Kafka security settings against the test broker (Tansu, plaintext) and a private Tansu that
//! requires SASL (`--authentication`; Tansu 0.6.0 offers SCRAM only): a process or command whose
//! `security.protocol` or login the broker refuses stops within seconds saying so, instead of
//! librdkafka retrying for ever; a broker that is merely down at start is still waited for; a
//! misspelt property is refused before anything starts; and the user's properties reach the
//! clients, over esk's own settings.

use std::path::Path;
use std::time::{Duration, Instant};

use esk_tests::broker::PrivateBroker;
use esk_tests::ingest::{self, Client};
use esk_tests::process::{bin_dir, free_port, Listen, Process, INDEXER, INGEST, PROJECTOR};
use esk_tests::TestContext;
use serde_json::json;

const HTTP_ONLY: (&str, &str) = ("ESK_INGEST_KAFKA_APPENDS", "false");

/// How long a mismatch may take to stop a process: two 4 s connection setups and the rest.
const STOP_WITHIN: Duration = Duration::from_secs(25);

/// A TLS client on the plaintext listener; a SASL client on a listener without SASL (Tansu
/// answers the handshake with "unsupported mechanism").
const MISMATCHES: [(&str, &str); 2] = [
    ("security.protocol=SSL", "the TLS handshake failed"),
    (
        "security.protocol=SASL_PLAINTEXT;sasl.mechanism=PLAIN;sasl.username=esk;sasl.password=pw",
        "SASL authentication failed",
    ),
];

/// Starts `binary` with the test's environment and `extra`, without waiting for it.
fn start(
    ctx: &TestContext,
    binary: &str,
    listen: Listen,
    extra: &[(&str, &str)],
) -> anyhow::Result<Process> {
    let mut env = ctx.env();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env.push(("RUST_LOG".into(), "info".into()));
    let log = std::env::temp_dir().join(format!("esk-{binary}-{}.log", free_port()?));
    Process::start(&bin_dir()?.join(binary), &env, listen, &[], log)
}

#[tokio::test]
async fn every_process_stops_within_seconds_on_a_security_protocol_the_broker_does_not_speak(
) -> anyhow::Result<()> {
    let ctx = TestContext::new("kafka_mismatch").await?;
    for (properties, why) in MISMATCHES {
        let started = Instant::now();
        let extra = [("ESK_KAFKA_PROPERTIES", properties), HTTP_ONLY];
        let mut processes = vec![
            ("ingest", start(&ctx, "ingest", INGEST, &extra)?),
            ("indexer", start(&ctx, "indexer", INDEXER, &extra)?),
            ("projector", start(&ctx, "projector", PROJECTOR, &extra)?),
        ];
        let protocol = properties
            .split(';')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        for (binary, process) in &mut processes {
            let code = process.wait_exit(STOP_WITHIN).await?;
            let log = process.log_text();
            assert!(
                code.is_some_and(|c| c != 0),
                "{binary} with {properties}: exit {code:?}\n{log}"
            );
            for expected in [protocol.as_str(), why, ctx.brokers.as_str()] {
                assert!(
                    log.contains(expected),
                    "{binary} with {properties} says `{expected}`:\n{log}"
                );
            }
        }
        assert!(
            started.elapsed() < STOP_WITHIN,
            "stopped within {STOP_WITHIN:?}: {:?}",
            started.elapsed()
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_broker_that_requires_sasl_refuses_a_plaintext_client_and_a_wrong_login_fast(
) -> anyhow::Result<()> {
    let ctx = TestContext::without_topics("kafka_sasl").await?;
    let dir = std::env::temp_dir().join(format!("esk-sasl-broker-{}", ctx.name));
    std::fs::create_dir_all(&dir)?;
    let broker = PrivateBroker::start(
        PrivateBroker::bin()?,
        dir,
        free_port()?,
        &["--authentication"],
    )
    .await?;
    let brokers = broker.brokers();
    for (properties, why) in [
        ("", "the broker closed every connection at once"),
        (
            "security.protocol=SASL_PLAINTEXT;sasl.mechanism=SCRAM-SHA-512;sasl.username=esk;\
             sasl.password=wrong",
            "SASL authentication failed",
        ),
    ] {
        let started = Instant::now();
        let mut process = start(
            &ctx,
            "ingest",
            INGEST,
            &[
                ("ESK_KAFKA_BROKERS", brokers.as_str()),
                ("ESK_KAFKA_PROPERTIES", properties),
                HTTP_ONLY,
            ],
        )?;
        let code = process.wait_exit(STOP_WITHIN).await?;
        let log = process.log_text();
        assert!(
            code.is_some_and(|c| c != 0),
            "{properties}: {code:?}\n{log}"
        );
        for expected in [why, "security.protocol=", brokers.as_str()] {
            assert!(
                log.contains(expected),
                "{properties} says `{expected}`:\n{log}"
            );
        }
        assert!(started.elapsed() < STOP_WITHIN, "{:?}", started.elapsed());
    }
    Ok(())
}

#[tokio::test]
async fn a_broker_that_starts_requiring_sasl_at_run_time_turns_health_unhealthy_until_it_stops(
) -> anyhow::Result<()> {
    let ctx = TestContext::without_topics("kafka_watch").await?;
    let port = free_port()?;
    let broker_dir = |n: u32| -> anyhow::Result<std::path::PathBuf> {
        let dir = std::env::temp_dir().join(format!("esk-watch-broker-{}-{n}", ctx.name));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    };
    let bin = PrivateBroker::bin()?;
    let mut broker = PrivateBroker::start(bin.clone(), broker_dir(1)?, port, &[]).await?;
    let brokers = broker.brokers();
    let process =
        ingest::spawn(&ctx, &[("ESK_KAFKA_BROKERS", brokers.as_str()), HTTP_ONLY]).await?;
    let health = format!("{}/health", process.admin);
    let health_is = |unhealthy: bool| {
        let health = health.clone();
        async move {
            let response = reqwest::get(&health).await.ok()?;
            let status = response.status().as_u16();
            let body = response.text().await.ok()?;
            let matches = if unhealthy {
                status == 503 && body.contains("security.protocol=plaintext")
            } else {
                status == 200
            };
            matches.then_some(body)
        }
    };

    // The same port, now a listener that requires SASL: the watch (every 30 s) reports it.
    broker.kill9()?;
    let mut broker =
        PrivateBroker::start(bin.clone(), broker_dir(2)?, port, &["--authentication"]).await?;
    let unhealthy = esk_tests::eventually(Duration::from_secs(75), || health_is(true)).await;
    assert!(
        unhealthy.is_some_and(|body| body.contains("closed every connection")),
        "{}",
        process.log_text()
    );

    broker.kill9()?;
    let _broker = PrivateBroker::start(bin, broker_dir(3)?, port, &[]).await?;
    let healthy = esk_tests::eventually(Duration::from_secs(75), || health_is(false)).await;
    assert!(healthy.is_some(), "{}", process.log_text());
    Ok(())
}

#[tokio::test]
async fn a_broker_that_is_down_at_start_is_waited_for_not_refused() -> anyhow::Result<()> {
    let ctx = TestContext::new("kafka_down").await?;
    let closed = format!("127.0.0.1:{}", free_port()?);
    let mut process = start(
        &ctx,
        "ingest",
        INGEST,
        &[("ESK_KAFKA_BROKERS", closed.as_str()), HTTP_ONLY],
    )?;
    // Past the start-up check (15 s): still running, and serving /health.
    process.wait_healthy(Duration::from_secs(40)).await?;
    assert!(process.exit_status().is_none(), "{}", process.log_text());
    assert!(
        process.log_text().contains("did not answer"),
        "{}",
        process.log_text()
    );
    Ok(())
}

/// Runs `esk` with the test's environment and `extra`; (exit code, stdout + stderr).
async fn esk(
    ctx: &TestContext,
    args: &[&str],
    extra: &[(&str, &str)],
) -> anyhow::Result<(Option<i32>, String)> {
    let output = esk_output(ctx, args, extra).await?;
    Ok((
        output.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    ))
}

async fn esk_output(
    ctx: &TestContext,
    args: &[&str],
    extra: &[(&str, &str)],
) -> anyhow::Result<std::process::Output> {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(bin_dir()?.join("esk"))
            .args(args)
            .envs(ctx.env())
            .envs(extra.iter().copied())
            .env("NO_COLOR", "1")
            .output(),
    )
    .await??;
    Ok(output)
}

#[tokio::test]
async fn doctor_and_setup_report_a_security_protocol_mismatch_and_fail() -> anyhow::Result<()> {
    let ctx = TestContext::new("kafka_doctor").await?;
    for (properties, why) in MISMATCHES {
        let started = Instant::now();
        let (code, output) = esk(
            &ctx,
            &["doctor"],
            &[
                ("ESK_KAFKA_PROPERTIES", properties),
                ("ESK_INGEST_ADMIN_URL", "http://127.0.0.1:1"),
                ("ESK_INDEXER_URL", "http://127.0.0.1:1"),
            ],
        )
        .await?;
        assert_eq!(code, Some(4), "doctor with {properties}: {output}");
        assert!(
            output.contains(why) && output.contains("security.protocol="),
            "{output}"
        );
        assert!(started.elapsed() < STOP_WITHIN, "{:?}", started.elapsed());

        let (code, output) = esk(&ctx, &["setup"], &[("ESK_KAFKA_PROPERTIES", properties)]).await?;
        assert!(
            code.is_some_and(|c| c != 0),
            "setup with {properties}: {output}"
        );
        assert!(output.contains(why), "{output}");
    }
    // And the same doctor without the mismatch passes the broker checks.
    let output = esk_output(&ctx, &["doctor", "--json"], &[]).await?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| anyhow::anyhow!("doctor --json: {e}: {output:?}"))?;
    let broker = report["sections"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "Broker"))
        .ok_or_else(|| anyhow::anyhow!("no Broker section: {report}"))?;
    assert!(
        broker["checks"]
            .as_array()
            .is_some_and(|c| c.iter().all(|c| c["status"] == "ok")),
        "{broker}"
    );
    Ok(())
}

#[tokio::test]
async fn a_misspelt_or_reserved_property_is_refused_before_anything_starts() -> anyhow::Result<()> {
    let ctx = TestContext::without_topics("kafka_misspelt").await?;
    for binary in ["ingest", "indexer", "projector"] {
        let output = tokio::process::Command::new(bin_dir()?.join(binary))
            .args(["--kafka-property", "no.such.property=1"])
            .envs(ctx.env())
            .output()
            .await?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{binary}: {stderr}");
        assert!(
            stderr.contains("--kafka-property") && stderr.contains("no.such.property"),
            "{binary}: {stderr}"
        );
    }
    let (code, output) = esk(
        &ctx,
        &["doctor"],
        &[(
            "ESK_KAFKA_PROPERTIES",
            "client.id=a;enable.auto.offset.store=true",
        )],
    )
    .await?;
    // esk's usage errors exit 1 (2 means a conflict there).
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("ESK_KAFKA_PROPERTIES") && output.contains("enable.auto.offset.store"),
        "{output}"
    );

    let file = std::env::temp_dir().join(format!("esk-{}.properties", ctx.name));
    std::fs::write(&file, "# comment\nclient.id = esk\nsecurity.protocol\n")?;
    let (code, output) = esk(
        &ctx,
        &["--kafka-properties-file", &path_text(&file), "doctor"],
        &[],
    )
    .await?;
    std::fs::remove_file(&file)?;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("line 3"), "{output}");
    Ok(())
}

fn path_text(path: &Path) -> String {
    path.display().to_string()
}

#[tokio::test]
async fn the_users_properties_reach_the_clients_over_esks_own() -> anyhow::Result<()> {
    let ctx = TestContext::new("kafka_properties").await?;
    // esk's producers allow records of 8 MiB; the user's message.max.bytes wins, so an event
    // of 20 kB is refused by ingest's own producer as too large.
    let file = std::env::temp_dir().join(format!("esk-{}.properties", ctx.name));
    std::fs::write(&file, "message.max.bytes = 10000\n")?;
    let path = path_text(&file);
    let process = ingest::spawn(
        &ctx,
        &[
            ("ESK_KAFKA_PROPERTIES_FILE", path.as_str()),
            ("ESK_KAFKA_PROPERTIES", "client.id=esk-kafka-security-test"),
            HTTP_ONLY,
        ],
    )
    .await?;
    let client = Client::new(&process);
    let small = client
        .append(
            "Props-1",
            &json!({"expected_version": "any", "events": [ingest::event("Small")]}),
        )
        .await?;
    assert_eq!(small.status, 201, "{small:?}");
    let big =
        json!({"id": uuid::Uuid::new_v4(), "type": "Big", "data": {"blob": "x".repeat(20_000)}});
    let refused = client
        .append(
            "Props-2",
            &json!({"expected_version": "any", "events": [big]}),
        )
        .await?;
    std::fs::remove_file(&file)?;
    assert_eq!(refused.status, 413, "{refused:?}");
    assert_eq!(refused.code(), Some("record_too_large"), "{refused:?}");
    Ok(())
}

//! Secret hygiene: a sentinel secret set in every secret setting (the database password, in the
//! URL and as `?password=`; a webhook URL's `user:password@` and `?token=`; the Kafka
//! `sasl.password` property) appears in none of the outputs: `--help` of every binary with the
//! environment set, the logs of a run with a failing webhook, a rejecting webhook and a failing
//! database connection, `/health`, `/metrics`, `esk doctor` (human and `--json`; also with a
//! SASL login the broker refuses, and with a misspelt property), a 5xx error body, and the
//! dead-letter rows.
//!
//! The database password is a role's: `esk setup --roles` creates this run's roles with the
//! sentinel as their passwords, as the admin of `ESK_TEST_ADMIN_DATABASE_URL` (see
//! least_privilege.rs); they are dropped at the end with the test's database.

use std::time::Duration;

use esk_tests::ingest::{self, Client};
use esk_tests::process::bin_dir;
use esk_tests::projector::{self, Receiver, Webhook};
use esk_tests::roles::{admin_url, run_then_drop, with_database};
use esk_tests::{eventually, indexer, TestContext};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

const HTTP_ONLY: &[(&str, &str)] = &[("ESK_INGEST_KAFKA_APPENDS", "false")];

/// The `host:port/database` part of `url`.
fn host_and_database(url: &str) -> anyhow::Result<&str> {
    let rest = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("not a URL"))?;
    Ok(rest.rsplit_once('@').map_or(rest, |(_, host)| host))
}

/// Every place a secret could leak to, gathered under a name.
#[derive(Debug, Default)]
struct Outputs(Vec<(String, String)>);

impl Outputs {
    fn add(&mut self, name: impl Into<String>, text: impl Into<String>) {
        self.0.push((name.into(), text.into()));
    }

    fn add_output(&mut self, name: &str, output: &std::process::Output) {
        self.add(
            name,
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        );
    }
}

#[tokio::test]
async fn a_sentinel_secret_appears_in_no_output() -> anyhow::Result<()> {
    let ctx = TestContext::new("secrets").await?;
    run_then_drop(&ctx, "sec", |prefix, database| {
        let ctx = &ctx;
        async move { run(ctx, &prefix, &database).await }
    })
    .await
}

async fn run(ctx: &TestContext, prefix: &str, database: &str) -> anyhow::Result<()> {
    let sentinel = format!("SeNtInEl{}", uuid::Uuid::new_v4().simple());
    let mut outputs = Outputs::default();
    // Ignored on the plaintext test broker, but set in every process and command.
    let kafka_properties = (
        "ESK_KAFKA_PROPERTIES".to_string(),
        format!("sasl.username=esk;sasl.password={sentinel}"),
    );
    let mut base_env = ctx.env();
    base_env.push(kafka_properties.clone());
    let mut setup_env = base_env.clone();
    setup_env.push((
        "ESK_DATABASE_URL".into(),
        with_database(&admin_url(), database)?,
    ));
    for name in ["OWNER", "INGEST", "INDEXER", "PROJECTOR", "READONLY"] {
        setup_env.push((format!("ESK_{name}_PASSWORD"), sentinel.clone()));
    }
    let esk = |args: &[&str], env: &[(String, String)]| {
        let mut command = tokio::process::Command::new(bin_dir()?.join("esk"));
        command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("NO_COLOR", "1");
        anyhow::Ok(command)
    };
    let setup = esk(&["setup", "--roles", "--role-prefix", prefix], &setup_env)?
        .output()
        .await?;
    anyhow::ensure!(setup.status.success(), "setup: {setup:?}");
    outputs.add_output("esk setup --roles", &setup);

    let host = host_and_database(&ctx.database_url)?;
    let role_url = |role: &str| format!("postgres://{prefix}_{role}:{sentinel}@{host}");
    // Every binary's --help (and esk setup's) with the secrets in the environment.
    let mut help_env = setup_env.clone();
    help_env.push(("ESK_DATABASE_URL".into(), role_url("ingest")));
    for binary in ["ingest", "indexer", "projector", "esk"] {
        let output = tokio::process::Command::new(bin_dir()?.join(binary))
            .arg("--help")
            .envs(help_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .await?;
        outputs.add_output(&format!("{binary} --help"), &output);
    }
    let output = esk(&["setup", "--help"], &help_env)?.output().await?;
    outputs.add_output("esk setup --help", &output);

    // A run: ingest, indexer and a projector with a webhook that rejects (dead letters) and
    // one that is unreachable (retried, logged), each URL holding the sentinel.
    let as_role = |role: &str| {
        vec![
            ("ESK_DATABASE_URL".to_string(), role_url(role)),
            ("ESK_MIGRATE".to_string(), "false".to_string()),
            kafka_properties.clone(),
        ]
    };
    let ingest_env = as_role("ingest");
    let mut ingest_env: Vec<(&str, &str)> = ingest_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    ingest_env.extend_from_slice(HTTP_ONLY);
    let ingest_process = ingest::spawn(ctx, &ingest_env).await?;
    let indexer_env = as_role("indexer");
    let indexer_env: Vec<(&str, &str)> = indexer_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let indexer_process = indexer::spawn(ctx, &indexer_env).await?;

    let rejecting = Webhook::start(Receiver {
        fail_with: Some(400),
        ..Receiver::default()
    })
    .await?;
    let secret_url = |url: &str| {
        format!(
            "{}?token={sentinel}&x=1",
            url.replacen("http://", &format!("http://hook:{sentinel}@"), 1)
        )
    };
    let closed_port = esk_tests::process::free_port()?;
    let config = projector::write_config(
        ctx,
        &format!(
            // The signing secret is the sentinel too: it must not show either.
            "[[projection]]\nname = \"rejected\"\nhandler = \"webhook\"\nurl = \"{}\"\n\
             secret = \"{sentinel}\"\n\n\
             [[projection]]\nname = \"unreachable\"\nhandler = \"webhook\"\nurl = \"{}\"\n\
             secret = \"{sentinel}\"\n",
            secret_url(&rejecting.url),
            secret_url(&format!("http://127.0.0.1:{closed_port}/hook")),
        ),
    )?;
    let projector_env = as_role("projector");
    let projector_env: Vec<(&str, &str)> = projector_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let projector_process = projector::spawn(ctx, Some(&config), &projector_env).await?;

    let client = Client::new(&ingest_process);
    let reply = client
        .append(
            "Secret-1",
            &serde_json::json!({"expected_version": "any", "events": ingest::events(2)}),
        )
        .await?;
    anyhow::ensure!(reply.status == 201, "append: {reply:?}");

    let admin: PgPool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&with_database(&admin_url(), database)?)
        .await?;
    let dead = eventually(Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
            .fetch_one(&admin)
            .await
            .ok()?;
        (n >= 2).then_some(())
    })
    .await;
    anyhow::ensure!(
        dead.is_some(),
        "the rejecting webhook dead-lettered the events"
    );
    let rows: Vec<String> = sqlx::query_scalar("SELECT row_to_json(d)::text FROM dead_letters d")
        .fetch_all(&admin)
        .await?;
    let rows = rows.join("\n");
    let names_redacted_url = rows.contains("hook:***@");
    outputs.add("dead_letters rows", rows);
    // Retries of the unreachable webhook are logged meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A 5xx error body: the ingest role loses its read grant, a read fails; the body carries
    // an error id and the log the cause under that id.
    sqlx::query(&format!("REVOKE SELECT ON events FROM \"{prefix}_ingest\""))
        .execute(&admin)
        .await?;
    let failed = client.get("/streams/Secret-1/events").await?;
    anyhow::ensure!(failed.status >= 500, "a failed read is a 5xx: {failed:?}");
    let message = failed
        .body
        .pointer("/error/message")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string();
    let error_id = message
        .rsplit_once("(error id ")
        .map(|(_, id)| id.trim_end_matches(')').to_string())
        .ok_or_else(|| anyhow::anyhow!("no error id in {message}"))?;
    anyhow::ensure!(
        !message.contains("permission denied"),
        "the body does not carry the cause: {message}"
    );
    outputs.add("5xx error body", failed.body.to_string());
    let logged = eventually(Duration::from_secs(5), || async {
        let log = ingest_process.log_text();
        log.lines()
            .any(|line| line.contains(&error_id) && line.contains("permission denied"))
            .then_some(())
    })
    .await;
    anyhow::ensure!(
        logged.is_some(),
        "the log has the cause under the error id {error_id}"
    );

    for (name, process) in [
        ("ingest", &ingest_process),
        ("indexer", &indexer_process),
        ("projector", &projector_process),
    ] {
        for path in ["/health", "/metrics"] {
            let body = reqwest::get(format!("{}{path}", process.http))
                .await?
                .text()
                .await?;
            outputs.add(format!("{name} {path}"), body);
        }
    }

    // esk doctor, human and --json, with a working URL and a failing one (`?password=`).
    let doctor_urls = [
        role_url("readonly"),
        format!("postgres://{prefix}_readonly@{host}?password={sentinel}x"),
    ];
    for url in &doctor_urls {
        for json in [false, true] {
            let mut env = base_env.clone();
            env.push(("ESK_DATABASE_URL".into(), url.clone()));
            env.push(("ESK_URL".into(), ingest_process.http.clone()));
            let mut args = vec!["doctor"];
            if json {
                args.push("--json");
            }
            let output = esk(&args, &env)?.output().await?;
            outputs.add_output(&format!("esk {}", args.join(" ")), &output);
        }
    }

    // A SASL login the broker refuses, and a misspelt property: the messages say why, without
    // the password.
    let mut env = base_env.clone();
    env.push((
        "ESK_KAFKA_PROPERTIES".into(),
        format!(
            "security.protocol=SASL_PLAINTEXT;sasl.mechanism=PLAIN;sasl.username=esk;\
             sasl.password={sentinel}"
        ),
    ));
    let refused = esk(&["doctor"], &env)?.output().await?;
    anyhow::ensure!(
        String::from_utf8_lossy(&refused.stdout).contains("SASL authentication failed"),
        "doctor reports the refused login: {refused:?}"
    );
    outputs.add_output("esk doctor with a refused SASL login", &refused);
    let misspelt = format!("sasl.pasword={sentinel}");
    let refused = esk(&["--kafka-property", &misspelt, "doctor"], &base_env)?
        .output()
        .await?;
    anyhow::ensure!(
        String::from_utf8_lossy(&refused.stderr).contains("sasl.pasword"),
        "the misspelt property is named: {refused:?}"
    );
    outputs.add_output("esk doctor with a misspelt property", &refused);

    // A process that cannot connect: its log says why, without the password.
    let wrong = format!("postgres://{prefix}_indexer:{sentinel}wrong@{host}");
    let mut env = base_env.clone();
    env.push(("ESK_DATABASE_URL".into(), wrong));
    env.push(("ESK_MIGRATE".into(), "false".into()));
    let refused = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(bin_dir()?.join("indexer"))
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("ESK_INDEXER_HTTP_ADDR", "127.0.0.1:0")
            .output(),
    )
    .await??;
    anyhow::ensure!(
        !refused.status.success(),
        "a wrong password fails the start"
    );
    outputs.add_output("indexer with a wrong password", &refused);

    admin.close().await;
    for (name, process) in [
        ("ingest", &ingest_process),
        ("indexer", &indexer_process),
        ("projector", &projector_process),
    ] {
        let log = process.log_text();
        outputs.add(format!("{name} log"), log);
    }
    let projector_log = projector_process.log_text();
    anyhow::ensure!(
        projector_log.contains(&format!("127.0.0.1:{closed_port}")),
        "the unreachable webhook's failures were logged: {projector_log}"
    );

    let leaks: Vec<&str> = outputs
        .0
        .iter()
        .filter(|(_, text)| text.contains(&sentinel) || text.contains(&sentinel[..20]))
        .map(|(name, _)| name.as_str())
        .collect();
    anyhow::ensure!(
        outputs.0.len() >= 20,
        "every output was gathered: {}",
        outputs.0.len()
    );
    anyhow::ensure!(leaks.is_empty(), "the sentinel leaked into: {leaks:?}");
    anyhow::ensure!(
        names_redacted_url,
        "the dead letters name the webhook by its redacted URL"
    );
    Ok(())
}

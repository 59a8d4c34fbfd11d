//! Postgres least privilege: `esk setup --roles` creates an owner role and one role per
//! process; each process does its job under its own role (ingest appends, the indexer indexes,
//! the projector projects) and every role is refused what would change `events` other than by
//! appending, or the schema.
//!
//! Creating roles needs CREATEROLE: the test connects as `ESK_TEST_ADMIN_DATABASE_URL` (a URL
//! of any database of the cluster) when set, else as the stack's user (`deploy/local/stack`
//! gives it CREATEROLE). Roles are cluster-wide:
//! this run's are named `lp_{random}_*` and dropped at the end with its database; checks
//! return errors rather than panic, so that cleanup always runs.

use std::time::Duration;

use esk_tests::indexer::{self, wait_indexed};
use esk_tests::ingest::{self, Client};
use esk_tests::process::bin_dir;
use esk_tests::roles::{admin_url, run_then_drop, with_database};
use esk_tests::{eventually, projector, TestContext};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection};

/// The statements no runtime role may run, each refused with SQLSTATE 42501.
const FORBIDDEN: &[&str] = &[
    "UPDATE events SET event_type = 'x'",
    "DELETE FROM events",
    "TRUNCATE events",
    "DROP TABLE events",
    "CREATE TABLE lp_intruder (x int)",
    "ALTER TABLE events ADD COLUMN lp_intruder int",
    "ALTER TABLE events DISABLE TRIGGER ALL",
    // Snapshots only move forward (an upsert); nobody deletes them.
    "DELETE FROM snapshots",
];

const HTTP_ONLY: &[(&str, &str)] = &[("ESK_INGEST_KAFKA_APPENDS", "false")];

/// `url` logging in as `user` with `password`.
fn with_user(url: &str, user: &str, password: &str) -> anyhow::Result<String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| anyhow::anyhow!("not a URL"))?;
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    Ok(format!("{scheme}://{user}:{password}@{host}"))
}

#[tokio::test]
async fn each_process_runs_under_its_own_role_and_none_may_rewrite_events() -> anyhow::Result<()> {
    let ctx = TestContext::new("least_priv").await?;
    run_then_drop(&ctx, "lp", |prefix, database| {
        let ctx = &ctx;
        async move { run(ctx, &prefix, &database).await }
    })
    .await
}

async fn run(ctx: &TestContext, prefix: &str, database: &str) -> anyhow::Result<()> {
    ctx.pool.close().await;
    let role = |name: &str| format!("{prefix}_{name}");
    let password = |name: &str| format!("pw-{name}-{prefix}");
    // The read-only role's password is left to setup: it generates one and prints it once.
    let mut env: Vec<(String, String)> = ctx.env();
    env.push((
        "ESK_DATABASE_URL".into(),
        with_database(&admin_url(), database)?,
    ));
    for name in ["owner", "ingest", "indexer", "projector"] {
        env.push((
            format!("ESK_{}_PASSWORD", name.to_uppercase()),
            password(name),
        ));
    }
    let setup = tokio::process::Command::new(bin_dir()?.join("esk"))
        .args(["setup", "--roles", "--role-prefix", prefix])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("ESK_PARTITIONS", esk_tests::TEST_PARTITIONS.to_string())
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&setup.stdout).to_string();
    anyhow::ensure!(
        setup.status.success(),
        "esk setup --roles failed: {stdout}{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let readonly_line = format!("generated password for {}: ", role("readonly"));
    let readonly_password = stdout
        .lines()
        .find_map(|line| line.strip_prefix(&readonly_line))
        .ok_or_else(|| anyhow::anyhow!("no generated read-only password in {stdout}"))?
        .to_string();
    for name in ["owner", "ingest", "indexer", "projector"] {
        anyhow::ensure!(
            !stdout.contains(&password(name)),
            "a given password is not printed"
        );
    }
    // Running setup again changes nothing and generates no password: the roles exist.
    let again = tokio::process::Command::new(bin_dir()?.join("esk"))
        .args(["setup", "--roles", "--role-prefix", prefix])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .await?;
    anyhow::ensure!(again.status.success(), "setup --roles is idempotent");
    anyhow::ensure!(!String::from_utf8_lossy(&again.stdout).contains("generated password"));

    // --print-sql reviews before running: it prints the statements and connects to nothing.
    let printed = tokio::process::Command::new(bin_dir()?.join("esk"))
        .args(["setup", "--print-sql", "--role-prefix", prefix])
        .env("ESK_DATABASE_URL", "postgres://nobody:x@127.0.0.1:1/none")
        .env("ESK_KAFKA_BROKERS", "127.0.0.1:1")
        .env("ESK_INGEST_PASSWORD", password("ingest"))
        .output()
        .await?;
    let sql = String::from_utf8_lossy(&printed.stdout);
    anyhow::ensure!(
        printed.status.success()
            && sql.contains(&format!("CREATE ROLE \"{}\"", role("indexer")))
            && sql.contains(&format!("PASSWORD '{}'", password("ingest"))),
        "setup --print-sql prints the roles' SQL: {printed:?}"
    );

    let url_of = |name: &str, pw: &str| with_user(&ctx.database_url, &role(name), pw);
    let readonly_url = url_of("readonly", &readonly_password)?;
    let readonly = PgPoolOptions::new()
        .max_connections(2)
        .connect(&readonly_url)
        .await?;

    // The owner role migrates (`esk migrate` as the owner: up to date, nothing refused).
    let migrate = tokio::process::Command::new(bin_dir()?.join("esk"))
        .arg("migrate")
        .env("ESK_DATABASE_URL", url_of("owner", &password("owner"))?)
        .output()
        .await?;
    anyhow::ensure!(
        migrate.status.success(),
        "the owner role migrates: {}",
        String::from_utf8_lossy(&migrate.stderr)
    );

    // Each process under its own role, migrations off: ingest appends, the indexer indexes,
    // the projector projects.
    let ingest_url = url_of("ingest", &password("ingest"))?;
    let indexer_url = url_of("indexer", &password("indexer"))?;
    let projector_url = url_of("projector", &password("projector"))?;
    let as_role = |url: &str| {
        let mut extra = vec![("ESK_DATABASE_URL", url.to_string())];
        extra.push(("ESK_MIGRATE", "false".to_string()));
        extra
    };
    let ingest_env = as_role(&ingest_url);
    let mut ingest_env: Vec<(&str, &str)> =
        ingest_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ingest_env.extend_from_slice(HTTP_ONLY);
    let ingest_process = ingest::spawn(ctx, &ingest_env).await?;
    let indexer_env = as_role(&indexer_url);
    let mut indexer_env: Vec<(&str, &str)> =
        indexer_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    indexer_env.push(("ESK_SCAVENGE_INTERVAL_SECS", "1"));
    let indexer_process = indexer::spawn(ctx, &indexer_env).await?;
    let projector_env = as_role(&projector_url);
    let projector_env: Vec<(&str, &str)> = projector_env
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    let projector_process = projector::spawn(ctx, None, &projector_env).await?;

    let client = Client::new(&ingest_process);
    for n in 0..5 {
        let reply = client
            .append(
                &format!("Account-{n}"),
                &serde_json::json!({"expected_version": "any", "events": ingest::events(3)}),
            )
            .await?;
        anyhow::ensure!(reply.status == 201, "append as the ingest role: {reply:?}");
    }
    // Checked through the read-only role: the stack's own user no longer owns the tables.
    let observed = TestContext {
        name: ctx.name.clone(),
        database_url: readonly_url.clone(),
        pool: readonly.clone(),
        topics: ctx.topics.clone(),
        brokers: ctx.brokers.clone(),
        token: ctx.token.clone(),
    };
    wait_indexed(&observed, 15, Duration::from_secs(60)).await?;
    // Snapshots as the ingest role: stored, kept against an older one, read back.
    for (version, stored) in [(1, true), (0, false), (2, true)] {
        let reply = client
            .put_snapshot(
                "Account-0",
                &format!(r#"{{"version":{version},"data":{{}}}}"#),
            )
            .await?;
        anyhow::ensure!(
            reply.status == 200 && reply.body["stored"] == serde_json::json!(stored),
            "snapshot at {version} as the ingest role: {reply:?}"
        );
    }
    let reply = client.get_snapshot("Account-0").await?;
    anyhow::ensure!(
        reply.status == 200 && reply.body["version"] == serde_json::json!(2),
        "snapshot read as the ingest role: {reply:?}"
    );
    let projected = eventually(Duration::from_secs(60), || async {
        let counted: Option<i64> =
            sqlx::query_scalar("SELECT sum(count)::int8 FROM projection_category_type_counts WHERE projection = 'counts'")
                .fetch_one(&readonly)
                .await
                .ok()?;
        (counted == Some(15)).then_some(())
    })
    .await;
    anyhow::ensure!(projected.is_some(), "the projector projects as its role");

    for (name, pw) in [
        ("ingest", password("ingest")),
        ("indexer", password("indexer")),
        ("projector", password("projector")),
        ("readonly", readonly_password.clone()),
    ] {
        let mut conn = PgConnection::connect(&url_of(name, &pw)?).await?;
        for statement in FORBIDDEN {
            let error = sqlx::query(statement)
                .execute(&mut conn)
                .await
                .err()
                .ok_or_else(|| anyhow::anyhow!("{name} may run `{statement}`"))?;
            let code = error
                .as_database_error()
                .and_then(|e| e.code())
                .map(|c| c.to_string());
            anyhow::ensure!(
                code.as_deref() == Some("42501"),
                "{name}: `{statement}` refused for lack of privilege: {error}"
            );
        }
        conn.close().await?;
    }
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&readonly)
        .await?;
    anyhow::ensure!(events == 15, "the events are all still there");
    // Only the indexer may scavenge, and only through the function that deletes hidden rows.
    for (name, pw, allowed) in [
        ("ingest", password("ingest"), false),
        ("projector", password("projector"), false),
        ("readonly", readonly_password.clone(), false),
        ("indexer", password("indexer"), true),
    ] {
        let mut conn = PgConnection::connect(&url_of(name, &pw)?).await?;
        let result = sqlx::query("SELECT scavenge_events(1)")
            .execute(&mut conn)
            .await;
        anyhow::ensure!(
            result.is_ok() == allowed,
            "{name} calling scavenge_events: {result:?}"
        );
        conn.close().await?;
    }
    // Lifecycle as the runtime roles: ingest stores metadata and deletes, reads apply them,
    // the indexer's scavenger deletes what they hide (keeping each stream's last event).
    let reply = client
        .put_raw(
            "/streams/Account-1/metadata",
            "application/json",
            br#"{"max_count":1}"#.to_vec(),
        )
        .await?;
    anyhow::ensure!(
        reply.status == 200,
        "metadata as the ingest role: {reply:?}"
    );
    let reply = client.delete("/streams/Account-2?mode=hard").await?;
    anyhow::ensure!(
        reply.status == 200,
        "hard delete as the ingest role: {reply:?}"
    );
    let reply = client.get("/streams/Account-1/events").await?;
    anyhow::ensure!(
        reply.status == 200 && reply.body["events"].as_array().map(Vec::len) == Some(1),
        "read with a retention rule as the ingest role: {reply:?}"
    );
    let scavenged = eventually(Duration::from_secs(60), || async {
        let counted: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE stream_id IN ('Account-1', 'Account-2')",
        )
        .fetch_one(&readonly)
        .await
        .ok()?;
        (counted == 2).then_some(())
    })
    .await;
    anyhow::ensure!(scavenged.is_some(), "the indexer scavenges as its role");
    // Nothing any process ran was refused (a missing grant shows as "permission denied").
    for (name, process) in [
        ("ingest", &ingest_process),
        ("indexer", &indexer_process),
        ("projector", &projector_process),
    ] {
        let log = process.log_text();
        anyhow::ensure!(
            !log.contains("permission denied") && !log.contains("42501"),
            "{name} was refused a statement:\n{log}"
        );
    }
    readonly.close().await;
    Ok(())
}

//! The `esk` command-line tool, run as a child process against the real stack: append, read,
//! tail, doctor, and its exit codes (0 ok, 1 bad input, 2 conflict, 3 unavailable, 4 doctor).

use std::process::Stdio;
use std::time::{Duration, Instant};

use esk_tests::indexer::{self, wait_indexed};
use esk_tests::ingest::{self, Client};
use esk_tests::process::{bin_dir, free_port, Process};
use esk_tests::TestContext;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use uuid::Uuid;

const HTTP_ONLY: &[(&str, &str)] = &[("ESK_INGEST_KAFKA_APPENDS", "false")];
/// Longest a single `esk` run may take in these tests.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// What one run printed and how it ended.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.stdout)
            .map_err(|e| anyhow::anyhow!("stdout is not one JSON document ({e}): {self:?}"))
    }
}

/// `esk` with a clean environment for its own settings, then `env`.
fn command(env: &[(String, String)], args: &[&str]) -> anyhow::Result<Command> {
    let path = bin_dir()?.join("esk");
    anyhow::ensure!(
        path.exists(),
        "{} is not built: run `cargo build --workspace` first",
        path.display()
    );
    let mut command = Command::new(path);
    for (key, _) in std::env::vars() {
        if key.starts_with("ESK_") {
            command.env_remove(key);
        }
    }
    command
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("NO_COLOR", "1")
        .args(args)
        .kill_on_drop(true);
    Ok(command)
}

async fn esk(env: &[(String, String)], args: &[&str], stdin: Option<&str>) -> anyhow::Result<Run> {
    let mut command = command(env, args)?;
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn()?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await?;
        drop(pipe);
    }
    let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| anyhow::anyhow!("esk {args:?} did not finish in {RUN_TIMEOUT:?}"))??;
    Ok(Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

async fn stack(name: &str) -> anyhow::Result<(TestContext, Process, Process)> {
    let ctx = TestContext::new(name).await?;
    let ingest = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let indexer = indexer::spawn(&ctx, &[]).await?;
    Ok((ctx, ingest, indexer))
}

fn versions(doc: &Value) -> Vec<i64> {
    doc["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["version"].as_i64())
                .collect()
        })
        .unwrap_or_default()
}

fn field<'a>(doc: &'a Value, name: &str) -> Vec<&'a str> {
    doc["events"]
        .as_array()
        .map(|events| events.iter().filter_map(|e| e[name].as_str()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn append_then_read_with_meaningful_exit_codes() -> anyhow::Result<()> {
    let (ctx, ingest, _indexer) = stack("cli_append_read").await?;
    let env = ctx.env();
    let url = ingest.http.as_str();

    // One event from flags, as JSON.
    let run = esk(
        &env,
        &[
            "append",
            "Order-1",
            "--type",
            "OrderPlaced",
            "--data",
            r#"{"sku":"a"}"#,
            "--metadata",
            r#"{"correlation_id":"c-1"}"#,
            "--expected-version",
            "no_stream",
            "--url",
            url,
            "--json",
        ],
        None,
    )
    .await?;
    assert_eq!(run.code, 0, "{run:?}");
    let appended = run.json()?;
    assert_eq!(appended["stream_id"], json!("Order-1"));
    assert_eq!(appended["first_version"], json!(0));
    assert_eq!(appended["last_version"], json!(0));
    assert!(appended["append_id"].as_str().is_some(), "{appended}");
    assert_eq!(appended["event_ids"].as_array().map(Vec::len), Some(1));

    // Two events from stdin, for people.
    let known_id = Uuid::new_v4();
    let file = json!([
        {"type": "ItemAdded", "data": {"n": 1}},
        {"id": known_id, "type": "ItemAdded", "data": {"n": 2}},
    ])
    .to_string();
    let run = esk(
        &env,
        &["append", "Order-1", "--file", "-", "-e", "0", "--url", url],
        Some(&file),
    )
    .await?;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("versions 1–2"), "{run:?}");

    // Conflicts exit 2 with the server's code.
    let run = esk(
        &env,
        &[
            "append", "Order-1", "-t", "Late", "-d", "{}", "-e", "0", "--url", url,
        ],
        None,
    )
    .await?;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.starts_with("esk: "), "{run:?}");
    assert!(run.stderr.contains("wrong_expected_version"), "{run:?}");
    assert!(run.stderr.contains("the stream is at version 2"), "{run:?}");
    let known = known_id.to_string();
    let run = esk(
        &env,
        &[
            "append", "Order-9", "-t", "Copy", "-d", "{}", "--id", &known, "--url", url,
        ],
        None,
    )
    .await?;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("duplicate_event_id"), "{run:?}");

    // Bad input exits 1, whether caught locally, by clap or by the server.
    for args in [
        &["append", "Order-1", "-t", "X", "-d", "{nope", "--url", url][..],
        &["append", "Order-1", "-t", "X", "--url", url][..],
        &["append", "$reserved", "-t", "X", "-d", "{}", "--url", url][..],
        &[
            "append", "Order-1", "-t", "X", "-d", "{}", "-e", "soon", "--url", url,
        ][..],
        &["read", "--url", url][..],
        &["read", "$all", "--backward", "--url", url][..],
        &["frobnicate"][..],
    ] {
        let run = esk(&env, args, None).await?;
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        assert!(!run.stderr.is_empty(), "{args:?}: {run:?}");
    }
    let run = esk(
        &env,
        &["append", "$reserved", "-t", "X", "-d", "{}", "--url", url],
        None,
    )
    .await?;
    assert!(run.stderr.contains("invalid_stream_id"), "{run:?}");

    let run = esk(
        &env,
        &[
            "append", "Other-1", "-t", "Noise", "-d", "[1,2]", "--url", url,
        ],
        None,
    )
    .await?;
    assert_eq!(run.code, 0, "{run:?}");
    wait_indexed(&ctx, 4, Duration::from_secs(60)).await?;

    let run = esk(&env, &["read", "Order-1", "--json", "--url", url], None).await?;
    assert_eq!(run.code, 0, "{run:?}");
    let doc = run.json()?;
    assert_eq!(versions(&doc), vec![0, 1, 2]);
    assert_eq!(
        field(&doc, "type"),
        vec!["OrderPlaced", "ItemAdded", "ItemAdded"]
    );
    assert_eq!(doc["events"][0]["data"], json!({"sku": "a"}));
    assert_eq!(
        doc["events"][0]["metadata"],
        json!({"correlation_id": "c-1"})
    );
    assert_eq!(doc["events"][2]["event_id"], json!(known));
    assert_eq!(doc["next"], Value::Null);

    let run = esk(
        &env,
        &[
            "read",
            "Order-1",
            "--backward",
            "--limit",
            "1",
            "--json",
            "--url",
            url,
        ],
        None,
    )
    .await?;
    let doc = run.json()?;
    assert_eq!(versions(&doc), vec![2]);
    assert_eq!(doc["next"], json!(1));

    let run = esk(
        &env,
        &[
            "read",
            "$all",
            "--limit",
            "1",
            "--all-pages",
            "--json",
            "--url",
            url,
        ],
        None,
    )
    .await?;
    assert_eq!(run.code, 0, "{run:?}");
    let doc = run.json()?;
    let positions: Vec<i64> = doc["events"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|e| e["global_position"].as_i64())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(positions, vec![1, 2, 3, 4]);
    assert_eq!(doc["next"], Value::Null);

    let run = esk(
        &env,
        &["read", "--category", "Order", "--json", "--url", url],
        None,
    )
    .await?;
    let doc = run.json()?;
    assert_eq!(field(&doc, "stream_id"), vec!["Order-1"; 3]);

    let run = esk(&env, &["read", "Order-1", "--url", url], None).await?;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("OrderPlaced"), "{run:?}");
    assert!(run.stdout.contains(r#""sku""#), "{run:?}");

    let run = esk(&env, &["read", "Nobody-1", "--json", "--url", url], None).await?;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(versions(&run.json()?), Vec::<i64>::new());
    Ok(())
}

/// A running `esk tail --json`.
#[derive(Debug)]
struct Tail {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Tail {
    /// Starts it and waits until it says where it follows from.
    async fn start(env: &[(String, String)], args: &[&str]) -> anyhow::Result<Tail> {
        let mut child = command(env, args)?
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
        let mut errors = BufReader::new(stderr).lines();
        let started = tokio::time::timeout(Duration::from_secs(30), async {
            match errors.next_line().await? {
                Some(line) if line.contains("following") => Ok(line),
                Some(line) => anyhow::bail!("esk tail {args:?}: {line}"),
                None => anyhow::bail!("esk tail {args:?} ended before it started"),
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("esk tail {args:?} did not start"))??;
        assert!(started.starts_with("esk: following"), "{started}");
        // Keep draining stderr so the child never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = errors.next_line().await {} });
        Ok(Tail {
            _child: child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    async fn next(&mut self) -> anyhow::Result<Value> {
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .map_err(|_| anyhow::anyhow!("no event from tail within 60 s"))??
            .ok_or_else(|| anyhow::anyhow!("tail ended"))?;
        Ok(serde_json::from_str(&line)?)
    }

    /// Nothing more arrives within `wait`.
    async fn quiet(&mut self, wait: Duration) -> anyhow::Result<()> {
        match tokio::time::timeout(wait, self.lines.next_line()).await {
            Err(_) => Ok(()),
            Ok(line) => anyhow::bail!("unexpected output: {line:?}"),
        }
    }
}

#[tokio::test]
async fn tail_prints_events_appended_after_it_started() -> anyhow::Result<()> {
    let (ctx, ingest, _indexer) = stack("cli_tail").await?;
    let env = ctx.env();
    let url = ingest.http.as_str();
    let client = Client::new(&ingest);
    let append = |stream: &'static str, kind: &'static str| {
        let client = client.clone();
        async move {
            let body = json!({"expected_version": "any", "events": [ingest::event(kind)]});
            let reply = client.append(stream, &body).await?;
            anyhow::ensure!(reply.status == 201, "{reply:?}");
            anyhow::Ok(())
        }
    };
    // Stored before the tails start: only `--from` shows them.
    append("Other-1", "Before").await?;
    append("Order-7", "Before").await?;
    wait_indexed(&ctx, 2, Duration::from_secs(60)).await?;

    let poll = ["--json", "--poll-ms", "2000", "--url", url];
    let mut all = Tail::start(&env, &[&["tail"][..], &poll].concat()).await?;
    let mut category = Tail::start(
        &env,
        &[&["tail", "--category", "Order"][..], &poll].concat(),
    )
    .await?;
    let mut stream = Tail::start(&env, &[&["tail", "Order-7"][..], &poll].concat()).await?;
    let mut replay = Tail::start(
        &env,
        &[&["tail", "$all", "--from", "0"][..], &poll].concat(),
    )
    .await?;

    append("Other-2", "After").await?;
    append("Order-7", "After").await?;

    let first = all.next().await?;
    let second = all.next().await?;
    assert_eq!(
        (&first["stream_id"], &first["global_position"]),
        (&json!("Other-2"), &json!(3))
    );
    assert_eq!(
        (&second["stream_id"], &second["global_position"]),
        (&json!("Order-7"), &json!(4))
    );
    assert_eq!(second["type"], json!("After"));

    let only = category.next().await?;
    assert_eq!(only["stream_id"], json!("Order-7"));
    assert_eq!(only["version"], json!(1));
    let only = stream.next().await?;
    assert_eq!(
        (&only["version"], &only["type"]),
        (&json!(1), &json!("After"))
    );

    let mut replayed = Vec::new();
    for _ in 0..4 {
        replayed.push(replay.next().await?["global_position"].clone());
    }
    assert_eq!(replayed, vec![json!(1), json!(2), json!(3), json!(4)]);

    // Nothing is printed twice, and other categories never reach the category tail.
    append("Other-3", "Later").await?;
    let next = all.next().await?;
    assert_eq!(next["global_position"], json!(5));
    category.quiet(Duration::from_secs(3)).await?;
    stream.quiet(Duration::from_millis(200)).await?;
    Ok(())
}

#[tokio::test]
async fn doctor_checks_the_stack() -> anyhow::Result<()> {
    let (ctx, ingest, indexer) = stack("cli_doctor").await?;
    let env = ctx.env();
    let client = Client::new(&ingest);
    let body = json!({"expected_version": "any", "events": ingest::events(3)});
    assert_eq!(client.append("Order-1", &body).await?.status, 201);
    wait_indexed(&ctx, 3, Duration::from_secs(60)).await?;

    let urls = [
        "--url",
        ingest.http.as_str(),
        "--ingest-admin-url",
        ingest.admin.as_str(),
        "--indexer-url",
        indexer.admin.as_str(),
    ];
    let run = esk(&env, &[&["doctor", "--json"][..], &urls].concat(), None).await?;
    assert_eq!(run.code, 0, "{run:?}");
    let report = run.json()?;
    assert_eq!(report["ok"], json!(true), "{report:#}");
    let checks: Vec<&Value> = report["sections"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["checks"].as_array().into_iter().flatten())
        .collect();
    let check = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == json!(name))
            .copied()
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(check("connect")["status"], json!("ok"), "{report:#}");
    assert_eq!(check("migrations")["status"], json!("ok"), "{report:#}");
    assert_eq!(check("events")["value"]["count"], json!(3), "{report:#}");
    assert_eq!(check("streams")["value"]["count"], json!(1), "{report:#}");
    assert_eq!(
        check("ledger rows")["value"]["count"],
        json!(1),
        "{report:#}"
    );
    assert_eq!(
        check(&format!("topic {}", ctx.topics.events))["value"]["partitions"],
        json!(esk_tests::TEST_PARTITIONS),
        "{report:#}"
    );
    assert_eq!(check("ingest")["status"], json!("ok"), "{report:#}");
    assert_eq!(check("indexer")["status"], json!("ok"), "{report:#}");

    // For people: a checklist.
    let run = esk(&env, &[&["doctor"][..], &urls].concat(), None).await?;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("✔ migrations"), "{run:?}");
    assert!(!run.stdout.contains('✖'), "{run:?}");

    // An unreachable service is a warning, not a failure.
    let closed = format!("http://127.0.0.1:{}", free_port()?);
    let run = esk(
        &env,
        &[
            "doctor",
            "--json",
            "--url",
            &ingest.http,
            "--ingest-admin-url",
            &ingest.admin,
            "--indexer-url",
            &closed,
        ],
        None,
    )
    .await?;
    assert_eq!(run.code, 0, "{run:?}");
    let report = run.json()?;
    assert_eq!(report["warnings"], json!(1), "{report:#}");

    // A missing topic is a failure.
    let mut missing = env.clone();
    missing.push(("ESK_TOPIC_EVENTS".into(), format!("{}-missing", ctx.name)));
    let run = esk(&missing, &[&["doctor"][..], &urls].concat(), None).await?;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stdout.contains("missing"), "{run:?}");
    assert!(run.stderr.contains("doctor found 1 problem"), "{run:?}");
    Ok(())
}

#[tokio::test]
async fn doctor_fails_fast_when_postgres_is_down() -> anyhow::Result<()> {
    let ctx = TestContext::new("cli_doctor_down").await?;
    let mut env = ctx.env();
    env.push((
        "ESK_DATABASE_URL".into(),
        format!("postgres://esk:esk@127.0.0.1:{}/esk", free_port()?),
    ));
    let started = Instant::now();
    let run = esk(&env, &["doctor", "--json"], None).await?;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(run.code, 4, "{run:?}");
    let report = run.json()?;
    assert_eq!(report["ok"], json!(false));
    assert_eq!(report["sections"][0]["name"], json!("Postgres"));
    assert_eq!(
        report["sections"][0]["checks"][0]["status"],
        json!("fail"),
        "{report:#}"
    );
    assert!(run.stdout.contains("esk:***@127.0.0.1"), "{run:?}");
    Ok(())
}

#[tokio::test]
async fn unreachable_ingest_exits_3_and_help_documents_the_codes() -> anyhow::Result<()> {
    let closed = format!("http://127.0.0.1:{}", free_port()?);
    for args in [
        &["append", "Order-1", "-t", "X", "-d", "{}", "--url", &closed][..],
        &["read", "Order-1", "--url", &closed][..],
        &["tail", "--url", &closed][..],
    ] {
        let run = esk(&[], args, None).await?;
        assert_eq!(run.code, 3, "{args:?}: {run:?}");
        assert!(run.stderr.starts_with("esk: cannot reach"), "{run:?}");
    }
    let run = esk(&[], &["--help"], None).await?;
    assert_eq!(run.code, 0, "{run:?}");
    for code in [
        "0  success",
        "1  usage",
        "2  conflict",
        "3  unavailable",
        "4  esk doctor",
    ] {
        assert!(run.stdout.contains(code), "{code}: {}", run.stdout);
    }
    Ok(())
}

#[tokio::test]
async fn projection_commands_list_status_rebuild_and_dead_letters() -> anyhow::Result<()> {
    let (ctx, ingest_process, _indexer) = stack("cli_projection").await?;
    let env = ctx.env();
    let url = ingest_process.http.clone();
    for i in 0..3 {
        let run = esk(
            &env,
            &[
                "--url",
                &url,
                "append",
                &format!("Proj-{i}"),
                "--type",
                "Made",
                "--data",
                "{}",
            ],
            None,
        )
        .await?;
        assert_eq!(run.code, 0, "{run:?}");
    }
    wait_indexed(&ctx, 3, Duration::from_secs(60)).await?;
    let rebuild = esk(&env, &["projection", "rebuild", "counts"], None).await?;
    assert_eq!(rebuild.code, 0, "{rebuild:?}");
    let counted: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(count), 0)::int8 FROM projection_category_type_counts WHERE projection = 'counts'",
    )
    .fetch_one(&ctx.pool)
    .await?;
    assert_eq!(counted, 3, "the rebuild replayed every event");
    let list = esk(&env, &["--json", "projection", "list"], None).await?;
    assert_eq!(list.code, 0, "{list:?}");
    let lines: Vec<Value> = list
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(lines.len(), 2, "both built-in projections: {list:?}");
    let status = esk(&env, &["projection", "status", "counts"], None).await?;
    assert_eq!(status.code, 0, "{status:?}");
    assert!(
        status.stdout.contains("counts") && status.stdout.contains("live"),
        "{status:?}"
    );
    let unknown = esk(&env, &["projection", "status", "nope"], None).await?;
    assert_eq!(unknown.code, 1, "{unknown:?}");
    let dead = esk(
        &env,
        &["projection", "dead-letters", "list", "counts"],
        None,
    )
    .await?;
    assert_eq!(dead.code, 0, "{dead:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&dead.stdout)?,
        serde_json::json!([])
    );
    Ok(())
}

#[tokio::test]
async fn token_commands_create_list_revoke_and_the_cli_sends_the_token() -> anyhow::Result<()> {
    let ctx = TestContext::new("cli_tokens").await?;
    let ingest = ingest::spawn(
        &ctx,
        &[
            ("ESK_INGEST_KAFKA_APPENDS", "false"),
            ("ESK_AUTH_CACHE_SECS", "0"),
        ],
    )
    .await?;
    let url = ingest.http.as_str();
    // The harness's environment without its admin token.
    let bare: Vec<(String, String)> = ctx
        .env()
        .into_iter()
        .filter(|(k, _)| k != "ESK_TOKEN")
        .collect();
    let with_token = |token: &str| {
        let mut env = bare.clone();
        env.push(("ESK_TOKEN".into(), token.to_owned()));
        env
    };

    let created = esk(
        &bare,
        &[
            "token",
            "create",
            "--name",
            "billing",
            "--allow",
            "append:Order-*",
            "--allow",
            "read:Order-*",
            "--expires",
            "90d",
        ],
        None,
    )
    .await?;
    assert_eq!(created.code, 0, "{created:?}");
    let token = created.stdout.trim().to_owned();
    assert!(token.starts_with("esk_") && token.len() >= 68, "{token}");
    // Only its hash is stored.
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT token_hash FROM api_tokens WHERE name = 'billing'")
            .fetch_one(&ctx.pool)
            .await?;
    assert_eq!(stored, esk_runtime::tokens::hash(&token).to_vec());

    let append = |stream: &'static str| {
        vec![
            "append", stream, "--type", "T", "--data", "{}", "--url", url,
        ]
    };
    let run = esk(&with_token(&token), &append("Order-1"), None).await?;
    assert_eq!(run.code, 0, "{run:?}");
    let run = esk(&bare, &append("Order-1"), None).await?;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("unauthorized"), "{run:?}");
    let run = esk(&with_token(&token), &append("User-1"), None).await?;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("forbidden"), "{run:?}");

    let listed = esk(&bare, &["token", "list", "--json"], None).await?;
    assert_eq!(listed.code, 0, "{listed:?}");
    let list = listed.json()?;
    assert_eq!(list[0]["name"], "billing");
    assert_eq!(list[0]["valid"], true);
    assert_eq!(list[0]["scopes"], json!(["append:Order-*", "read:Order-*"]));
    assert!(!listed.stdout.contains(&token), "list shows the token");

    // Refusals: a taken name, a bad scope, no scope, an unknown name to revoke.
    for args in [
        &["token", "create", "--name", "billing", "--allow", "admin"][..],
        &["token", "create", "--name", "x", "--allow", "write:*"],
        &["token", "create", "--name", "x"],
        &[
            "token",
            "create",
            "--name",
            "x",
            "--allow",
            "admin",
            "--expires",
            "soon",
        ],
        &["token", "revoke", "nobody"],
    ] {
        let run = esk(&bare, args, None).await?;
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
    }

    let run = esk(&bare, &["token", "revoke", "billing"], None).await?;
    assert_eq!(run.code, 0, "{run:?}");
    let run = esk(&with_token(&token), &append("Order-1"), None).await?;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("unauthorized"), "{run:?}");
    let list = esk(&bare, &["token", "list", "--json"], None)
        .await?
        .json()?;
    assert_eq!(list[0]["valid"], false);
    assert!(list[0]["revoked_at"].is_string());
    Ok(())
}

/// A token created with `--results-topic` gets the outcomes of its Kafka appends on that topic
/// (created by the command), and only there: the shared `append-results` carries only the other
/// producers' outcomes. A bad topic name, or one of esk's or Kafka's own topics, is refused
/// and creates no token.
#[tokio::test]
async fn a_token_with_its_own_results_topic_is_answered_only_there() -> anyhow::Result<()> {
    let ctx = TestContext::new("cli_results_topic").await?;
    let _ingest = ingest::spawn(&ctx, &[("ESK_AUTH_CACHE_SECS", "0")]).await?;
    let own_topic = format!("t-{}-billing-results", ctx.name);
    let env = ctx.env();

    let refusals = [
        ("not a topic", "not a Kafka topic name"),
        (ctx.topics.ingest_log.as_str(), "own topics"),
        ("__consumer_offsets", "own topics"),
    ];
    for (topic, why) in refusals {
        let refused = esk(
            &env,
            &[
                "token",
                "create",
                "--name",
                "bad",
                "--allow",
                "append:*",
                "--results-topic",
                topic,
            ],
            None,
        )
        .await?;
        assert_eq!(refused.code, 1, "{topic}: {refused:?}");
        assert!(refused.stderr.contains(why), "{topic}: {refused:?}");
    }
    let created = esk(
        &env,
        &[
            "token",
            "create",
            "--name",
            "billing",
            "--allow",
            "append:Order-*",
            "--results-topic",
            &own_topic,
            "--partitions",
            "3",
        ],
        None,
    )
    .await?;
    assert_eq!(created.code, 0, "{created:?}");
    assert!(
        created
            .stderr
            .contains(&format!("results topic {own_topic} ready")),
        "{created:?}"
    );
    let billing = created.stdout.trim().to_owned();
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM api_tokens ORDER BY name")
        .fetch_all(&ctx.pool)
        .await?;
    assert_eq!(names, ["billing", "test-admin"], "no token named bad");
    let listed = esk(&env, &["token", "list", "--json"], None)
        .await?
        .json()?;
    let row = listed
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == "billing"))
        .ok_or_else(|| anyhow::anyhow!("billing not listed: {listed}"))?;
    assert_eq!(row["results_topic"], own_topic.as_str());

    let producer = esk_tests::kafka::producer(&ctx.brokers)?;
    let request = |id: &str, stream: &str| {
        json!({"schema_version": 1, "request_id": id, "stream_id": stream,
            "expected_version": "any", "events": [ingest::event("T")]})
        .to_string()
    };
    let sends = [
        ("billing-ok", "Order-1", &billing),
        ("billing-forbidden", "User-1", &billing),
        ("admin-ok", "Order-2", &ctx.token),
    ];
    for (id, stream, token) in sends {
        esk_tests::kafka::produce_append(
            &producer,
            &ctx.topics.appends,
            token,
            stream,
            request(id, stream).as_bytes(),
        )
        .await?;
    }
    let outcomes = |topic: &str, at_least: usize| -> anyhow::Result<Vec<(String, String)>> {
        // Read past the expected count for a while: a stray result would show up.
        let records = esk_tests::kafka::read_topic(
            &ctx.brokers,
            topic,
            at_least + 1,
            Duration::from_secs(20),
        )?;
        records
            .iter()
            .map(|r| {
                let v = esk_tests::kafka::json_payload(r)?;
                let code = v["error"]["code"].as_str().unwrap_or("").to_owned();
                Ok((v["request_id"].as_str().unwrap_or("").to_owned(), code))
            })
            .collect()
    };
    let mut own = outcomes(&own_topic, 2)?;
    own.sort();
    assert_eq!(
        own,
        [
            ("billing-forbidden".to_owned(), "forbidden".to_owned()),
            ("billing-ok".to_owned(), String::new()),
        ]
    );
    let shared = outcomes(&ctx.topics.append_results, 1)?;
    assert_eq!(shared, [("admin-ok".to_owned(), String::new())]);
    Ok(())
}

/// A token whose results topic does not exist (created by hand without the CLI, or deleted):
/// its result goes to that topic once it exists (Tansu, like Apache Kafka's default
/// `auto.create.topics.enable`, creates a missing topic on first use), never to the shared topic.
/// (Where the broker refuses, `/health` names the topic after the stall limit: not testable on
/// Tansu, which always auto-creates.)
#[tokio::test]
async fn a_missing_results_topic_never_sends_results_to_the_shared_topic() -> anyhow::Result<()> {
    let ctx = TestContext::new("cli_results_missing").await?;
    let missing = format!("t-{}-missing-results", ctx.name);
    let scopes = ["append:*".parse()?];
    let token = esk_runtime::tokens::create_with(
        &ctx.pool,
        &esk_runtime::tokens::NewToken {
            name: "orphan",
            scopes: &scopes,
            expires_at: None,
            results_topic: Some(&missing),
        },
    )
    .await?;
    let _ingest = ingest::spawn(&ctx, &[]).await?;
    let producer = esk_tests::kafka::producer(&ctx.brokers)?;
    let request = json!({"schema_version": 1, "request_id": "orphan-1", "stream_id": "Order-1",
        "expected_version": "any", "events": [ingest::event("T")]})
    .to_string();
    esk_tests::kafka::produce_append(
        &producer,
        &ctx.topics.appends,
        &token,
        "Order-1",
        request.as_bytes(),
    )
    .await?;
    // A reader assigned before the topic exists sees nothing: wait for it first.
    let created = esk_tests::eventually(Duration::from_secs(150), || async {
        let (kafka, topic) = (ctx.kafka(), missing.clone());
        let count = tokio::task::spawn_blocking(move || {
            esk_runtime::kafka::partition_count(&kafka, &topic)
        })
        .await
        .ok()?
        .ok()?;
        (count > 0).then_some(())
    })
    .await;
    assert!(created.is_some(), "{missing} never appeared");
    let delivered =
        esk_tests::kafka::read_topic(&ctx.brokers, &missing, 1, Duration::from_secs(60))?;
    assert_eq!(delivered.len(), 1, "the result is on the token's topic");
    let result = esk_tests::kafka::json_payload(&delivered[0])?;
    assert_eq!(result["request_id"], "orphan-1");
    assert_eq!(result["outcome"], "accepted");
    let shared = esk_tests::kafka::read_topic(
        &ctx.brokers,
        &ctx.topics.append_results,
        1,
        Duration::from_secs(5),
    )?;
    assert!(shared.is_empty(), "a result leaked to the shared topic");
    Ok(())
}

#[tokio::test]
async fn snapshot_put_and_get() -> anyhow::Result<()> {
    let (ctx, ingest, _indexer) = stack("cli_snapshot").await?;
    let env = ctx.env();
    let url = ingest.http.as_str();
    let client = Client::new(&ingest);
    let reply = client
        .append(
            "Order-1",
            &json!({"expected_version": "no_stream", "events": ingest::events(3)}),
        )
        .await?;
    assert_eq!(reply.status, 201, "{reply:?}");
    wait_indexed(&ctx, 3, Duration::from_secs(30)).await?;

    // No snapshot yet: exit 1 naming the code.
    let run = esk(&env, &["snapshot", "get", "Order-1", "--url", url], None).await?;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("snapshot_not_found"), "{run:?}");

    // From --data, as JSON; the data is sent as written.
    let data = r#"{"total":12.50,"k":1,"k":2}"#;
    let put = ["snapshot", "put", "Order-1", "--version", "1", "--url", url];
    let run = esk(
        &env,
        &[&put[..], &["--data", data, "--json"]].concat(),
        None,
    )
    .await?;
    assert_eq!(run.code, 0, "{run:?}");
    let answer = run.json()?;
    assert_eq!(answer["stored"], json!(true));
    assert_eq!(answer["snapshot"]["version"], json!(1));
    assert!(run.stdout.contains(data), "{run:?}");

    // From stdin, older: kept, exit 0, and said so.
    let older = ["snapshot", "put", "Order-1", "--version", "0", "--url", url];
    let run = esk(&env, &older, Some("{\"older\": true}\n")).await?;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .contains("kept the snapshot of Order-1 at version 1"),
        "{run:?}"
    );

    let run = esk(
        &env,
        &["snapshot", "get", "Order-1", "--url", url, "--json"],
        None,
    )
    .await?;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains(&format!("\"data\":{data}")), "{run:?}");
    assert_eq!(run.json()?["version"], json!(1));
    let run = esk(&env, &["snapshot", "get", "Order-1", "--url", url], None).await?;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.starts_with("Order-1 at version 1"), "{run:?}");
    assert!(run.stdout.contains(data), "{run:?}");

    // Ahead of the stream: a conflict (exit 2), nothing written; bad JSON: exit 1.
    let ahead = ["snapshot", "put", "Order-1", "--version", "9", "--url", url];
    let run = esk(&env, &[&ahead[..], &["--data", "{}"]].concat(), None).await?;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("version_ahead_of_stream"), "{run:?}");
    let run = esk(&env, &[&put[..], &["--data", "{nope"]].concat(), None).await?;
    assert_eq!(run.code, 1, "{run:?}");
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM snapshots")
        .fetch_all(&ctx.pool)
        .await?;
    assert_eq!(versions, vec![1]);
    Ok(())
}

/// (stream, version) of every stored event row, in position order.
async fn stored_events(ctx: &TestContext) -> anyhow::Result<Vec<(String, i64)>> {
    Ok(
        sqlx::query_as("SELECT stream_id, version FROM events ORDER BY global_position")
            .fetch_all(&ctx.pool)
            .await?,
    )
}

#[tokio::test]
async fn scavenge_deletes_the_hidden_rows_and_keeps_the_visible_ones() -> anyhow::Result<()> {
    let ctx = TestContext::new("cli_scavenge").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    // The indexer's own scavenger is off: the rows must still be there when esk runs.
    let _indexer = indexer::spawn(&ctx, &[("ESK_SCAVENGE_INTERVAL_SECS", "0")]).await?;
    let client = Client::new(&ingest_process);
    for (stream, n) in [("Trim-1", 5), ("Keep-1", 2)] {
        let reply = client
            .append(
                stream,
                &json!({"expected_version": "no_stream", "events": ingest::events(n)}),
            )
            .await?;
        assert_eq!(reply.status, 201, "{reply:?}");
    }
    let reply = client
        .put_raw(
            "/streams/Trim-1/metadata",
            "application/json",
            br#"{"max_count":2}"#.to_vec(),
        )
        .await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    // The scavenger takes only rows already on the canonical topic.
    let published = esk_tests::eventually(Duration::from_secs(30), || async {
        let (through, head): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT global_position FROM published_through),
                    (SELECT last_position FROM global_position_counter)",
        )
        .fetch_one(&ctx.pool)
        .await
        .ok()?;
        (through == head && head == 8).then_some(())
    })
    .await;
    assert!(published.is_some(), "the 8 events were not all published");
    let env = ctx.env();

    // Bad input first: a clear usage error, nothing deleted.
    let run = esk(&env, &["scavenge", "--batch", "0"], None).await?;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("--batch"), "{run:?}");
    assert_eq!(stored_events(&ctx).await?.len(), 8);

    // Batches of one: the loop goes on until a batch comes back short.
    let run = esk(&env, &["--json", "scavenge", "--batch", "1"], None).await?;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()?, json!({"scavenged": 3}), "{run:?}");
    let expected: Vec<(String, i64)> = [
        ("Trim-1", 3),
        ("Trim-1", 4),
        ("Keep-1", 0),
        ("Keep-1", 1),
        ("$$Trim-1", 0),
    ]
    .into_iter()
    .map(|(s, v)| (s.to_owned(), v))
    .collect();
    assert_eq!(stored_events(&ctx).await?, expected);
    let reply = client.get("/streams/Trim-1/events").await?;
    assert_eq!(versions(&reply.body), vec![3, 4], "{reply:?}");

    // Nothing left: a second run deletes nothing and says so.
    let run = esk(&env, &["scavenge"], None).await?;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.trim(), "scavenged 0 hidden events", "{run:?}");
    assert_eq!(stored_events(&ctx).await?, expected);
    Ok(())
}

/// `esk --url URL stream ARGS...`.
fn stream<'a>(url: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    [&["--url", url, "stream"][..], args].concat()
}

#[tokio::test]
async fn stream_metadata_and_delete_commands_go_through_the_api() -> anyhow::Result<()> {
    let (ctx, ingest_process, _indexer) = stack("cli_stream").await?;
    let env = ctx.env();
    let url = ingest_process.http.clone();
    let client = Client::new(&ingest_process);
    let reply = client
        .append(
            "Order-1",
            &json!({"expected_version": "no_stream", "events": ingest::events(3)}),
        )
        .await?;
    assert_eq!(reply.status, 201, "{reply:?}");
    wait_indexed(&ctx, 3, Duration::from_secs(30)).await?;

    let set = esk(
        &env,
        &stream(
            &url,
            &[
                "metadata",
                "set",
                "Order-1",
                "--max-count",
                "2",
                "--custom",
                r#"{"owner": "cli"}"#,
                "--expected-metadata-version",
                "no_stream",
                "--json",
            ],
        ),
        None,
    )
    .await?;
    assert_eq!(set.code, 0, "{set:?}");
    let answer = set.json()?;
    assert_eq!(answer["metadata_version"], 0, "{set:?}");
    assert_eq!(answer["max_count"], 2, "{set:?}");
    let get = esk(
        &env,
        &stream(&url, &["metadata", "get", "Order-1", "--json"]),
        None,
    )
    .await?;
    assert_eq!(get.code, 0, "{get:?}");
    assert_eq!(get.json()?, answer, "read back as stored");
    assert_eq!(get.json()?["custom"], json!({"owner": "cli"}));
    let get = esk(&env, &stream(&url, &["metadata", "get", "Order-1"]), None).await?;
    assert_eq!(get.code, 0, "{get:?}");
    assert!(get.stdout.contains("max_count 2"), "{get:?}");
    let reply = client.get("/streams/Order-1/events").await?;
    assert_eq!(
        versions(&reply.body),
        vec![1, 2],
        "the rule applies: {reply:?}"
    );

    // Refusals: a stale metadata version is a conflict (2); bad flags are usage errors (1).
    let stale = esk(
        &env,
        &stream(
            &url,
            &[
                "metadata",
                "set",
                "Order-1",
                "--expected-metadata-version",
                "5",
            ],
        ),
        None,
    )
    .await?;
    assert_eq!(stale.code, 2, "{stale:?}");
    assert!(stale.stderr.contains("wrong_expected_version"), "{stale:?}");
    for args in [
        &["metadata", "set", "Order-1", "--custom", "[1]"][..],
        &["metadata", "set", "Order-1", "--custom", "{"][..],
        &["metadata", "set", "Order-1", "--max-count", "0"][..],
        &["delete", "Order-1", "--expected-version", "soon"][..],
    ] {
        let run = esk(&env, &stream(&url, args), None).await?;
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
    }
    let wrong = esk(
        &env,
        &stream(&url, &["delete", "Order-1", "--expected-version", "1"]),
        None,
    )
    .await?;
    assert_eq!(wrong.code, 2, "{wrong:?}");
    let reply = client.get("/streams/Order-1/metadata").await?;
    assert_eq!(
        reply.body["metadata_version"], 0,
        "nothing written: {reply:?}"
    );

    // A hard delete; the stream is then gone for every command.
    let delete = esk(
        &env,
        &stream(
            &url,
            &["delete", "Order-1", "--expected-version", "2", "--hard"],
        ),
        None,
    )
    .await?;
    assert_eq!(delete.code, 0, "{delete:?}");
    assert!(
        delete.stdout.contains("deleted Order-1 (hard"),
        "{delete:?}"
    );
    let reply = client.get("/streams/Order-1/events").await?;
    assert_eq!(reply.status, 410, "{reply:?}");
    let get = esk(&env, &stream(&url, &["metadata", "get", "Order-1"]), None).await?;
    assert_ne!(get.code, 0, "{get:?}");
    assert!(get.stderr.contains("stream_deleted"), "{get:?}");
    Ok(())
}

#[tokio::test]
async fn append_multi_writes_several_streams_or_exits_2_naming_the_conflicts() -> anyhow::Result<()>
{
    let ctx = TestContext::new("cli_append_multi").await?;
    let ingest = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let env = ctx.env();
    let url = ingest.http.as_str();
    let file = json!({"appends": [
        {"stream_id": "Order-1", "expected_version": "no_stream",
         "events": [{"type": "OrderPlaced", "data": {"n": 1.50}}, {"type": "OrderPaid", "data": {}}]},
        {"stream_id": "Invoice-1", "expected_version": "no_stream",
         "events": [{"type": "InvoiceIssued", "data": {}}]},
    ]})
    .to_string();
    let args = ["append-multi", "--file", "-", "--url", url, "--json"];
    let run = esk(&env, &args, Some(&file)).await?;
    assert_eq!(run.code, 0, "{run:?}");
    let appended = run.json()?;
    assert_eq!(
        appended["results"],
        json!([
            {"stream_id": "Order-1", "first_version": 0, "last_version": 1},
            {"stream_id": "Invoice-1", "first_version": 0, "last_version": 0},
        ])
    );

    // The same file again: new random event ids, so a new append, refused as a whole.
    let run = esk(&env, &args[..5], Some(&file)).await?;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("wrong_expected_version"), "{run:?}");
    assert!(run.stderr.contains("Order-1, Invoice-1"), "{run:?}");

    for bad in [r#"{"appends": []}"#, r#"{"appends": [{"stream_id": "X"}]}"#] {
        let run = esk(&env, &args[..5], Some(bad)).await?;
        assert_eq!(run.code, 1, "{bad}: {run:?}");
    }
    Ok(())
}

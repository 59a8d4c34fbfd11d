//! The Grafana dashboard and the alert rules query only metrics the binaries export: every
//! `esk_*` name they use must appear on some running binary's `/metrics`.

use std::collections::BTreeSet;
use std::time::Duration;

use esk_tests::indexer::{self, wait_indexed};
use esk_tests::ingest::{self, events, Client};
use esk_tests::{eventually, projector, TestContext};
use serde_json::json;

fn queried_names() -> anyhow::Result<BTreeSet<String>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("esk-dashboard.json"))?)?;
    let alerts = std::fs::read_to_string(root.join("alerts.yml"))?;
    let mut text = alerts;
    // Only the queries of the dashboard, not its titles or descriptions.
    fn exprs(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    if k == "expr" || k == "query" {
                        if let Some(s) = v.as_str() {
                            out.push_str(s);
                            out.push('\n');
                        }
                    }
                    exprs(v, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| exprs(i, out)),
            _ => {}
        }
    }
    exprs(&dashboard, &mut text);
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(found) = text[i..].find("esk_") {
        let start = i + found;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        if name.len() > 4 && !name.ends_with('_') {
            names.insert(name.to_owned());
        }
        i = end;
    }
    Ok(names)
}

async fn exported(urls: &[String]) -> anyhow::Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for url in urls {
        let text = reqwest::get(format!("{url}/metrics")).await?.text().await?;
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            names.insert(name.to_owned());
        }
    }
    Ok(names)
}

#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_query_is_exported() -> anyhow::Result<()> {
    let queried = queried_names()?;
    assert!(
        queried.len() > 30,
        "the dashboard queries the metrics: {queried:?}"
    );
    let ctx = TestContext::new("dashboard").await?;
    let ingest_process = ingest::spawn(&ctx, &[]).await?;
    let indexer_process = indexer::spawn(&ctx, &[]).await?;
    let projector_process = projector::spawn(&ctx, None, &[]).await?;
    let client = Client::new(&ingest_process);
    for i in 0..5 {
        let reply = client
            .append(
                &format!("Dash-{i}"),
                &json!({"expected_version": "no_stream", "events": events(2)}),
            )
            .await?;
        assert_eq!(reply.status, 201);
    }
    wait_indexed(&ctx, 10, Duration::from_secs(60)).await?;
    let urls = vec![
        ingest_process.admin.clone(),
        indexer_process.admin.clone(),
        projector_process.admin.clone(),
    ];
    let missing = eventually(Duration::from_secs(30), || async {
        let have = exported(&urls).await.ok()?;
        let missing: Vec<&String> = queried.iter().filter(|n| !have.contains(*n)).collect();
        missing.is_empty().then_some(())
    })
    .await;
    if missing.is_none() {
        let have = exported(&urls).await?;
        let missing: Vec<&String> = queried.iter().filter(|n| !have.contains(*n)).collect();
        anyhow::bail!("queried but exported by no binary: {missing:?}");
    }
    Ok(())
}

//! Webhook deliveries are signed (`esk-signature`, HMAC-SHA256 over timestamp and body with the
//! projection's secret), redirects are never followed, and a webhook that would send events in
//! clear to another host, or with no timeout, is refused at start.

use std::time::Duration;

use esk_tests::indexer::{self, wait_indexed};
use esk_tests::ingest::{self, Client};
use esk_tests::projector::{
    self, verify_signature, Receiver, Webhook, SIGNATURE_TOLERANCE_SECS, WEBHOOK_SECRET,
};
use esk_tests::{eventually, TestContext};
use serde_json::json;

const HTTP_ONLY: &[(&str, &str)] = &[("ESK_INGEST_KAFKA_APPENDS", "false")];
/// Rejections retried quickly, so that dead letters come within the test.
const QUICK_REJECTIONS: &[(&str, &str)] = &[
    ("ESK_PROJECTOR_MAX_ATTEMPTS", "2"),
    ("ESK_PROJECTOR_RETRY_MS", "20"),
];
const WRONG_SECRET: &str = "not-the-webhook-secret-0123456789";

/// The projection's dead letters: event id and error.
async fn dead_letters(
    ctx: &TestContext,
    projection: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT event_id::text, error FROM dead_letters WHERE source = $1 ORDER BY id",
    )
    .bind(format!("projection:{projection}"))
    .fetch_all(&ctx.pool)
    .await?)
}

/// Appends `n` events to one stream and returns their ids.
async fn append(client: &Client, stream: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let events = ingest::events(n);
    let ids = events
        .iter()
        .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let reply = client
        .append(
            stream,
            &json!({"expected_version": "any", "events": events}),
        )
        .await?;
    anyhow::ensure!(reply.status == 201, "append failed: {:?}", reply.body);
    Ok(ids)
}

/// Waits until `projection` has dead-lettered `n` events.
async fn wait_dead_letters(
    ctx: &TestContext,
    projection: &str,
    n: usize,
) -> anyhow::Result<Vec<(String, String)>> {
    let done = eventually(Duration::from_secs(60), || async {
        let letters = dead_letters(ctx, projection).await.ok()?;
        (letters.len() >= n).then_some(letters)
    })
    .await;
    match done {
        Some(letters) => Ok(letters),
        None => anyhow::bail!(
            "{projection}: dead letters {:?}, expected {n}",
            dead_letters(ctx, projection).await?
        ),
    }
}

#[tokio::test]
async fn deliveries_verify_with_the_projections_secret_and_not_with_another() -> anyhow::Result<()>
{
    let ctx = TestContext::new("hook_signed").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    // Both projections sign with WEBHOOK_SECRET; one receiver checks with it, one with another.
    let right = Webhook::start(Receiver {
        verify_secret: Some(WEBHOOK_SECRET.into()),
        ..Default::default()
    })
    .await?;
    let wrong = Webhook::start(Receiver {
        verify_secret: Some(WRONG_SECRET.into()),
        ..Default::default()
    })
    .await?;
    let hook = |name: &str, url: &str| {
        format!(
            "[[projection]]\nname = \"{name}\"\nhandler = \"webhook\"\nurl = \"{url}\"\n\
             secret = \"{WEBHOOK_SECRET}\"\n"
        )
    };
    let config = projector::write_config(
        &ctx,
        &[hook("signed", &right.url), hook("mis-keyed", &wrong.url)].concat(),
    )?;
    let _projector = projector::spawn(&ctx, Some(&config), QUICK_REJECTIONS).await?;
    let client = Client::new(&ingest_process);
    let ids = append(&client, "Signed-1", 3).await?;
    wait_indexed(&ctx, 3, Duration::from_secs(60)).await?;

    let delivered = eventually(Duration::from_secs(60), || async {
        let first = right.first_arrivals();
        ids.iter().all(|id| first.contains_key(id)).then_some(())
    })
    .await;
    assert!(
        delivered.is_some(),
        "every event reached the verifying receiver"
    );
    let (bodies, signatures, bad) = {
        let state = right
            .state
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        (
            state.bodies.clone(),
            state.signatures.clone(),
            state.bad_signatures,
        )
    };
    assert_eq!(
        bad, 0,
        "no request failed verification with the right secret"
    );
    assert_eq!(bodies.len(), signatures.len());
    let now = chrono::Utc::now().timestamp();
    for (body, signature) in bodies.iter().zip(&signatures) {
        assert!(signature.starts_with("t="), "{signature}");
        let checked = verify_signature(
            WEBHOOK_SECRET.as_bytes(),
            signature,
            body,
            now,
            SIGNATURE_TOLERANCE_SECS,
        );
        assert!(checked.is_ok(), "{checked:?}");
        assert!(
            verify_signature(WRONG_SECRET.as_bytes(), signature, body, now, 300).is_err(),
            "another secret does not verify"
        );
        let mut tampered = body.to_vec();
        tampered.push(b' ');
        assert!(
            verify_signature(WEBHOOK_SECRET.as_bytes(), signature, &tampered, now, 300).is_err(),
            "another body does not verify"
        );
        assert!(
            verify_signature(WEBHOOK_SECRET.as_bytes(), signature, body, now + 3600, 300).is_err(),
            "an hour later the timestamp is too old"
        );
    }

    // The receiver keyed differently refuses every request (401): rejected, dead-lettered.
    let letters = wait_dead_letters(&ctx, "mis-keyed", ids.len()).await?;
    let bad = wrong.state.lock().map(|s| s.bad_signatures).unwrap_or(0);
    assert!(bad >= ids.len(), "{bad} requests failed verification");
    assert!(wrong.first_arrivals().is_empty(), "nothing acknowledged");
    for (_, error) in &letters {
        assert!(error.contains("401"), "{error}");
    }
    Ok(())
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_the_events_are_dead_lettered() -> anyhow::Result<()> {
    let ctx = TestContext::new("hook_redirect").await?;
    let ingest_process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    let target = Webhook::start(Receiver::default()).await?;
    let redirector = Webhook::start(Receiver {
        redirect_to: Some(target.url.clone()),
        ..Default::default()
    })
    .await?;
    let config = projector::write_webhook_config(&ctx, "redirected", &redirector.url, "")?;
    let _projector = projector::spawn(&ctx, Some(&config), QUICK_REJECTIONS).await?;
    let client = Client::new(&ingest_process);
    let ids = append(&client, "Redirected-1", 3).await?;

    let letters = wait_dead_letters(&ctx, "redirected", ids.len()).await?;
    let mut lettered: Vec<&str> = letters.iter().map(|(id, _)| id.as_str()).collect();
    lettered.sort_unstable();
    let mut expected: Vec<&str> = ids.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(lettered, expected, "each event dead-lettered once");
    for (_, error) in &letters {
        assert!(
            error.contains("307") && error.contains("redirects are not followed"),
            "{error}"
        );
        assert!(
            error.contains(&target.url),
            "names where it pointed: {error}"
        );
    }
    let asked = redirector.state.lock().map(|s| s.requests).unwrap_or(0);
    assert!(
        asked >= ids.len(),
        "the redirecting receiver was asked ({asked})"
    );
    let followed = target
        .state
        .lock()
        .map(|s| s.requests)
        .unwrap_or(usize::MAX);
    assert_eq!(followed, 0, "the redirect's target never saw a request");
    Ok(())
}

/// Starts a projector with one webhook projection and returns why it failed to start.
async fn refusal(ctx: &TestContext, url: &str, extra: &str) -> anyhow::Result<String> {
    let config = projector::write_webhook_config(ctx, "refused", url, extra)?;
    match projector::spawn(ctx, Some(&config), &[]).await {
        Ok(_) => anyhow::bail!("started with {url} {extra:?}"),
        Err(e) => Ok(e.to_string()),
    }
}

#[tokio::test]
async fn plain_http_to_another_host_and_a_zero_timeout_are_refused_at_start() -> anyhow::Result<()>
{
    let ctx = TestContext::new("hook_refused").await?;
    let insecure = refusal(&ctx, "http://hooks.example.com/events", "").await?;
    assert!(
        insecure.contains("invalid projection \"refused\"")
            && insecure.contains("not loopback")
            && insecure.contains("allow_insecure_http = true"),
        "{insecure}"
    );
    let zero = refusal(&ctx, "https://hooks.example.com/events", "timeout_ms = 0\n").await?;
    assert!(zero.contains("timeout_ms must be more than 0"), "{zero}");
    // Neither message shows the secret.
    for message in [&insecure, &zero] {
        assert!(!message.contains(WEBHOOK_SECRET), "{message}");
    }
    Ok(())
}

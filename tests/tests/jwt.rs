//! JWT verification, with ingest given a JWKS file: every kind of bad JWT over HTTP and over
//! Kafka gets `unauthorized` saying which check failed, a valid one without the scope gets
//! `forbidden`, nothing refused is written, esk's own tokens keep working alongside, read
//! scopes apply to reads, a rotated key set is picked up without a restart, and settings that
//! cannot be used stop ingest at start. Keys are generated here with `openssl`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use esk_tests::ingest::{self, event, Client};
use esk_tests::{indexer, kafka, TestContext};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{get_current_timestamp, Algorithm, EncodingKey, Header};
use rdkafka::Message;
use serde_json::{json, Value};

const ISSUER: &str = "https://idp.example.test/realms/esk";
const AUDIENCE: &str = "esk-api";

/// A key pair made by `openssl`: the signing key, its public JWK, and its public key as PEM.
struct KeyPair {
    signing: EncodingKey,
    jwk: Jwk,
    public_pem: Vec<u8>,
    alg: Algorithm,
    kid: String,
}

/// A temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("esk-{name}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn openssl(args: &[&str]) -> anyhow::Result<()> {
    let output = std::process::Command::new("openssl").args(args).output()?;
    anyhow::ensure!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// A new key pair in `dir`: RSA 2048 for RS256, P-256 for ES256.
fn key_pair(dir: &Path, kid: &str, alg: Algorithm) -> anyhow::Result<KeyPair> {
    let private = dir.join(format!("{kid}.pem"));
    let public = dir.join(format!("{kid}.pub.pem"));
    let private_arg = private.to_string_lossy().into_owned();
    match alg {
        Algorithm::RS256 => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &private_arg,
        ])?,
        Algorithm::ES256 => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &private_arg,
        ])?,
        other => anyhow::bail!("no key for {other:?} here"),
    }
    openssl(&[
        "pkey",
        "-in",
        &private_arg,
        "-pubout",
        "-out",
        &public.to_string_lossy(),
    ])?;
    let pem = std::fs::read(&private)?;
    let signing = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem)?,
        _ => EncodingKey::from_ec_pem(&pem)?,
    };
    let mut jwk = Jwk::from_encoding_key(&signing, alg)?;
    jwk.common.key_id = Some(kid.to_owned());
    Ok(KeyPair {
        signing,
        jwk,
        public_pem: std::fs::read(&public)?,
        alg,
        kid: kid.to_owned(),
    })
}

/// Writes the key set as an operator should: a new file renamed over the old one.
fn write_jwks(path: &Path, keys: &[&KeyPair]) -> anyhow::Result<()> {
    let set = JwkSet {
        keys: keys.iter().map(|k| k.jwk.clone()).collect(),
    };
    let next = path.with_extension("next");
    std::fs::write(&next, serde_json::to_vec_pretty(&set)?)?;
    std::fs::rename(&next, path)?;
    Ok(())
}

/// The claims of a valid token for the billing service, with `changes` applied (a `null`
/// removes the claim).
fn claims(changes: Value) -> Value {
    let now = get_current_timestamp();
    let mut claims = json!({
        "iss": ISSUER,
        "aud": [AUDIENCE, "another-api"],
        "sub": "billing-service",
        "iat": now,
        "exp": now + 300,
        "scope": "openid append:Order-* read:Order-*",
    });
    if let (Some(claims), Some(changes)) = (claims.as_object_mut(), changes.as_object()) {
        for (name, value) in changes {
            if value.is_null() {
                claims.remove(name);
            } else {
                claims.insert(name.clone(), value.clone());
            }
        }
    }
    claims
}

/// `claims` signed by `key`, with its algorithm and `kid`.
fn sign(key: &KeyPair, claims: &Value) -> anyhow::Result<String> {
    sign_as(key, &key.kid, claims)
}

/// `claims` signed by `key` with `kid` in the header.
fn sign_as(key: &KeyPair, kid: &str, claims: &Value) -> anyhow::Result<String> {
    let mut header = Header::new(key.alg);
    header.kid = Some(kid.to_owned());
    Ok(jsonwebtoken::encode(&header, claims, &key.signing)?)
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// An unsigned token (`alg: none`, empty signature).
fn unsigned(kid: &str, claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": kid})),
        b64(claims)
    )
}

/// The classic confusion: HS256 keyed by the bytes of the public key, as if it were a secret.
fn hs256_with_public_key(key: &KeyPair, claims: &Value) -> anyhow::Result<String> {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key.kid.clone());
    Ok(jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_secret(&key.public_pem),
    )?)
}

/// The settings that turn JWT on, with a revocation and a key change noticed within a second.
fn jwt_env(jwks: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("ESK_INSECURE_NO_AUTH", "false".into()),
        ("ESK_AUTH_CACHE_SECS", "1".into()),
        ("ESK_JWT_JWKS_FILE", jwks.to_string_lossy().into_owned()),
        ("ESK_JWT_ISSUER", ISSUER.into()),
        ("ESK_JWT_AUDIENCE", AUDIENCE.into()),
        ("ESK_JWT_JWKS_RELOAD_SECS", "1".into()),
    ]
}

async fn spawn_ingest(
    ctx: &TestContext,
    env: &[(&'static str, String)],
) -> anyhow::Result<esk_tests::process::Process> {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ingest::spawn(ctx, &env).await
}

/// The keys of a test: two in the JWKS (RSA `k1`, EC `e1`), one not (`stranger`).
struct Keys {
    dir: TempDir,
    jwks: PathBuf,
    rsa: KeyPair,
    ec: KeyPair,
    stranger: KeyPair,
}

fn keys(name: &str) -> anyhow::Result<Keys> {
    let dir = TempDir::new(name)?;
    let rsa = key_pair(&dir.0, "k1", Algorithm::RS256)?;
    let ec = key_pair(&dir.0, "e1", Algorithm::ES256)?;
    let stranger = key_pair(&dir.0, "stranger", Algorithm::RS256)?;
    let jwks = dir.0.join("jwks.json");
    write_jwks(&jwks, &[&rsa, &ec])?;
    Ok(Keys {
        dir,
        jwks,
        rsa,
        ec,
        stranger,
    })
}

/// The refused tokens: (case, token, what the message says).
fn refused_tokens(k: &Keys) -> anyhow::Result<Vec<(&'static str, String, &'static str)>> {
    let now = get_current_timestamp();
    let valid = claims(json!({}));
    Ok(vec![
        (
            "expired",
            sign(&k.rsa, &claims(json!({"exp": now - 120})))?,
            "expired",
        ),
        (
            "not-yet-valid",
            sign(&k.rsa, &claims(json!({"nbf": now + 120})))?,
            "not valid yet",
        ),
        (
            "wrong-issuer",
            sign(
                &k.rsa,
                &claims(json!({"iss": "https://evil.example.test/"})),
            )?,
            "issuer",
        ),
        (
            "wrong-audience",
            sign(&k.rsa, &claims(json!({"aud": "another-api"})))?,
            "audience",
        ),
        (
            "no-exp",
            sign(&k.rsa, &claims(json!({"exp": null})))?,
            "no exp",
        ),
        (
            "exp-as-text",
            sign(&k.rsa, &claims(json!({"exp": "never"})))?,
            "exp",
        ),
        (
            "other-key",
            sign_as(&k.stranger, "k1", &valid)?,
            "signature does not verify",
        ),
        ("unknown-kid", sign(&k.stranger, &valid)?, "kid"),
        ("alg-none", unsigned("k1", &valid), "alg none"),
        (
            "hs256-public-key",
            hs256_with_public_key(&k.rsa, &valid)?,
            "shared secret",
        ),
        (
            "rsa-alg-on-ec-key",
            sign_as(&k.rsa, "e1", &valid)?,
            "not its key's",
        ),
        (
            "malformed",
            "eyJub3QiOiJqc29uIn0.garbage.garbage".into(),
            "not a well-formed JWT",
        ),
        ("dots-only", "a.b.c".into(), "not a well-formed JWT"),
        (
            "bad-esk-scope",
            sign(&k.rsa, &claims(json!({"scope": "openid append:Or*der"})))?,
            "does not parse",
        ),
    ])
}

/// What was written: stream rows, ledger rows.
async fn written(ctx: &TestContext) -> anyhow::Result<(i64, i64)> {
    let streams: i64 = sqlx::query_scalar("SELECT count(*) FROM streams WHERE version >= 0")
        .fetch_one(&ctx.pool)
        .await?;
    let ledger: i64 = sqlx::query_scalar("SELECT count(*) FROM append_ledger")
        .fetch_one(&ctx.pool)
        .await?;
    Ok((streams, ledger))
}

/// A request of the forbidden table.
#[derive(Debug, Clone, Copy)]
enum Action {
    Append(&'static str),
    Get(&'static str),
}

fn append_body() -> Value {
    json!({"expected_version": "any", "events": [event("Maybe")]})
}

#[tokio::test]
async fn bad_jwts_over_http_are_refused_with_the_failed_check_and_write_nothing(
) -> anyhow::Result<()> {
    let ctx = TestContext::new("jwt_http").await?;
    let k = keys("jwt-http")?;
    let ingest_process = spawn_ingest(&ctx, &jwt_env(&k.jwks)).await?;
    let _indexer = indexer::spawn(&ctx, &[]).await?;
    let base = ingest_process.http.clone();

    // esk's own tokens keep working alongside: the harness's admin token seeds a stream.
    let admin = Client::new(&ingest_process);
    let seeded = admin
        .append(
            "User-1",
            &json!({"expected_version": "no_stream", "events": [event("Seeded")]}),
        )
        .await?;
    assert_eq!(seeded.status, 201, "{:?}", seeded.body);
    let before = written(&ctx).await?;
    assert_eq!(before, (1, 1));

    for (case, token, why) in refused_tokens(&k)? {
        let response = reqwest::Client::new()
            .post(format!("{base}/streams/Order-1/events"))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(append_body().to_string())
            .send()
            .await?;
        let status = response.status().as_u16();
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body: Value = serde_json::from_slice(&response.bytes().await?).unwrap_or(Value::Null);
        assert_eq!(
            (status, body.pointer("/error/code").and_then(Value::as_str)),
            (401, Some("unauthorized")),
            "{case}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{case}: {message}");
        assert!(
            !message.contains(&token),
            "{case}: the message quotes the token"
        );
        assert_eq!(challenge.as_deref(), Some("Bearer"), "{case}");
        // Reads are refused alike.
        let read = Client::with_token(&base, Some(&token))
            .get("/streams/Order-1/events")
            .await?;
        assert_eq!(
            (read.status, read.code()),
            (401, Some("unauthorized")),
            "{case} read"
        );
    }
    assert_eq!(written(&ctx).await?, before, "a refused JWT wrote");

    // Valid, but without the scope: 403, and an existing stream looks like a missing one.
    let billing = sign(&k.rsa, &claims(json!({})))?;
    let no_scope = sign(&k.rsa, &claims(json!({"scope": null})))?;
    let append_only = sign(&k.ec, &claims(json!({"scope": ["append:Order-*"]})))?;
    let reader = sign(&k.rsa, &claims(json!({"scope": "read:*"})))?;
    for (case, token, action) in [
        ("billing to User", &billing, Action::Append("User-1")),
        ("billing to missing", &billing, Action::Append("User-404")),
        ("no scope claim", &no_scope, Action::Append("Order-1")),
        ("reader appends", &reader, Action::Append("Order-1")),
        (
            "billing reads User",
            &billing,
            Action::Get("/streams/User-1/events"),
        ),
        (
            "billing reads missing",
            &billing,
            Action::Get("/streams/User-404/events"),
        ),
        (
            "billing reads $all",
            &billing,
            Action::Get("/streams/$all/events"),
        ),
        (
            "append-only reads",
            &append_only,
            Action::Get("/streams/Order-1/events"),
        ),
    ] {
        let client = Client::with_token(&base, Some(token));
        let reply = match action {
            Action::Append(stream) => client.append(stream, &append_body()).await?,
            Action::Get(path) => client.get(path).await?,
        };
        assert_eq!(
            (reply.status, reply.code()),
            (403, Some("forbidden")),
            "{case}: {:?}",
            reply.body
        );
    }
    assert_eq!(written(&ctx).await?, before, "a forbidden JWT wrote");

    // Valid with the scopes: appends (RS256 and ES256) are written, reads are served.
    let accepted = Client::with_token(&base, Some(&billing))
        .append("Order-1", &append_body())
        .await?;
    assert_eq!(accepted.status, 201, "{:?}", accepted.body);
    let accepted = Client::with_token(&base, Some(&append_only))
        .append("Order-2", &append_body())
        .await?;
    assert_eq!(accepted.status, 201, "{:?}", accepted.body);
    assert_eq!(written(&ctx).await?, (3, 3));
    indexer::wait_indexed(&ctx, 3, Duration::from_secs(60)).await?;
    for (token, path, events) in [
        (&billing, "/streams/Order-1/events", 1),
        (&billing, "/categories/Order/events", 2),
        (&reader, "/streams/$all/events", 3),
        (&reader, "/streams/User-1/events", 1),
    ] {
        let reply = Client::with_token(&base, Some(token)).get(path).await?;
        assert_eq!(reply.status, 200, "{path}: {:?}", reply.body);
        let got = reply.body["events"].as_array().map_or(0, Vec::len);
        assert_eq!(got, events, "{path}: {:?}", reply.body);
    }
    // An esk token longer than esk's own still is refused unread.
    let long = format!("esk_{}", "a".repeat(5000));
    let reply = Client::with_token(&base, Some(&long))
        .get("/streams/Order-1/events")
        .await?;
    assert_eq!((reply.status, reply.code()), (401, Some("unauthorized")));
    Ok(())
}

/// One append request over Kafka: its id, stream and token, and the refusal expected (code,
/// part of the message), if any.
struct KafkaCase {
    request_id: &'static str,
    stream: &'static str,
    token: String,
    refused: Option<(&'static str, &'static str)>,
}

#[tokio::test]
async fn bad_jwts_over_kafka_get_typed_rejections_and_write_nothing() -> anyhow::Result<()> {
    let ctx = TestContext::new("jwt_kafka").await?;
    let k = keys("jwt-kafka")?;
    let _ingest = spawn_ingest(&ctx, &jwt_env(&k.jwks)).await?;
    let producer = kafka::producer(&ctx.brokers)?;

    let mut cases: Vec<KafkaCase> = refused_tokens(&k)?
        .into_iter()
        .map(|(case, token, why)| KafkaCase {
            request_id: case,
            stream: "Order-1",
            token,
            refused: Some(("unauthorized", why)),
        })
        .collect();
    let billing = sign(&k.rsa, &claims(json!({})))?;
    let reader = sign(&k.ec, &claims(json!({"scope": "read:*"})))?;
    cases.extend([
        KafkaCase {
            request_id: "other-category",
            stream: "User-1",
            token: billing.clone(),
            refused: Some(("forbidden", "appending")),
        },
        KafkaCase {
            request_id: "read-only",
            stream: "Order-1",
            token: reader,
            refused: Some(("forbidden", "appending")),
        },
        KafkaCase {
            request_id: "allowed",
            stream: "Order-2",
            token: billing.clone(),
            refused: None,
        },
    ]);
    for KafkaCase {
        request_id,
        stream,
        token,
        ..
    } in &cases
    {
        let payload = json!({"schema_version": 1, "request_id": request_id, "stream_id": stream,
            "expected_version": "any", "events": [event("Maybe")]})
        .to_string();
        kafka::produce_append(
            &producer,
            &ctx.topics.appends,
            token,
            stream,
            payload.as_bytes(),
        )
        .await?;
    }
    let results = kafka::read_topic(
        &ctx.brokers,
        &ctx.topics.append_results,
        cases.len(),
        Duration::from_secs(60),
    )?;
    assert_eq!(results.len(), cases.len(), "one result per request");
    for KafkaCase {
        request_id,
        stream,
        token,
        refused,
    } in &cases
    {
        let result = results
            .iter()
            .filter_map(|r| kafka::json_payload(r).ok())
            .find(|v| v["request_id"] == *request_id)
            .ok_or_else(|| anyhow::anyhow!("no result for {request_id}"))?;
        match refused {
            Some((code, why)) => {
                assert_eq!(result["outcome"], "rejected", "{request_id}: {result}");
                assert_eq!(result["error"]["code"], *code, "{request_id}: {result}");
                assert_eq!(result["stream_id"], *stream, "{request_id}");
                let message = result["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains(why), "{request_id}: {message}");
                assert!(
                    !message.contains(token.as_str()),
                    "{request_id} quotes the token"
                );
            }
            None => assert_eq!(result["outcome"], "accepted", "{request_id}: {result}"),
        }
    }
    // Only the allowed request wrote.
    assert_eq!(written(&ctx).await?, (1, 1));
    let stream: String = sqlx::query_scalar("SELECT stream_id FROM append_ledger")
        .fetch_one(&ctx.pool)
        .await?;
    assert_eq!(stream, "Order-2");
    for record in &results {
        let text = String::from_utf8_lossy(record.payload().unwrap_or_default()).into_owned();
        assert!(!text.contains(&billing), "a result echoes the token");
    }
    Ok(())
}

/// Appends with `token` until the answer is `status`; how long that took.
async fn until_status(
    client: &Client,
    stream: &str,
    status: u16,
    within: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let reply = client.append(stream, &append_body()).await?;
        if reply.status == status {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < within,
            "still {} after {within:?}: {:?}",
            reply.status,
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_rotated_key_set_is_picked_up_without_a_restart() -> anyhow::Result<()> {
    let ctx = TestContext::new("jwt_rotate").await?;
    let k = keys("jwt-rotate")?;
    // Verifications cached for a minute: only the key change can void the old key's.
    let mut env = jwt_env(&k.jwks);
    env.push(("ESK_AUTH_CACHE_SECS", "60".into()));
    let mut ingest_process = spawn_ingest(&ctx, &env).await?;
    let base = ingest_process.http.clone();
    let old = Client::with_token(&base, Some(&sign(&k.rsa, &claims(json!({})))?));
    let next_key = key_pair(&k.dir.0, "k2", Algorithm::RS256)?;
    let new = Client::with_token(&base, Some(&sign(&next_key, &claims(json!({})))?));

    assert_eq!(old.append("Order-1", &append_body()).await?.status, 201);
    let before = new.append("Order-2", &append_body()).await?;
    assert_eq!(
        (before.status, before.code()),
        (401, Some("unauthorized")),
        "{:?}",
        before.body
    );

    // The identity provider rotates: k2 in, k1 out.
    write_jwks(&k.jwks, &[&next_key, &k.ec])?;
    // ESK_JWT_JWKS_RELOAD_SECS=1 and a margin for a slow machine.
    let bound = Duration::from_secs(4);
    until_status(&new, "Order-2", 201, bound).await?;
    // k1 is gone: its token, verified and cached before, is refused within the same bound
    // (not the cache time).
    until_status(&old, "Order-3", 401, bound).await?;
    assert!(
        ingest_process.exit_status().is_none(),
        "ingest restarted or stopped"
    );
    let reply = old.append("Order-3", &append_body()).await?;
    let message = reply.body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("kid"), "{message}");
    // Nothing of the refused token's was written after its key left: Order-3 has no stream.
    let order3: i64 =
        sqlx::query_scalar("SELECT count(*) FROM append_ledger WHERE stream_id = 'Order-3'")
            .fetch_one(&ctx.pool)
            .await?;
    assert_eq!(order3, 0);
    let log = ingest_process.log_text();
    assert!(log.contains("JWKS keys loaded"), "{log}");
    Ok(())
}

#[tokio::test]
async fn jwt_settings_that_cannot_be_used_stop_ingest_at_start() -> anyhow::Result<()> {
    let ctx = TestContext::new("jwt_start").await?;
    let k = keys("jwt-start")?;
    let only_secret = k.dir.0.join("secret.json");
    std::fs::write(
        &only_secret,
        json!({"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ"}]})
            .to_string(),
    )?;
    let not_json = k.dir.0.join("not.json");
    std::fs::write(&not_json, "-----BEGIN PUBLIC KEY-----")?;
    let missing = k.dir.0.join("missing.json");
    let without = |name: &str| -> Vec<(&'static str, String)> {
        jwt_env(&k.jwks)
            .into_iter()
            .filter(|(k, _)| *k != name)
            .collect()
    };
    for (case, env, says) in [
        ("no issuer", without("ESK_JWT_ISSUER"), "--jwt-issuer"),
        ("no audience", without("ESK_JWT_AUDIENCE"), "--jwt-audience"),
        (
            "missing file",
            jwt_env(&missing),
            "cannot read the JWKS file",
        ),
        (
            "not a key set",
            jwt_env(&not_json),
            "is not a JSON Web Key Set",
        ),
        ("no usable key", jwt_env(&only_secret), "has no usable key"),
    ] {
        match spawn_ingest(&ctx, &env).await {
            Ok(_) => anyhow::bail!("{case}: ingest started"),
            Err(e) => {
                let text = e.to_string();
                assert!(
                    text.contains("exited with exit status: 1"),
                    "{case}: {text}"
                );
                assert!(text.contains(says), "{case}: {text}");
            }
        }
    }
    Ok(())
}

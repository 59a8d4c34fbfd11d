//! Bearer tokens issued by an identity provider: JWTs verified against the keys of a JWKS file
//! (signature by the key of the token's `kid`, asymmetric algorithms only and the key's own,
//! `exp`, `nbf`, `iss`, `aud`), their esk scopes read from a claim, and each verification
//! cached by the token's SHA-256 for `ESK_AUTH_CACHE_SECS` or until the token expires, so the
//! signature of a token in use is checked once per cache period, not once per request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use esk_runtime::scope::Scope;
use esk_runtime::tokens;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::auth::AuthError;
use crate::config::JwtSettings;
use crate::credential_cache::CredentialCache;
use crate::jwks::{JwksError, JwksFile, KeyMiss, VerifyKey};

/// The longest JWT looked at (identity providers' tokens run to a few KiB; esk's own tokens
/// are far shorter).
pub(crate) const MAX_JWT_LEN: usize = 8192;

/// The claims every JWT must carry.
const REQUIRED_CLAIMS: [&str; 4] = ["exp", "iss", "aud", "sub"];

const MALFORMED: &str = "the bearer token is not a well-formed JWT";

/// What a verified JWT grants: who it names and what it may do.
#[derive(Debug)]
pub(crate) struct JwtGrant {
    /// Its `sub`: the principal's name in logs.
    pub(crate) subject: String,
    /// Its esk scopes.
    pub(crate) scopes: Vec<Scope>,
}

/// Why the JWT settings cannot be used (found at start).
#[derive(Debug, thiserror::Error)]
pub(crate) enum JwtConfigError {
    /// No issuer to check.
    #[error("--jwt-jwks-file (ESK_JWT_JWKS_FILE) is set but --jwt-issuer (ESK_JWT_ISSUER) is not: JWT verification checks every token's iss against it")]
    MissingIssuer,
    /// No audience to check.
    #[error("--jwt-jwks-file (ESK_JWT_JWKS_FILE) is set but --jwt-audience (ESK_JWT_AUDIENCE) is not: JWT verification checks every token's aud against it")]
    MissingAudience,
    /// No claim to read scopes from.
    #[error("--jwt-scopes-claim (ESK_JWT_SCOPES_CLAIM) is empty")]
    NoScopesClaim,
    /// The key set cannot be used.
    #[error(transparent)]
    Jwks(#[from] JwksError),
}

/// Verifies JWTs, caching what it verified.
#[derive(Debug)]
pub(crate) struct JwtVerifier {
    keys: JwksFile,
    /// `iss`, `aud`, required claims, leeway; the algorithm is set per token.
    validation: Validation,
    scopes_claim: String,
    leeway: Duration,
    /// The longest a verification is trusted (`ESK_AUTH_CACHE_SECS`).
    ttl: Duration,
    cache: CredentialCache<Cached>,
}

#[derive(Debug, Clone)]
struct Cached {
    /// The key set it was verified with: a change of the file voids it.
    generation: u64,
    grant: Arc<JwtGrant>,
}

/// The header fields looked at. `jwk`, `jku` and `x5u` are never followed: keys come from the
/// JWKS file only.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

impl JwtVerifier {
    /// The verifier of `settings` (each verification trusted for at most `ttl`), or `None`
    /// when no JWKS file is set.
    pub(crate) async fn from_settings(
        settings: &JwtSettings,
        ttl: Duration,
    ) -> Result<Option<Self>, JwtConfigError> {
        let Some(path) = &settings.jwks_file else {
            return Ok(None);
        };
        let given = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
        let issuer = given(&settings.issuer).ok_or(JwtConfigError::MissingIssuer)?;
        let audience = given(&settings.audience).ok_or(JwtConfigError::MissingAudience)?;
        if settings.scopes_claim.trim().is_empty() {
            return Err(JwtConfigError::NoScopesClaim);
        }
        let keys = JwksFile::open(path, Duration::from_secs(settings.jwks_reload_secs)).await?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&REQUIRED_CLAIMS);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.leeway = settings.leeway_secs;
        Ok(Some(JwtVerifier {
            keys,
            validation,
            scopes_claim: settings.scopes_claim.clone(),
            leeway: Duration::from_secs(settings.leeway_secs),
            ttl,
            cache: CredentialCache::new(),
        }))
    }

    /// What `token` grants, or why it is refused (always [`AuthError::Unauthorized`], saying
    /// which check failed and never quoting the token).
    pub(crate) async fn verify(&self, token: &str) -> Result<Arc<JwtGrant>, AuthError> {
        if self.keys.refresh(false).await {
            self.cache.clear();
        }
        let hash = tokens::hash(token);
        let mut keys = self.keys.keys();
        if let Some(cached) = self.cache.get(&hash) {
            if cached.generation == keys.generation {
                return Ok(cached.grant);
            }
        }
        let header = header(token)?;
        let alg = algorithm(&header)?;
        let kid = header.kid.as_deref();
        if keys.find(kid, alg).err() == Some(KeyMiss::UnknownKid) && self.keys.refresh(true).await {
            // A new key, perhaps: rotation without waiting for the next check.
            self.cache.clear();
            keys = self.keys.keys();
        }
        let key = keys.find(kid, alg).map_err(|miss| {
            AuthError::Unauthorized(match miss {
                KeyMiss::UnknownKid => "no key of the JWKS has the JWT's kid",
                KeyMiss::NoKid => "the JWT names no kid and the JWKS has not exactly one key",
                KeyMiss::WrongAlgorithm => "the JWT's algorithm (alg) is not its key's",
            })
        })?;
        let (grant, exp) = self.check(token, key, alg)?;
        let grant = Arc::new(grant);
        // Trusted until the cache period ends or the token expires, whichever is first.
        let now = unix_now();
        let lifetime = Duration::from_secs(exp.saturating_sub(now)).saturating_add(self.leeway);
        self.cache.insert(
            hash,
            Cached {
                generation: keys.generation,
                grant: grant.clone(),
            },
            Instant::now() + self.ttl.min(lifetime),
        );
        tracing::debug!(subject = %grant.subject, "JWT verified");
        Ok(grant)
    }

    /// Verifies the signature and the claims; the grant and the token's `exp`.
    fn check(
        &self,
        token: &str,
        key: &VerifyKey,
        alg: Algorithm,
    ) -> Result<(JwtGrant, u64), AuthError> {
        let mut validation = self.validation.clone();
        validation.algorithms = vec![alg];
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|error| refusal(error.kind()))?
            .claims;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or(AuthError::Unauthorized("the JWT's sub is not a string"))?;
        let exp = claims
            .get("exp")
            .and_then(|exp| exp.as_u64().or_else(|| exp.as_f64().map(|f| f as u64)))
            .ok_or(AuthError::Unauthorized("the JWT's exp is not a number"))?;
        let scopes =
            scopes_from_claim(claims.get(&self.scopes_claim)).map_err(AuthError::Unauthorized)?;
        Ok((
            JwtGrant {
                subject: subject.to_owned(),
                scopes,
            },
            exp,
        ))
    }
}

/// Whether a bearer token has the shape of a JWT (three parts separated by dots); esk's own
/// tokens never contain a dot.
pub(crate) fn is_jwt_shaped(token: &str) -> bool {
    token.bytes().filter(|&b| b == b'.').count() == 2
}

/// The token's header, decoded but not yet trusted.
fn header(token: &str) -> Result<Header, AuthError> {
    let malformed = AuthError::Unauthorized(MALFORMED);
    let encoded = token.split('.').next().ok_or(malformed.clone())?;
    let bytes = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| malformed.clone())?;
    serde_json::from_slice(&bytes).map_err(|_| malformed)
}

/// The header's algorithm, if it is one accepted: signed, and with a public key.
fn algorithm(header: &Header) -> Result<Algorithm, AuthError> {
    if header.crit.is_some() {
        return Err(AuthError::Unauthorized(
            "the JWT names critical header extensions (crit), none of which are supported",
        ));
    }
    if header.alg.eq_ignore_ascii_case("none") {
        return Err(AuthError::Unauthorized(
            "the JWT is unsigned (alg none), which is refused",
        ));
    }
    match header.alg.parse::<Algorithm>() {
        Ok(alg) if alg.family() == AlgorithmFamily::Hmac => Err(AuthError::Unauthorized(
            "the JWT is signed with a shared secret (HS256/384/512), which is refused: only RS, PS, ES and EdDSA signatures are accepted",
        )),
        Ok(alg) => Ok(alg),
        Err(_) => Err(AuthError::Unauthorized(
            "the JWT's algorithm (alg) is not supported: RS256/384/512, PS256/384/512, ES256, ES384 and EdDSA are",
        )),
    }
}

/// The refusal for a failed verification, saying which check failed.
fn refusal(kind: &ErrorKind) -> AuthError {
    AuthError::Unauthorized(match kind {
        ErrorKind::InvalidSignature => "the JWT's signature does not verify with its key",
        ErrorKind::ExpiredSignature => "the JWT has expired (exp)",
        ErrorKind::ImmatureSignature => "the JWT is not valid yet (nbf)",
        ErrorKind::InvalidIssuer => "the JWT's issuer (iss) is not the one configured",
        ErrorKind::InvalidAudience => "the JWT's audience (aud) does not name this service",
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => "the JWT has no exp (or not a number)",
            "iss" => "the JWT has no iss",
            "aud" => "the JWT has no aud",
            "sub" => "the JWT has no sub (or not a string)",
            _ => "the JWT lacks a required claim",
        },
        ErrorKind::InvalidClaimFormat(_) => "the JWT's exp or nbf is not a number",
        ErrorKind::InvalidAlgorithm => "the JWT's algorithm (alg) is not its key's",
        ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidKeyFormat => {
            tracing::warn!(error = ?kind, "a key of the JWKS file cannot verify");
            "the JWT's key cannot verify it"
        }
        _ => MALFORMED,
    })
}

/// The esk scopes of a JWT's scopes claim: a space-separated string or an array of strings.
/// Scopes that are not esk's (`openid`, `profile`, ...) are ignored, since they grant nothing
/// here; an esk scope that does not parse refuses the whole token, since the identity provider
/// is then configured wrong and a guess could grant too much or too little. No claim grants
/// nothing (every request is then 403).
fn scopes_from_claim(claim: Option<&Value>) -> Result<Vec<Scope>, &'static str> {
    const WRONG_TYPE: &str =
        "the JWT's scopes claim is neither a space-separated string nor an array of strings";
    let items: Vec<&str> = match claim {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) => text.split_whitespace().collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(Value::as_str)
            .collect::<Option<_>>()
            .ok_or(WRONG_TYPE)?,
        Some(_) => return Err(WRONG_TYPE),
    };
    items
        .into_iter()
        .filter(|item| Scope::is_meant_as_scope(item))
        .map(|item| {
            item.parse()
                .map_err(|_| "the JWT grants an esk scope that does not parse (see docs/security.md: append:<pattern>, read:<pattern> or admin)")
        })
        .collect()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn scopes(claim: Value) -> Result<Vec<String>, &'static str> {
        scopes_from_claim(Some(&claim)).map(|s| s.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn scopes_come_from_a_string_or_an_array_and_foreign_ones_are_ignored() {
        assert_eq!(
            scopes(json!("openid append:Order-*  read:Order-1 profile")),
            Ok(vec!["append:Order-*".into(), "read:Order-1".into()])
        );
        assert_eq!(
            scopes(json!(["admin", "email", "read:*"])),
            Ok(vec!["admin".into(), "read:*".into()])
        );
        assert_eq!(scopes(json!("openid profile")), Ok(vec![]));
        assert_eq!(scopes(json!("")), Ok(vec![]));
        assert_eq!(scopes(json!([])), Ok(vec![]));
        assert_eq!(scopes(Value::Null), Ok(vec![]));
        assert_eq!(scopes_from_claim(None).map(|s| s.len()), Ok(0));
    }

    #[test]
    fn a_malformed_esk_scope_or_claim_refuses_the_token() {
        for bad in [
            json!("append:Or*der"),
            json!("openid read:"),
            json!(["append:A-B-*"]),
            json!(["read:*", 3]),
            json!(7),
            json!({"scope": "admin"}),
            json!(true),
        ] {
            assert!(scopes(bad.clone()).is_err(), "{bad} was accepted");
        }
    }

    fn header_of(json: Value) -> String {
        format!(
            "{}.e30.c2ln",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&json).expect("json"))
        )
    }

    fn alg_of(token: &str) -> Result<Algorithm, AuthError> {
        algorithm(&header(token)?)
    }

    #[test]
    fn only_signed_asymmetric_algorithms_pass_the_header() {
        for (alg, expected) in [
            ("RS256", Algorithm::RS256),
            ("PS512", Algorithm::PS512),
            ("ES384", Algorithm::ES384),
            ("EdDSA", Algorithm::EdDSA),
        ] {
            let token = header_of(json!({"alg": alg, "kid": "k"}));
            assert_eq!(alg_of(&token).ok(), Some(expected), "{alg}");
        }
        for (header, why) in [
            (json!({"alg": "none"}), "alg none"),
            (json!({"alg": "NONE"}), "alg none"),
            (json!({"alg": "HS256"}), "shared secret"),
            (json!({"alg": "HS512"}), "shared secret"),
            (json!({"alg": "ES512"}), "not supported"),
            (json!({"alg": "RSA-OAEP"}), "not supported"),
            (json!({"alg": "RS256", "crit": ["exp"]}), "crit"),
            (json!({"kid": "k"}), MALFORMED),
            (json!({"alg": 256}), MALFORMED),
        ] {
            match alg_of(&header_of(header.clone())) {
                Err(AuthError::Unauthorized(message)) => {
                    assert!(message.contains(why), "{header}: {message}")
                }
                other => panic!("{header}: {other:?}"),
            }
        }
        for garbage in ["a.b.c", "..", "%%%.e30.c2ln", "e30.e30.c2ln"] {
            assert_eq!(
                alg_of(garbage).err(),
                Some(AuthError::Unauthorized(MALFORMED)),
                "{garbage}"
            );
        }
    }

    #[test]
    fn jwts_are_told_from_esk_tokens_by_their_two_dots() {
        assert!(is_jwt_shaped("a.b.c"));
        assert!(is_jwt_shaped(".."));
        assert!(!is_jwt_shaped("esk_0123abcd"));
        assert!(!is_jwt_shaped("a.b"));
        assert!(!is_jwt_shaped("a.b.c.d"));
    }

    /// The cost of a JWT check, verified (`ESK_AUTH_CACHE_SECS=0`) and cached (`cargo test -p
    /// ingest jwt_check_cost -- --ignored --nocapture`; needs `openssl`; the build profile
    /// matters).
    #[tokio::test]
    #[ignore = "a measurement, not a check"]
    async fn jwt_check_cost() {
        use jsonwebtoken::jwk::{Jwk, JwkSet};
        use jsonwebtoken::{EncodingKey, Header};

        let dir = std::env::temp_dir().join(format!("esk-jwt-cost-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let pem = dir.join("key.pem");
        let status = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&pem)
            .status()
            .expect("openssl");
        assert!(status.success());
        let key = EncodingKey::from_rsa_pem(&std::fs::read(&pem).expect("pem")).expect("key");
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).expect("jwk");
        jwk.common.key_id = Some("k".into());
        let jwks = dir.join("jwks.json");
        let set = JwkSet { keys: vec![jwk] };
        std::fs::write(&jwks, serde_json::to_vec(&set).expect("json")).expect("write");
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("k".into());
        let claims = json!({"iss": "idp", "aud": "esk", "sub": "svc", "exp": unix_now() + 600,
            "scope": "append:Order-*"});
        let token = jsonwebtoken::encode(&header, &claims, &key).expect("signed");
        let settings = JwtSettings {
            jwks_file: Some(jwks),
            issuer: Some("idp".into()),
            audience: Some("esk".into()),
            scopes_claim: "scope".into(),
            leeway_secs: 30,
            jwks_reload_secs: 3600,
        };
        for (what, ttl, rounds) in [
            ("verified", Duration::ZERO, 200u32),
            ("cached", Duration::from_secs(600), 100_000),
        ] {
            let verifier = JwtVerifier::from_settings(&settings, ttl)
                .await
                .expect("settings")
                .expect("on");
            let started = Instant::now();
            for _ in 0..rounds {
                let grant = verifier.verify(&token).await.expect("valid");
                assert_eq!(grant.subject, "svc");
            }
            println!("{what} JWT check: {:?} each", started.elapsed() / rounds);
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}

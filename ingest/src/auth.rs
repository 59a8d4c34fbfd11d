//! Who is asking and whether they may: the bearer token of an HTTP request or of a Kafka
//! record's `authorization` header, and the scopes a request needs. A token is one of esk's own
//! (hashed and looked up in Postgres) or, with a JWKS file set, a JWT from an identity provider
//! (verified, see [`crate::jwt`]); either answer is cached by the token's SHA-256, so one hash
//! and one map lookup per request while the cache is warm.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use esk_runtime::scope::{allows, Need, Scope};
use esk_runtime::tokens::{self, TokenRecord, MAX_TOKEN_LEN};
use sqlx::PgPool;

use crate::credential_cache::CredentialCache;
use crate::jwt::{is_jwt_shaped, JwtGrant, JwtVerifier, MAX_JWT_LEN};

/// Checks tokens, or lets everything through when auth is off (`--insecure-no-auth`).
#[derive(Debug)]
pub(crate) struct Auth {
    store: Option<Store>,
    /// JWT verification, when a JWKS file is set.
    jwt: Option<JwtVerifier>,
}

#[derive(Debug)]
struct Store {
    pool: PgPool,
    /// How long a lookup is trusted: the bound on how late a revocation applies.
    ttl: Duration,
    /// The lookups, found or not.
    cache: CredentialCache<Option<Arc<TokenRecord>>>,
}

/// Who a request comes from.
#[derive(Debug, Clone)]
pub(crate) enum Principal {
    /// Auth is off: everything is allowed.
    Anyone,
    /// A valid esk token.
    Token(Arc<TokenRecord>),
    /// A verified JWT.
    Jwt(Arc<JwtGrant>),
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthError {
    /// No valid token (missing, malformed, unknown, expired or revoked): 401 `unauthorized`.
    Unauthorized(&'static str),
    /// A valid token without the scope: 403 `forbidden`.
    Forbidden(String),
    /// The token store could not be read: 503 `unavailable`.
    Unavailable,
}

impl AuthError {
    /// The error code clients see.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            AuthError::Unauthorized(_) => "unauthorized",
            AuthError::Forbidden(_) => "forbidden",
            AuthError::Unavailable => "unavailable",
        }
    }

    /// What clients are told.
    pub(crate) fn message(&self) -> String {
        match self {
            AuthError::Unauthorized(why) => format!("{why}; send Authorization: Bearer <token>"),
            AuthError::Forbidden(need) => format!("this token's scopes do not allow {need}"),
            AuthError::Unavailable => "tokens could not be checked; retry".into(),
        }
    }
}

impl Auth {
    /// Everything allowed.
    pub(crate) fn off() -> Self {
        Auth {
            store: None,
            jwt: None,
        }
    }

    /// Tokens from `pool`, each lookup trusted for `ttl`; JWTs too when `jwt` is given.
    pub(crate) fn on(pool: PgPool, ttl: Duration, jwt: Option<JwtVerifier>) -> Self {
        Auth {
            store: Some(Store {
                pool,
                ttl,
                cache: CredentialCache::new(),
            }),
            jwt,
        }
    }

    /// Who sends this `Authorization` value (the raw header bytes, if any).
    pub(crate) async fn authenticate(&self, header: Option<&[u8]>) -> Result<Principal, AuthError> {
        let Some(store) = &self.store else {
            return Ok(Principal::Anyone);
        };
        let max_len = if self.jwt.is_some() {
            MAX_JWT_LEN
        } else {
            MAX_TOKEN_LEN
        };
        let token = bearer(header, max_len)?;
        if let Some(jwt) = &self.jwt {
            if is_jwt_shaped(token) {
                return jwt
                    .verify(token)
                    .await
                    .map(Principal::Jwt)
                    .inspect_err(|e| {
                        tracing::debug!(error = %e.message(), "JWT refused");
                    });
            }
            if token.len() > MAX_TOKEN_LEN {
                return Err(AuthError::Unauthorized(TOO_LONG));
            }
        }
        let record = store.lookup(token).await?;
        let record = record.ok_or(AuthError::Unauthorized("unknown token"))?;
        if record.revoked_at.is_some() {
            return Err(AuthError::Unauthorized("the token was revoked"));
        }
        if !record.is_valid_at(Utc::now()) {
            return Err(AuthError::Unauthorized("the token has expired"));
        }
        Ok(Principal::Token(record))
    }
}

impl Principal {
    /// The topic this principal's Kafka appends are answered on, when it has one of its own.
    pub(crate) fn results_topic(&self) -> Option<&str> {
        match self {
            // JWTs name no results topic: theirs is the shared one.
            Principal::Anyone | Principal::Jwt(_) => None,
            Principal::Token(record) => record.results_topic.as_deref(),
        }
    }

    /// Ok when this principal may do `need`.
    pub(crate) fn require(&self, need: Need<'_>) -> Result<(), AuthError> {
        let scopes: &[Scope] = match self {
            Principal::Anyone => return Ok(()),
            Principal::Token(record) => &record.scopes,
            Principal::Jwt(grant) => &grant.scopes,
        };
        if allows(scopes, need) {
            return Ok(());
        }
        let need = match need {
            Need::Append(stream) => format!("appending to {stream:?}"),
            Need::ReadStream(stream) => format!("reading {stream:?}"),
            Need::ReadCategory(category) => format!("reading category {category:?}"),
            Need::ReadAll => "reading every stream (read:*)".into(),
            Need::Admin => "admin operations".into(),
        };
        tracing::debug!(principal = self.name(), %need, "refused: no scope for it");
        Err(AuthError::Forbidden(need))
    }

    /// Its name in logs: the token's name, or the JWT's `sub`.
    pub(crate) fn name(&self) -> &str {
        match self {
            Principal::Anyone => "anyone",
            Principal::Token(record) => &record.name,
            Principal::Jwt(grant) => &grant.subject,
        }
    }
}

impl Store {
    /// The token's record (`None`: no such token), from the cache or else Postgres.
    async fn lookup(&self, token: &str) -> Result<Option<Arc<TokenRecord>>, AuthError> {
        let hash = tokens::hash(token);
        if let Some(record) = self.cache.get(&hash) {
            return Ok(record);
        }
        let record = tokens::lookup(&self.pool, &hash)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "token lookup failed");
                AuthError::Unavailable
            })?
            .map(Arc::new);
        self.cache
            .insert(hash, record.clone(), Instant::now() + self.ttl);
        Ok(record)
    }
}

const TOO_LONG: &str = "the authorization value is too long";

/// The token of a `Bearer` authorization value of at most `max_len` bytes of token.
fn bearer(header: Option<&[u8]>, max_len: usize) -> Result<&str, AuthError> {
    let value = header.ok_or(AuthError::Unauthorized("no token"))?;
    if value.len() > max_len + "Bearer ".len() {
        return Err(AuthError::Unauthorized(TOO_LONG));
    }
    let value = std::str::from_utf8(value)
        .map_err(|_| AuthError::Unauthorized("the authorization value is not text"))?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Unauthorized(
        "the authorization value is not `Bearer <token>`",
    ))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Unauthorized("only Bearer tokens are accepted"));
    }
    let token = token.trim_matches(' ');
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AuthError::Unauthorized(
            "the bearer token is empty or malformed",
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_bearer_values_yield_a_token() {
        assert_eq!(
            bearer(Some(b"Bearer esk_abc"), MAX_TOKEN_LEN),
            Ok("esk_abc")
        );
        assert_eq!(
            bearer(Some(b"bearer  esk_abc"), MAX_TOKEN_LEN),
            Ok("esk_abc")
        );
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1));
        for bad in [
            None,
            Some(&b"Basic dXNlcjpwYXNz"[..]),
            Some(b"Bearer"),
            Some(b"Bearer "),
            Some(b"Bearer a b"),
            Some(b"garbage"),
            Some(b"Bearer \xff\xfe"),
            Some(long.as_bytes()),
        ] {
            assert!(
                matches!(bearer(bad, MAX_TOKEN_LEN), Err(AuthError::Unauthorized(_))),
                "{bad:?} was accepted"
            );
        }
    }

    fn record(expires_in: i64, revoked: bool) -> Arc<TokenRecord> {
        let now = Utc::now();
        Arc::new(TokenRecord {
            name: "t".into(),
            scopes: vec!["append:Order-*".parse().expect("scope")],
            created_at: now,
            expires_at: Some(now + chrono::Duration::seconds(expires_in)),
            revoked_at: revoked.then_some(now),
            results_topic: None,
        })
    }

    /// Caches `record` as the lookup of `token`, for the store's ttl.
    fn remember(store: &Store, token: &str, record: Option<Arc<TokenRecord>>) {
        store
            .cache
            .insert(tokens::hash(token), record, Instant::now() + store.ttl);
    }

    /// Auth whose store cannot be reached: only cached answers can succeed.
    fn unreachable(ttl: Duration) -> Auth {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(200))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("a lazy pool");
        Auth::on(pool, ttl, None)
    }

    #[tokio::test]
    async fn cached_lookups_decide_without_the_store_until_they_are_stale() {
        let auth = unreachable(Duration::from_secs(60));
        let store = auth.store.as_ref().expect("on");
        for (token, cached) in [
            ("valid", Some(record(60, false))),
            ("expired", Some(record(-1, false))),
            ("revoked", Some(record(60, true))),
            ("unknown", None),
        ] {
            remember(store, token, cached);
        }
        let principal = auth
            .authenticate(Some(b"Bearer valid"))
            .await
            .expect("a cached valid token");
        assert_eq!(principal.require(Need::Append("Order-1")), Ok(()));
        assert!(matches!(
            principal.require(Need::Append("User-1")),
            Err(AuthError::Forbidden(_))
        ));
        for (token, why) in [
            ("expired", "the token has expired"),
            ("revoked", "the token was revoked"),
            ("unknown", "unknown token"),
        ] {
            let header = format!("Bearer {token}");
            assert_eq!(
                auth.authenticate(Some(header.as_bytes())).await.err(),
                Some(AuthError::Unauthorized(why))
            );
        }
        // Not cached, and the store is down: unavailable, never let through.
        assert_eq!(
            auth.authenticate(Some(b"Bearer other")).await.err(),
            Some(AuthError::Unavailable)
        );
        // A stale entry is looked up again (and the store is down).
        let stale = unreachable(Duration::ZERO);
        let store = stale.store.as_ref().expect("on");
        remember(store, "valid", Some(record(60, false)));
        assert_eq!(
            stale.authenticate(Some(b"Bearer valid")).await.err(),
            Some(AuthError::Unavailable)
        );
    }

    /// The hot-path cost of a cached check (`cargo test -p ingest cached_check_cost --
    /// --ignored --nocapture`; build profile matters).
    #[tokio::test]
    #[ignore = "a measurement, not a check"]
    async fn cached_check_cost() {
        let auth = unreachable(Duration::from_secs(600));
        let token = format!("Bearer esk_{}", "ab".repeat(32));
        let store = auth.store.as_ref().expect("on");
        remember(store, &token[7..], Some(record(600, false)));
        let rounds = 100_000u32;
        let started = Instant::now();
        for _ in 0..rounds {
            let principal = auth
                .authenticate(Some(token.as_bytes()))
                .await
                .expect("cached");
            assert!(principal.require(Need::Append("Order-1")).is_ok());
        }
        println!("cached check: {:?} each", started.elapsed() / rounds);
    }

    #[tokio::test]
    async fn auth_off_lets_anyone_do_anything() {
        let principal = Auth::off().authenticate(None).await.expect("off");
        assert_eq!(principal.require(Need::Admin), Ok(()));
    }
}

//! Bearer tokens: created with a name and scopes, shown once, stored only as their SHA-256
//! (`api_tokens`, migration 0006), listed, revoked, and looked up by ingest.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;

use crate::scope::{InvalidScope, Scope};

/// Every token starts with this, so a leaked one is recognisable (secret scanners, logs).
pub const TOKEN_PREFIX: &str = "esk_";

/// The longest `Authorization` value looked at; longer ones are refused unread.
pub const MAX_TOKEN_LEN: usize = 256;

/// The SHA-256 of a token: what is stored and looked up.
pub type TokenHash = [u8; 32];

/// A token as stored (without the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Its unique name.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stops being valid, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// The topic ingest answers this token's Kafka appends on, when not the shared one.
    pub results_topic: Option<String>,
}

/// A token to create.
#[derive(Debug, Clone, Copy)]
pub struct NewToken<'a> {
    /// Its unique name.
    pub name: &'a str,
    /// What it may do (at least one scope).
    pub scopes: &'a [Scope],
    /// When it stops being valid, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// Its own results topic (see [`TokenRecord::results_topic`]), a valid Kafka topic name.
    pub results_topic: Option<&'a str>,
}

impl TokenRecord {
    /// Valid at `now`: not revoked and not expired.
    pub fn is_valid_at(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| now < at)
    }
}

/// What can go wrong managing tokens.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A scope does not parse (at creation, or a row changed by hand).
    #[error(transparent)]
    InvalidScope(#[from] InvalidScope),
    /// A token needs at least one scope.
    #[error("a token needs at least one scope (--allow)")]
    NoScope,
    /// The results topic is not a name Kafka accepts.
    #[error("{0:?} is not a Kafka topic name (1 to 249 of a-z, A-Z, 0-9, '.', '_', '-'; not '.' or '..')")]
    InvalidTopic(String),
    /// The name is empty or already taken.
    #[error("a token named {0:?} already exists (names stay taken after revocation; rotate by creating a new name)")]
    NameTaken(String),
    /// No token has that name.
    #[error("no token named {0:?}")]
    NotFound(String),
    /// The operating system gave no randomness.
    #[error("cannot generate a token: {0}")]
    Random(String),
    /// Postgres failed.
    #[error("token store: {0}")]
    Database(#[from] sqlx::Error),
}

/// The SHA-256 of `token`.
pub fn hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// A new token: the prefix and 256 random bits in hex.
fn generate() -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
}

/// Whether Kafka accepts `name` as a topic name.
pub fn is_valid_topic_name(name: &str) -> bool {
    (1..=249).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Creates a token answered on the shared results topic and returns it; this is the only time
/// it can be seen.
pub async fn create(
    pool: &PgPool,
    name: &str,
    scopes: &[Scope],
    expires_at: Option<DateTime<Utc>>,
) -> Result<String, TokenError> {
    create_with(
        pool,
        &NewToken {
            name,
            scopes,
            expires_at,
            results_topic: None,
        },
    )
    .await
}

/// Creates `new` and returns the token; this is the only time it can be seen.
pub async fn create_with(pool: &PgPool, new: &NewToken<'_>) -> Result<String, TokenError> {
    let NewToken {
        name,
        scopes,
        expires_at,
        results_topic,
    } = *new;
    if let Some(topic) = results_topic.filter(|t| !is_valid_topic_name(t)) {
        return Err(TokenError::InvalidTopic(topic.to_owned()));
    }
    if scopes.is_empty() {
        return Err(TokenError::NoScope);
    }
    if name.is_empty() {
        return Err(TokenError::NameTaken(name.to_owned()));
    }
    let token = generate()?;
    let texts: Vec<String> = scopes.iter().map(ToString::to_string).collect();
    let inserted = sqlx::query(
        "INSERT INTO api_tokens (name, token_hash, scopes, expires_at, results_topic)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(hash(&token).as_slice())
    .bind(&texts)
    .bind(expires_at)
    .bind(results_topic)
    .execute(pool)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(TokenError::NameTaken(name.to_owned()));
    }
    Ok(token)
}

type Row = (
    String,
    Vec<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<String>,
);

fn record(
    (name, scopes, created_at, expires_at, revoked_at, results_topic): Row,
) -> Result<TokenRecord, TokenError> {
    Ok(TokenRecord {
        name,
        scopes: scopes
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, InvalidScope>>()?,
        created_at,
        expires_at,
        revoked_at,
        results_topic,
    })
}

/// Every token, by name.
pub async fn list(pool: &PgPool) -> Result<Vec<TokenRecord>, TokenError> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT name, scopes, created_at, expires_at, revoked_at, results_topic
             FROM api_tokens ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(record).collect()
}

/// Revokes the token named `name` (again is a no-op that keeps the first time).
pub async fn revoke(pool: &PgPool, name: &str) -> Result<(), TokenError> {
    let updated = sqlx::query(
        "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE name = $1",
    )
    .bind(name)
    .execute(pool)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(TokenError::NotFound(name.to_owned()));
    }
    Ok(())
}

/// A row with its stored hash first.
type HashedRow = (
    Vec<u8>,
    String,
    Vec<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<String>,
);

/// The token with this hash, valid or not; `None` when there is none.
pub async fn lookup(pool: &PgPool, hash: &TokenHash) -> Result<Option<TokenRecord>, TokenError> {
    let row: Option<HashedRow> = sqlx::query_as(
        "SELECT token_hash, name, scopes, created_at, expires_at, revoked_at, results_topic
             FROM api_tokens WHERE token_hash = $1",
    )
    .bind(hash.as_slice())
    .fetch_optional(pool)
    .await?;
    let Some((stored, name, scopes, created_at, expires_at, revoked_at, results_topic)) = row
    else {
        return Ok(None);
    };
    // The index found it; compare the whole hash in constant time all the same.
    if !bool::from(stored.as_slice().ct_eq(hash.as_slice())) {
        return Ok(None);
    }
    record((
        name,
        scopes,
        created_at,
        expires_at,
        revoked_at,
        results_topic,
    ))
    .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_prefixed() {
        let a = generate().expect("random");
        let b = generate().expect("random");
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        assert!(a.len() <= MAX_TOKEN_LEN);
        assert_eq!(hash(&a), hash(&a));
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn topic_names_as_kafka_takes_them() {
        for good in ["billing-results", "a", "A.b_c-9", &"x".repeat(249)] {
            assert!(is_valid_topic_name(good), "{good:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "with space",
            "slash/ed",
            "ü",
            &"x".repeat(250),
        ] {
            assert!(!is_valid_topic_name(bad), "{bad:?}");
        }
    }
}

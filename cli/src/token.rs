//! `esk token create|list|revoke`: the bearer tokens of the HTTP and Kafka APIs, managed in
//! Postgres (`esk_runtime::tokens`). A token is printed once, at creation.

use anyhow::Context;
use chrono::{DateTime, Duration, Utc};
use clap::{Args, Subcommand};
use comfy_table::Color;
use esk_runtime::config::CommonConfig;
use esk_runtime::scope::Scope;
use esk_runtime::tokens::{self, TokenError};
use serde::Serialize;

use crate::exit::Failure;
use crate::output::Output;

/// Options of `esk token`.
#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Create a token and print it (only this once; only its hash is stored).
    Create {
        /// A unique name (it stays taken after revocation).
        #[arg(long)]
        name: String,
        /// A scope: append:<pattern>, read:<pattern> or admin; a pattern is *, Category-* or a
        /// stream id. Repeat for several.
        #[arg(long = "allow", required = true, value_parser = parse_scope)]
        scopes: Vec<Scope>,
        /// Lifetime, as a number and a unit: 90d, 12h, 30m, 45s [default: no expiry].
        #[arg(long, value_parser = parse_lifetime)]
        expires: Option<Duration>,
        /// Answer this token's Kafka appends on a topic of its own instead of the shared
        /// append-results, so Kafka ACLs can keep its outcomes from other producers. The topic
        /// is created on the broker (if missing) before the token exists.
        #[arg(long)]
        results_topic: Option<String>,
        /// Partitions of a results topic it creates.
        #[arg(long, env = "ESK_PARTITIONS", default_value_t = 6)]
        partitions: i32,
        /// Replicas of a results topic it creates (use 3 or more in production).
        #[arg(long, env = "ESK_REPLICATION", default_value_t = 1)]
        replication: i32,
    },
    /// List the tokens (never the tokens themselves).
    List,
    /// Revoke a token by name; ingest refuses it within ESK_AUTH_CACHE_SECS.
    Revoke {
        /// The token's name.
        name: String,
    },
}

fn parse_scope(text: &str) -> Result<Scope, String> {
    text.parse()
        .map_err(|e: esk_runtime::scope::InvalidScope| e.to_string())
}

/// `90d`, `12h`, `30m`, `45s`.
fn parse_lifetime(text: &str) -> Result<Duration, String> {
    let invalid = || format!("{text:?} is not a lifetime like 90d, 12h, 30m or 45s");
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let n: i64 = number.parse().map_err(|_| invalid())?;
    if n <= 0 {
        return Err(invalid());
    }
    let lifetime = match unit {
        "d" => Duration::try_days(n),
        "h" => Duration::try_hours(n),
        "m" => Duration::try_minutes(n),
        "s" => Duration::try_seconds(n),
        _ => None,
    };
    lifetime.ok_or_else(invalid)
}

/// A token as listed.
#[derive(Debug, Serialize)]
struct Listed {
    name: String,
    scopes: Vec<String>,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    results_topic: Option<String>,
    valid: bool,
}

/// What `create` prints with `--json`.
#[derive(Debug, Serialize)]
struct Created<'a> {
    name: &'a str,
    token: &'a str,
    expires_at: Option<DateTime<Utc>>,
    results_topic: Option<&'a str>,
}

pub(crate) async fn run(
    common: &CommonConfig,
    out: &Output,
    args: TokenArgs,
) -> anyhow::Result<()> {
    let pool = esk_runtime::db::connect(&common.database_url, 1).await?;
    match args.action {
        Action::Create {
            name,
            scopes,
            expires,
            results_topic,
            partitions,
            replication,
        } => {
            let expires_at = expires.map(|lifetime| Utc::now() + lifetime);
            if let Some(topic) = &results_topic {
                if !tokens::is_valid_topic_name(topic) {
                    return Err(refusal(TokenError::InvalidTopic(topic.clone())));
                }
                // Ingest may produce to esk's own topics, so ACLs could not stop results
                // landing in them; Kafka's internal topics start with `__`.
                if common.topics.all().contains(&topic.as_str()) || topic.starts_with("__") {
                    return Err(Failure::usage(format!(
                        "--results-topic {topic:?} is one of esk's or Kafka's own topics; name a topic of this token's own"
                    )));
                }
                esk_runtime::kafka::create_topics(
                    &common.kafka(),
                    &[topic.as_str()],
                    partitions,
                    replication,
                )
                .await
                .with_context(|| {
                    format!("creating results topic {topic} on {}", common.kafka_brokers)
                })?;
                crate::output::note(format!("results topic {topic} ready"));
            }
            let new = tokens::NewToken {
                name: &name,
                scopes: &scopes,
                expires_at,
                results_topic: results_topic.as_deref(),
            };
            let token = tokens::create_with(&pool, &new).await.map_err(refusal)?;
            if out.json {
                return out.document(&Created {
                    name: &name,
                    token: &token,
                    expires_at,
                    results_topic: results_topic.as_deref(),
                });
            }
            // The token alone on stdout, so `ESK_TOKEN=$(esk token create …)` works.
            out.line(token)
        }
        Action::List => {
            let now = Utc::now();
            let listed: Vec<Listed> = tokens::list(&pool)
                .await?
                .into_iter()
                .map(|t| Listed {
                    valid: t.is_valid_at(now),
                    scopes: t.scopes.iter().map(ToString::to_string).collect(),
                    name: t.name,
                    created_at: t.created_at,
                    expires_at: t.expires_at,
                    revoked_at: t.revoked_at,
                    results_topic: t.results_topic,
                })
                .collect();
            if out.json {
                return out.document(&listed);
            }
            let mut table = out.table(
                &[
                    "name",
                    "scopes",
                    "created",
                    "expires",
                    "results topic",
                    "state",
                ],
                1,
            );
            for t in &listed {
                let state = match (t.revoked_at, t.valid) {
                    (Some(_), _) => out.cell("revoked", Color::Red),
                    (None, false) => out.cell("expired", Color::Yellow),
                    (None, true) => out.cell("valid", Color::Green),
                };
                table.add_row(vec![
                    out.cell(&t.name, Color::Reset),
                    out.cell(t.scopes.join(" "), Color::Reset),
                    out.cell(t.created_at.format("%Y-%m-%d %H:%M"), Color::Reset),
                    out.cell(
                        t.expires_at
                            .map_or("never".into(), |at| at.format("%Y-%m-%d %H:%M").to_string()),
                        Color::Reset,
                    ),
                    out.cell(
                        t.results_topic.as_deref().unwrap_or("(shared)"),
                        Color::Reset,
                    ),
                    state,
                ]);
            }
            out.print_table(&table)
        }
        Action::Revoke { name } => {
            tokens::revoke(&pool, &name).await.map_err(refusal)?;
            out.line(format!(
                "revoked {name:?}: ingest refuses it within its token cache time (ESK_AUTH_CACHE_SECS, 5 s by default)"
            ))
        }
    }
}

/// A refusal the user can fix is a usage error; the rest as is.
fn refusal(error: TokenError) -> anyhow::Error {
    match error {
        TokenError::Database(_) | TokenError::Random(_) => error.into(),
        _ => Failure::usage(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_lifetime("90d"), Ok(Duration::days(90)));
        assert_eq!(parse_lifetime("2h"), Ok(Duration::hours(2)));
        assert_eq!(parse_lifetime("45s"), Ok(Duration::seconds(45)));
        for bad in ["", "d", "0d", "-1d", "5y", "1.5d", "99999999999999d"] {
            assert!(parse_lifetime(bad).is_err(), "{bad:?}");
        }
    }
}

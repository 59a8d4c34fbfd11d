//! `esk setup` and `esk migrate`.

use anyhow::Context;
use clap::Args;
use esk_runtime::config::CommonConfig;
use sqlx::Row;

use crate::roles::{self, RoleNames};

/// Options of `esk setup`.
#[derive(Debug, Args)]
pub(crate) struct SetupArgs {
    /// Partitions per topic (fixed at creation).
    #[arg(long, env = "ESK_PARTITIONS", default_value_t = 6)]
    partitions: i32,
    /// Replicas per topic (use 3 or more in production).
    #[arg(long, env = "ESK_REPLICATION", default_value_t = 1)]
    replication: i32,
    /// Also create the Postgres roles (owner for migrations, one per process, read-only) with
    /// least-privilege grants, as the user of the database URL (it needs CREATEROLE). Run it
    /// again after a migration that adds a read model. Passwords not given are generated and
    /// printed once.
    #[arg(long)]
    roles: bool,
    /// Print the roles' SQL (with the passwords, given or generated) instead of running
    /// anything; for a DBA to review and run with psql against the esk database.
    #[arg(long)]
    print_sql: bool,
    /// Roles are named `{prefix}_owner`, `{prefix}_ingest`, `{prefix}_indexer`,
    /// `{prefix}_projector` and `{prefix}_readonly` (roles are cluster-wide: one prefix per
    /// deployment sharing a cluster).
    #[arg(long, env = "ESK_ROLE_PREFIX", default_value = "esk")]
    role_prefix: String,
    #[command(flatten)]
    passwords: RolePasswords,
}

/// Passwords of the roles; a role without one gets a generated one when it is created.
#[derive(Debug, Args)]
struct RolePasswords {
    /// Password of the owner role.
    #[arg(long, env = "ESK_OWNER_PASSWORD", hide_env_values = true)]
    owner_password: Option<String>,
    /// Password of the ingest role.
    #[arg(long, env = "ESK_INGEST_PASSWORD", hide_env_values = true)]
    ingest_password: Option<String>,
    /// Password of the indexer role.
    #[arg(long, env = "ESK_INDEXER_PASSWORD", hide_env_values = true)]
    indexer_password: Option<String>,
    /// Password of the projector role.
    #[arg(long, env = "ESK_PROJECTOR_PASSWORD", hide_env_values = true)]
    projector_password: Option<String>,
    /// Password of the read-only role.
    #[arg(long, env = "ESK_READONLY_PASSWORD", hide_env_values = true)]
    readonly_password: Option<String>,
}

impl RolePasswords {
    /// (role, password) for every password given.
    fn given(&self, roles: &RoleNames) -> Vec<(String, String)> {
        [
            (&roles.owner, &self.owner_password),
            (&roles.ingest, &self.ingest_password),
            (&roles.indexer, &self.indexer_password),
            (&roles.projector, &self.projector_password),
            (&roles.readonly, &self.readonly_password),
        ]
        .into_iter()
        .filter_map(|(role, password)| password.clone().map(|p| (role.clone(), p)))
        .collect()
    }
}

pub(crate) async fn setup(common: &CommonConfig, args: &SetupArgs) -> anyhow::Result<()> {
    let roles = RoleNames::with_prefix(&args.role_prefix);
    if args.print_sql {
        let mut passwords = args.passwords.given(&roles);
        generate_missing(&roles, &mut passwords, |_| true);
        print!("{}", roles::setup_sql(&roles, &passwords));
        return Ok(());
    }
    let topics = common.topics.all();
    let kafka = common.kafka();
    esk_runtime::kafka::check_connection_async(&kafka, esk_runtime::kafka::START_CHECK_TIMEOUT)
        .await?;
    esk_runtime::kafka::create_topics(&kafka, &topics, args.partitions, args.replication)
        .await
        .with_context(|| format!("creating topics on {}", common.kafka_brokers))?;
    println!("topics ready: {}", topics.join(", "));
    migrate(common).await?;
    if args.roles {
        create_roles(common, &roles, &args.passwords).await?;
    }
    Ok(())
}

/// Adds a generated password for every role `wanted` and without one.
fn generate_missing(
    roles: &RoleNames,
    passwords: &mut Vec<(String, String)>,
    wanted: impl Fn(&str) -> bool,
) -> Vec<(String, String)> {
    let mut generated = Vec::new();
    for role in roles.all() {
        if wanted(role) && !passwords.iter().any(|(name, _)| name == role) {
            let pair = (role.to_string(), roles::generate_password());
            generated.push(pair.clone());
            passwords.push(pair);
        }
    }
    generated
}

async fn create_roles(
    common: &CommonConfig,
    roles: &RoleNames,
    given: &RolePasswords,
) -> anyhow::Result<()> {
    let pool = esk_runtime::db::connect(&common.database_url, 1).await?;
    let existing: Vec<String> = sqlx::query("SELECT rolname FROM pg_roles WHERE rolname = ANY($1)")
        .bind(roles.all().map(str::to_string).to_vec())
        .fetch_all(&pool)
        .await
        .context("listing roles")?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    let mut passwords = given.given(roles);
    // An existing role keeps its password unless one is given: re-running setup is harmless.
    let generated = generate_missing(roles, &mut passwords, |role| {
        !existing.iter().any(|e| e == role)
    });
    sqlx::raw_sql(&roles::setup_sql(roles, &passwords))
        .execute(&pool)
        .await
        .context("creating the roles (the database user needs CREATEROLE)")?;
    println!("roles ready: {}", roles.all().join(", "));
    for (role, password) in generated {
        // Printed once: it is stored nowhere else.
        println!("generated password for {role}: {password}");
    }
    Ok(())
}

pub(crate) async fn migrate(common: &CommonConfig) -> anyhow::Result<()> {
    let pool = esk_runtime::db::connect(&common.database_url, 2).await?;
    esk_runtime::db::migrate(&pool).await?;
    println!("schema up to date");
    Ok(())
}

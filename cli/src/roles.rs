//! The Postgres roles of `esk setup --roles`: an owner role that owns the schema and runs the
//! migrations, and one login role per process with only the grants that process's statements
//! need. No runtime role may change `events` other than by appending, nor change the schema.
//!
//! The grants are derived from the SQL each crate runs (`sqlx::query` in ingest/, indexer/,
//! projector/, runtime/'s partition cursor); keep them in step when a statement changes.

use std::fmt::Write as _;

/// The roles one deployment uses, named `{prefix}_{role}`.
#[derive(Debug, Clone)]
pub(crate) struct RoleNames {
    /// Owns every table; used only for migrations.
    pub(crate) owner: String,
    /// The ingest process.
    pub(crate) ingest: String,
    /// The indexer process.
    pub(crate) indexer: String,
    /// The projector process.
    pub(crate) projector: String,
    /// Read-only access (esk doctor, dashboards, people).
    pub(crate) readonly: String,
}

impl RoleNames {
    /// The roles named from `prefix` (`esk` gives `esk_owner`, `esk_ingest`, ...).
    pub(crate) fn with_prefix(prefix: &str) -> Self {
        RoleNames {
            owner: format!("{prefix}_owner"),
            ingest: format!("{prefix}_ingest"),
            indexer: format!("{prefix}_indexer"),
            projector: format!("{prefix}_projector"),
            readonly: format!("{prefix}_readonly"),
        }
    }

    /// Every role, owner first.
    pub(crate) fn all(&self) -> [&str; 5] {
        [
            &self.owner,
            &self.ingest,
            &self.indexer,
            &self.projector,
            &self.readonly,
        ]
    }

    fn runtime(&self) -> [&str; 4] {
        [&self.ingest, &self.indexer, &self.projector, &self.readonly]
    }
}

/// Table privileges of each process: (table, privileges).
const INGEST_GRANTS: &[(&str, &str)] = &[
    // stream_index.rs: placeholder rows inserted, versions set, unfilled placeholders deleted.
    ("streams", "SELECT, INSERT, UPDATE, DELETE"),
    // ledger.rs: claims and outcomes.
    ("append_ledger", "SELECT, INSERT, UPDATE"),
    // event_claims.rs: claims, and the release of a refused append's claims.
    ("event_claims", "SELECT, INSERT, DELETE"),
    // reads.rs, wait.rs, decide.rs: reads only; ingest never writes events.
    ("events", "SELECT"),
    ("global_position_counter", "SELECT"),
    // snapshot_store.rs: one row per stream, upserted forward only; never deleted.
    ("snapshots", "SELECT, INSERT, UPDATE"),
    // auth.rs: bearer tokens are looked up by their hash (tokens are created by `esk token`).
    ("api_tokens", "SELECT"),
    // stream_index.rs: a stream's current metadata, upserted forward only by the attempt.
    ("stream_metadata", "SELECT, INSERT, UPDATE"),
    // reads.rs: the retention rules, through `event_hidden`.
    ("stream_visibility", "SELECT"),
];

const INDEXER_GRANTS: &[(&str, &str)] = &[
    // classify.rs reads the ledger; ledger_maintenance.rs prunes it.
    ("append_ledger", "SELECT, DELETE"),
    // copy_batch.rs: COPY ... FROM STDIN appends; publisher.rs reads. Never UPDATE/DELETE.
    ("events", "SELECT, INSERT"),
    ("streams", "SELECT"),
    ("global_position_counter", "SELECT, UPDATE"),
    // offsets.rs over the partition cursor's offset store.
    ("indexer_offsets", "SELECT, INSERT, UPDATE"),
    ("published_through", "SELECT, INSERT, UPDATE"),
    ("publisher_partitions", "SELECT, INSERT, UPDATE"),
    ("dead_letters", "SELECT, INSERT"),
    ("indexer_quarantine", "SELECT, INSERT, UPDATE, DELETE"),
    ("stream_metadata", "SELECT"),
    ("stream_visibility", "SELECT"),
];

/// Functions a process may call: (role's process, signature). `scavenge_events` deletes only
/// the hidden events (SECURITY DEFINER, migration 0009): the indexer's scavenger needs no
/// DELETE grant on `events`.
const INDEXER_FUNCTIONS: &[&str] = &["scavenge_events(int)", "scavengeable_event_count()"];

const PROJECTOR_GRANTS: &[(&str, &str)] = &[
    // catch_up.rs replays; the projector never writes events.
    ("events", "SELECT"),
    ("streams", "SELECT"),
    ("global_position_counter", "SELECT"),
    ("published_through", "SELECT"),
    ("publisher_partitions", "SELECT"),
    // checkpoint.rs: checkpoints and partition offsets, deleted by a rebuild.
    ("subscription_checkpoints", "SELECT, INSERT, UPDATE, DELETE"),
    ("projection_partitions", "SELECT, INSERT, UPDATE, DELETE"),
    // group.rs: multi-stream appends a live projection applied, pruned once passed.
    ("applied_groups", "SELECT, INSERT, DELETE"),
    // dead_letters.rs: recorded, retried (attempts), marked replayed.
    ("dead_letters", "SELECT, INSERT, UPDATE"),
];

/// Read models the SQL projections write (`projection_*` tables, see
/// `projector/src/sql_projections/`): upserted by `apply`, deleted by `reset`.
const READ_MODEL_PRIVILEGES: &str = "SELECT, INSERT, UPDATE, DELETE";

/// A password for the role that has none given: 128 random bits twice, hex.
pub(crate) fn generate_password() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// `'text'` as an SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `name` as an SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The statements that create (or update) the roles and their grants, for the current
/// database. `passwords` gives a role's password; a role without one keeps its password when
/// it exists and is created without one otherwise. Idempotent: run it again after a migration
/// that adds a read model.
pub(crate) fn setup_sql(roles: &RoleNames, passwords: &[(String, String)]) -> String {
    let mut sql = String::new();
    let password_of = |role: &str| {
        passwords
            .iter()
            .find(|(name, _)| name == role)
            .map(|(_, password)| password.as_str())
    };
    let _ = writeln!(sql, "-- esk roles: {}", roles.all().join(", "));
    for role in roles.all() {
        // A new role has none of the attributes beyond LOGIN (Postgres' defaults); an existing
        // one that has any is refused rather than altered (only a superuser could).
        let _ = writeln!(
            sql,
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {name}) THEN \
             CREATE ROLE {role}; \
             ELSIF EXISTS (SELECT FROM pg_roles WHERE rolname = {name} AND (rolsuper \
             OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls)) THEN \
             RAISE EXCEPTION 'role % exists with more than LOGIN', {name}; END IF; END $$;",
            name = literal(role),
            role = ident(role)
        );
        let _ = write!(sql, "ALTER ROLE {} LOGIN", ident(role));
        match password_of(role) {
            Some(password) => {
                let _ = writeln!(sql, " PASSWORD {};", literal(password));
            }
            None => sql.push_str(";\n"),
        }
    }
    let owner = ident(&roles.owner);
    // Membership lets the user running setup hand its tables over and set default privileges.
    let _ = writeln!(sql, "GRANT {owner} TO CURRENT_USER;");
    // Before Postgres 15 every role may create in `public`: only the owner role may.
    sql.push_str("REVOKE CREATE ON SCHEMA public FROM PUBLIC;\n");
    let _ = writeln!(sql, "GRANT USAGE, CREATE ON SCHEMA public TO {owner};");
    let runtime: Vec<String> = roles.runtime().iter().map(|r| ident(r)).collect();
    let runtime = runtime.join(", ");
    let _ = writeln!(sql, "GRANT USAGE ON SCHEMA public TO {runtime};");
    let everyone: Vec<String> = roles.all().iter().map(|r| ident(r)).collect();
    let _ = writeln!(
        sql,
        "DO $$ BEGIN EXECUTE format('GRANT CONNECT ON DATABASE %I TO {}', current_database()); END $$;",
        everyone.join(", ").replace('\'', "''")
    );
    // The owner role owns every table (the migrations' included), so nothing else may alter,
    // drop or truncate them.
    for function in INDEXER_FUNCTIONS {
        let _ = writeln!(
            sql,
            "GRANT EXECUTE ON FUNCTION public.{function} TO {};",
            ident(&roles.indexer)
        );
    }
    let _ = writeln!(
        sql,
        "DO $$ DECLARE t record; BEGIN \
         FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' \
         AND tableowner <> {} LOOP \
         EXECUTE format('ALTER TABLE public.%I OWNER TO %I', t.tablename, {}); \
         END LOOP; END $$;",
        literal(&roles.owner),
        literal(&roles.owner)
    );
    // Start from nothing, so a re-run after a change of these lists also takes grants away.
    let _ = writeln!(
        sql,
        "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {runtime};"
    );
    for (role, grants) in [
        (&roles.ingest, INGEST_GRANTS),
        (&roles.indexer, INDEXER_GRANTS),
        (&roles.projector, PROJECTOR_GRANTS),
    ] {
        for (table, privileges) in grants {
            let _ = writeln!(
                sql,
                "GRANT {privileges} ON TABLE public.{} TO {};",
                ident(table),
                ident(role)
            );
        }
    }
    let _ = writeln!(
        sql,
        "DO $$ DECLARE t record; BEGIN \
         FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' \
         AND tablename LIKE 'projection\\_%' AND tablename <> 'projection_partitions' LOOP \
         EXECUTE format('GRANT {READ_MODEL_PRIVILEGES} ON TABLE public.%I TO %I', t.tablename, {}); \
         END LOOP; END $$;",
        literal(&roles.projector)
    );
    let _ = writeln!(
        sql,
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {};",
        ident(&roles.readonly)
    );
    let _ = writeln!(
        sql,
        "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {runtime};"
    );
    // Tables a later migration creates (run as the owner role) are readable by every process
    // at once; write grants come from running this again (`esk setup --roles`).
    let _ = writeln!(
        sql,
        "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT SELECT ON TABLES TO {runtime};"
    );
    let _ = writeln!(
        sql,
        "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {runtime};"
    );
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_runtime_role_may_change_or_drop_events() {
        for grants in [INGEST_GRANTS, INDEXER_GRANTS, PROJECTOR_GRANTS] {
            for (table, privileges) in grants {
                for forbidden in ["TRUNCATE", "REFERENCES", "TRIGGER", "ALL"] {
                    assert!(!privileges.contains(forbidden), "{table}: {privileges}");
                }
                if *table == "events" {
                    assert!(!privileges.contains("UPDATE") && !privileges.contains("DELETE"));
                }
            }
        }
    }

    #[test]
    fn passwords_and_names_are_quoted() {
        let roles = RoleNames::with_prefix("x\"y");
        let sql = setup_sql(&roles, &[(roles.ingest.clone(), "it's".into())]);
        assert!(sql.contains("PASSWORD 'it''s'"), "{sql}");
        assert!(sql.contains("\"x\"\"y_ingest\""), "{sql}");
    }
}

//! The CP's schema migrations: forward only, each in one transaction, recorded in
//! `schema_version`. A release knows migrations up to its manifest's
//! `migration_level`; a database that is further along makes the CP refuse to
//! start, since going back needs a database restore.

use tokio_postgres::{Client, GenericClient};
use tracing::info;

use crate::manifest::Release;

pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    /// Run one by one inside the migration's transaction, so a failure names the
    /// statement.
    pub statements: &'static [&'static str],
    /// What a release with `cp_fail_migration` runs instead of the second
    /// statement: a plausible bug that fails mid-migration.
    pub broken_second: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "base schema (3.3)",
        statements: &[
            "CREATE TABLE schema_version (
                version integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now())",
            "CREATE TABLE routes (
                id text PRIMARY KEY,
                path_prefix text NOT NULL UNIQUE,
                upstream text NOT NULL,
                plugins jsonb NOT NULL DEFAULT '[]',
                updated_at timestamptz NOT NULL DEFAULT now())",
            // One row: the revision every config write bumps and DPs follow.
            "CREATE TABLE config_revision (
                singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
                revision bigint NOT NULL)",
            "INSERT INTO config_revision (singleton, revision) VALUES (true, 0)",
            // Written by DP heartbeats all the time, not by admins.
            "CREATE TABLE instances (
                instance_id text PRIMARY KEY,
                version text NOT NULL,
                config_revision bigint NOT NULL,
                last_seen timestamptz NOT NULL)",
        ],
        broken_second: "",
    },
    Migration {
        version: 2,
        name: "route descriptions (3.4)",
        statements: &[
            "ALTER TABLE routes ADD COLUMN description text",
            "CREATE INDEX routes_upstream_idx ON routes (upstream)",
        ],
        broken_second: "CREATE INDEX routes_upstream_idx ON routes (upstream_host)",
    },
    Migration {
        version: 3,
        name: "config history (3.5)",
        statements: &[
            "CREATE TABLE config_history (
                revision bigint PRIMARY KEY,
                changed_at timestamptz NOT NULL DEFAULT now(),
                change text NOT NULL)",
            "ALTER TABLE instances ADD COLUMN first_seen timestamptz",
        ],
        broken_second: "ALTER TABLE instances ADD COLUMN first_seen timestamptz REFERENCES instance_registry (id)",
    },
];

/// Serialises concurrent CPs migrating one database (an arbitrary fixed key).
const LOCK_KEY: i64 = 0x6465_6d6f_6777;

pub fn highest() -> u32 {
    MIGRATIONS.len() as u32
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "database schema version {db} is newer than this control plane ({version}) knows (highest: {known}); refusing to start: a downgrade needs a database restore"
    )]
    TooNew {
        db: u32,
        known: u32,
        version: String,
    },
    #[error(
        "migration {version} ({name}) failed at statement {statement} of {total}; its transaction was rolled back and the database is unchanged at schema version {left_at}"
    )]
    Failed {
        version: u32,
        name: &'static str,
        statement: usize,
        total: usize,
        left_at: u32,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("database error while {doing}")]
    Db {
        doing: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

fn db(doing: &'static str) -> impl FnOnce(tokio_postgres::Error) -> MigrateError {
    move |source| MigrateError::Db { doing, source }
}

/// The schema version recorded in the database (0 for an empty database).
pub async fn current_level(client: &impl GenericClient) -> Result<u32, tokio_postgres::Error> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('public.schema_version') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let level: i32 = client
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await?
        .get(0);
    Ok(level.max(0) as u32)
}

/// Brings the schema up to the release's level; returns the level reached.
pub async fn migrate(client: &mut Client, release: &Release) -> Result<u32, MigrateError> {
    let known = release.manifest.migration_level;
    let break_newest = release.manifest.faults.cp_fail_migration;
    loop {
        let tx = client
            .transaction()
            .await
            .map_err(db("starting a migration"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(db("locking the schema"))?;
        let current = current_level(&tx)
            .await
            .map_err(db("reading the schema version"))?;
        if current > known {
            return Err(MigrateError::TooNew {
                db: current,
                known,
                version: release.version.to_string(),
            });
        }
        if current == known {
            tx.commit().await.map_err(db("ending the schema check"))?;
            return Ok(current);
        }
        let migration = &MIGRATIONS[current as usize];
        let total = migration.statements.len();
        for (index, statement) in migration.statements.iter().enumerate() {
            let statement = if break_newest && migration.version == known && index == 1 {
                migration.broken_second
            } else {
                statement
            };
            if let Err(source) = tx.batch_execute(statement).await {
                // Explicit, although dropping the transaction would also roll back.
                let _ = tx.rollback().await;
                return Err(MigrateError::Failed {
                    version: migration.version,
                    name: migration.name,
                    statement: index + 1,
                    total,
                    left_at: current,
                    source,
                });
            }
        }
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&(migration.version as i32)],
        )
        .await
        .map_err(db("recording the migration"))?;
        tx.commit().await.map_err(db("committing the migration"))?;
        info!(
            version = migration.version,
            name = migration.name,
            "applied schema migration"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_and_later_ones_can_break() {
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version as usize, index + 1);
            if migration.version >= 2 {
                assert!(migration.statements.len() >= 2);
                assert!(!migration.broken_second.is_empty());
            }
        }
    }
}

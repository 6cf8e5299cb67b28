//! The scratch database of a rehearsal: on the production PostgreSQL
//! server, under a name no production database may have
//! (`rollgate_rehearsal_<id>`). Created, restored from a backup, queried and
//! dropped through the server's maintenance database (`postgres`): a
//! rehearsal never connects to the production database itself.
//!
//! Why the same server and not a throwaway cluster: the backup's dump
//! restores into the server version it came from with the tools the agent
//! already runs, no second data directory or port is needed on the CP host,
//! and a throwaway cluster would need the server binaries (`initdb`) on
//! every CP host, which a client-only install does not have.

use std::time::Duration;

use rollgate::outcome::FailureCode;

use super::pg;
use crate::command;
use crate::config::BackupSection;
use crate::conninfo::{self, SCRATCH_PREFIX};
use crate::op::StepError;

/// The maintenance database CREATE/DROP DATABASE run in.
const MAINTENANCE_DB: &str = "postgres";

/// The scratch database's name for an operation: the prefix and 16 hex
/// digits of the operation id's hash (lower case, digits: no quoting).
pub fn name_for(op: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = hex::encode(Sha256::digest(op.as_bytes()));
    format!("{SCRATCH_PREFIX}{}", &h[..16])
}

fn db_error(what: &str, e: impl std::fmt::Display) -> StepError {
    StepError::new(FailureCode::CommandFailed, format!("{what}: {e}"))
}

async fn connect(
    url: &str,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), StepError> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| db_error("cannot connect to the database server", e))?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((client, task))
}

async fn maintenance(
    cfg: &BackupSection,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), StepError> {
    let url = conninfo::with_dbname(&cfg.database_url, MAINTENANCE_DB)
        .map_err(|e| StepError::precondition(format!("key `backup.database_url`: {e}")))?;
    connect(&url).await
}

/// The scratch database's connection string.
pub fn url(cfg: &BackupSection, name: &str) -> Result<String, StepError> {
    conninfo::with_dbname(&cfg.database_url, name)
        .map_err(|e| StepError::precondition(format!("key `backup.database_url`: {e}")))
}

/// Refuses when the server's disk cannot hold a second copy of the
/// production database with room to spare. When the server does not say
/// where its data is (not a superuser, or not on this host), the check is
/// skipped and a warning logged.
pub async fn check_disk(cfg: &BackupSection, min_free: u64) -> Result<(), StepError> {
    let Some(prod) = conninfo::dbname(&cfg.database_url) else {
        return Ok(());
    };
    let (c, task) = maintenance(cfg).await?;
    let size: Option<i64> = c
        .query_opt("SELECT pg_database_size($1)", &[&prod])
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0));
    let data_dir: Option<String> = c
        .query_opt(
            "SELECT setting FROM pg_settings WHERE name = 'data_directory'",
            &[],
        )
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0));
    drop(c);
    task.abort();
    let (Some(size), Some(dir)) = (size, data_dir) else {
        tracing::warn!(
            "the database server does not say its size or data directory: disk not checked before the scratch restore"
        );
        return Ok(());
    };
    let Some(free) = crate::install::free_bytes(std::path::Path::new(&dir)) else {
        tracing::warn!(%dir, "the server's data directory is not on this host: disk not checked");
        return Ok(());
    };
    // The copy, the restore's WAL and indexes, and the floor kept free.
    let need = (size.max(0) as u64)
        .saturating_mul(2)
        .saturating_add(min_free);
    if free < need {
        return Err(StepError::new(
            FailureCode::DiskFull,
            format!(
                "{dir} has {free} bytes free; a scratch copy of the {size}-byte database needs {need} (twice its size and min_free_bytes)"
            ),
        ));
    }
    Ok(())
}

/// Creates the (empty) scratch database.
pub async fn create(cfg: &BackupSection, name: &str) -> Result<(), StepError> {
    debug_assert!(name.starts_with(SCRATCH_PREFIX));
    let (c, task) = maintenance(cfg).await?;
    let r = c
        .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE template0"))
        .await
        .map_err(|e| db_error(&format!("cannot create the scratch database {name}"), e));
    drop(c);
    task.abort();
    r
}

/// Drops every scratch database on the server (this one, and any a crash
/// left): they are only ever rehearsals'.
pub async fn drop_all(cfg: &BackupSection) -> Result<Vec<String>, StepError> {
    let (c, task) = maintenance(cfg).await?;
    let like = format!("{}%", SCRATCH_PREFIX.replace('_', "\\_"));
    let names: Vec<String> = c
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE $1",
            &[&like],
        )
        .await
        .map_err(|e| db_error("cannot list databases", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for n in &names {
        // WITH (FORCE): a rehearsal CP killed uncleanly may hold sessions.
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)"))
            .await
            .map_err(|e| db_error(&format!("cannot drop the scratch database {n}"), e))?;
        tracing::info!(database = %n, "dropped a scratch database");
    }
    drop(c);
    task.abort();
    Ok(names)
}

/// Restores a backup's dump into the (empty) scratch database.
pub async fn restore(cfg: &BackupSection, backup_id: &str, url: &str) -> Result<(), StepError> {
    let dump = pg::backup_dir(cfg, backup_id).join(pg::DUMP_FILE);
    command::run(
        &pg::tool(cfg, "pg_restore"),
        &[
            "--no-owner".as_ref(),
            "--no-privileges".as_ref(),
            "--exit-on-error".as_ref(),
            "-d".as_ref(),
            url.as_ref(),
            dump.as_os_str(),
        ],
        pg::DB_COMMAND_TIMEOUT,
    )
    .await
    .map(|_| ())
    .map_err(|e| {
        StepError::new(
            FailureCode::VerifyFailed,
            format!(
                "the backup {backup_id} did not restore into the scratch database: {}",
                e.message
            ),
        )
        .detail(e.detail)
    })
}

/// The scratch database's schema version by `query`; None while the query
/// cannot run yet (the table does not exist before the first migration).
pub async fn schema(url: &str, query: &str) -> Option<i64> {
    let (c, task) = connect(url).await.ok()?;
    let v = tokio::time::timeout(
        Duration::from_secs(5),
        c.query_opt(&format!("SELECT ({query})::bigint"), &[]),
    )
    .await
    .ok()?
    .ok()?
    .and_then(|r| r.get::<_, Option<i64>>(0));
    drop(c);
    task.abort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_names_are_reserved_and_plain() {
        let n = name_for("r-1/cp-1/rehearse");
        assert!(n.starts_with(SCRATCH_PREFIX));
        assert_eq!(n.len(), SCRATCH_PREFIX.len() + 16);
        assert!(
            n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        );
        assert_ne!(n, name_for("r-2/cp-1/rehearse"));
    }
}

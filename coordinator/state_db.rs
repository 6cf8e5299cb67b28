//! rollgate's own state database (`[state] backend = "postgres"`): the
//! connection and the schema, created and versioned here (`rollgate_schema`)
//! under an advisory lock so two coordinators starting at once do not race.
//! It holds the fleet lease (`lease.rs`) and the rollout journals
//! (`rollout/journals.rs`). It is never the gateway's database: that one is
//! backed up and may be restored, which must not rewind rollgate's history.

use tokio_postgres::{Client, NoTls};

use crate::Failure;

/// The schema version this build writes: 1 the lease, 2 the journals.
const SCHEMA: i32 = 2;

/// The URL without its password, for messages.
pub fn shown(url: &str) -> String {
    match url.parse::<tokio_postgres::Config>() {
        Ok(c) => format!(
            "{}{}",
            c.get_hosts()
                .first()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(h) => h.clone(),
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .unwrap_or_default(),
            c.get_dbname().map(|d| format!("/{d}")).unwrap_or_default()
        ),
        Err(_) => "(unparsable URL)".into(),
    }
}

/// Opens a connection whose driving task runs on the current runtime. A
/// server that does not answer fails within `CONNECT_TIMEOUT`. Commits are
/// synchronous whatever the server's default: a journal record counts once
/// its commit returns, so the commit must not be one a server crash can
/// take back. A transaction left idle for 15 s is ended by the server.
pub async fn open(url: &str) -> Result<Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    // A coordinator frozen or cut off inside a journal transaction would
    // hold the lease row's share lock until TCP gives up (hours), and a
    // take-over would wait on it: the server ends such a transaction.
    let ours = "-c synchronous_commit=on -c idle_in_transaction_session_timeout=15s";
    let options = match config.get_options() {
        Some(o) => format!("{o} {ours}"),
        None => ours.to_string(),
    };
    config.options(&options);
    let (client, conn) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "the state database connection ended");
        }
    });
    Ok(client)
}

const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens a connection for a command about to change the fleet: failing, it
/// has changed nothing yet. A database that is not rollgate's own is
/// refused (exit 64) before anything is written to it.
pub async fn connect(url: &str) -> Result<Client, Failure> {
    let client = open(url).await.map_err(|e| {
        tracing::error!(db = %shown(url), error = %e, "cannot reach the state database");
        Failure::Failed(format!(
            "cannot reach the state database {}: {e}; nothing was changed",
            shown(url)
        ))
    })?;
    own(&client, url).await.map_err(Failure::Usage)?;
    Ok(client)
}

/// The state database must be rollgate's own: one holding tables of anything
/// else is most likely the gateway's — the database backups and `rollback
/// --restore-db` rewind, which would rewind rollgate's history and lease
/// with it. Checked before rollgate creates or writes anything there.
pub async fn own(client: &Client, url: &str) -> Result<(), String> {
    let foreign: Vec<String> = client
        .query(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p') AND c.relname NOT LIKE 'rollgate\\_%'
               AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname NOT LIKE 'pg\\_%'
             ORDER BY 1 LIMIT 5",
            &[],
        )
        .await
        .map_err(|e| {
            format!(
                "the state database {}: {e}; nothing was changed",
                shown(url)
            )
        })?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    tracing::error!(db = %shown(url), tables = ?foreign, "the state database is not rollgate's own");
    Err(format!(
        "[state] url: {} is not a database of rollgate's own: it holds {} — the gateway's database? Backups and `rollback --restore-db` rewind that one, and must never rewind rollgate's history. Create an empty database for rollgate (CREATE DATABASE rollgate_state) and name it in the url. Nothing was changed",
        shown(url),
        foreign.join(", ")
    ))
}

/// True when rollgate's table `table` is there: a command that only reads
/// (`history`, `show`, `status`) does not create it, and finds nothing
/// recorded when it is missing.
pub async fn has_table(client: &Client, table: &str) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await?;
    Ok(row.get(0))
}

/// Creates or upgrades rollgate's tables; every statement is idempotent.
/// Done once per database (`url`) in a process: a command connects more than
/// once (the lease, then its journal), and the schema does not go back.
pub async fn migrate(client: &mut Client, url: &str) -> Result<(), tokio_postgres::Error> {
    static DONE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let done = || DONE.lock().unwrap_or_else(|e| e.into_inner());
    if done().iter().any(|u| u == url) {
        return Ok(());
    }
    migrate_now(client).await?;
    done().push(url.to_string());
    Ok(())
}

async fn migrate_now(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(7301730173)", &[])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS rollgate_schema (version integer NOT NULL);
         CREATE TABLE IF NOT EXISTS rollgate_lease (
             fleet text PRIMARY KEY,
             holder text NOT NULL,
             pid integer NOT NULL,
             command text NOT NULL,
             token bigint NOT NULL,
             acquired_at timestamptz NOT NULL,
             renewed_at timestamptz NOT NULL,
             expires_at timestamptz NOT NULL);
         CREATE SEQUENCE IF NOT EXISTS rollgate_fencing_token;
         CREATE TABLE IF NOT EXISTS rollgate_journal (
             fleet text NOT NULL,
             rollout text NOT NULL,
             seq bigint NOT NULL,
             record text NOT NULL,
             written_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (fleet, rollout, seq));",
    )
    .await?;
    let version: Option<i32> = tx
        .query_opt("SELECT max(version) FROM rollgate_schema", &[])
        .await?
        .and_then(|r| r.get(0));
    if version.is_none_or(|v| v < SCHEMA) {
        tx.execute("INSERT INTO rollgate_schema VALUES ($1)", &[&SCHEMA])
            .await?;
    }
    tx.commit().await?;
    if let Some(v) = version
        && v > SCHEMA
    {
        tracing::warn!(
            version = v,
            ours = SCHEMA,
            "the state database was written by a newer rollgate"
        );
    }
    Ok(())
}

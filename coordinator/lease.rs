//! The fleet lease in PostgreSQL (`[state] backend = "postgres"`): one
//! holder per fleet across every machine, and a fencing token per taking.
//!
//! A command that changes the fleet takes the lease before it calls any
//! agent: in one transaction, under a per-fleet advisory lock, it reads the
//! fleet's row; a live one is a refusal (exit 2) naming the holder, when it
//! was last renewed and what it is doing; otherwise the row becomes
//! this command's, with the next value of a sequence as its fencing token.
//! The token only grows, so an agent that has seen a newer holder's token
//! refuses the older holder's calls (`agent/fence.rs`). The lease is
//! renewed every third of its length and made to lapse when the command
//! ends; a holder that dies leaves it to expire. A holder that finds its
//! renewal refused (superseded while frozen) or cannot renew for a whole
//! lease exits at once, naming who took over.
//!
//! The schema is rollgate's own, created and versioned here
//! (`rollgate_schema`), under an advisory lock so two coordinators starting
//! at once do not race.

use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;
use tokio_postgres::{Client, NoTls};

use crate::Failure;
use crate::inventory::{Inventory, StateBackend};

/// The schema version this build writes.
const SCHEMA: i32 = 1;

/// A lease held: its token, and the task renewing it.
#[derive(Debug)]
pub struct Lease {
    pub token: u64,
    fleet: String,
    client: Arc<Client>,
    renew: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renew.abort();
    }
}

impl Lease {
    /// Gives the lease up: it lapses now, so the next holder need not wait.
    /// The row stays, so a holder it superseded can still say who took over.
    /// Returns who took it over when it was no longer this command's (the
    /// process slept past its lease and ended before a renewal noticed).
    pub async fn release(self) -> Option<String> {
        let r = self
            .client
            .execute(
                "UPDATE rollgate_lease SET expires_at = now() WHERE fleet = $1 AND token = $2",
                &[&self.fleet, &(self.token as i64)],
            )
            .await;
        match r {
            Ok(0) => Some(superseded_by(&self.client, &self.fleet).await),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(fleet = %self.fleet, error = %e, "cannot release the fleet lease; it expires by itself");
                None
            }
        }
    }
}

/// Who holds the fleet's row now, for a holder that lost it.
async fn superseded_by(client: &Client, fleet: &str) -> String {
    match client
        .query_opt(
            "SELECT holder, pid, command FROM rollgate_lease WHERE fleet = $1",
            &[&fleet],
        )
        .await
    {
        Ok(Some(r)) => {
            let (h, p, c): (String, i32, String) = (r.get(0), r.get(1), r.get(2));
            format!("{h} (pid {p}) took it over, running `rollgate {c}`")
        }
        _ => "it lapsed and was taken".to_string(),
    }
}

/// The fleet's name in the state database.
pub fn fleet_name(inv: &Inventory) -> String {
    inv.state.fleet.clone().unwrap_or_else(|| {
        let d = sha2::Sha256::digest(&inv.tls.ca_pem);
        format!("ca-{}", &hex::encode(d)[..16])
    })
}

/// Who this command is, for the other operators.
fn holder() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    format!("{user}@{host}")
}

/// The URL without its password, for messages.
fn shown(url: &str) -> String {
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

async fn connect(url: &str) -> Result<Client, Failure> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.map_err(|e| {
        tracing::error!(db = %shown(url), error = %e, "cannot reach the state database");
        Failure::Failed(format!(
            "cannot reach the state database {}: {e}; nothing was changed",
            shown(url)
        ))
    })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "the state database connection ended");
        }
    });
    Ok(client)
}

/// Creates or checks rollgate's tables.
async fn migrate(client: &mut Client) -> Result<(), tokio_postgres::Error> {
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
         CREATE SEQUENCE IF NOT EXISTS rollgate_fencing_token;",
    )
    .await?;
    let version: Option<i32> = tx
        .query_opt("SELECT max(version) FROM rollgate_schema", &[])
        .await?
        .and_then(|r| r.get(0));
    if version.is_none() {
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

/// Runs `body` holding the fleet lease (postgres state; with the file
/// backend, just runs it): the inventory it gets carries the lease's
/// fencing token, which every agent call then sends. The lease is given up
/// when `body` ends, however it ends.
pub async fn holding<F, Fut>(mut inv: Inventory, command: &str, body: F) -> Result<(), Failure>
where
    F: FnOnce(Inventory) -> Fut,
    Fut: std::future::Future<Output = Result<(), Failure>>,
{
    let lease = acquire(&inv, command).await?;
    inv.fencing_token = lease.as_ref().map(|l| l.token);
    let r = body(inv).await;
    match lease {
        Some(l) => match l.release().await {
            // Whatever the command concluded, it ran past its lease: say so.
            Some(by) => {
                let why = r.err().map(|f| format!(" ({f})")).unwrap_or_default();
                tracing::error!(superseded_by = %by, "lost the fleet lease before the command ended");
                Err(Failure::Failed(format!("lost the fleet lease: {by}{why}")))
            }
            None => r,
        },
        None => r,
    }
}

/// Takes the fleet lease for `command`, or None with the file backend.
/// Refused (exit 2, naming the holder) while another holds it.
pub async fn acquire(inv: &Inventory, command: &str) -> Result<Option<Lease>, Failure> {
    if inv.state.backend == StateBackend::File {
        return Ok(None);
    }
    let url = inv.state.url.as_deref().unwrap_or_default();
    let fleet = fleet_name(inv);
    let ttl = inv.state.lease.as_secs_f64();
    let mut client = connect(url).await?;
    let db_err = |e: tokio_postgres::Error| {
        tracing::error!(db = %shown(url), error = %e, "state database error");
        Failure::Failed(format!(
            "the state database {}: {e}; nothing was changed",
            shown(url)
        ))
    };
    migrate(&mut client).await.map_err(db_err)?;
    let tx = client.transaction().await.map_err(db_err)?;
    // Acquirers of one fleet take turns: with no row yet, two could
    // otherwise both see it free and both insert.
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&fleet])
        .await
        .map_err(db_err)?;
    let held = tx
        .query_opt(
            "SELECT holder, pid, command,
                    extract(epoch FROM now() - renewed_at)::float8,
                    extract(epoch FROM expires_at - now())::float8
             FROM rollgate_lease WHERE fleet = $1 AND expires_at > now()",
            &[&fleet],
        )
        .await
        .map_err(db_err)?;
    if let Some(r) = held {
        let (who, pid, cmd): (String, i32, String) = (r.get(0), r.get(1), r.get(2));
        let (ago, left): (f64, f64) = (r.get(3), r.get(4));
        tracing::warn!(fleet, holder = %who, pid, command = %cmd, "the fleet lease is held");
        return Err(Failure::Blocked(format!(
            "the fleet lease is held by {who} (pid {pid}), running `rollgate {cmd}`; renewed {ago:.1}s ago, it expires in {left:.1}s unless renewed. Nothing was changed"
        )));
    }
    let token: i64 = tx
        .query_one("SELECT nextval('rollgate_fencing_token')", &[])
        .await
        .map_err(db_err)?
        .get(0);
    let who = holder();
    let pid = std::process::id() as i32;
    tx.execute(
        "INSERT INTO rollgate_lease VALUES
             ($1, $2, $3, $4, $5, now(), now(), now() + $6 * interval '1 second')
         ON CONFLICT (fleet) DO UPDATE SET holder = $2, pid = $3, command = $4,
             token = $5, acquired_at = now(), renewed_at = now(),
             expires_at = now() + $6 * interval '1 second'",
        &[&fleet, &who, &pid, &command, &token, &ttl],
    )
    .await
    .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    tracing::info!(fleet, token, holder = %who, "took the fleet lease");
    let client = Arc::new(client);
    let renew = tokio::spawn(renew_loop(
        client.clone(),
        fleet.clone(),
        token,
        inv.state.lease,
    ));
    Ok(Some(Lease {
        token: token as u64,
        fleet,
        client,
        renew,
    }))
}

async fn renew_loop(client: Arc<Client>, fleet: String, token: i64, lease: Duration) {
    let ttl = lease.as_secs_f64();
    let mut renewed = std::time::Instant::now();
    loop {
        tokio::time::sleep(lease / 3).await;
        let r = client
            .execute(
                "UPDATE rollgate_lease SET renewed_at = now(),
                     expires_at = now() + $3 * interval '1 second'
                 WHERE fleet = $1 AND token = $2",
                &[&fleet, &token, &ttl],
            )
            .await;
        match r {
            Ok(1) => {
                renewed = std::time::Instant::now();
                tracing::debug!(fleet, token, "renewed the fleet lease");
            }
            Ok(_) => {
                // Superseded (this process was frozen past its lease, say):
                // it must not act any more, not even finish a phase. What it
                // started is journalled; the agents finish or undo it.
                let by = superseded_by(&client, &fleet).await;
                stop_now(&format!("lost the fleet lease: {by}"), &fleet, token);
            }
            Err(e) if renewed.elapsed() >= lease => {
                stop_now(
                    &format!(
                        "cannot renew the fleet lease for {:.0?} ({e}): another coordinator may take the fleet",
                        renewed.elapsed()
                    ),
                    &fleet,
                    token,
                );
            }
            Err(e) => {
                tracing::warn!(fleet, token, error = %e, "cannot renew the fleet lease; retrying")
            }
        }
    }
}

/// Leaves at once, saying why: a coordinator without the lease must not
/// make one more call. The rollout journal keeps what it began.
fn stop_now(why: &str, fleet: &str, token: i64) -> ! {
    tracing::error!(fleet, token, "{why}; stopping now");
    eprintln!(
        "rollgate: {why}. Stopping now: this process changes nothing more (its agents finish or undo the steps in flight; `rollgate status` shows the holder)."
    );
    std::process::exit(i32::from(rollgate::exit::FAILED));
}

/// Who holds the fleet lease now, for `rollgate status`.
#[derive(Debug, serde::Serialize)]
pub struct Holder {
    pub holder: String,
    pub pid: i32,
    pub command: String,
    pub token: i64,
    pub renewed_secs_ago: f64,
    pub expires_in_secs: f64,
}

/// The live holder of the fleet lease (postgres state), None when free;
/// an error says why it cannot be known.
pub async fn current(inv: &Inventory) -> Result<Option<Holder>, String> {
    let url = inv.state.url.as_deref().unwrap_or_default();
    let client = connect(url).await.map_err(|f| f.to_string())?;
    let fleet = fleet_name(inv);
    let exists: bool = client
        .query_one("SELECT to_regclass('rollgate_lease') IS NOT NULL", &[])
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT holder, pid, command, token,
                    extract(epoch FROM now() - renewed_at)::float8,
                    extract(epoch FROM expires_at - now())::float8
             FROM rollgate_lease WHERE fleet = $1 AND expires_at > now()",
            &[&fleet],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.map(|r| Holder {
        holder: r.get(0),
        pid: r.get(1),
        command: r.get(2),
        token: r.get(3),
        renewed_secs_ago: r.get(4),
        expires_in_secs: r.get(5),
    }))
}

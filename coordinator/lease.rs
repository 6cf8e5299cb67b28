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
//! The tables are rollgate's own (`state_db.rs`).

use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;
use tokio_postgres::Client;

use crate::Failure;
use crate::inventory::{Inventory, StateBackend};
use crate::state_db::{connect, migrate, shown};

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
        Ok(Some(r)) => took_over(&r.get::<_, String>(0), r.get(1), &r.get::<_, String>(2)),
        _ => "it lapsed and was taken".to_string(),
    }
}

/// Who took the fleet from a holder, as every message says it.
pub fn took_over(holder: &str, pid: i32, command: &str) -> String {
    format!("{holder} (pid {pid}) took it over, running `rollgate {command}`")
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

/// Runs `body` holding the fleet lease (postgres state; with the file
/// backend, just runs it): the inventory it gets carries the lease's
/// fencing token, which every agent call then sends. The lease is given up
/// when `body` ends, however it ends.
pub async fn holding<F, Fut>(inv: Inventory, command: &str, body: F) -> Result<(), Failure>
where
    F: FnOnce(Inventory) -> Fut,
    Fut: std::future::Future<Output = Result<(), Failure>>,
{
    holding_or_taking(inv, command, None, body).await
}

/// How a command may take a lease another holds (`resume --take-over`).
#[derive(Debug, Clone, Copy)]
pub struct TakeOver {
    /// Confirmed already (`--yes`): do not ask.
    pub yes: bool,
}

/// As [`holding`]; with `take_over`, a lease another holds is taken from
/// it once the operator confirms by typing the holder's name (or `--yes`).
/// Its token then outranks the old holder's, whom every agent and the
/// journal refuse from then on.
pub async fn holding_or_taking<F, Fut>(
    mut inv: Inventory,
    command: &str,
    take_over: Option<TakeOver>,
    body: F,
) -> Result<(), Failure>
where
    F: FnOnce(Inventory) -> Fut,
    Fut: std::future::Future<Output = Result<(), Failure>>,
{
    if take_over.is_some() && inv.state.backend == StateBackend::File {
        return Err(Failure::Usage(
            "--take-over needs the shared state ([state] backend = \"postgres\" in the inventory); with file state there is no lease to take. Nothing was changed".into(),
        ));
    }
    let lease = acquire(&inv, command, take_over).await?;
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

/// What one attempt to take the lease found.
enum Attempt {
    Took(i64),
    Held(Holder),
}

impl Holder {
    fn describe(&self) -> String {
        format!(
            "{} (pid {}), running `rollgate {}`; renewed {:.1}s ago, it expires in {:.1}s unless renewed",
            self.holder, self.pid, self.command, self.renewed_secs_ago, self.expires_in_secs
        )
    }
}

/// Takes the fleet lease for `command`, or None with the file backend.
/// Refused (exit 2, naming the holder) while another holds it, unless
/// `take_over` and the operator confirms.
pub async fn acquire(
    inv: &Inventory,
    command: &str,
    take_over: Option<TakeOver>,
) -> Result<Option<Lease>, Failure> {
    if inv.state.backend == StateBackend::File {
        return Ok(None);
    }
    let url = inv.state.url.as_deref().unwrap_or_default();
    let fleet = fleet_name(inv);
    let mut client = connect(url).await?;
    let db_err = |e: tokio_postgres::Error| {
        tracing::error!(db = %shown(url), error = %e, "state database error");
        Failure::Failed(format!(
            "the state database {}: {e}; nothing was changed",
            shown(url)
        ))
    };
    migrate(&mut client, url).await.map_err(db_err)?;
    let ttl = inv.state.lease.as_secs_f64();
    let token = match try_take(&mut client, &fleet, command, ttl, None)
        .await
        .map_err(db_err)?
    {
        Attempt::Took(t) => t,
        Attempt::Held(h) => {
            tracing::warn!(fleet, holder = %h.holder, pid = h.pid, command = %h.command, "the fleet lease is held");
            let Some(take) = take_over else {
                return Err(Failure::Blocked(format!(
                    "the fleet lease is held by {}. Nothing was changed (`rollgate resume --take-over` takes it from a holder that is gone)",
                    h.describe()
                )));
            };
            confirm_take_over(&h, take.yes)?;
            // Asked outside any transaction; take it only if it is still
            // the lease the operator agreed to take.
            match try_take(&mut client, &fleet, command, ttl, Some(h.token))
                .await
                .map_err(db_err)?
            {
                Attempt::Took(t) => {
                    tracing::warn!(fleet, from = %h.holder, old_token = h.token, token = t, "took the fleet lease over");
                    eprintln!(
                        "rollgate: took the fleet lease over from {} (token {} → {t}); its calls are refused from now on",
                        h.holder, h.token
                    );
                    t
                }
                Attempt::Held(now) => {
                    return Err(Failure::Blocked(format!(
                        "the fleet lease changed hands while asking: it is now held by {}. Nothing was changed",
                        now.describe()
                    )));
                }
            }
        }
    };
    let who = holder();
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

/// The typed confirmation of a take-over: the holder's name, as shown.
fn confirm_take_over(h: &Holder, yes: bool) -> Result<(), Failure> {
    use std::io::IsTerminal;
    let what = format!(
        "The fleet lease is held by {}. Taking it over fences that coordinator off: every agent refuses its calls from now on.",
        h.describe()
    );
    if yes {
        eprintln!("rollgate: {what} Taking it over (--yes).");
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::Blocked(format!(
            "{what} Re-run with --yes to take it over (there is no terminal to ask on). Nothing was changed"
        )));
    }
    eprint!(
        "{what}\nType the holder's name ({}) to take the fleet from it: ",
        h.holder
    );
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| Failure::Blocked(format!("cannot read the answer: {e}")))?;
    if answer.trim() == h.holder {
        Ok(())
    } else {
        Err(Failure::Blocked(format!(
            "not confirmed (the answer was not {}); nothing was changed",
            h.holder
        )))
    }
}

/// One transaction: the fleet's row, taken when it is free, expired, or
/// the live one of token `forced` (a confirmed take-over).
async fn try_take(
    client: &mut Client,
    fleet: &str,
    command: &str,
    ttl: f64,
    forced: Option<i64>,
) -> Result<Attempt, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // Acquirers of one fleet take turns: with no row yet, two could
    // otherwise both see it free and both insert.
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&fleet])
        .await?;
    // A journal write of the old holder in progress holds its row: wait
    // for it (the server ends one left idle), not forever.
    tx.batch_execute("SET LOCAL lock_timeout = '30s'").await?;
    let held = tx
        .query_opt(LIVE_HOLDER, &[&fleet])
        .await?
        .map(|r| Holder::of(&r));
    if let Some(h) = held
        && forced != Some(h.token)
    {
        return Ok(Attempt::Held(h));
    }
    let token: i64 = tx
        .query_one("SELECT nextval('rollgate_fencing_token')", &[])
        .await?
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
    .await?;
    tx.commit().await?;
    Ok(Attempt::Took(token))
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
    if !crate::state_db::has_table(&client, "rollgate_lease")
        .await
        .map_err(|e| e.to_string())?
    {
        return Ok(None);
    }
    let row = client
        .query_opt(LIVE_HOLDER, &[&fleet])
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.map(|r| Holder::of(&r)))
}

/// The fleet's live lease row, as `Holder::of` reads it.
const LIVE_HOLDER: &str = "SELECT holder, pid, command, token,
        extract(epoch FROM now() - renewed_at)::float8,
        extract(epoch FROM expires_at - now())::float8
     FROM rollgate_lease WHERE fleet = $1 AND expires_at > now()";

impl Holder {
    fn of(r: &tokio_postgres::Row) -> Holder {
        Holder {
            holder: r.get(0),
            pid: r.get(1),
            command: r.get(2),
            token: r.get(3),
            renewed_secs_ago: r.get(4),
            expires_in_secs: r.get(5),
        }
    }
}

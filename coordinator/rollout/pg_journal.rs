//! Rollout journals as rows of the state database: `rollgate_journal`
//! (fleet, rollout, seq, record), a record's text exactly the line the file
//! journal would hold.
//!
//! Written by [`PgSink`], the journal writer's sink: every record queued
//! since the last write goes in ONE transaction (group commit: a batch's
//! hosts' records together), and a record counts once it commits. The
//! transaction first reads the fleet's lease row `FOR SHARE` and goes on
//! only while the row still carries this command's fencing token: a
//! coordinator that lost the fleet cannot add one record, and a taker's
//! lease update waits for a write in progress, so what the taker reads
//! after taking the lease is all the old holder ever wrote.

use std::io;
use std::time::Duration;

use tokio_postgres::Client;

use crate::state_db;

use super::log::{Record, parse_record};

/// Writes one rollout's records to the state database.
pub struct PgSink {
    url: String,
    fleet: String,
    rollout: String,
    /// The lease's fencing token; None writes unfenced (tests only).
    token: Option<i64>,
    /// A write (connect included) that takes longer fails: the caller
    /// halts rather than wait on a database that does not answer.
    timeout: Duration,
    /// Built on the writer's own thread at its first write: a runtime may
    /// not be dropped inside another's async context.
    rt: Option<tokio::runtime::Runtime>,
    /// The connection and the next record's seq; dropped after an error so
    /// the next write reconnects and reads the seq again (a commit whose
    /// answer was lost may have landed).
    conn: Option<(Client, i64)>,
    /// A new rollout's journal: its id must not have rows yet.
    fresh: bool,
}

impl PgSink {
    /// The sink of rollout `rollout`; `fresh` for a new one (refused if its
    /// id already has records).
    pub fn new(url: &str, fleet: &str, rollout: &str, token: Option<i64>, fresh: bool) -> PgSink {
        PgSink {
            url: url.to_string(),
            fleet: fleet.to_string(),
            rollout: rollout.to_string(),
            token,
            timeout: Duration::from_secs(10),
            rt: None,
            conn: None,
            fresh,
        }
    }

    async fn write_rows(&mut self, records: Vec<String>) -> Result<(), String> {
        if self.conn.is_none() {
            let client = state_db::open(&self.url)
                .await
                .map_err(|e| format!("cannot reach it: {e}"))?;
            let next: i64 = client
                .query_one(
                    "SELECT coalesce(max(seq) + 1, 0) FROM rollgate_journal
                     WHERE fleet = $1 AND rollout = $2",
                    &[&self.fleet, &self.rollout],
                )
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            if std::mem::take(&mut self.fresh) && next != 0 {
                return Err(format!(
                    "rollout {} already has a journal; nothing was written",
                    self.rollout
                ));
            }
            self.conn = Some((client, next));
        }
        let Some((client, next)) = self.conn.as_mut() else {
            unreachable!("connected above");
        };
        let tx = client.transaction().await.map_err(|e| e.to_string())?;
        let holder = tx
            .query_opt(
                "SELECT token, holder, pid, command FROM rollgate_lease
                 WHERE fleet = $1 FOR SHARE",
                &[&self.fleet],
            )
            .await
            .map_err(|e| e.to_string())?;
        if let Some(ours) = self.token {
            match holder {
                Some(r) if r.get::<_, i64>(0) == ours => {}
                Some(r) => {
                    let by = crate::lease::took_over(
                        &r.get::<_, String>(1),
                        r.get(2),
                        &r.get::<_, String>(3),
                    );
                    return Err(format!(
                        "lost the fleet lease: {by}; this record was not written"
                    ));
                }
                None => {
                    return Err("the fleet lease row is gone; this record was not written".into());
                }
            }
        }
        let n = records.len() as i64;
        tx.execute(
            "INSERT INTO rollgate_journal (fleet, rollout, seq, record)
             SELECT $1, $2, $3 + o - 1, r FROM unnest($4::text[]) WITH ORDINALITY AS t(r, o)",
            &[&self.fleet, &self.rollout, &*next, &records],
        )
        .await
        .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
        *next += n;
        Ok(())
    }
}

impl rollgate::journal_writer::Sink for PgSink {
    fn write(&mut self, records: &[&[u8]]) -> io::Result<()> {
        let rows: Vec<String> = records
            .iter()
            .map(|r| String::from_utf8_lossy(r).trim_end().to_string())
            .collect();
        if self.rt.is_none() {
            self.rt = Some(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?,
            );
        }
        let rt = self.rt.take().expect("built above");
        let timeout = self.timeout;
        let r = rt.block_on(async {
            tokio::time::timeout(timeout, self.write_rows(rows))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
        });
        self.rt = Some(rt);
        r.map_err(|e| {
            self.conn = None;
            tracing::error!(db = %state_db::shown(&self.url), rollout = %self.rollout, error = %e, "cannot write the rollout journal to the state database");
            io::Error::other(format!(
                "the state database {}: {e}",
                state_db::shown(&self.url)
            ))
        })
    }
}

/// Every rollout's records of `fleet` (or of one rollout), each rollout's in
/// order, rollouts in the order the server first wrote them (machines'
/// clocks may disagree): (rollout id, its records or why they cannot be
/// read).
pub async fn read(
    client: &Client,
    fleet: &str,
    rollout: Option<&str>,
) -> Result<Vec<(String, Result<Vec<Record>, String>)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT rollout, seq, record FROM rollgate_journal
             WHERE fleet = $1 AND ($2::text IS NULL OR rollout = $2)
             ORDER BY min(written_at) OVER (PARTITION BY rollout), rollout, seq",
            &[&fleet, &rollout],
        )
        .await?;
    let mut out: Vec<(String, Result<Vec<Record>, String>)> = Vec::new();
    for row in rows {
        let (id, seq, text): (String, i64, String) = (row.get(0), row.get(1), row.get(2));
        if out.last().is_none_or(|(last, _)| *last != id) {
            out.push((id.clone(), Ok(Vec::new())));
        }
        let Some((_, Ok(records))) = out.last_mut() else {
            continue;
        };
        match parse_record(&text, || format!("rollout {id}: record {seq}")) {
            Ok(rec) => records.push(rec),
            Err(e) => out.last_mut().expect("pushed above").1 = Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollgate::journal_writer::Sink;

    /// A writer whose token is no longer the lease's commits nothing; the
    /// holder's does; a new rollout's id that has records is refused.
    #[test]
    fn only_the_lease_holders_token_commits_and_a_reused_id_is_refused() {
        let pg = rollgate_testbed::pg::PgCluster::start().expect("PostgreSQL");
        pg.createdb("state").unwrap();
        let url = pg.conninfo("state");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut c = state_db::open(&url).await.unwrap();
            state_db::migrate(&mut c, &url).await.unwrap();
            c.execute(
                "INSERT INTO rollgate_lease VALUES ('f', 'b@two', 7, 'resume', 5, now(), now(), now() + interval '1 minute')",
                &[],
            )
            .await
            .unwrap();
        });
        drop(rt);
        let rows = || {
            pg.psql("state", "SELECT count(*) FROM rollgate_journal")
                .unwrap()
        };

        let mut stale = PgSink::new(&url, "f", "r-1", Some(4), true);
        let e = stale.write(&[b"{}\n"]).unwrap_err().to_string();
        assert!(e.contains("lost the fleet lease: b@two (pid 7)"), "{e}");
        assert_eq!(rows().trim(), "0");

        let mut holder = PgSink::new(&url, "f", "r-1", Some(5), true);
        holder.write(&[b"{\"a\":1}\n", b"{\"a\":2}\n"]).unwrap();
        assert_eq!(rows().trim(), "2", "one batch, both records");

        let mut again = PgSink::new(&url, "f", "r-1", Some(5), true);
        let e = again.write(&[b"{}\n"]).unwrap_err().to_string();
        assert!(e.contains("already has a journal"), "{e}");
        assert_eq!(rows().trim(), "2");
    }
}

//! The write-freeze fingerprint, read in one database snapshot: a content
//! hash of every watched table (each row's text, hashed, summed with its
//! multiplicity, with the row count), so a single-row insert, update or
//! delete changes its table's value, whatever PostgreSQL's statistics say
//! and with no wait for them to settle.
//!
//! Why contents and not row versions (`xmin`, `ctid`): versions change
//! without any change of data (VACUUM FULL, CLUSTER, a no-op UPDATE), which
//! would halt an upgrade for nothing; a content hash changes exactly when
//! the data does. Rows are hashed independently and summed, so no sort and
//! no memory beyond one row: one sequential scan per table.
//!
//! The backup takes its fingerprint and its pg_dump in the *same* snapshot
//! (`pg_export_snapshot`, `pg_dump --snapshot`): what the guard later
//! compares with is exactly what the dump holds.

use std::collections::BTreeMap;

use rollgate::outcome::FailureCode;
use sha2::{Digest, Sha256};

use crate::config::BackupSection;
use crate::op::StepError;

/// An open REPEATABLE READ transaction on the gateway's database.
pub struct Snapshot {
    client: tokio_postgres::Client,
    task: tokio::task::JoinHandle<()>,
    /// The exported snapshot's id, for `pg_dump --snapshot`.
    pub id: String,
}

fn db_error(what: &str, e: impl std::fmt::Display) -> StepError {
    StepError::new(FailureCode::CommandFailed, format!("{what}: {e}"))
}

impl Snapshot {
    /// Opens the transaction and exports its snapshot.
    pub async fn open(cfg: &BackupSection) -> Result<Snapshot, StepError> {
        let (client, conn) = tokio_postgres::connect(&cfg.database_url, tokio_postgres::NoTls)
            .await
            .map_err(|e| db_error("cannot connect to the database", e))?;
        let task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "database connection ended");
            }
        });
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|e| db_error("cannot open a snapshot", e))?;
        let id: String = client
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .map_err(|e| db_error("cannot export the snapshot", e))?
            .get(0);
        Ok(Snapshot { client, task, id })
    }

    /// The content hash of every user table not excluded, by
    /// `schema.table`.
    pub async fn table_hashes(
        &self,
        cfg: &BackupSection,
    ) -> Result<BTreeMap<String, i64>, StepError> {
        let tables = self
            .client
            .query(
                "SELECT n.nspname || '.' || c.relname, \
                        quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                   AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%' \
                 ORDER BY 1",
                &[],
            )
            .await
            .map_err(|e| db_error("cannot list the tables", e))?;
        let mut out = BTreeMap::new();
        for t in tables {
            let (name, quoted): (String, String) = (t.get(0), t.get(1));
            if cfg.exclude_tables.contains(&name) {
                continue;
            }
            // Each row's md5 as a 64-bit number, summed exactly (numeric).
            let row = self
                .client
                .query_one(
                    &format!(
                        "SELECT count(*)::bigint, \
                         coalesce(sum(('x' || substr(md5(t::text), 1, 16))::bit(64)::bigint::numeric), 0)::text \
                         FROM {quoted} t"
                    ),
                    &[],
                )
                .await
                .map_err(|e| db_error(&format!("cannot read {name}"), e))?;
            let (count, sum): (i64, String) = (row.get(0), row.get(1));
            out.insert(name, fold(count, &sum));
        }
        Ok(out)
    }

    /// Ends the transaction (read-only: nothing to commit).
    pub async fn close(self) {
        let _ = self.client.batch_execute("ROLLBACK").await;
        drop(self.client);
        self.task.abort();
    }
}

/// One table's value: the row count and the sum of the rows' hashes, hashed
/// into 64 bits.
pub fn fold(count: i64, sum: &str) -> i64 {
    let h = Sha256::digest(format!("{count}:{sum}").as_bytes());
    i64::from_be_bytes(h[..8].try_into().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::fold;

    #[test]
    fn the_fold_depends_on_count_and_sum() {
        assert_eq!(fold(1, "42"), fold(1, "42"));
        assert_ne!(fold(1, "42"), fold(2, "42"));
        assert_ne!(fold(1, "42"), fold(1, "43"));
    }
}

//! Where the rollout journals live, as `[state]` says: files in the state
//! directory (`backend = "file"`), or rows of the state database shared by
//! every machine that runs rollgate on the fleet (`backend = "postgres"`),
//! so any of them can list, show, resume or roll back any rollout.

use std::path::PathBuf;

use crate::inventory::{Inventory, StateBackend};
use crate::state_db;

use super::log::{self, Origin, RolloutLog};
use super::pg_journal::{self, PgSink};
use super::spec::RolloutSpec;

/// One rollout found: its id and its journal, or why it cannot be read.
pub struct Listed {
    pub id: String,
    pub log: Result<RolloutLog, String>,
}

pub enum Journals {
    Files(PathBuf),
    Postgres {
        url: String,
        fleet: String,
        /// The lease's fencing token: writes are fenced by it.
        token: Option<i64>,
    },
}

impl Journals {
    pub fn of(inv: &Inventory) -> Journals {
        match inv.state.backend {
            StateBackend::File => Journals::Files(inv.coordinator.state_dir.clone()),
            StateBackend::Postgres => Journals::Postgres {
                url: inv.state.url.clone().unwrap_or_default(),
                fleet: crate::lease::fleet_name(inv),
                token: inv.fencing_token.map(|t| t as i64),
            },
        }
    }

    /// Where they are, for messages.
    pub fn place(&self) -> String {
        match self {
            Journals::Files(dir) => log::rollouts_dir(dir).display().to_string(),
            Journals::Postgres { url, fleet, .. } => {
                format!(
                    "the state database {} (fleet {fleet})",
                    state_db::shown(url)
                )
            }
        }
    }

    /// Every rollout, oldest first.
    pub async fn list(&self) -> Result<Vec<Listed>, String> {
        // Files come sorted by creation time, rows by when the server first
        // wrote them.
        Ok(match self {
            Journals::Files(dir) => log::list(dir)
                .into_iter()
                .map(|p| Listed {
                    id: p
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    log: RolloutLog::read(&p),
                })
                .collect(),
            Journals::Postgres { url, fleet, .. } => {
                let Some(client) = self
                    .reader_with_tables(url)
                    .await
                    .map_err(|e| e.to_string())?
                else {
                    return Ok(Vec::new());
                };
                pg_journal::read(&client, fleet, None)
                    .await
                    .map_err(|e| self.db_error(e))?
                    .into_iter()
                    .map(|(id, records)| Listed {
                        log: records
                            .and_then(|r| RolloutLog::from_records(row_origin(url, &id), r)),
                        id,
                    })
                    .collect()
            }
        })
    }

    /// The newest rollout, when it can be read. With files only the newest
    /// file is read, not every journal.
    pub async fn latest(&self) -> Result<Option<RolloutLog>, String> {
        Ok(match self {
            Journals::Files(dir) => log::list(dir).last().and_then(|p| RolloutLog::read(p).ok()),
            Journals::Postgres { .. } => self.list().await?.pop().and_then(|l| l.log.ok()),
        })
    }

    /// Rollout `id`, read without changing it. The id is checked first (it
    /// names a file: nothing outside the state directory is read).
    pub async fn read_by_id(&self, id: &str) -> Result<RolloutLog, ReadError> {
        match self {
            Journals::Files(dir) => log::read_by_id(dir, id).map_err(ReadError::Refused),
            Journals::Postgres { url, fleet, .. } => {
                rollgate::ids::check_rollout_id(id).map_err(ReadError::Refused)?;
                let found = match self.reader_with_tables(url).await? {
                    Some(client) => pg_journal::read(&client, fleet, Some(id))
                        .await
                        .map_err(|e| ReadError::Failed(self.db_error(e)))?,
                    None => Vec::new(),
                };
                match found.into_iter().next() {
                    Some((_, records)) => records
                        .and_then(|r| RolloutLog::from_records(row_origin(url, id), r))
                        .map_err(|e| {
                            ReadError::Failed(format!("rollout {id} cannot be read: {e}"))
                        }),
                    None => Err(ReadError::Refused(format!(
                        "no rollout {id} in {}",
                        self.place()
                    ))),
                }
            }
        }
    }

    /// Starts the journal of a new rollout.
    pub async fn create(&self, spec: RolloutSpec) -> Result<RolloutLog, String> {
        match self {
            Journals::Files(dir) => RolloutLog::create(dir, spec).map_err(|e| e.to_string()),
            Journals::Postgres { url, fleet, token } => {
                // The tables exist before the first write.
                self.client(url).await.map_err(|e| e.to_string())?;
                let id = spec.id.clone();
                let writer = log::writer(PgSink::new(url, fleet, &id, *token, true))
                    .map_err(|e| e.to_string())?;
                let origin = row_origin(url, &id);
                tokio::task::spawn_blocking(move || RolloutLog::start(origin, writer, spec))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Opens rollout `seen` to continue it (`resume`, holding the fleet):
    /// read again now, so it holds every record written before.
    pub async fn open(&self, seen: &RolloutLog) -> Result<RolloutLog, String> {
        match (self, &seen.origin) {
            (Journals::Files(_), Origin::File(p)) => RolloutLog::open(p),
            (Journals::Postgres { url, fleet, token }, Origin::Postgres { rollout, .. }) => {
                let log = self.read_by_id(rollout).await.map_err(|e| e.to_string())?;
                let writer = log::writer(PgSink::new(url, fleet, rollout, *token, false))
                    .map_err(|e| e.to_string())?;
                Ok(log.continued(writer))
            }
            (_, origin) => Err(format!("{origin} is not in {}", self.place())),
        }
    }

    /// A connection to the state database, checked and migrated: for a
    /// command about to write there.
    async fn client(&self, url: &str) -> Result<tokio_postgres::Client, ReadError> {
        let failed = |e| ReadError::Failed(self.db_error(e));
        let mut client = self.reader(url).await?;
        state_db::migrate(&mut client, url).await.map_err(failed)?;
        Ok(client)
    }

    /// A connection to the state database, checked, for reading only: it
    /// creates nothing, so `history`, `show` and `status` work with rights
    /// to read (an auditor's), and on a database rollgate has not written
    /// yet. None when rollgate's tables are not there: no rollout was
    /// recorded.
    async fn reader_with_tables(
        &self,
        url: &str,
    ) -> Result<Option<tokio_postgres::Client>, ReadError> {
        let client = self.reader(url).await?;
        let journal = state_db::has_table(&client, "rollgate_journal")
            .await
            .map_err(|e| ReadError::Failed(self.db_error(e)))?;
        Ok(journal.then_some(client))
    }

    async fn reader(&self, url: &str) -> Result<tokio_postgres::Client, ReadError> {
        let client = state_db::open(url)
            .await
            .map_err(|e| ReadError::Failed(self.db_error(e)))?;
        state_db::own(&client, url)
            .await
            .map_err(ReadError::Refused)?;
        Ok(client)
    }

    fn db_error(&self, e: tokio_postgres::Error) -> String {
        tracing::error!(journals = %self.place(), error = %e, "cannot read the rollout journals");
        format!("{}: {e}", self.place())
    }
}

/// Why a rollout named by id could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// No such rollout, an id not of the generated form, a journal file
    /// that does not parse, a state database that is not rollgate's own:
    /// what the operator named is not there as named (exit 64).
    #[error("{0}")]
    Refused(String),
    /// The state database could not be asked, or holds rows of the rollout
    /// it cannot read: the rollout may well be there (exit 1).
    #[error("{0}")]
    Failed(String),
}

impl From<ReadError> for crate::Failure {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Refused(m) => crate::Failure::Usage(m),
            ReadError::Failed(m) => crate::Failure::Failed(m),
        }
    }
}

/// Where rollout `id`'s rows are, for messages.
fn row_origin(url: &str, id: &str) -> Origin {
    Origin::Postgres {
        db: state_db::shown(url),
        rollout: id.to_string(),
    }
}

//! The CP database: the write-freeze fingerprint, the declarative export,
//! pg_dump / pg_restore, and checking a backup against its MANIFEST.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rollgate::fingerprint::Fingerprint;
use rollgate::outcome::{BackupFile, FailureCode, Restored};
use sha2::{Digest, Sha256};

use super::snapshot::Snapshot;
use crate::command::{self, CommandError};
use crate::config::{BackupSection, Export};
use crate::http::HttpClient;
use crate::op::StepError;
use crate::state::AgentState;

/// How long pg_dump / pg_restore may take.
pub const DB_COMMAND_TIMEOUT: Duration = Duration::from_secs(3600);

pub const DUMP_FILE: &str = "db.dump";
pub const EXPORT_FILE: &str = "export.yaml";
pub const FINGERPRINT_FILE: &str = "fingerprint.json";
pub const MANIFEST_FILE: &str = "MANIFEST";

pub fn config(state: &AgentState) -> Result<&BackupSection, StepError> {
    state.config.backup.as_ref().ok_or_else(|| {
        StepError::precondition(
            "this host has no [backup] section: it is not a CP with a database to back up",
        )
    })
}

pub fn backup_dir(cfg: &BackupSection, id: &str) -> PathBuf {
    cfg.dir.join(id)
}

pub fn tool(cfg: &BackupSection, name: &str) -> PathBuf {
    cfg.pg_bin_dir.join(name)
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// (size, sha256) of a file, read in slices: a dump may be gigabytes. Blocking:
/// call it from `spawn_blocking`.
pub fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// The declarative export (the whole gateway config), from the configured
/// URL or command. None when neither is configured.
pub async fn export(cfg: &BackupSection) -> Result<Option<Vec<u8>>, StepError> {
    let fail = |m: String| StepError::new(FailureCode::CommandFailed, m);
    if let Some(Export::Url(url)) = &cfg.export {
        let resp = HttpClient::new(Duration::from_secs(60), Some(Duration::from_secs(60)))
            .get(url)
            .await
            .map_err(|e| {
                fail(format!(
                    "declarative export from {url} failed: {}",
                    crate::health::error_chain(&e)
                ))
            })?;
        let status = resp.status;
        let body = resp.bytes().await.map_err(|e| {
            fail(format!(
                "declarative export from {url} broke: {}",
                crate::health::error_chain(&e)
            ))
        })?;
        if !status.is_success() {
            return Err(
                fail(format!("declarative export from {url} answered {status}"))
                    .detail(String::from_utf8_lossy(&body[..body.len().min(512)]).to_string()),
            );
        }
        return Ok(Some(body.to_vec()));
    }
    if let Some(Export::Command(argv)) = &cfg.export {
        let out = command::run_argv(argv, Duration::from_secs(300)).await?;
        return Ok(Some(out.stdout));
    }
    Ok(None)
}

/// The write-freeze fingerprint now: every watched table's content hash in
/// one snapshot (`snapshot.rs`), and the export it hashes.
pub async fn fingerprint(cfg: &BackupSection) -> Result<(Fingerprint, Option<Vec<u8>>), StepError> {
    let snap = Snapshot::open(cfg).await?;
    let tables = snap.table_hashes(cfg).await;
    snap.close().await;
    fingerprint_of(cfg, tables?).await
}

/// A fingerprint of `tables` (read in some snapshot) and the export now.
pub async fn fingerprint_of(
    cfg: &BackupSection,
    tables: BTreeMap<String, i64>,
) -> Result<(Fingerprint, Option<Vec<u8>>), StepError> {
    let export = export(cfg).await?;
    let fp = Fingerprint {
        tables,
        export_sha256: export.as_deref().map(sha256_hex),
        excluded_tables: cfg.exclude_tables.clone(),
        taken_at_ms: rollgate::clock::now_ms(),
    };
    Ok((fp, export))
}

/// The fingerprint recorded in a backup.
pub fn recorded_fingerprint(cfg: &BackupSection, id: &str) -> Result<Fingerprint, StepError> {
    let p = backup_dir(cfg, id).join(FINGERPRINT_FILE);
    let bytes = std::fs::read(&p).map_err(|e| {
        StepError::invalid(format!(
            "no fingerprint for backup {id:?} ({}: {e})",
            p.display()
        ))
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| StepError::internal(format!("{} is unreadable: {e}", p.display())))
}

/// pg_dump -Fc into `file`, then verify it: `pg_restore --list` must list
/// the archive's contents and `pg_restore -f /dev/null` must read all of it.
pub async fn dump(cfg: &BackupSection, file: &Path, snapshot: &str) -> Result<(), StepError> {
    let f = file.as_os_str().to_owned();
    let snapshot = format!("--snapshot={snapshot}");
    command::run(
        &tool(cfg, "pg_dump"),
        &[
            "-Fc".as_ref(),
            snapshot.as_ref(),
            "-f".as_ref(),
            f.as_os_str(),
            "-d".as_ref(),
            cfg.database_url.as_ref(),
        ],
        DB_COMMAND_TIMEOUT,
    )
    .await?;
    let list = command::run(
        &tool(cfg, "pg_restore"),
        &["--list".as_ref(), f.as_os_str()],
        DB_COMMAND_TIMEOUT,
    )
    .await
    .map_err(|e| unverified("the dump cannot be listed", e))?;
    let entries = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .count();
    if entries == 0 {
        return Err(StepError::new(
            FailureCode::VerifyFailed,
            "the dump lists no objects",
        ));
    }
    command::run(
        &tool(cfg, "pg_restore"),
        &["-f".as_ref(), "/dev/null".as_ref(), f.as_os_str()],
        DB_COMMAND_TIMEOUT,
    )
    .await
    .map_err(|e| unverified("the dump cannot be read in full", e))?;
    Ok(())
}

/// A command's failure as a failed verification of the dump.
fn unverified(what: &str, e: CommandError) -> StepError {
    StepError::new(FailureCode::VerifyFailed, format!("{what}: {}", e.message)).detail(e.detail)
}

/// Parses a MANIFEST: `sha256  size  path` per line.
pub fn parse_manifest(text: &str) -> Result<Vec<BackupFile>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut it = l.splitn(3, "  ");
            let (Some(sha), Some(size), Some(path)) = (it.next(), it.next(), it.next()) else {
                return Err(format!("bad MANIFEST line {l:?}"));
            };
            Ok(BackupFile {
                path: path.to_string(),
                size: size
                    .parse()
                    .map_err(|_| format!("bad size in MANIFEST line {l:?}"))?,
                sha256: sha.to_string(),
            })
        })
        .collect()
}

pub fn render_manifest(files: &[BackupFile]) -> String {
    files
        .iter()
        .map(|f| format!("{}  {}  {}\n", f.sha256, f.size, f.path))
        .collect()
}

/// Checks every file of a backup against its MANIFEST.
pub async fn check_backup(state: &AgentState, id: &str) -> Result<Vec<BackupFile>, StepError> {
    rollgate::ids::check_backup_id(id).map_err(StepError::invalid)?;
    let cfg = config(state)?;
    let dir = backup_dir(cfg, id);
    let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).map_err(|e| {
        StepError::invalid(format!(
            "backup {id:?} has no readable MANIFEST in {}: {e}",
            dir.display()
        ))
    })?;
    let files = parse_manifest(&text).map_err(|e| StepError::new(FailureCode::VerifyFailed, e))?;
    let d = dir.clone();
    let files2 = files.clone();
    tokio::task::spawn_blocking(move || -> Result<(), StepError> {
        for f in &files2 {
            let (size, sha) = hash_file(&d.join(&f.path)).map_err(|e| {
                StepError::new(
                    FailureCode::VerifyFailed,
                    format!("backup file {} is missing: {e}", f.path),
                )
            })?;
            if sha != f.sha256 || size != f.size {
                return Err(StepError::new(
                    FailureCode::VerifyFailed,
                    format!("backup file {} does not match its MANIFEST", f.path),
                ));
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| StepError::internal(e.to_string()))??;
    if !files.iter().any(|f| f.path == DUMP_FILE) {
        return Err(StepError::new(
            FailureCode::VerifyFailed,
            format!("backup {id:?} holds no database dump"),
        ));
    }
    Ok(files)
}

/// Restores the database from a verified backup in one transaction: it is
/// either fully restored or left as it was. The caller has checked the backup (`check_backup`) before stopping the
/// gateway: not again here, while the gateway is down.
pub async fn restore(state: &AgentState, id: &str) -> Result<(), StepError> {
    rollgate::ids::check_backup_id(id).map_err(StepError::invalid)?;
    let cfg = config(state)?;
    let dump = backup_dir(cfg, id).join(DUMP_FILE);
    // `pg_restore --clean` drops only what the dump holds: tables or schemas
    // a newer release created would stay, and the next upgrade's migration
    // would trip over them. So the database goes back exactly to the dump:
    // in ONE psql transaction, drop every user schema, recreate `public` as
    // PostgreSQL creates it, and replay the dump's SQL. The SQL is written to
    // a file first and pg_restore's exit checked, so a dump that cannot be
    // read in full is never half-applied.
    let sql = state
        .config
        .agent
        .state_dir
        .join(format!("restore-{id}.sql"));
    let _cleanup = RemoveOnDrop(sql.clone());
    command::run(
        &tool(cfg, "pg_restore"),
        &[
            "--no-owner".as_ref(),
            "-f".as_ref(),
            sql.as_os_str(),
            dump.as_os_str(),
        ],
        DB_COMMAND_TIMEOUT,
    )
    .await
    .map_err(|e| {
        StepError::new(
            FailureCode::VerifyFailed,
            format!("backup {id} cannot be read: {}", e.message),
        )
        .detail(e.detail)
    })?;
    let schemas = user_schemas(cfg).await?;
    let mut reset: String = schemas
        .iter()
        .map(|n| {
            format!(
                "DROP SCHEMA IF EXISTS \"{}\" CASCADE;",
                n.replace('"', "\"\"")
            )
        })
        .collect();
    reset.push_str("CREATE SCHEMA public AUTHORIZATION pg_database_owner; GRANT USAGE ON SCHEMA public TO PUBLIC;");
    command::run(
        &tool(cfg, "psql"),
        &[
            "-X".as_ref(),
            "-q".as_ref(),
            "--single-transaction".as_ref(),
            "-v".as_ref(),
            "ON_ERROR_STOP=1".as_ref(),
            "-d".as_ref(),
            cfg.database_url.as_ref(),
            "-c".as_ref(),
            reset.as_ref(),
            "-f".as_ref(),
            sql.as_os_str(),
        ],
        DB_COMMAND_TIMEOUT,
    )
    .await
    .map(|_| ())
    .map_err(|e| {
        let e = StepError::from(e);
        StepError::new(
            e.code,
            format!(
                "the restore failed; the database is unchanged (one transaction): {}",
                e.message
            ),
        )
        .detail(e.detail)
    })
}

/// Removes a file when dropped (a restore's SQL, whatever happens).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The schemas a restore replaces: all but PostgreSQL's own.
async fn user_schemas(cfg: &BackupSection) -> Result<Vec<String>, StepError> {
    let (client, conn) = tokio_postgres::connect(&cfg.database_url, tokio_postgres::NoTls)
        .await
        .map_err(|e| {
            StepError::new(
                FailureCode::CommandFailed,
                format!("cannot connect to the database: {e}"),
            )
        })?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let rows = client
        .query(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('pg_catalog', 'information_schema') \
             AND nspname NOT LIKE 'pg\\_toast%' AND nspname NOT LIKE 'pg\\_temp\\_%' ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| StepError::new(FailureCode::CommandFailed, format!("cannot list the schemas: {e}")));
    drop(client);
    task.abort();
    Ok(rows?.iter().map(|r| r.get(0)).collect())
}

/// Compares a fresh export with the backed-up one.
pub async fn compare_export(state: &AgentState, id: &str) -> Result<Restored, StepError> {
    let cfg = config(state)?;
    let Some(now) = export(cfg).await? else {
        tracing::warn!(
            backup = id,
            "no declarative export configured: the restore cannot be compared"
        );
        return Ok(Restored {
            backup_id: id.into(),
            export_matches: true,
        });
    };
    let saved = std::fs::read(backup_dir(cfg, id).join(EXPORT_FILE)).unwrap_or_default();
    if now != saved {
        return Err(StepError::new(
            FailureCode::VerifyFailed,
            format!(
                "after restoring backup {id}, the declarative export differs from the backed-up one"
            ),
        )
        .detail(format!(
            "sha256 now {}, in the backup {}",
            sha256_hex(&now),
            sha256_hex(&saved)
        )));
    }
    Ok(Restored {
        backup_id: id.into(),
        export_matches: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trip() {
        let files = vec![BackupFile {
            path: "config/a b.toml".into(),
            size: 3,
            sha256: "ab".into(),
        }];
        assert_eq!(parse_manifest(&render_manifest(&files)).unwrap(), files);
        assert!(parse_manifest("garbage").is_err());
    }
}

//! Backup (CP hosts): everything needed to put the control plane back as it
//! was, verified, in `<backup_dir>/<backup_id>/`:
//!
//! ```text
//! db.dump            pg_dump -Fc, checked with pg_restore --list and a full read
//! export.yaml        the declarative export (when configured)
//! config/<name>      copies of the configured gateway config files
//! fingerprint.json   the write-freeze fingerprint, taken before the dump
//! MANIFEST           sha256, size and path of each file above
//! ```
//!
//! It is built in `.partial-<id>` and renamed into place only once complete,
//! so a backup directory without a MANIFEST never exists. Older backups
//! beyond `keep` are removed only after a new one is in place.

use std::path::{Path, PathBuf};

use rollgate::outcome::{BackupFile, BackupTaken, FailureCode, StepOutput};

use super::StepRun;
use super::pg::{self, DUMP_FILE, EXPORT_FILE, FINGERPRINT_FILE, MANIFEST_FILE};
use super::snapshot::Snapshot;
use crate::kind::Phase;
use crate::op::{OpCtx, StepError};
use crate::state::AgentState;

pub async fn backup(state: &AgentState, ctx: &OpCtx, id: &str) -> StepRun {
    rollgate::ids::check_backup_id(id).map_err(StepError::invalid)?;
    let cfg = pg::config(state)?;
    let final_dir = pg::backup_dir(cfg, id);
    if final_dir.join(MANIFEST_FILE).is_file() {
        // Taken before under the same id: verify and hand it back.
        let files = pg::check_backup(state, id).await?;
        return Ok(StepOutput::Backup(BackupTaken {
            backup_id: id.into(),
            dir: final_dir.display().to_string(),
            files,
            fingerprint: pg::recorded_fingerprint(cfg, id)?,
        }));
    }
    let partial = partial_dir(&cfg.dir, id);
    remove_dir(&partial);
    std::fs::create_dir_all(partial.join("config"))
        .map_err(|e| StepError::internal(format!("cannot create {}: {e}", partial.display())))?;
    // Whatever fails below, no half-written backup stays behind.
    let result = build(state, ctx, id, &partial, &final_dir)
        .await
        .map_err(|e| out_of_space(&cfg.dir, e));
    if result.is_err() {
        remove_dir(&partial);
    }
    result
}

/// Free bytes below which a backup directory counts as full.
const FULL_BELOW: u64 = 1 << 20;

/// A backup that failed while its directory is (nearly) full failed for
/// lack of disk, whichever writer hit it. pg_dump reports ENOSPC only as
/// text, so the file system is asked too, before the partial backup is
/// removed.
fn out_of_space(dir: &Path, e: StepError) -> StepError {
    if e.code == FailureCode::DiskFull {
        return e;
    }
    let free = crate::install::free_bytes(dir);
    let says_enospc = [&e.message, &e.detail]
        .iter()
        .any(|t| t.contains("No space left on device"));
    let nearly_full = free.is_some_and(|f| f < FULL_BELOW);
    if !says_enospc && !nearly_full {
        return e;
    }
    tracing::warn!(dir = %dir.display(), ?free, error = %e, "the backup ran out of disk");
    StepError::new(
        FailureCode::DiskFull,
        format!(
            "the backup directory {} ran out of space ({} bytes free): {}",
            dir.display(),
            free.map_or("unknown".into(), |f| f.to_string()),
            e.message
        ),
    )
    .detail(e.detail)
}

async fn build(
    state: &AgentState,
    ctx: &OpCtx,
    id: &str,
    partial: &Path,
    final_dir: &Path,
) -> StepRun {
    let cfg = pg::config(state)?;
    // The fingerprint and the dump read the same snapshot: the guard later
    // compares with exactly what the dump holds.
    ctx.progress(
        "fingerprint",
        "hashing every watched table in one snapshot",
        0,
        0,
    );
    let snap = Snapshot::open(cfg).await?;
    let dumped = async {
        let tables = snap.table_hashes(cfg).await?;
        let (fp, export) = pg::fingerprint_of(cfg, tables).await?;
        ctx.phase(
            Phase::Fingerprinted,
            serde_json::json!({ "tables": fp.tables.len() }),
        )
        .await?;
        ctx.progress("pg_dump", "dumping the database (the same snapshot)", 0, 0);
        pg::dump(cfg, &partial.join(DUMP_FILE), &snap.id).await?;
        Ok::<_, StepError>((fp, export))
    }
    .await;
    snap.close().await;
    let (fp, export) = dumped?;
    ctx.phase(Phase::Dumped, serde_json::Value::Null).await?;

    let write = |name: &str, data: &[u8]| {
        rollgate::fsx::write_atomic(&partial.join(name), data)
            .map_err(|e| StepError::internal(format!("cannot write {name}: {e}")))
    };
    if let Some(export) = &export {
        write(EXPORT_FILE, export)?;
    }
    for (i, src) in cfg.config_files.iter().enumerate() {
        let data = std::fs::read(src).map_err(|e| {
            StepError::precondition(format!("config file {} cannot be read: {e}", src.display()))
        })?;
        let base = src
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| format!("file-{i}"));
        let name = format!("config/{i:02}-{base}");
        write(&name, &data)?;
    }
    write(
        FINGERPRINT_FILE,
        &serde_json::to_vec_pretty(&fp).map_err(|e| StepError::internal(e.to_string()))?,
    )?;

    // Hashing a large dump takes a while: off the agent's only thread.
    let dir = partial.to_path_buf();
    let files = tokio::task::spawn_blocking(move || manifest_of(&dir))
        .await
        .map_err(|e| StepError::internal(format!("hashing task failed: {e}")))?
        .map_err(|e| StepError::internal(format!("cannot hash the backup: {e}")))?;
    write(MANIFEST_FILE, pg::render_manifest(&files).as_bytes())?;
    rollgate::fsx::sync_dir(&partial.join("config"))
        .map_err(|e| StepError::internal(e.to_string()))?;
    std::fs::rename(partial, final_dir)
        .and_then(|()| rollgate::fsx::sync_dir(&cfg.dir))
        .map_err(|e| {
            StepError::internal(format!(
                "cannot publish the backup {}: {e}",
                final_dir.display()
            ))
        })?;
    ctx.phase(Phase::Published, serde_json::json!({ "dir": final_dir }))
        .await?;
    prune(&cfg.dir, cfg.keep, id);
    ctx.progress(
        "done",
        format!("backup {id} verified: {} files", files.len()),
        0,
        0,
    );
    Ok(StepOutput::Backup(BackupTaken {
        backup_id: id.into(),
        dir: final_dir.display().to_string(),
        files,
        fingerprint: fp,
    }))
}

pub fn partial_dir(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!(".partial-{id}"))
}

fn remove_dir(p: &Path) {
    match std::fs::remove_dir_all(p) {
        Ok(()) => tracing::info!(dir = %p.display(), "removed an unfinished backup"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %p.display(), error = %e, "cannot remove an unfinished backup")
        }
    }
}

/// Removes every unfinished backup (after a crash cut a Backup off).
pub fn clean_partials(state: &AgentState) {
    let Some(cfg) = &state.config.backup else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(&cfg.dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(".partial-") {
            remove_dir(&e.path());
        }
    }
}

/// sha256 and size of every file under `dir`, sorted by path.
fn manifest_of(dir: &Path) -> std::io::Result<Vec<BackupFile>> {
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<BackupFile>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            walk(root, &p, out)?;
            continue;
        }
        let rel = p
            .strip_prefix(root)
            .unwrap_or(&p)
            .to_string_lossy()
            .to_string();
        if rel == MANIFEST_FILE || rel.starts_with('.') {
            continue;
        }
        let (size, sha256) = pg::hash_file(&p)?;
        out.push(BackupFile {
            path: rel,
            size,
            sha256,
        });
    }
    Ok(())
}

/// Keeps the `keep` newest complete backups; never removes `just_made`.
fn prune(dir: &Path, keep: usize, just_made: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut complete: Vec<(std::time::SystemTime, PathBuf, String)> = entries
        .flatten()
        .filter(|e| e.path().join(MANIFEST_FILE).is_file())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let t = e.metadata().and_then(|m| m.modified()).ok()?;
            Some((t, e.path(), name))
        })
        .collect();
    complete.sort();
    complete.reverse();
    for (_, path, name) in complete.into_iter().skip(keep) {
        if name == just_made {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::info!(backup = %name, "removed an old backup"),
            Err(e) => tracing::warn!(backup = %name, error = %e, "cannot remove an old backup"),
        }
    }
}

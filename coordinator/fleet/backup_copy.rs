//! Copying a CP backup into the coordinator's state dir, file by file, each
//! checked against the MANIFEST the agent reported.

use std::path::{Component, Path};

use rollgate::outcome::BackupFile;
use rollgate::pb;
use sha2::{Digest, Sha256};

use crate::client::Agent;

/// Copies `files` (and the MANIFEST) of backup `backup_id` from `a` into `into`.
pub async fn fetch(
    a: &Agent,
    backup_id: &str,
    files: &[BackupFile],
    into: &Path,
) -> Result<(), String> {
    let host = &a.host.name;
    let mut names: Vec<(String, Option<&BackupFile>)> =
        files.iter().map(|f| (f.path.clone(), Some(f))).collect();
    names.push(("MANIFEST".into(), None));
    // The names come from the agent: only plain relative paths may become
    // files here (no '/', no '..', nothing absolute).
    for (path, _) in &names {
        let plain = Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if !plain || path.is_empty() {
            return Err(format!(
                "{host}: backup file name {path:?} is not a plain relative path; nothing copied"
            ));
        }
    }
    for (path, meta) in names {
        let target = into.join(&path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        let mut stream = a
            .client
            .clone()
            .read_backup_file(pb::ReadBackupFileRequest {
                backup_id: backup_id.into(),
                path: path.clone(),
            })
            .await
            .map_err(|s| format!("{host}: cannot read backup file {path}: {}", s.message()))?
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| format!("{host}: reading {path}: {}", s.message()))?
        {
            data.extend_from_slice(&chunk.data);
        }
        if let Some(m) = meta {
            let sha = hex::encode(Sha256::digest(&data));
            if sha != m.sha256 || data.len() as u64 != m.size {
                return Err(format!(
                    "{host}: backup file {path} arrived damaged (sha256 {sha}, MANIFEST says {})",
                    m.sha256
                ));
            }
        }
        rollgate::fsx::write_atomic(&target, &data)
            .map_err(|e| format!("{}: {e}", target.display()))?;
    }
    Ok(())
}

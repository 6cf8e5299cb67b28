//! The files in the gateway's custom plugin directories, hashed, so the
//! coordinator's preflight can tell which differ from a new release.

use std::path::Path;

use sha2::{Digest, Sha256};

/// More files than this in plugin dirs is not a plugin dir; stop there.
const MAX_FILES: usize = 2000;

/// A file in a custom plugin directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginFile {
    /// Relative to the release directory.
    pub path: String,
    /// Lower-case hex SHA-256 of its content.
    pub sha256: String,
}

/// Hashes every regular file under `release_dir/<dir>` for each dir, paths
/// relative to the release directory, sorted.
pub fn list(release_dir: &Path, dirs: &[std::path::PathBuf]) -> Vec<PluginFile> {
    let mut out = Vec::new();
    for d in dirs {
        walk(release_dir, &release_dir.join(d), &mut out);
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PluginFile>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if out.len() >= MAX_FILES {
            tracing::warn!(dir = %dir.display(), "too many files in custom plugin dirs; listing cut");
            return;
        }
        let Ok(t) = e.file_type() else { continue };
        let p = e.path();
        if t.is_dir() {
            walk(root, &p, out);
        } else if t.is_file()
            && let Ok(data) = std::fs::read(&p)
        {
            out.push(PluginFile {
                path: p
                    .strip_prefix(root)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .to_string(),
                sha256: hex::encode(Sha256::digest(&data)),
            });
        }
    }
}

//! The reference gateway's release artifacts, packaged once per build of
//! `demo-gateway` and cached, for the demo and the tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `demo-gateway` built next to `exe` (cargo puts every binary of a
/// workspace in the same directory).
pub fn demo_gateway_next_to(exe: &Path) -> PathBuf {
    exe.parent().unwrap_or(Path::new(".")).join("demo-gateway")
}

/// A directory holding every release artifact and `releases.toml`, packaged
/// from `demo_bin` under `cache_root` unless that build was packaged before.
/// Concurrent callers each package into a private directory and publish it
/// with a rename; the loser uses the winner's.
pub fn packaged(demo_bin: &Path, cache_root: &Path) -> Result<PathBuf, String> {
    let meta = std::fs::metadata(demo_bin).map_err(|e| {
        format!(
            "the reference gateway is not built at {} ({e}); run `cargo build --workspace`",
            demo_bin.display()
        )
    })?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let dir = cache_root.join(format!("demo-artifacts-{}-{mtime}", meta.len()));
    if dir.join("releases.toml").is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(cache_root)
        .map_err(|e| format!("cannot create {}: {e}", cache_root.display()))?;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = cache_root.join(format!(".packaging-{}-{n}-{mtime}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let out = Command::new(demo_bin)
        .args(["package", "--out"])
        .arg(&tmp)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", demo_bin.display()))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(format!(
            "demo-gateway package failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    if std::fs::rename(&tmp, &dir).is_err() {
        // Someone else published first.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    if dir.join("releases.toml").is_file() {
        Ok(dir)
    } else {
        Err(format!(
            "packaging produced no catalog in {}",
            dir.display()
        ))
    }
}

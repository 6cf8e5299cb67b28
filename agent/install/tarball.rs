//! The `tarball` install method:
//!
//! ```text
//! <root>/releases/<version>/   unpacked releases, each with its marker
//! <root>/current -> releases/<version>
//! ```
//!
//! A release is unpacked into a hidden directory next to its final place and
//! renamed there; `current` is switched by renaming a new link over it and
//! fsyncing the directory, so a crash leaves the old or the new release.

use std::path::{Path, PathBuf};

use rollgate::outcome::FailureCode;
use rollgate::version::Version;

use super::archive::{self, ArchiveError, Limits};
use super::{Marker, Placed};
use crate::config::TarballConfig;
use crate::op::StepError;

/// Marker file inside every unpacked release.
pub const MARKER: &str = ".rollgate-release";
/// Prefix of release directories being unpacked.
const UNPACKING: &str = ".staging-";

#[derive(Debug)]
pub struct Tarball {
    cfg: TarballConfig,
}

impl Tarball {
    pub fn new(cfg: TarballConfig) -> Self {
        Tarball { cfg }
    }

    pub fn config(&self) -> &TarballConfig {
        &self.cfg
    }

    fn releases_dir(&self) -> PathBuf {
        self.cfg.root.join("releases")
    }

    pub fn current_link(&self) -> PathBuf {
        self.cfg.root.join("current")
    }

    pub fn release_dir(&self, v: &Version) -> PathBuf {
        self.releases_dir().join(v.to_string())
    }

    /// The version `current` points at; None when there is no link or it
    /// does not point at `releases/<version>`.
    pub fn current(&self) -> Option<Version> {
        let target = std::fs::read_link(self.current_link()).ok()?;
        target.file_name()?.to_str()?.parse().ok()
    }

    /// Versions unpacked under releases/, ascending. Entries that are not
    /// version-named directories (leftovers, files) are skipped.
    pub fn releases(&self) -> Vec<Version> {
        let Ok(entries) = std::fs::read_dir(self.releases_dir()) else {
            return Vec::new();
        };
        let mut out: Vec<Version> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        out.sort();
        out
    }

    pub fn marker(&self, v: &Version) -> Result<Option<Marker>, String> {
        let dir = self.release_dir(v);
        if !dir.exists() {
            return Ok(None);
        }
        std::fs::read(dir.join(MARKER))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .map(Some)
            .ok_or_else(|| {
                format!(
                    "{} exists but was not staged by rollgate; remove it first",
                    dir.display()
                )
            })
    }

    /// Unpacks the archive next to its final place, checks it holds
    /// `must_contain` (the exec service's program), and renames it there.
    pub async fn put_in_place(
        &self,
        v: &Version,
        marker: &Marker,
        artifact: &Path,
        limits: Limits,
        must_contain: Option<&Path>,
    ) -> Result<Placed, StepError> {
        let releases = self.releases_dir();
        std::fs::create_dir_all(&releases).map_err(|e| {
            StepError::internal(format!("cannot create {}: {e}", releases.display()))
        })?;
        let tmp = releases.join(format!("{UNPACKING}{v}-{}", std::process::id()));
        let mut cleanup = Cleanup::new(tmp.clone());
        drop(Cleanup::new(tmp.clone())); // a leftover of an earlier attempt
        std::fs::create_dir(&tmp)
            .map_err(|e| StepError::internal(format!("cannot create {}: {e}", tmp.display())))?;
        let text = serde_json::to_vec(marker).map_err(|e| StepError::internal(e.to_string()))?;
        let dest = self.release_dir(v);
        // Unpacked, checked, marked and published in one blocking task: the
        // fsyncs never hold the agent's only async thread (its health
        // watches and other calls), and it is one hand-off, not several.
        let (a, t, d) = (artifact.to_path_buf(), tmp.clone(), dest.clone());
        let must_contain = must_contain.map(Path::to_path_buf);
        let written = tokio::task::spawn_blocking(move || {
            publish(
                &a,
                &t,
                &d,
                &releases,
                limits,
                must_contain.as_deref(),
                &text,
            )
        })
        .await
        .map_err(|e| StepError::internal(format!("unpack task failed: {e}")))??;
        cleanup.keep();
        Ok(Placed {
            location: dest.display().to_string(),
            bytes: written,
        })
    }

    /// Points `current` at `releases/<v>` atomically: a new link under a
    /// temporary name renamed over the old one, then the directory fsynced.
    pub fn switch(&self, v: &Version) -> std::io::Result<()> {
        switch(&self.cfg.root, v)
    }

    pub async fn prune(&self, current: &Version, previous: Option<&Version>) {
        let doomed = doomed_releases(&self.releases(), current, previous, self.cfg.keep_releases);
        let dirs: Vec<(Version, PathBuf)> = doomed
            .into_iter()
            .map(|v| {
                let d = self.release_dir(&v);
                (v, d)
            })
            .collect();
        if dirs.is_empty() {
            // Most installs: nothing to remove, so no hand-off to the
            // blocking pool on the way to the step's end.
            return;
        }
        let _ = tokio::task::spawn_blocking(move || {
            for (v, dir) in dirs {
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => tracing::info!(version = %v, "removed an old release"),
                    Err(e) => {
                        tracing::warn!(version = %v, error = %e, "cannot remove an old release")
                    }
                }
            }
        })
        .await;
    }

    pub fn clean_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(self.releases_dir()) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(UNPACKING) {
                tracing::info!(path = %e.path().display(), "removing a half-unpacked release");
                drop(Cleanup::new(e.path()));
            }
        }
    }
}

/// Points `root/current` at `releases/<v>` atomically.
pub fn switch(root: &Path, v: &Version) -> std::io::Result<()> {
    let tmp = root.join(".current.tmp");
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::os::unix::fs::symlink(format!("releases/{v}"), &tmp)?;
    std::fs::rename(&tmp, root.join("current"))?;
    rollgate::fsx::sync_dir(root)
}

/// Which releases to remove: of those older than current (previous aside),
/// the oldest beyond what `keep` leaves room for.
pub fn doomed_releases(
    all: &[Version],
    current: &Version,
    previous: Option<&Version>,
    keep: usize,
) -> Vec<Version> {
    let pinned = 1 + usize::from(previous.is_some_and(|p| p != current && all.contains(p)));
    let mut older: Vec<&Version> = all
        .iter()
        .filter(|v| *v < current && Some(*v) != previous)
        .collect();
    older.sort();
    older.reverse();
    let room = keep.saturating_sub(pinned);
    older.into_iter().skip(room).cloned().collect()
}

/// Removes a path when dropped, unless kept.
pub struct Cleanup {
    path: Option<PathBuf>,
}

impl Cleanup {
    pub fn new(path: PathBuf) -> Self {
        Cleanup { path: Some(path) }
    }

    pub fn keep(&mut self) {
        self.path = None;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            if let Err(e) = r
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %p.display(), error = %e, "cannot remove a leftover");
            }
        }
    }
}

/// Unpacks `artifact` into `tmp`, checks it holds `must_contain`, writes
/// the release marker and renames `tmp` to `dest` (fsyncing `releases`):
/// a release is either published whole, marker included, or not at all.
fn publish(
    artifact: &Path,
    tmp: &Path,
    dest: &Path,
    releases: &Path,
    limits: Limits,
    must_contain: Option<&Path>,
    marker: &[u8],
) -> Result<u64, StepError> {
    let written = archive::unpack(artifact, tmp, limits, &|p: &Path| super::free_bytes(p))
        .map_err(|e| match e {
            ArchiveError::Unsafe { .. }
            | ArchiveError::Malformed(_)
            | ArchiveError::TooLarge { .. } => {
                StepError::new(FailureCode::BadArchive, e.to_string())
            }
            ArchiveError::DiskFull(_) => StepError::new(FailureCode::DiskFull, e.to_string()),
            ArchiveError::Io(_) => StepError::internal(e.to_string()),
        })?;
    if let Some(rel) = must_contain
        && !tmp.join(rel).is_file()
    {
        return Err(StepError::new(
            FailureCode::BadArchive,
            format!(
                "the release has no {} (the configured service command)",
                rel.display()
            ),
        ));
    }
    put_marker(tmp, marker)
        .map_err(|e| StepError::internal(format!("cannot write the release marker: {e}")))?;
    archive::seal(tmp).map_err(|e| StepError::internal(e.to_string()))?;
    std::fs::rename(tmp, dest)
        .and_then(|()| rollgate::fsx::sync_dir(releases))
        .map_err(|e| {
            StepError::internal(format!(
                "cannot move the release into {}: {e}",
                dest.display()
            ))
        })?;
    Ok(written)
}

/// Writes the marker into the unpacked, unpublished release: a plain file,
/// fsynced, whose directory entry `archive::seal` then syncs with the rest
/// (the rename of the whole directory is what publishes it, so the marker
/// needs no rename of its own). An entry of the same name from the archive
/// is removed first, never written through (it may be a link).
fn put_marker(dir: &Path, marker: &[u8]) -> std::io::Result<()> {
    let path = dir.join(MARKER);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path)?,
        Ok(_) => std::fs::remove_file(&path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::io::Write::write_all(&mut f, marker)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vs(list: &[&str]) -> Vec<Version> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// The marker replaces whatever the archive put under its name, and
    /// never writes through it: a link to a release file leaves that file
    /// as it was.
    #[test]
    fn the_marker_replaces_an_entry_of_its_name_without_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let rel = dir.path();
        std::fs::create_dir(rel.join("bin")).unwrap();
        std::fs::write(rel.join("bin/gw"), b"#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("bin/gw", rel.join(MARKER)).unwrap();
        put_marker(rel, b"{\"version\":\"1.0.1\"}").unwrap();
        let m = std::fs::symlink_metadata(rel.join(MARKER)).unwrap();
        assert!(m.file_type().is_file(), "{m:?}");
        assert_eq!(
            std::fs::read(rel.join(MARKER)).unwrap(),
            b"{\"version\":\"1.0.1\"}"
        );
        assert_eq!(std::fs::read(rel.join("bin/gw")).unwrap(), b"#!/bin/sh\n");

        std::fs::remove_file(rel.join(MARKER)).unwrap();
        std::fs::create_dir_all(rel.join(MARKER).join("inner")).unwrap();
        put_marker(rel, b"m").unwrap();
        assert_eq!(std::fs::read(rel.join(MARKER)).unwrap(), b"m");
    }

    #[test]
    fn prune_keeps_current_previous_and_newer() {
        let all = vs(&["3.1.0", "3.2.0", "3.3.0", "3.4.0", "3.5.0"]);
        let cur: Version = "3.4.0".parse().unwrap();
        let prev: Version = "3.2.0".parse().unwrap();
        // keep 3: current, previous, and the newest other older one (3.3.0).
        assert_eq!(doomed_releases(&all, &cur, Some(&prev), 3), vs(&["3.1.0"]));
        assert_eq!(
            doomed_releases(&all, &cur, Some(&prev), 2),
            vs(&["3.3.0", "3.1.0"])
        );
        assert_eq!(
            doomed_releases(&all, &cur, None, 2),
            vs(&["3.2.0", "3.1.0"])
        );
        assert!(doomed_releases(&all, &cur, Some(&prev), 10).is_empty());
    }

    #[test]
    fn switch_replaces_the_link_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let v1: Version = "3.3.0".parse().unwrap();
        let v2: Version = "3.4.0".parse().unwrap();
        switch(dir.path(), &v1).unwrap();
        switch(dir.path(), &v2).unwrap();
        assert_eq!(
            std::fs::read_link(dir.path().join("current")).unwrap(),
            Path::new("releases/3.4.0")
        );
        assert!(!dir.path().join(".current.tmp").exists());
    }

    #[test]
    fn reads_current_and_releases() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tarball::new(TarballConfig {
            root: dir.path().into(),
            keep_releases: 3,
            max_unpack_ratio: 20,
        });
        assert_eq!(t.current(), None);
        assert!(t.releases().is_empty());
        for v in ["3.3.0", "3.10.0", "3.4.0"] {
            std::fs::create_dir_all(t.releases_dir().join(v)).unwrap();
        }
        std::fs::create_dir_all(t.releases_dir().join(".staging-x")).unwrap();
        std::os::unix::fs::symlink("releases/3.4.0", t.current_link()).unwrap();
        assert_eq!(t.current(), Some("3.4.0".parse().unwrap()));
        let names: Vec<String> = t.releases().iter().map(|v| v.to_string()).collect();
        assert_eq!(names, ["3.3.0", "3.4.0", "3.10.0"]);
        assert!(
            t.marker(&"3.3.0".parse().unwrap()).is_err(),
            "not staged by rollgate"
        );
        assert_eq!(t.marker(&"3.9.0".parse().unwrap()), Ok(None));
        t.clean_leftovers();
        assert!(!t.releases_dir().join(".staging-x").exists());
    }
}

//! The install-method seam: how a release is put on this host, switched to,
//! kept for rollback, pruned, and cleaned up after a crash. The steps
//! (`crate::steps`) drive a release through it without knowing the layout.
//!
//! Today's method is `tarball` (`releases/<version>/` and an atomic
//! `current` link). A container image (the artifact loaded into the Docker
//! Engine, the tag pinned by one variable of a compose env file) or an OS
//! package (dpkg, the previous .deb cached) is another variant of `Installer`
//! with the same operations: `put_in_place` for what `tarball` unpacks,
//! `switch` for its rename of the link, `kept` for its release directories.

pub mod archive;
pub mod tarball;

use std::path::{Path, PathBuf};

use rollgate::version::Version;

use crate::config::{Config, InstallMethod};
use crate::op::StepError;

/// Marker written with every release a method puts in place: where it came
/// from, so a repeated stage of the same artifact is a no-op and another
/// artifact under the same version is refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Marker {
    pub version: String,
    pub sha256: String,
}

/// What `put_in_place` did.
#[derive(Debug, Clone)]
pub struct Placed {
    /// Where the release is, for reports (a directory, an image, a package).
    pub location: String,
    /// Bytes written (unpacked, loaded).
    pub bytes: u64,
}

/// The configured install method.
#[derive(Debug)]
pub enum Installer {
    Tarball(tarball::Tarball),
}

impl Installer {
    pub fn from_config(config: &Config) -> Self {
        match &config.install.method {
            InstallMethod::Tarball(t) => Installer::Tarball(tarball::Tarball::new(t.clone())),
        }
    }

    /// The release the host runs (points at); None before the first install.
    pub fn current(&self) -> Option<Version> {
        match self {
            Installer::Tarball(t) => t.current(),
        }
    }

    /// Releases kept on the host, ascending: what it can switch to.
    pub fn kept(&self) -> Vec<Version> {
        match self {
            Installer::Tarball(t) => t.releases(),
        }
    }

    /// The marker of a release put in place, if there is one; Err when
    /// something is there that rollgate did not put.
    pub fn marker(&self, v: &Version) -> Result<Option<Marker>, String> {
        match self {
            Installer::Tarball(t) => t.marker(v),
        }
    }

    /// Where a release's files are, when the method has a directory per
    /// release (the exec service runs from it; plugins are compared in it).
    pub fn release_dir(&self, v: &Version) -> Option<PathBuf> {
        match self {
            Installer::Tarball(t) => Some(t.release_dir(v)),
        }
    }

    /// Bytes a verified artifact of `size` may put on disk: the catalog's
    /// `unpacked` size, or the method's bound.
    pub fn bound(&self, size: u64, unpacked: u64) -> u64 {
        if unpacked > 0 {
            return unpacked;
        }
        match self {
            Installer::Tarball(t) => size.saturating_mul(t.config().max_unpack_ratio),
        }
    }

    /// Puts a verified artifact in place as release `v`, all or nothing,
    /// within `limits`. A release with a directory must hold `must_contain`
    /// (relative to it: the exec service's program).
    pub async fn put_in_place(
        &self,
        v: &Version,
        marker: &Marker,
        artifact: &Path,
        limits: archive::Limits,
        must_contain: Option<&Path>,
    ) -> Result<Placed, StepError> {
        match self {
            Installer::Tarball(t) => {
                t.put_in_place(v, marker, artifact, limits, must_contain)
                    .await
            }
        }
    }

    /// Makes `v` the release the host runs, atomically (a crash leaves the
    /// old or the new one, never a mix), durable when it returns.
    pub fn switch(&self, v: &Version) -> std::io::Result<()> {
        match self {
            Installer::Tarball(t) => t.switch(v),
        }
    }

    /// Removes releases beyond what the method keeps; never `current`,
    /// `previous`, or any newer than current (staged for a later hop). Runs
    /// off the async runtime: removing a release tree takes a while.
    pub async fn prune(&self, current: &Version, previous: Option<&Version>) {
        match self {
            Installer::Tarball(t) => t.prune(current, previous).await,
        }
    }

    /// After a crash cut a stage off: removes what it left half-made.
    pub fn clean_leftovers(&self) {
        match self {
            Installer::Tarball(t) => t.clean_leftovers(),
        }
    }

    /// Free bytes where releases go.
    pub fn free_bytes(&self) -> Option<u64> {
        match self {
            Installer::Tarball(t) => free_bytes(&t.config().root),
        }
    }

    /// Where releases go, for disk checks.
    pub fn place(&self) -> &Path {
        match self {
            Installer::Tarball(t) => &t.config().root,
        }
    }

    /// Where the running release's custom plugin dirs are.
    pub fn current_dir(&self) -> Option<PathBuf> {
        match self {
            Installer::Tarball(t) => Some(t.current_link()),
        }
    }
}

/// Free bytes for unprivileged use on the file system holding `path` (or its
/// nearest existing ancestor).
pub fn free_bytes(path: &Path) -> Option<u64> {
    let mut p = path;
    loop {
        if p.exists() {
            let st = nix::sys::statvfs::statvfs(p).ok()?;
            return Some(st.blocks_available() as u64 * st.fragment_size() as u64);
        }
        p = p.parent()?;
    }
}

/// The release current before the last successful switch: the rollback
/// target. Kept in the state dir, whatever the method.
pub fn previous_release(state_dir: &Path) -> Option<Version> {
    std::fs::read_to_string(previous_file(state_dir))
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub fn remember_previous(state_dir: &Path, v: &Version) {
    if let Err(e) = rollgate::fsx::write_atomic(&previous_file(state_dir), v.to_string().as_bytes())
    {
        tracing::warn!(error = %e, "cannot record the previous release");
    }
}

fn previous_file(state_dir: &Path) -> PathBuf {
    state_dir.join("previous-release")
}

//! The install-method seam: how a release is put on this host, switched to,
//! kept for rollback, pruned, and cleaned up after a crash. The steps
//! (`crate::steps`) drive a release through it without knowing the layout.
//!
//! Three methods, one set of operations (`put_in_place`, `switch`, `kept`,
//! `prune`):
//! - `tarball`: `releases/<version>/` and an atomic `current` link;
//! - `compose`: an image loaded into the Docker Engine, its tag pinned by one
//!   variable of the compose env file;
//! - `deb`: a package installed with dpkg, the previous .deb cached.

pub mod archive;
pub mod compose;
pub mod deb;
pub mod env_file;
pub mod image_archive;
pub mod tarball;

use std::path::{Path, PathBuf};

use rollgate::version::Version;

use crate::config::{Config, InstallMethod};
use crate::op::StepError;
use crate::service::ProcessStatus;

/// Marker written with every release a method puts in place: where it came
/// from, so a repeated stage of the same artifact is a no-op and another
/// artifact under the same version is refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Marker {
    pub version: String,
    pub sha256: String,
    /// The image ID the catalog gives (compose).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_id: String,
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
    Compose(compose::Compose),
    Deb(deb::Deb),
}

/// What a compose or deb artifact may take on disk when the catalog does
/// not say: the loaded image or installed files, against the archive.
const PACKAGE_RATIO: u64 = 5;

impl Installer {
    pub fn from_config(config: &Config) -> Self {
        let state_dir = &config.agent.state_dir;
        match &config.install.method {
            InstallMethod::Tarball(t) => Installer::Tarball(tarball::Tarball::new(t.clone())),
            InstallMethod::Compose(c) => {
                Installer::Compose(compose::Compose::new(c.clone(), state_dir))
            }
            InstallMethod::Deb(d) => Installer::Deb(deb::Deb::new(d.clone(), state_dir)),
        }
    }

    /// The release the host runs (points at, pins, has installed); None
    /// before the first install.
    pub fn current(&self) -> Option<Version> {
        match self {
            Installer::Tarball(t) => t.current(),
            Installer::Compose(c) => c.current(),
            Installer::Deb(d) => d.current(),
        }
    }

    /// Releases kept on the host, ascending: what it can switch to.
    pub fn kept(&self) -> Vec<Version> {
        match self {
            Installer::Tarball(t) => t.releases(),
            Installer::Compose(c) => c.releases(),
            Installer::Deb(d) => d.releases(),
        }
    }

    /// The marker of a release put in place, if there is one; Err when
    /// something is there that rollgate did not put.
    pub async fn marker(&self, v: &Version) -> Result<Option<Marker>, String> {
        match self {
            Installer::Tarball(t) => t.marker(v),
            Installer::Compose(c) => c.marker(v).await,
            Installer::Deb(d) => d.marker(v),
        }
    }

    /// Where a release's files are, when the method has a directory per
    /// release (the exec service runs from it; plugins are compared in it).
    pub fn release_dir(&self, v: &Version) -> Option<PathBuf> {
        match self {
            Installer::Tarball(t) => Some(t.release_dir(v)),
            Installer::Compose(_) | Installer::Deb(_) => None,
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
            Installer::Compose(_) | Installer::Deb(_) => size.saturating_mul(PACKAGE_RATIO),
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
            Installer::Compose(c) => c.put_in_place(v, marker, artifact, limits.max_bytes).await,
            Installer::Deb(d) => d.put_in_place(v, marker, artifact).await,
        }
    }

    /// Makes `v` the release the host runs, durable when it returns:
    /// tarball and compose atomically (a crash leaves the old or the new
    /// one); deb through dpkg, whose cut-off runs `repair` finishes.
    pub async fn switch(&self, v: &Version) -> Result<(), String> {
        match self {
            Installer::Tarball(t) => t.switch(v).map_err(|e| e.to_string()),
            Installer::Compose(c) => c.switch(v).map_err(|e| e.to_string()),
            Installer::Deb(d) => d.switch(v).await,
        }
    }

    /// After a crash, before recovery: puts the method's own state back in
    /// order (deb: `dpkg --configure -a` for a cut-off dpkg run).
    pub async fn repair(&self) {
        if let Installer::Deb(d) = self {
            d.repair().await;
        }
    }

    /// The pid file of a command the method runs that changes the host.
    pub fn child_record(&self) -> Option<&Path> {
        match self {
            Installer::Deb(d) => Some(d.child_record()),
            _ => None,
        }
    }

    /// Removes releases beyond what the method keeps; never `current`,
    /// `previous`, or any newer than current (staged for a later hop). Runs
    /// off the async runtime: removing a release tree takes a while.
    pub async fn prune(&self, current: &Version, previous: Option<&Version>) {
        match self {
            Installer::Tarball(t) => t.prune(current, previous).await,
            Installer::Compose(c) => c.prune(current, previous).await,
            Installer::Deb(d) => d.prune(current, previous).await,
        }
    }

    /// After a crash cut a stage off: removes what it left half-made.
    pub fn clean_leftovers(&self) {
        match self {
            Installer::Tarball(t) => t.clean_leftovers(),
            Installer::Compose(_) => {}
            Installer::Deb(d) => d.clean_leftovers(),
        }
    }

    /// Free bytes where releases go.
    pub fn free_bytes(&self) -> Option<u64> {
        free_bytes(self.place())
    }

    /// Where releases go, for disk checks (compose: the markers; the
    /// engine keeps images in its own root).
    pub fn place(&self) -> &Path {
        match self {
            Installer::Tarball(t) => &t.config().root,
            Installer::Compose(c) => &c.config().project_dir,
            Installer::Deb(d) => &d.config().cache_dir,
        }
    }

    /// Where a staged release's files are for a rehearsal, and its image:
    /// tarball, its release directory; deb, the package unpacked into
    /// `scratch` (dpkg-deb -x, nothing installed); compose, the image
    /// reference (the rehearsal command runs a container of it).
    pub async fn for_rehearsal(
        &self,
        v: &Version,
        scratch: &Path,
    ) -> Result<(Option<PathBuf>, Option<String>), String> {
        match self {
            Installer::Tarball(t) => Ok((Some(t.release_dir(v)), None)),
            Installer::Compose(c) => Ok((None, Some(c.reference(v)))),
            Installer::Deb(d) => d.unpack_into(v, scratch).await.map(|p| (Some(p), None)),
        }
    }

    /// Where the running release's custom plugin dirs are.
    pub fn current_dir(&self) -> Option<PathBuf> {
        match self {
            Installer::Tarball(t) => Some(t.current_link()),
            Installer::Compose(_) | Installer::Deb(_) => None,
        }
    }

    /// The version installed, as the install method (not the gateway) says:
    /// the running container's image tag, dpkg's version, the `current`
    /// link. `rollgate status` shows it beside the gateway's own.
    pub fn artifact_version(&self, process: &ProcessStatus) -> Option<String> {
        match self {
            Installer::Compose(c) => match process {
                ProcessStatus::Running {
                    image: Some(image), ..
                } => Some(
                    image
                        .strip_prefix(&format!("{}:", c.config().image))
                        .unwrap_or(image)
                        .to_string(),
                ),
                _ => None,
            },
            Installer::Deb(d) => d.state().version.map(|v| v.to_string()),
            Installer::Tarball(t) => t.current().map(|v| v.to_string()),
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

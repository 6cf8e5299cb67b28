//! The `deb` install method: a release is a `.deb` kept in the agent's cache
//! (`<cache_dir>/<version>.deb` and its marker); the release the host runs is
//! what dpkg says is installed. Switching installs the cached package with
//! the configured dpkg (`--unpack`, then `--configure`: what `dpkg -i` does,
//! in two steps so a crash between them is one dpkg repairs with
//! `--configure -a`). The previous package stays cached: a rollback needs no
//! transfer.
//!
//! Debian versions map to release versions: the epoch and the Debian
//! revision are dropped, and `~` (which sorts a pre-release first in dpkg)
//! reads as `-`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use rollgate::outcome::FailureCode;
use rollgate::version::Version;

use super::tarball::doomed_releases;
use super::{Marker, Placed};
use crate::command;
use crate::config::DebConfig;
use crate::op::StepError;

/// How long one dpkg run may take.
const DPKG_TIMEOUT: Duration = Duration::from_secs(600);
/// Prefix of packages being copied into the cache.
const PARTIAL: &str = ".partial-";

/// What dpkg says about the package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageState {
    /// `installed`, `unpacked`, `half-configured`, `not-installed`, ...
    pub status: String,
    pub version: Option<Version>,
}

impl PackageState {
    /// Installed and configured: a definite version.
    pub fn installed(&self) -> Option<&Version> {
        self.version.as_ref().filter(|_| self.status == "installed")
    }

    /// Left between states by a cut-off dpkg run.
    pub fn half_done(&self) -> bool {
        !matches!(
            self.status.as_str(),
            "installed" | "not-installed" | "config-files"
        )
    }
}

#[derive(Debug)]
pub struct Deb {
    cfg: DebConfig,
    /// The running dpkg's pid file (ended after a crash).
    child: PathBuf,
    /// dpkg-query's answer and the status file's mtime it was read at.
    cached: Mutex<Option<(SystemTime, PackageState)>>,
}

/// `1:3.4.0~rc.1-2` → 3.4.0-rc.1.
pub fn release_version(deb: &str) -> Option<Version> {
    let no_epoch = deb.split_once(':').map_or(deb, |(_, r)| r);
    let upstream = no_epoch.rsplit_once('-').map_or(no_epoch, |(u, _)| u);
    upstream.replace('~', "-").parse().ok()
}

impl Deb {
    pub fn new(cfg: DebConfig, state_dir: &Path) -> Self {
        Deb {
            cfg,
            child: state_dir.join("dpkg.pid"),
            cached: Mutex::new(None),
        }
    }

    pub fn config(&self) -> &DebConfig {
        &self.cfg
    }

    fn package_path(&self, v: &Version) -> PathBuf {
        self.cfg.cache_dir.join(format!("{v}.deb"))
    }

    fn marker_path(&self, v: &Version) -> PathBuf {
        self.cfg.cache_dir.join(format!("{v}.json"))
    }

    /// What dpkg says, read again only when its status file changed.
    pub fn state(&self) -> PackageState {
        let status_file = self.cfg.admin_dir.join("status");
        let mtime = std::fs::metadata(&status_file)
            .and_then(|m| m.modified())
            .ok();
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(m), Some((at, st))) = (mtime, cached.as_ref())
            && *at == m
        {
            return st.clone();
        }
        let st = self.query();
        if let Some(m) = mtime {
            *cached = Some((m, st.clone()));
        }
        st
    }

    fn forget(&self) {
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn query(&self) -> PackageState {
        let out = std::process::Command::new(&self.cfg.dpkg_query[0])
            .args(&self.cfg.dpkg_query[1..])
            .args(["-W", "-f=${Status}\t${Version}\n", &self.cfg.package])
            .stdin(std::process::Stdio::null())
            .output();
        let not_installed = PackageState {
            status: "not-installed".into(),
            version: None,
        };
        match out {
            Ok(o) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout);
                let line = text.lines().next().unwrap_or("");
                let (status, version) = line.split_once('\t').unwrap_or((line, ""));
                PackageState {
                    // "install ok installed": the last word is the state.
                    status: status.rsplit(' ').next().unwrap_or("").to_string(),
                    version: release_version(version.trim()),
                }
            }
            // dpkg-query exits 1 for a package it has never seen.
            Ok(_) => not_installed,
            Err(e) => {
                tracing::warn!(error = %e, "cannot run dpkg-query");
                PackageState {
                    status: format!("unknown ({e})"),
                    version: None,
                }
            }
        }
    }

    /// The installed, configured version.
    pub fn current(&self) -> Option<Version> {
        self.state().installed().cloned()
    }

    /// Cached packages with their marker, ascending.
    pub fn releases(&self) -> Vec<Version> {
        let Ok(entries) = std::fs::read_dir(&self.cfg.cache_dir) else {
            return Vec::new();
        };
        let mut out: Vec<Version> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json")?.parse().ok())
            .filter(|v| self.package_path(v).is_file())
            .collect();
        out.sort();
        out
    }

    pub fn marker(&self, v: &Version) -> Result<Option<Marker>, String> {
        let path = self.marker_path(v);
        match std::fs::read(&path) {
            Ok(_) if !self.package_path(v).is_file() => Ok(None),
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| format!("{} is damaged ({e}); remove it", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Checks the package's name and version with dpkg-deb, then moves it
    /// into the cache with its marker.
    pub async fn put_in_place(
        &self,
        v: &Version,
        marker: &Marker,
        artifact: &Path,
    ) -> Result<Placed, StepError> {
        let mut argv = self.cfg.dpkg_deb.clone();
        argv.extend([
            "-f".into(),
            artifact.display().to_string(),
            "Package".into(),
            "Version".into(),
        ]);
        let out = command::run_argv(&argv, Duration::from_secs(60))
            .await
            .map_err(|e| {
                StepError::new(
                    FailureCode::BadArchive,
                    format!("not a Debian package: {}", e.message),
                )
                .detail(e.detail)
            })?;
        let fields = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| {
            fields
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let (package, version) = (field("Package"), field("Version"));
        if package != self.cfg.package {
            return Err(StepError::new(
                FailureCode::BadArchive,
                format!(
                    "the package is {package:?}; this host installs {:?}",
                    self.cfg.package
                ),
            ));
        }
        if release_version(&version).as_ref() != Some(v) {
            return Err(StepError::new(
                FailureCode::BadArchive,
                format!("the package's version is {version:?}, not release {v}"),
            ));
        }
        let dir = &self.cfg.cache_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| StepError::internal(format!("cannot create {}: {e}", dir.display())))?;
        let partial = dir.join(format!("{PARTIAL}{v}.deb"));
        let dest = self.package_path(v);
        let (from, to, fin) = (artifact.to_path_buf(), partial.clone(), dest.clone());
        let bytes = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
            // A rename when the cache shares the staging file system, a copy
            // when it does not; either way the package appears whole.
            let bytes = match std::fs::rename(&from, &to) {
                Ok(()) => std::fs::metadata(&to)?.len(),
                Err(_) => std::fs::copy(&from, &to)?,
            };
            std::fs::File::open(&to)?.sync_all()?;
            std::fs::rename(&to, &fin)?;
            Ok(bytes)
        })
        .await
        .map_err(|e| StepError::internal(format!("copy task failed: {e}")))?
        .map_err(|e| {
            let _ = std::fs::remove_file(&partial);
            StepError::internal(format!("cannot put the package in {}: {e}", dir.display()))
        })?;
        let text = serde_json::to_vec(marker).map_err(|e| StepError::internal(e.to_string()))?;
        rollgate::fsx::write_atomic(&self.marker_path(v), &text)
            .map_err(|e| StepError::internal(format!("cannot write the package marker: {e}")))?;
        Ok(Placed {
            location: dest.display().to_string(),
            bytes,
        })
    }

    /// Installs the cached package of `v`.
    pub async fn switch(&self, v: &Version) -> Result<(), String> {
        let pkg = self.package_path(v);
        if !pkg.is_file() {
            return Err(format!("{} is not in the cache", pkg.display()));
        }
        let result = async {
            self.dpkg(&["--unpack", &pkg.display().to_string()]).await?;
            if crate::failpoint::named("deb:unpacked") {
                crate::failpoint::kill_with_child("deb:unpacked", &self.child);
            }
            self.dpkg(&["--configure", &self.cfg.package]).await
        }
        .await;
        self.forget();
        result?;
        match self.state().installed() {
            Some(now) if now == v => Ok(()),
            other => Err(format!(
                "dpkg installed {pkg:?}, but dpkg-query says {other:?}",
                pkg = pkg.display()
            )),
        }
    }

    /// The cached package of `v` unpacked (not installed) into `dir`.
    pub async fn unpack_into(&self, v: &Version, dir: &Path) -> Result<PathBuf, String> {
        let pkg = self.package_path(v);
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut argv = self.cfg.dpkg_deb.clone();
        argv.extend([
            "-x".into(),
            pkg.display().to_string(),
            dir.display().to_string(),
        ]);
        command::run_argv(&argv, Duration::from_secs(300))
            .await
            .map_err(|e| format!("{}: {}", e.message, e.detail))?;
        Ok(dir.to_path_buf())
    }

    /// After a crash: finishes what a cut-off dpkg run left unconfigured.
    pub async fn repair(&self) {
        let st = self.state();
        if !st.half_done() {
            return;
        }
        tracing::warn!(package = %self.cfg.package, status = %st.status, "the package was left half-installed; running dpkg --configure -a");
        if let Err(e) = self.dpkg(&["--configure", "-a"]).await {
            tracing::error!(error = %e, "dpkg --configure -a failed");
        }
        self.forget();
    }

    async fn dpkg(&self, args: &[&str]) -> Result<(), String> {
        let mut argv = self.cfg.dpkg.clone();
        argv.extend(args.iter().map(|a| a.to_string()));
        command::run_tracked(&argv, DPKG_TIMEOUT, &self.child, &[])
            .await
            .map(|_| ())
            .map_err(|e| format!("{}: {}", e.message, e.detail))
    }

    /// The pid file of a running dpkg.
    pub fn child_record(&self) -> &Path {
        &self.child
    }

    pub async fn prune(&self, current: &Version, previous: Option<&Version>) {
        for v in doomed_releases(&self.releases(), current, previous, self.cfg.keep_packages) {
            let _ = std::fs::remove_file(self.marker_path(&v));
            match std::fs::remove_file(self.package_path(&v)) {
                Ok(()) => tracing::info!(version = %v, "removed an old package from the cache"),
                Err(e) => tracing::warn!(version = %v, error = %e, "cannot remove an old package"),
            }
        }
    }

    pub fn clean_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.cfg.cache_dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(PARTIAL) {
                tracing::info!(path = %e.path().display(), "removing a half-copied package");
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_versions_map_to_release_versions() {
        // A pre-release is spelt with `~` in a .deb (it sorts first).
        let v: Version = "3.4.0-rc.1".parse().unwrap();
        assert_eq!(release_version("3.4.0~rc.1"), Some(v));
        assert_eq!(release_version("1:3.4.0-2").unwrap().to_string(), "3.4.0");
        assert_eq!(release_version("3.4.0").unwrap().to_string(), "3.4.0");
        assert_eq!(release_version("garbage"), None);
    }

    #[test]
    fn package_states() {
        let st = |s: &str| PackageState {
            status: s.into(),
            version: release_version("3.4.0"),
        };
        assert!(st("installed").installed().is_some());
        assert!(st("unpacked").installed().is_none());
        assert!(st("unpacked").half_done());
        assert!(st("half-configured").half_done());
        assert!(!st("installed").half_done());
        assert!(!st("not-installed").half_done());
    }
}

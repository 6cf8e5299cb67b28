//! The release manifest (`manifest.toml` at the root of every release): the only
//! source of a running binary's version, schema level and injected faults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cp::migrations;
use crate::version::Version;

/// Name of the manifest file inside a release directory.
pub const FILE_NAME: &str = "manifest.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The version this release reports everywhere (status, heartbeats).
    pub version: String,
    /// The highest schema migration the CP of this release knows and applies.
    pub migration_level: u32,
    /// Deliberate failures, for testing an upgrader against bad releases.
    #[serde(default, skip_serializing_if = "Faults::is_none")]
    pub faults: Faults,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// The DP loads its config but never reports ready.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dp_never_ready: bool,
    /// The DP exits with code 1 this long after it first becomes ready.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub dp_exit_after_ready: Option<Duration>,
    /// The CP's newest migration fails at its second statement (its transaction
    /// rolls back, the CP exits 1).
    #[serde(default, skip_serializing_if = "is_false")]
    pub cp_fail_migration: bool,
}

fn is_false(b: &bool) -> bool {
    !b
}

impl Faults {
    pub fn is_none(&self) -> bool {
        self == &Faults::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot locate the release manifest: {0}")]
    NoExecutable(#[source] std::io::Error),
    #[error(
        "release manifest {path} not found (a release keeps it at <release>/{FILE_NAME}, beside bin/; pass --manifest PATH to run a binary outside a release)"
    )]
    Missing { path: PathBuf },
    #[error("cannot read release manifest {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid release manifest {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid release manifest {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// A loaded, validated manifest with the version already parsed.
#[derive(Debug, Clone)]
pub struct Release {
    pub manifest: Manifest,
    pub version: Version,
}

impl Release {
    /// Loads `explicit`, or else `<dir of the executable>/../manifest.toml`.
    ///
    /// The executable path is the resolved one (`/proc/self/exe`), so a binary
    /// started through `current -> releases/<v>` reads the manifest of the release
    /// it really belongs to, even after the symlink has moved on.
    pub fn locate(explicit: Option<&Path>) -> Result<Release, ManifestError> {
        let path = match explicit {
            Some(path) => path.to_path_buf(),
            None => default_path()?,
        };
        Release::load(&path)
    }

    pub fn load(path: &Path) -> Result<Release, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ManifestError::Missing {
                    path: path.to_path_buf(),
                }
            } else {
                ManifestError::Read {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        let manifest: Manifest = toml::from_str(&text).map_err(|source| ManifestError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |reason: String| ManifestError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let version: Version = manifest
            .version
            .parse()
            .map_err(|e: crate::version::VersionError| invalid(e.to_string()))?;
        let max = migrations::highest();
        if !(1..=max).contains(&manifest.migration_level) {
            return Err(invalid(format!(
                "migration_level {} is outside 1..={max}",
                manifest.migration_level
            )));
        }
        if manifest.faults.cp_fail_migration && manifest.migration_level < 2 {
            return Err(invalid(
                "cp_fail_migration needs migration_level >= 2 (it breaks the release's newest migration)"
                    .into(),
            ));
        }
        Ok(Release { manifest, version })
    }
}

fn default_path() -> Result<PathBuf, ManifestError> {
    let exe = std::env::current_exe().map_err(ManifestError::NoExecutable)?;
    let release_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| Path::new("/"));
    Ok(release_dir.join(FILE_NAME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_round_trip_and_good_releases_have_no_faults_table() {
        let good = Manifest {
            version: "3.4.0".into(),
            migration_level: 2,
            faults: Faults::default(),
        };
        let text = toml::to_string(&good).unwrap();
        assert!(!text.contains("faults"), "{text}");
        let crashy = Manifest {
            faults: Faults {
                dp_exit_after_ready: Some(Duration::from_secs(3)),
                ..Faults::default()
            },
            ..good
        };
        let text = toml::to_string(&crashy).unwrap();
        assert!(text.contains("dp_exit_after_ready = \"3s\""), "{text}");
        assert_eq!(toml::from_str::<Manifest>(&text).unwrap(), crashy);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let text = "version = \"3.4.0\"\nmigration_level = 2\ncolour = \"blue\"\n";
        assert!(toml::from_str::<Manifest>(text).is_err());
    }
}

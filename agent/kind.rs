//! The agent's steps as types: what kinds there are, the phases each one
//! journals as it passes its boundaries, and what a step intends, journalled
//! with its begin. Recovery after a crash decides from these values
//! (`crate::recover::plan`), never from spelled strings, so a typo cannot
//! silently change what a restarted agent does.

use rollgate::version::Version;
use serde::{Deserialize, Serialize};

/// A step that changes the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Stage,
    Backup,
    Restore,
    Drain,
    Undrain,
    Install,
    Rollback,
    Rehearse,
}

impl StepKind {
    #[cfg(test)]
    pub const ALL: [StepKind; 8] = [
        StepKind::Stage,
        StepKind::Backup,
        StepKind::Restore,
        StepKind::Drain,
        StepKind::Undrain,
        StepKind::Install,
        StepKind::Rollback,
        StepKind::Rehearse,
    ];

    /// The phases this kind journals, in the order it passes them.
    #[cfg(test)]
    pub fn phases(self) -> &'static [Phase] {
        use Phase::*;
        match self {
            StepKind::Stage => &[Received, Unpacked],
            StepKind::Backup => &[Fingerprinted, Dumped, Published],
            StepKind::Restore => &[Stopped, Restored],
            StepKind::Drain => &[Marked, Drained],
            StepKind::Undrain => &[Ready],
            StepKind::Install => &[Stopped, Switched, Started, Gated, Reverting, Reverted],
            StepKind::Rollback => &[
                Stopped, Restored, Switched, Started, Gated, Reverting, Reverted,
            ],
            StepKind::Rehearse => &[ScratchCreated, Restored, Started, Checked],
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Stage => "stage",
            StepKind::Backup => "backup",
            StepKind::Restore => "restore",
            StepKind::Drain => "drain",
            StepKind::Undrain => "undrain",
            StepKind::Install => "install",
            StepKind::Rollback => "rollback",
            StepKind::Rehearse => "rehearse",
        }
    }
}

impl std::fmt::Display for StepKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step boundary, journalled (fsync) once passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Stage: the artifact is in the staging dir, verified.
    Received,
    /// Stage: the release is in place (published by rename).
    Unpacked,
    /// Backup: the write-freeze fingerprint is taken.
    Fingerprinted,
    /// Backup: pg_dump ran and was verified.
    Dumped,
    /// Backup: the backup directory is in place.
    Published,
    /// Drain: the host answers `drain` to its load balancer.
    Marked,
    /// Drain: the connections were waited for.
    Drained,
    /// Undrain: the host answers `ready`.
    Ready,
    /// The gateway is stopped.
    Stopped,
    /// The database is restored from a backup.
    Restored,
    /// The host points at the target release.
    Switched,
    /// The target release was started.
    Started,
    /// The target release passed its health gate.
    Gated,
    /// A revert to the previous release began.
    Reverting,
    /// The host points at the previous release again.
    Reverted,
    /// Rehearse: the scratch database exists (it may be half restored).
    ScratchCreated,
    /// Rehearse: one hop's CP passed its checks.
    Checked,
}

/// What a step is about to do: journalled with its begin, so a restarted
/// agent knows how to finish or undo it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Intent {
    Stage {
        version: Version,
        sha256: String,
        size: u64,
    },
    Backup {
        backup_id: String,
    },
    Restore {
        backup_id: String,
    },
    Drain {
        timeout_ms: u64,
    },
    Undrain,
    Install(SwapPlan),
    Rollback(SwapPlan),
    Rehearse {
        backup_id: String,
        hops: Vec<(Version, i64)>,
    },
}

impl Intent {
    pub fn kind(&self) -> StepKind {
        match self {
            Intent::Stage { .. } => StepKind::Stage,
            Intent::Backup { .. } => StepKind::Backup,
            Intent::Restore { .. } => StepKind::Restore,
            Intent::Drain { .. } => StepKind::Drain,
            Intent::Undrain => StepKind::Undrain,
            Intent::Install(_) => StepKind::Install,
            Intent::Rollback(_) => StepKind::Rollback,
            Intent::Rehearse { .. } => StepKind::Rehearse,
        }
    }
}

/// An Install or Rollback: from which release to which, and how to judge it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapPlan {
    pub previous: Option<Version>,
    pub target: Version,
    /// CP rollback: the backup restored while the gateway is stopped.
    pub restore: Option<String>,
    pub min_healthy_ms: u64,
    pub health_timeout_ms: u64,
}

impl SwapPlan {
    pub fn min_healthy(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.min_healthy_ms)
    }

    pub fn health_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.health_timeout_ms)
    }
}

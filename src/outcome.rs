//! How a step that changes a host ends, as both sides keep it: the agent
//! produces it and journals it, the coordinator receives it and journals
//! it too. These are rollgate's own types: the wire form (`pb`) is converted
//! to and from them in `crate::convert` only, and what is written to a
//! journal is these structs, never a generated one, so a field renamed on
//! the wire cannot silently blank a field of an old journal.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::fingerprint::Fingerprint;
use crate::version::Version;

/// Why a step failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailureCode {
    /// The request was malformed or names something that does not exist.
    InvalidArgument,
    /// The host is not in a state where the step can run.
    Precondition,
    /// The artifact's SHA-256 or size differs from the catalog's.
    ChecksumMismatch,
    /// The archive is malformed, hostile or a decompression bomb.
    BadArchive,
    /// Not enough free disk.
    DiskFull,
    /// The artifact could not be read or downloaded.
    FetchFailed,
    /// A configured command failed.
    CommandFailed,
    /// A backup or restore could not be verified.
    VerifyFailed,
    /// The gateway did not stop, or did not start.
    ServiceFailed,
    /// The new release did not pass the health gate (the agent reverted).
    HealthGateFailed,
    /// A deadline passed.
    Timeout,
    /// The agent stopped while the step ran; recovery finished or undid it.
    Interrupted,
    /// A file-system or other local error.
    Internal,
    // The codes below are the coordinator's own: no agent sends them.
    /// The agent could not be reached, or its stream broke for good: the
    /// step's outcome is unknown.
    AgentLost,
    /// The agent refused the call itself (bad request, not allowed).
    Refused,
    /// The coordinator could not write its rollout journal.
    Journal,
}

impl FailureCode {
    /// The name used in messages and JSON, e.g. `HEALTH_GATE_FAILED`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCode::InvalidArgument => "INVALID_ARGUMENT",
            FailureCode::Precondition => "PRECONDITION",
            FailureCode::ChecksumMismatch => "CHECKSUM_MISMATCH",
            FailureCode::BadArchive => "BAD_ARCHIVE",
            FailureCode::DiskFull => "DISK_FULL",
            FailureCode::FetchFailed => "FETCH_FAILED",
            FailureCode::CommandFailed => "COMMAND_FAILED",
            FailureCode::VerifyFailed => "VERIFY_FAILED",
            FailureCode::ServiceFailed => "SERVICE_FAILED",
            FailureCode::HealthGateFailed => "HEALTH_GATE_FAILED",
            FailureCode::Timeout => "TIMEOUT",
            FailureCode::Interrupted => "INTERRUPTED",
            FailureCode::Internal => "INTERNAL",
            FailureCode::AgentLost => "AGENT_LOST",
            FailureCode::Refused => "REFUSED",
            FailureCode::Journal => "JOURNAL",
        }
    }
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step that ended without success, with what the host looks like after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub code: FailureCode,
    /// One line: what failed.
    pub message: String,
    /// More: command output, the last probe, the gateway's last log lines.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// The step's changes were undone.
    #[serde(default)]
    pub reverted: bool,
    /// The release current on the host afterwards; None when none (or, for
    /// a failure the coordinator made up, unknown).
    #[serde(default)]
    pub active_version: Option<Version>,
    /// Whether the gateway runs and passes its probes afterwards.
    #[serde(default)]
    pub gateway_healthy: bool,
}

impl Failure {
    pub fn new(code: FailureCode, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            detail: String::new(),
            reverted: false,
            active_version: None,
            gateway_healthy: false,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

/// What a successful step hands back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum StepOutput {
    Stage(Staged),
    Backup(BackupTaken),
    Restore(Restored),
    Drain(Drained),
    Undrain,
    Install(Installed),
    Rollback(Installed),
    Rehearse(Rehearsed),
}

/// A CP upgrade rehearsed on a scratch copy of production.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rehearsed {
    pub backup_id: String,
    pub restore_ms: u64,
    pub hops: Vec<RehearsedHop>,
}

/// One hop of a rehearsal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RehearsedHop {
    pub version: Version,
    pub schema_before: i64,
    pub schema_after: i64,
    /// Start of the rehearsal CP → its schema reached `schema_after`.
    pub migration_ms: u64,
    /// Start of the rehearsal CP → it answered ready.
    pub ready_ms: u64,
    /// Its graceful stop.
    pub stop_ms: u64,
    pub export_ok: bool,
    pub export_bytes: u64,
    pub reported_version: String,
}

/// A release put on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    pub version: Version,
    /// Where it is on the host (a release directory, an image, a package).
    pub location: String,
    /// Bytes received.
    pub bytes: u64,
    /// The release was there already with this checksum.
    pub already_present: bool,
}

/// A verified backup on a CP host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupTaken {
    pub backup_id: String,
    /// Its directory on the host.
    pub dir: String,
    /// Every file, as written in its MANIFEST.
    pub files: Vec<BackupFile>,
    /// The write-freeze fingerprint taken with it.
    pub fingerprint: Fingerprint,
}

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupFile {
    /// Relative to the backup directory.
    pub path: String,
    pub size: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

/// A database put back from a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    pub backup_id: String,
    /// The declarative export afterwards equals the backed-up one.
    pub export_matches: bool,
}

/// A host taken out of its load balancer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drained {
    /// Established connections left when the wait ended.
    pub remaining_connections: u32,
    /// The load balancer asked agent-check after the change.
    pub lb_acknowledged: bool,
    pub waited_ms: u64,
}

/// A release switched to and gated (Install or Rollback).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    /// The release current before the step.
    pub previous_version: Option<Version>,
    pub version: Version,
    /// The gateway's pid, 0 when unknown.
    pub pid: u32,
    pub healthy_for_ms: u64,
    /// A CP rollback that restored the database: how that went.
    pub restore: Option<Restored>,
}

/// How a step ended.
pub type StepResult = Result<StepOutput, Failure>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_read_as_their_names() {
        let j = serde_json::to_string(&FailureCode::HealthGateFailed).unwrap();
        assert_eq!(j, "\"HEALTH_GATE_FAILED\"");
        assert_eq!(
            FailureCode::HealthGateFailed.to_string(),
            "HEALTH_GATE_FAILED"
        );
        let back: FailureCode = serde_json::from_str(&j).unwrap();
        assert_eq!(back, FailureCode::HealthGateFailed);
    }
}

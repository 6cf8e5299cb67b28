//! Conversions between protobuf messages and domain types. Anything arriving
//! over the wire is checked here, so the rest of the code deals in valid values.

use crate::fingerprint::{Difference, Fingerprint, Reading};
use crate::lb::LbState;
use crate::outcome::{
    BackupFile, BackupTaken, Drained, Failure, FailureCode, Installed, Rehearsed, RehearsedHop,
    Restored, Staged, StepOutput, StepResult,
};
use crate::pb;
use crate::role::Role;
use crate::version::Version;

/// A wire value that does not make sense.
#[derive(Debug, Clone, thiserror::Error)]
#[error("bad {field} in {message}: {reason}")]
pub struct WireError {
    pub message: &'static str,
    pub field: &'static str,
    pub reason: String,
}

impl From<Role> for pb::Role {
    fn from(r: Role) -> Self {
        match r {
            Role::Cp => pb::Role::Cp,
            Role::Dp => pb::Role::Dp,
        }
    }
}

/// The drain state in a health report. An agent that does not say is
/// taken at its word only when it says: unknown values read as drained, so
/// a host is never shown in rotation on a guess.
pub fn lb_from_wire(raw: i32) -> LbState {
    match pb::DrainState::try_from(raw) {
        Ok(pb::DrainState::Ready) => LbState::InRotation,
        Ok(pb::DrainState::Maint) => LbState::Maint,
        _ => LbState::Drained,
    }
}

/// The role in a Hello answer.
pub fn role_from_wire(raw: i32, message: &'static str) -> Result<Role, WireError> {
    match pb::Role::try_from(raw) {
        Ok(pb::Role::Cp) => Ok(Role::Cp),
        Ok(pb::Role::Dp) => Ok(Role::Dp),
        _ => Err(WireError {
            message,
            field: "role",
            reason: format!("unknown role {raw}"),
        }),
    }
}

/// An optional version: empty means "none".
pub fn optional_version(
    raw: &str,
    message: &'static str,
    field: &'static str,
) -> Result<Option<Version>, WireError> {
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse()
        .map(Some)
        .map_err(|e: crate::version::ParseVersionError| WireError {
            message,
            field,
            reason: e.to_string(),
        })
}

// === step outcomes ===

impl From<FailureCode> for pb::FailureCode {
    fn from(c: FailureCode) -> Self {
        match c {
            FailureCode::InvalidArgument => pb::FailureCode::InvalidArgument,
            FailureCode::Precondition => pb::FailureCode::Precondition,
            FailureCode::ChecksumMismatch => pb::FailureCode::ChecksumMismatch,
            FailureCode::BadArchive => pb::FailureCode::BadArchive,
            FailureCode::DiskFull => pb::FailureCode::DiskFull,
            FailureCode::FetchFailed => pb::FailureCode::FetchFailed,
            FailureCode::CommandFailed => pb::FailureCode::CommandFailed,
            FailureCode::VerifyFailed => pb::FailureCode::VerifyFailed,
            FailureCode::ServiceFailed => pb::FailureCode::ServiceFailed,
            FailureCode::HealthGateFailed => pb::FailureCode::HealthGateFailed,
            FailureCode::Timeout => pb::FailureCode::Timeout,
            FailureCode::Interrupted => pb::FailureCode::Interrupted,
            // The coordinator's own codes never travel; an agent that made
            // one up would say "internal".
            FailureCode::Internal
            | FailureCode::AgentLost
            | FailureCode::Refused
            | FailureCode::Journal => pb::FailureCode::Internal,
        }
    }
}

/// A wire failure code; one this build does not know reads as INTERNAL.
pub fn failure_code_from_wire(raw: i32) -> FailureCode {
    match pb::FailureCode::try_from(raw) {
        Ok(pb::FailureCode::InvalidArgument) => FailureCode::InvalidArgument,
        Ok(pb::FailureCode::Precondition) => FailureCode::Precondition,
        Ok(pb::FailureCode::ChecksumMismatch) => FailureCode::ChecksumMismatch,
        Ok(pb::FailureCode::BadArchive) => FailureCode::BadArchive,
        Ok(pb::FailureCode::DiskFull) => FailureCode::DiskFull,
        Ok(pb::FailureCode::FetchFailed) => FailureCode::FetchFailed,
        Ok(pb::FailureCode::CommandFailed) => FailureCode::CommandFailed,
        Ok(pb::FailureCode::VerifyFailed) => FailureCode::VerifyFailed,
        Ok(pb::FailureCode::ServiceFailed) => FailureCode::ServiceFailed,
        Ok(pb::FailureCode::HealthGateFailed) => FailureCode::HealthGateFailed,
        Ok(pb::FailureCode::Timeout) => FailureCode::Timeout,
        Ok(pb::FailureCode::Interrupted) => FailureCode::Interrupted,
        _ => FailureCode::Internal,
    }
}

fn version_text(v: &Option<Version>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

impl From<Failure> for pb::Failure {
    fn from(f: Failure) -> Self {
        pb::Failure {
            code: pb::FailureCode::from(f.code) as i32,
            message: f.message,
            detail: f.detail,
            reverted: f.reverted,
            active_version: version_text(&f.active_version),
            gateway_healthy: f.gateway_healthy,
        }
    }
}

impl TryFrom<pb::Failure> for Failure {
    type Error = WireError;

    fn try_from(f: pb::Failure) -> Result<Self, WireError> {
        Ok(Failure {
            code: failure_code_from_wire(f.code),
            active_version: optional_version(&f.active_version, "Failure", "active_version")?,
            message: f.message,
            detail: f.detail,
            reverted: f.reverted,
            gateway_healthy: f.gateway_healthy,
        })
    }
}

impl From<BackupFile> for pb::BackupFile {
    fn from(f: BackupFile) -> Self {
        pb::BackupFile {
            path: f.path,
            size: f.size,
            sha256: f.sha256,
        }
    }
}

impl From<pb::BackupFile> for BackupFile {
    fn from(f: pb::BackupFile) -> Self {
        BackupFile {
            path: f.path,
            size: f.size,
            sha256: f.sha256,
        }
    }
}

impl From<Fingerprint> for pb::Fingerprint {
    fn from(f: Fingerprint) -> Self {
        pb::Fingerprint {
            tables: f
                .tables
                .into_iter()
                .map(|(table, writes)| pb::TableWrites { table, writes })
                .collect(),
            export_sha256: f.export_sha256.unwrap_or_default(),
            excluded_tables: f.excluded_tables,
            taken_at_unix_ms: f.taken_at_ms,
        }
    }
}

impl From<pb::Fingerprint> for Fingerprint {
    fn from(f: pb::Fingerprint) -> Self {
        Fingerprint {
            tables: f.tables.into_iter().map(|t| (t.table, t.writes)).collect(),
            export_sha256: Some(f.export_sha256).filter(|s| !s.is_empty()),
            excluded_tables: f.excluded_tables,
            taken_at_ms: f.taken_at_unix_ms,
        }
    }
}

impl From<Reading> for pb::FingerprintResponse {
    fn from(r: Reading) -> Self {
        let (baseline, diff) = match r.baseline {
            Some((b, d)) => (Some(b.into()), d),
            None => (None, Difference::default()),
        };
        pb::FingerprintResponse {
            current: Some(r.current.into()),
            baseline,
            changed_tables: diff.changed_tables,
            export_changed: diff.export_changed,
        }
    }
}

impl TryFrom<pb::FingerprintResponse> for Reading {
    type Error = WireError;

    fn try_from(r: pb::FingerprintResponse) -> Result<Self, WireError> {
        let current = r.current.ok_or(WireError {
            message: "FingerprintResponse",
            field: "current",
            reason: "missing".into(),
        })?;
        Ok(Reading {
            current: current.into(),
            baseline: r.baseline.map(|b| {
                (
                    b.into(),
                    Difference {
                        changed_tables: r.changed_tables,
                        export_changed: r.export_changed,
                    },
                )
            }),
        })
    }
}

impl From<Restored> for pb::RestoreResult {
    fn from(r: Restored) -> Self {
        pb::RestoreResult {
            backup_id: r.backup_id,
            export_matches: r.export_matches,
        }
    }
}

impl From<pb::RestoreResult> for Restored {
    fn from(r: pb::RestoreResult) -> Self {
        Restored {
            backup_id: r.backup_id,
            export_matches: r.export_matches,
        }
    }
}

fn installed_to_wire(i: Installed) -> pb::InstallResult {
    pb::InstallResult {
        previous_version: version_text(&i.previous_version),
        version: i.version.to_string(),
        pid: i.pid,
        healthy_for_ms: i.healthy_for_ms,
        restore: i.restore.map(Into::into),
    }
}

fn installed_from_wire(i: pb::InstallResult) -> Result<Installed, WireError> {
    Ok(Installed {
        previous_version: optional_version(
            &i.previous_version,
            "InstallResult",
            "previous_version",
        )?,
        version: required_version(&i.version, "InstallResult", "version")?,
        pid: i.pid,
        healthy_for_ms: i.healthy_for_ms,
        restore: i.restore.map(Into::into),
    })
}

fn required_version(
    raw: &str,
    message: &'static str,
    field: &'static str,
) -> Result<Version, WireError> {
    optional_version(raw, message, field)?.ok_or(WireError {
        message,
        field,
        reason: "missing".into(),
    })
}

impl From<StepOutput> for pb::success::Detail {
    fn from(o: StepOutput) -> Self {
        use pb::success::Detail;
        match o {
            StepOutput::Stage(s) => Detail::Stage(pb::StageResult {
                version: s.version.to_string(),
                release_dir: s.location,
                bytes: s.bytes,
                already_present: s.already_present,
            }),
            StepOutput::Backup(b) => Detail::Backup(pb::BackupResult {
                backup_id: b.backup_id,
                dir: b.dir,
                files: b.files.into_iter().map(Into::into).collect(),
                fingerprint: Some(b.fingerprint.into()),
            }),
            StepOutput::Restore(r) => Detail::Restore(r.into()),
            StepOutput::Drain(d) => Detail::Drain(pb::DrainResult {
                remaining_connections: d.remaining_connections,
                lb_acknowledged: d.lb_acknowledged,
                waited_ms: d.waited_ms,
            }),
            StepOutput::Undrain => Detail::Undrain(pb::UndrainResult {}),
            StepOutput::Install(i) => Detail::Install(installed_to_wire(i)),
            StepOutput::Rollback(i) => Detail::Rollback(installed_to_wire(i)),
            StepOutput::Rehearse(r) => Detail::Rehearse(pb::RehearseResult {
                backup_id: r.backup_id,
                restore_ms: r.restore_ms,
                hops: r
                    .hops
                    .into_iter()
                    .map(|h| pb::RehearsedHop {
                        version: h.version.to_string(),
                        schema_before: h.schema_before,
                        schema_after: h.schema_after,
                        migration_ms: h.migration_ms,
                        ready_ms: h.ready_ms,
                        stop_ms: h.stop_ms,
                        export_ok: h.export_ok,
                        export_bytes: h.export_bytes,
                        reported_version: h.reported_version,
                    })
                    .collect(),
            }),
        }
    }
}

impl TryFrom<pb::success::Detail> for StepOutput {
    type Error = WireError;

    fn try_from(d: pb::success::Detail) -> Result<Self, WireError> {
        use pb::success::Detail;
        Ok(match d {
            Detail::Stage(s) => StepOutput::Stage(Staged {
                version: required_version(&s.version, "StageResult", "version")?,
                location: s.release_dir,
                bytes: s.bytes,
                already_present: s.already_present,
            }),
            Detail::Backup(b) => StepOutput::Backup(BackupTaken {
                backup_id: b.backup_id,
                dir: b.dir,
                files: b.files.into_iter().map(Into::into).collect(),
                fingerprint: b.fingerprint.map(Into::into).unwrap_or_default(),
            }),
            Detail::Restore(r) => StepOutput::Restore(r.into()),
            Detail::Drain(d) => StepOutput::Drain(Drained {
                remaining_connections: d.remaining_connections,
                lb_acknowledged: d.lb_acknowledged,
                waited_ms: d.waited_ms,
            }),
            Detail::Undrain(_) => StepOutput::Undrain,
            Detail::Install(i) => StepOutput::Install(installed_from_wire(i)?),
            Detail::Rollback(i) => StepOutput::Rollback(installed_from_wire(i)?),
            Detail::Rehearse(r) => StepOutput::Rehearse(Rehearsed {
                backup_id: r.backup_id,
                restore_ms: r.restore_ms,
                hops: r
                    .hops
                    .into_iter()
                    .map(|h| {
                        Ok(RehearsedHop {
                            version: required_version(&h.version, "RehearsedHop", "version")?,
                            schema_before: h.schema_before,
                            schema_after: h.schema_after,
                            migration_ms: h.migration_ms,
                            ready_ms: h.ready_ms,
                            stop_ms: h.stop_ms,
                            export_ok: h.export_ok,
                            export_bytes: h.export_bytes,
                            reported_version: h.reported_version,
                        })
                    })
                    .collect::<Result<_, WireError>>()?,
            }),
        })
    }
}

/// A step's result on the wire.
pub fn result_to_wire(r: StepResult, replayed: bool) -> pb::OperationResult {
    use pb::operation_result::Outcome;
    pb::OperationResult {
        outcome: Some(match r {
            Ok(o) => Outcome::Success(pb::Success {
                detail: Some(o.into()),
            }),
            Err(f) => Outcome::Failure(f.into()),
        }),
        replayed,
    }
}

/// A step's result from the wire, and whether the agent replayed it.
pub fn result_from_wire(r: pb::OperationResult) -> Result<(StepResult, bool), WireError> {
    use pb::operation_result::Outcome;
    let missing = |field| WireError {
        message: "OperationResult",
        field,
        reason: "missing".into(),
    };
    let result = match r.outcome.ok_or_else(|| missing("outcome"))? {
        Outcome::Success(s) => Ok(s.detail.ok_or_else(|| missing("detail"))?.try_into()?),
        Outcome::Failure(f) => Err(f.try_into()?),
    };
    Ok((result, r.replayed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_survive_the_wire() {
        let v: Version = "3.4.0".parse().unwrap();
        let cases: Vec<StepResult> = vec![
            Ok(StepOutput::Install(Installed {
                previous_version: Some("3.3.0".parse().unwrap()),
                version: v.clone(),
                pid: 7,
                healthy_for_ms: 1000,
                restore: Some(Restored {
                    backup_id: "b".into(),
                    export_matches: true,
                }),
            })),
            Ok(StepOutput::Undrain),
            Ok(StepOutput::Backup(BackupTaken {
                backup_id: "r-1".into(),
                dir: "/b/r-1".into(),
                files: vec![BackupFile {
                    path: "db.dump".into(),
                    size: 3,
                    sha256: "a".repeat(64),
                }],
                fingerprint: Fingerprint {
                    tables: [("public.routes".to_string(), 4)].into(),
                    export_sha256: Some("e".into()),
                    excluded_tables: vec!["public.instances".into()],
                    taken_at_ms: 5,
                },
            })),
            Err(Failure {
                code: FailureCode::HealthGateFailed,
                message: "m".into(),
                detail: "d".into(),
                reverted: true,
                active_version: Some("3.3.0".parse().unwrap()),
                gateway_healthy: true,
            }),
        ];
        for r in cases {
            let (back, replayed) = result_from_wire(result_to_wire(r.clone(), true)).unwrap();
            assert_eq!(back, r);
            assert!(replayed);
        }
    }
}

//! Conversions between protobuf messages and domain types. Anything arriving
//! over the wire is checked here, so the rest of the code deals in valid values.

use crate::lb::LbState;
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

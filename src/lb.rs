//! Where a host stands towards its load balancer, as both sides report it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A host's load-balancer state. Written in JSON as it reads in the text
/// output: "in rotation", "drained", "maint".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbState {
    /// Taking new work (HAProxy agent-check `ready`).
    #[serde(rename = "in rotation")]
    InRotation,
    /// Taken out by a drain: no new work; left like this only by a step
    /// that could not finish.
    Drained,
    /// Out for maintenance (agent-check `maint`).
    Maint,
}

impl LbState {
    /// True when the load balancer sends the host no new work.
    pub fn out_of_rotation(self) -> bool {
        self != LbState::InRotation
    }
}

impl fmt::Display for LbState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LbState::InRotation => "in rotation",
            LbState::Drained => "drained",
            LbState::Maint => "maint",
        })
    }
}

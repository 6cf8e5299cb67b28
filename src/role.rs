//! The two kinds of gateway hosts.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Control plane: owns the database; upgraded first, one host at a time.
    Cp,
    /// Data plane: serves traffic; upgraded in batches after every CP.
    Dp,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Cp => "cp",
            Role::Dp => "dp",
        })
    }
}

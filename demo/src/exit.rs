//! Exit codes of every subcommand.

/// Done, or stopped on request.
pub const OK: u8 = 0;
/// A runtime failure: database trouble, a failed migration, an injected crash.
pub const FAILURE: u8 = 1;
/// Bad usage or configuration, including a missing or invalid release manifest.
pub const USAGE: u8 = 64;

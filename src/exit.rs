//! Exit codes, the same for every rollgate command (see DESIGN.md).

/// Done.
pub const OK: u8 = 0;
/// The rollout failed or halted, or a host could not be reached.
pub const FAILED: u8 = 1;
/// Blocked by the plan or the preflight; nothing was changed.
pub const BLOCKED: u8 = 2;
/// Bad usage or bad configuration; nothing was changed (EX_USAGE).
pub const USAGE: u8 = 64;

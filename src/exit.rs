//! Exit codes, the same for every rollgate command (README: "Exit codes").

/// Done.
pub const OK: u8 = 0;
/// The rollout failed or halted, or a host could not be reached.
pub const FAILED: u8 = 1;
/// Blocked by the plan or the preflight; nothing was changed.
pub const BLOCKED: u8 = 2;
/// Bad usage or bad configuration; nothing was changed (EX_USAGE).
pub const USAGE: u8 = 64;
/// The agent's own state on disk is damaged in a way it must not guess
/// about (a journal record that is not the torn last one); it does not
/// start until an operator has looked (EX_DATAERR). systemd does not restart
/// on it (RestartPreventExitStatus).
pub const DATA: u8 = 65;

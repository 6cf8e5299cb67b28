//! Crash tests: `ROLLGATE_FAILPOINT=<kind>:<phase>` makes the agent kill
//! itself with SIGKILL right after journalling that phase, the way a power
//! cut or `kill -9` would. Unset in production; read once.

use std::sync::OnceLock;

use crate::kind::{Phase, StepKind};

fn configured() -> Option<&'static str> {
    static FP: OnceLock<Option<String>> = OnceLock::new();
    FP.get_or_init(|| {
        std::env::var("ROLLGATE_FAILPOINT")
            .ok()
            .filter(|s| !s.is_empty())
    })
    .as_deref()
}

/// Whether the failpoint names this step boundary.
pub fn names(kind: StepKind, phase: Phase) -> bool {
    let Some(fp) = configured() else {
        return false;
    };
    let phase_name = serde_json::to_value(phase)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    fp.split_once(':') == Some((kind.as_str(), phase_name.as_str()))
}

/// Dies here if the failpoint names this step boundary.
pub fn hit(kind: StepKind, phase: Phase) {
    if names(kind, phase) {
        die(&format!("{kind}:{phase:?}"));
    }
}

/// Kills the agent with SIGKILL, the way a power cut or `kill -9` would;
/// `name` is the failpoint, for the log.
pub fn die(name: &str) -> ! {
    tracing::warn!(failpoint = name, "failpoint reached: killing the agent");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::SIGKILL);
    // SIGKILL cannot be caught; this is never reached.
    std::process::abort();
}

/// Whether the failpoint names this point inside a step (`deb:unpacked`,
/// `compose:recreating`): the code there decides how to die.
pub fn named(name: &str) -> bool {
    configured() == Some(name)
}

/// Dies here (SIGKILL, as `hit`), first killing the command recorded in
/// `child` (its pid file): a crash that takes the agent's children with it,
/// as systemd's stop of the agent's control group does.
pub fn kill_with_child(name: &str, child: &std::path::Path) -> ! {
    use nix::sys::signal::{SIGKILL, kill};
    use nix::unistd::Pid;
    if let Some(rec) = crate::procfs::PidRecord::read(child)
        && rec.is_running()
        && let Ok(raw) = i32::try_from(rec.pid)
    {
        tracing::warn!(
            failpoint = name,
            pid = rec.pid,
            "failpoint: killing the running command"
        );
        let _ = kill(Pid::from_raw(raw), SIGKILL);
    }
    die(name)
}

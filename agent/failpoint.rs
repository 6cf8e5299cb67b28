//! Crash tests: `ROLLGATE_FAILPOINT=<kind>:<phase>` makes the agent kill
//! itself with SIGKILL right after journalling that phase, the way a power
//! cut or `kill -9` would. Unset in production; read once.

use std::sync::OnceLock;

fn configured() -> Option<&'static str> {
    static FP: OnceLock<Option<String>> = OnceLock::new();
    FP.get_or_init(|| {
        std::env::var("ROLLGATE_FAILPOINT")
            .ok()
            .filter(|s| !s.is_empty())
    })
    .as_deref()
}

/// Dies here if the failpoint names this step boundary.
pub fn hit(kind: &str, phase: &str) {
    let Some(fp) = configured() else {
        return;
    };
    if fp.split_once(':') == Some((kind, phase)) {
        tracing::warn!(kind, phase, "failpoint reached: killing the agent");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::SIGKILL);
        // SIGKILL cannot be caught; this is never reached.
        std::process::abort();
    }
}

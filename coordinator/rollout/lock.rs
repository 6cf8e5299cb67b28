//! One rollout at a time per fleet: `<state_dir>/lock`, held with flock(2)
//! while a rollout runs (the kernel drops it when the process dies, even by
//! kill -9) and naming who holds it.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// Who holds the lock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Holder {
    pub rollout: String,
    pub pid: u32,
    pub command: String,
    pub since_ms: i64,
}

#[derive(Debug)]
pub struct FleetLock {
    _lock: Flock<std::fs::File>,
}

/// Takes the fleet lock for `rollout`, or says who holds it.
pub fn acquire(state_dir: &Path, rollout: &str, command: &str) -> Result<FleetLock, String> {
    std::fs::create_dir_all(state_dir)
        .map_err(|e| format!("cannot create {}: {e}", state_dir.display()))?;
    let path = state_dir.join("lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((_, _)) => {
            let who = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str::<Holder>(&t).ok())
                .map(|h| {
                    format!(
                        "rollout {} ({} by pid {}, since {})",
                        h.rollout,
                        h.command,
                        h.pid,
                        fmt_ms(h.since_ms)
                    )
                })
                .unwrap_or_else(|| "another rollgate process".into());
            return Err(format!(
                "the fleet is locked by {who}; one rollout at a time"
            ));
        }
    };
    let holder = Holder {
        rollout: rollout.into(),
        pid: std::process::id(),
        command: command.into(),
        since_ms: super::log::now_ms(),
    };
    let text = serde_json::to_vec(&holder).map_err(|e| e.to_string())?;
    lock.set_len(0).map_err(|e| e.to_string())?;
    lock.write_all(&text)
        .and_then(|()| lock.sync_data())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(FleetLock { _lock: lock })
}

pub fn fmt_ms(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_told_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let l = acquire(dir.path(), "r-1", "upgrade").unwrap();
        let e = acquire(dir.path(), "r-2", "upgrade").unwrap_err();
        assert!(
            e.contains("r-1") && e.contains(&std::process::id().to_string()),
            "{e}"
        );
        drop(l);
        acquire(dir.path(), "r-2", "upgrade").unwrap();
    }
}

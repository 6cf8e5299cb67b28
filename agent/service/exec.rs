//! The exec service manager: the agent starts the gateway itself, records it
//! in a pid file (pid and start time, so a reused pid is not mistaken for the
//! gateway) and the gateway keeps running when the agent restarts; the next
//! agent re-adopts it from the pid file.

use std::path::PathBuf;

use super::ProcessStatus;
use crate::config::AgentConfig;
use crate::procfs;

#[derive(Debug)]
pub struct ExecService {
    pid_file: PathBuf,
}

/// The content of the pid file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidRecord {
    pub pid: u32,
    pub start_ticks: u64,
}

impl PidRecord {
    pub fn parse(text: &str) -> Option<PidRecord> {
        let mut it = text.split_whitespace();
        let pid = it.next()?.parse().ok()?;
        let start_ticks = it.next()?.parse().ok()?;
        Some(PidRecord { pid, start_ticks })
    }

    pub fn render(&self) -> String {
        format!("{} {}\n", self.pid, self.start_ticks)
    }

    /// True while this very process (not a later one with the same pid) runs.
    pub fn is_running(&self) -> bool {
        procfs::stat(self.pid).is_some_and(|s| s.is_alive() && s.start_ticks == self.start_ticks)
    }
}

impl ExecService {
    pub fn new(config: &AgentConfig) -> Self {
        ExecService {
            pid_file: super::pid_file(&config.agent.state_dir),
        }
    }

    /// The recorded gateway, if the pid file exists and parses.
    pub fn record(&self) -> Result<Option<PidRecord>, String> {
        match std::fs::read_to_string(&self.pid_file) {
            Ok(text) => PidRecord::parse(&text).map(Some).ok_or_else(|| {
                format!("pid file {} is malformed", self.pid_file.display())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", self.pid_file.display())),
        }
    }

    pub fn status(&self) -> ProcessStatus {
        match self.record() {
            Ok(Some(r)) if r.is_running() => ProcessStatus::Running { pid: r.pid },
            Ok(_) => ProcessStatus::Stopped,
            Err(e) => ProcessStatus::Unknown(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_record_round_trip_and_liveness() {
        let me = procfs::stat(std::process::id()).unwrap();
        let r = PidRecord {
            pid: std::process::id(),
            start_ticks: me.start_ticks,
        };
        assert_eq!(PidRecord::parse(&r.render()), Some(r));
        assert!(r.is_running());
        let reused = PidRecord {
            start_ticks: me.start_ticks + 1,
            ..r
        };
        assert!(!reused.is_running(), "a different start time is another process");
        assert_eq!(PidRecord::parse("garbage"), None);
    }
}

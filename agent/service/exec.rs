//! The exec service manager: the agent starts the gateway itself, records it
//! in a pid file (pid and start time, so a reused pid is not mistaken for the
//! gateway) and the gateway keeps running when the agent restarts: it runs in
//! its own process group, and the next agent re-adopts it from the pid file.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use super::ProcessStatus;
use crate::procfs::{self, PidRecord};

#[derive(Debug)]
pub struct ExecService {
    pid_file: PathBuf,
    log_file: PathBuf,
    work_dir: PathBuf,
    command: Vec<String>,
    env: BTreeMap<String, String>,
}

impl ExecService {
    pub fn new(state_dir: &Path, command: Vec<String>, env: BTreeMap<String, String>) -> Self {
        ExecService {
            pid_file: super::pid_file(state_dir),
            log_file: state_dir.join("gateway.log"),
            work_dir: state_dir.to_path_buf(),
            command,
            env,
        }
    }

    /// The recorded gateway, if the pid file exists and parses.
    pub fn record(&self) -> Result<Option<PidRecord>, String> {
        match procfs::read_small(&self.pid_file) {
            Ok(text) => PidRecord::parse(&text)
                .map(Some)
                .ok_or_else(|| format!("pid file {} is malformed", self.pid_file.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", self.pid_file.display())),
        }
    }

    pub fn status(&self) -> ProcessStatus {
        match self.record() {
            Ok(Some(r)) if r.is_running() => ProcessStatus::Running {
                pid: r.pid,
                image: None,
            },
            Ok(_) => ProcessStatus::Stopped,
            Err(e) => ProcessStatus::Unknown(e),
        }
    }

    /// The program to run for a release: a relative first element of the
    /// command is a path inside the release directory.
    pub fn program(&self, release_dir: Option<&Path>) -> PathBuf {
        match release_dir {
            Some(d) => d.join(&self.command[0]),
            None => PathBuf::from(&self.command[0]),
        }
    }

    /// The program's path inside a release, when the command names one
    /// there (a relative first element): every release must contain it.
    pub fn program_in_release(&self) -> Option<&Path> {
        Some(Path::new(&self.command[0])).filter(|p| p.is_relative())
    }

    /// Starts the gateway from `release_dir` (a method without one, deb:
    /// the configured absolute program, run in the state dir) in its own
    /// process group and records it. Output goes to `<state_dir>/gateway.log`.
    pub async fn start(&self, release_dir: Option<&Path>) -> Result<u32, String> {
        if let Ok(Some(r)) = self.record()
            && r.is_running()
        {
            return Err(format!("the gateway already runs (pid {})", r.pid));
        }
        let program = self.program(release_dir);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .map_err(|e| format!("cannot open {}: {e}", self.log_file.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cannot open {}: {e}", self.log_file.display()))?;
        let mut child = tokio::process::Command::new(&program)
            .args(&self.command[1..])
            .current_dir(release_dir.unwrap_or(self.work_dir.as_path()))
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group: a signal to the agent's group (Ctrl-C,
            // systemd's stop of the agent) does not reach the gateway.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| "the gateway exited at once".to_string())?;
        let start_ticks = procfs::stat(pid).map_or(0, |s| s.start_ticks);
        let rec = PidRecord { pid, start_ticks };
        rollgate::fsx::write_atomic(&self.pid_file, rec.render().as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", self.pid_file.display()))?;
        // Reap the child when it exits, so it does not linger as a zombie.
        tokio::spawn(async move {
            match child.wait().await {
                Ok(st) => tracing::info!(pid, status = %st, "gateway exited"),
                Err(e) => tracing::warn!(pid, error = %e, "cannot wait for the gateway"),
            }
        });
        tracing::info!(pid, program = %program.display(), "gateway started");
        Ok(pid)
    }

    /// Stops the recorded gateway: `signal`, then SIGKILL after `timeout`.
    /// Returns whether it stopped within the graceful deadline.
    pub async fn stop(&self, sig: Signal, timeout: Duration) -> Result<bool, String> {
        let Some(rec) = self.record()? else {
            return Ok(true);
        };
        let mut graceful = true;
        if rec.is_running() {
            tracing::info!(pid = rec.pid, signal = %sig, "stopping the gateway");
            send(rec.pid, sig)?;
            if !rec.wait_gone(timeout).await {
                graceful = false;
                tracing::warn!(
                    pid = rec.pid,
                    ?timeout,
                    "the gateway did not stop in time: SIGKILL"
                );
                send(rec.pid, Signal::SIGKILL)?;
                if !rec.wait_gone(Duration::from_secs(10)).await {
                    return Err(format!("pid {} survived SIGKILL", rec.pid));
                }
            }
        }
        match std::fs::remove_file(&self.pid_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", self.pid_file.display())),
        }
        Ok(graceful)
    }
}

fn send(pid: u32, sig: Signal) -> Result<(), String> {
    let raw = i32::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
    match signal::kill(Pid::from_raw(raw), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(format!("cannot signal pid {pid}: {e}")),
    }
}

//! Controlling the gateway process: through systemd, or by the agent itself
//! (`exec`) on hosts without systemd, in the demo and in the tests.

pub mod exec;
pub mod systemd;

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::config::{Config, Manager};

/// What the service manager says about the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessStatus {
    Running {
        pid: u32,
    },
    Stopped,
    /// The manager could not tell, and why.
    Unknown(String),
}

impl ProcessStatus {
    pub fn pid(&self) -> Option<u32> {
        match self {
            ProcessStatus::Running { pid } => Some(*pid),
            _ => None,
        }
    }
}

/// The configured service manager.
#[derive(Debug)]
pub enum Service {
    Exec(exec::ExecService),
    Systemd(systemd::SystemdService),
}

impl Service {
    pub fn from_config(config: &Config) -> Self {
        match &config.service.manager {
            Manager::Exec { command, env } => Service::Exec(exec::ExecService::new(
                &config.agent.state_dir,
                command.clone(),
                env.clone(),
            )),
            Manager::Systemd { unit, systemctl } => Service::Systemd(systemd::SystemdService::new(
                systemctl.clone(),
                unit.clone(),
            )),
        }
    }

    pub async fn status(&self) -> ProcessStatus {
        match self {
            Service::Exec(e) => e.status(),
            Service::Systemd(s) => s.status().await,
        }
    }

    /// Stops the gateway gracefully (exec: `signal`, SIGKILL after `timeout`;
    /// systemd: the unit's own stop).
    pub async fn stop(&self, signal: Signal, timeout: Duration) -> Result<(), String> {
        match self {
            Service::Exec(e) => e.stop(signal, timeout).await.map(|graceful| {
                if !graceful {
                    tracing::warn!("the gateway had to be killed");
                }
            }),
            Service::Systemd(s) => s.stop(timeout).await,
        }
    }

    /// Starts the gateway of the release in `release_dir` (systemd: the unit,
    /// which runs `<install_root>/current`). Returns its pid.
    pub async fn start(
        &self,
        release_dir: &Path,
        previous_pid: Option<u32>,
        timeout: Duration,
    ) -> Result<u32, String> {
        match self {
            Service::Exec(e) => e.start(release_dir).await,
            Service::Systemd(s) => s.start(previous_pid, timeout).await,
        }
    }
}

/// The pid file of the exec manager inside the agent's state dir.
pub fn pid_file(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("gateway.pid")
}

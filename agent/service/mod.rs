//! Controlling the gateway process: through systemd, or by the agent itself
//! (`exec`) on hosts without systemd, in the demo and in the tests.

pub mod exec;
pub mod systemd;

use std::path::Path;

use crate::config::{AgentConfig, ManagerKind};

/// What the service manager says about the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessStatus {
    Running { pid: u32 },
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
    pub fn from_config(config: &AgentConfig) -> Self {
        let s = &config.service;
        match s.manager {
            ManagerKind::Exec => Service::Exec(exec::ExecService::new(config)),
            ManagerKind::Systemd => Service::Systemd(systemd::SystemdService::new(
                s.systemctl.clone(),
                s.unit.clone().unwrap_or_default(),
            )),
        }
    }

    pub fn kind(&self) -> ManagerKind {
        match self {
            Service::Exec(_) => ManagerKind::Exec,
            Service::Systemd(_) => ManagerKind::Systemd,
        }
    }

    pub async fn status(&self) -> ProcessStatus {
        match self {
            Service::Exec(e) => e.status(),
            Service::Systemd(s) => s.status().await,
        }
    }
}

/// The pid file of the exec manager inside the agent's state dir.
pub fn pid_file(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("gateway.pid")
}

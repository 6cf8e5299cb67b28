//! Controlling the gateway process: through systemd, as compose services, or
//! by the agent itself (`exec`) on hosts without systemd, in the demo and in
//! the tests.

pub mod compose;
pub mod exec;
pub mod systemd;

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::config::{Config, InstallMethod, Manager};

/// What the service manager says about the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessStatus {
    Running {
        pid: u32,
        /// The image the gateway's container runs (compose).
        image: Option<String>,
    },
    Stopped,
    /// The manager could not tell, and why.
    Unknown(String),
}

impl ProcessStatus {
    pub fn pid(&self) -> Option<u32> {
        match self {
            ProcessStatus::Running { pid, .. } => Some(*pid),
            _ => None,
        }
    }
}

/// The configured service manager.
#[derive(Debug)]
pub enum Service {
    Exec(exec::ExecService),
    Systemd(systemd::SystemdService),
    // Boxed: the compose manager carries the whole compose config.
    Compose(Box<compose::ComposeService>),
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
            Manager::Compose => match &config.install.method {
                InstallMethod::Compose(c) => Service::Compose(Box::new(
                    compose::ComposeService::new(c.clone(), &config.agent.state_dir),
                )),
                // The config refuses compose without the compose method.
                other => unreachable!("manager compose with install method {}", other.name()),
            },
        }
    }

    pub async fn status(&self) -> ProcessStatus {
        match self {
            Service::Exec(e) => e.status(),
            Service::Systemd(s) => s.status().await,
            Service::Compose(c) => c.status().await,
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
            Service::Compose(c) => c.stop(timeout).await,
        }
    }

    /// Starts the gateway of the current release: exec runs it from the
    /// release's directory when the method has one; systemd starts the unit
    /// (which runs `<install_root>/current` or the package's program);
    /// compose recreates the services. Returns its pid.
    pub async fn start(
        &self,
        release_dir: Option<&Path>,
        previous_pid: Option<u32>,
        timeout: Duration,
    ) -> Result<u32, String> {
        match self {
            Service::Exec(e) => e.start(release_dir).await,
            Service::Systemd(s) => s.start(previous_pid, timeout).await,
            Service::Compose(c) => c.start(timeout).await,
        }
    }

    /// After recovering a cut-off swap: removes what the manager's own
    /// interrupted commands left (compose: the old container of a recreate
    /// killed midway, which stays beside the new one when the new one was
    /// already running).
    pub async fn tidy(&self) {
        if let Service::Compose(c) = self {
            c.remove_leftovers().await;
        }
    }

    /// The pid file of a command the manager runs that changes the host.
    pub fn child_record(&self) -> Option<&Path> {
        match self {
            Service::Compose(c) => Some(c.child_record()),
            _ => None,
        }
    }
}

/// The pid file of the exec manager inside the agent's state dir.
pub fn pid_file(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("gateway.pid")
}

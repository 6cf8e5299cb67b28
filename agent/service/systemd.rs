//! The systemd service manager: the gateway is a unit; the agent asks
//! systemctl, which it finds at the configured path.

use std::path::PathBuf;

use super::ProcessStatus;

#[derive(Debug)]
pub struct SystemdService {
    systemctl: PathBuf,
    unit: String,
}

/// The unit properties the agent reads with `systemctl show`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnitState {
    pub active_state: String,
    pub main_pid: u32,
    pub n_restarts: u32,
}

impl UnitState {
    /// Parses `systemctl show --property=ActiveState,MainPID,NRestarts` output.
    pub fn parse(text: &str) -> Result<UnitState, String> {
        let mut s = UnitState::default();
        let mut seen_active = false;
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "ActiveState" => {
                    s.active_state = v.to_string();
                    seen_active = true;
                }
                "MainPID" => s.main_pid = v.parse().map_err(|_| format!("bad MainPID {v:?}"))?,
                "NRestarts" => {
                    s.n_restarts = v.parse().map_err(|_| format!("bad NRestarts {v:?}"))?
                }
                _ => {}
            }
        }
        if !seen_active {
            return Err("systemctl show printed no ActiveState".into());
        }
        Ok(s)
    }

    pub fn to_status(&self) -> ProcessStatus {
        match self.active_state.as_str() {
            "active" | "reloading" | "deactivating" if self.main_pid > 0 => {
                ProcessStatus::Running { pid: self.main_pid }
            }
            "inactive" | "failed" => ProcessStatus::Stopped,
            other if self.main_pid == 0 => {
                ProcessStatus::Unknown(format!("unit is {other} without a main pid"))
            }
            _ => ProcessStatus::Running { pid: self.main_pid },
        }
    }
}

impl SystemdService {
    pub fn new(systemctl: PathBuf, unit: String) -> Self {
        SystemdService { systemctl, unit }
    }

    /// The argv of the read-only query, kept apart so tests can check it.
    pub fn show_args(&self) -> Vec<String> {
        vec![
            "show".into(),
            "--property=ActiveState,MainPID,NRestarts".into(),
            "--".into(),
            self.unit.clone(),
        ]
    }

    pub async fn unit_state(&self) -> Result<UnitState, String> {
        let out = tokio::process::Command::new(&self.systemctl)
            .args(self.show_args())
            .output()
            .await
            .map_err(|e| format!("cannot run {}: {e}", self.systemctl.display()))?;
        if !out.status.success() {
            return Err(format!(
                "systemctl show {} failed ({}): {}",
                self.unit,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        UnitState::parse(&String::from_utf8_lossy(&out.stdout))
    }

    pub async fn status(&self) -> ProcessStatus {
        match self.unit_state().await {
            Ok(s) => s.to_status(),
            Err(e) => ProcessStatus::Unknown(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_show_output() {
        let s = UnitState::parse("ActiveState=active\nMainPID=1234\nNRestarts=2\n").unwrap();
        assert_eq!(s.main_pid, 1234);
        assert_eq!(s.n_restarts, 2);
        assert_eq!(s.to_status(), ProcessStatus::Running { pid: 1234 });
        let s = UnitState::parse("MainPID=0\nActiveState=failed\nNRestarts=0").unwrap();
        assert_eq!(s.to_status(), ProcessStatus::Stopped);
        assert!(UnitState::parse("MainPID=0\n").is_err());
        assert!(UnitState::parse("ActiveState=active\nMainPID=x\n").is_err());
    }

    #[test]
    fn show_is_read_only_and_ends_options() {
        let s = SystemdService::new("/usr/bin/systemctl".into(), "-evil".into());
        let args = s.show_args();
        assert_eq!(args[0], "show");
        assert_eq!(args[2], "--", "the unit cannot be taken for an option");
    }
}

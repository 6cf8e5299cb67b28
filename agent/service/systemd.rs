//! The systemd service manager: the gateway is a unit; the agent asks
//! systemctl, which it finds at the configured path.

use std::path::PathBuf;
use std::time::Duration;

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
                ProcessStatus::Running {
                    pid: self.main_pid,
                    image: None,
                }
            }
            "inactive" | "failed" => ProcessStatus::Stopped,
            other if self.main_pid == 0 => {
                ProcessStatus::Unknown(format!("unit is {other} without a main pid"))
            }
            _ => ProcessStatus::Running {
                pid: self.main_pid,
                image: None,
            },
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

    /// The argv of `systemctl <verb> -- <unit>`.
    pub fn verb_args(&self, verb: &str) -> Vec<String> {
        vec![verb.into(), "--".into(), self.unit.clone()]
    }

    async fn systemctl(&self, verb: &str, timeout: Duration) -> Result<(), String> {
        let run = tokio::process::Command::new(&self.systemctl)
            .args(self.verb_args(verb))
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| {
                format!(
                    "systemctl {verb} {} did not finish within {timeout:?}",
                    self.unit
                )
            })?
            .map_err(|e| format!("cannot run {}: {e}", self.systemctl.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "systemctl {verb} {} failed ({}): {}",
                self.unit,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Stops the unit; systemd applies the unit's own stop signal and
    /// timeout, `timeout` bounds the wait for systemctl.
    pub async fn stop(&self, timeout: Duration) -> Result<(), String> {
        self.systemctl("stop", timeout + Duration::from_secs(5))
            .await?;
        match self.unit_state().await?.to_status() {
            ProcessStatus::Stopped => Ok(()),
            other => Err(format!("unit {} is still {other:?} after stop", self.unit)),
        }
    }

    /// Starts the unit and checks it runs with a new main pid.
    pub async fn start(&self, previous_pid: Option<u32>, timeout: Duration) -> Result<u32, String> {
        self.systemctl("start", timeout).await?;
        let st = self.unit_state().await?;
        check_started(&st, previous_pid).map_err(|e| format!("unit {}: {e}", self.unit))
    }
}

/// After `systemctl start`: active, with a main pid that is not the old one.
pub fn check_started(st: &UnitState, previous_pid: Option<u32>) -> Result<u32, String> {
    match st.to_status() {
        ProcessStatus::Running { pid, .. } if Some(pid) != previous_pid => Ok(pid),
        ProcessStatus::Running { pid, .. } => Err(format!(
            "main pid {pid} did not change: the gateway was not restarted"
        )),
        other => Err(format!(
            "not running after start ({}: {other:?})",
            st.active_state
        )),
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
        assert_eq!(
            s.to_status(),
            ProcessStatus::Running {
                pid: 1234,
                image: None
            }
        );
        let s = UnitState::parse("MainPID=0\nActiveState=failed\nNRestarts=0").unwrap();
        assert_eq!(s.to_status(), ProcessStatus::Stopped);
        assert!(UnitState::parse("MainPID=0\n").is_err());
        assert!(UnitState::parse("ActiveState=active\nMainPID=x\n").is_err());
    }

    #[test]
    fn start_and_stop_name_only_the_configured_unit() {
        let s = SystemdService::new("/usr/bin/systemctl".into(), "apisix.service".into());
        assert_eq!(s.verb_args("stop"), ["stop", "--", "apisix.service"]);
        assert_eq!(s.verb_args("start"), ["start", "--", "apisix.service"]);
    }

    #[test]
    fn a_start_must_change_the_main_pid() {
        let running = UnitState::parse("ActiveState=active\nMainPID=200\nNRestarts=0").unwrap();
        assert_eq!(check_started(&running, Some(100)), Ok(200));
        assert!(
            check_started(&running, Some(200))
                .unwrap_err()
                .contains("did not change")
        );
        let failed = UnitState::parse("ActiveState=failed\nMainPID=0\nNRestarts=3").unwrap();
        assert!(check_started(&failed, None).is_err());
    }

    #[test]
    fn show_is_read_only_and_ends_options() {
        let s = SystemdService::new("/usr/bin/systemctl".into(), "-evil".into());
        let args = s.show_args();
        assert_eq!(args[0], "show");
        assert_eq!(args[2], "--", "the unit cannot be taken for an option");
    }
}

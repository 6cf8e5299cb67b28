//! Install and Rollback: stop the gateway, switch `current` atomically, start
//! it, gate on health — and on a failed gate switch back, start the previous
//! release and check it. Phases journalled: `stopped`, `restored` (Rollback
//! with a DB restore), `switched`, `started`, `gated`.

use std::path::Path;
use std::time::Duration;

use rollgate::pb;
use rollgate::version::Version;
use serde::{Deserialize, Serialize};

use super::gate::{self, GateFailed};
use super::{StepError, StepResult, pg, phase};
use crate::config::parse_signal;
use crate::ops::OpCtx;
use crate::state::AgentState;

/// What an Install or Rollback is about to do; journalled with `begin`, so a
/// restarted agent knows how to finish or undo it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub previous: Option<Version>,
    pub target: Version,
    /// CP rollback: the backup to restore while the gateway is stopped.
    pub restore: Option<String>,
    pub min_healthy_ms: u64,
    pub health_timeout_ms: u64,
}

impl Plan {
    pub fn min_healthy(&self) -> Duration {
        Duration::from_millis(self.min_healthy_ms)
    }

    pub fn health_timeout(&self) -> Duration {
        Duration::from_millis(self.health_timeout_ms)
    }
}

/// The release that was current before the last successful switch.
fn previous_file(state: &AgentState) -> std::path::PathBuf {
    state.config.agent.state_dir.join("previous-release")
}

pub fn previous_release(state: &AgentState) -> Option<Version> {
    std::fs::read_to_string(previous_file(state))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn remember_previous(state: &AgentState, v: &Version) {
    if let Err(e) = rollgate::fsx::write_atomic(&previous_file(state), v.to_string().as_bytes()) {
        tracing::warn!(error = %e, "cannot record the previous release");
    }
}

/// Points `current` at `releases/<v>` atomically: a new link under a
/// temporary name renamed over the old one, then the directory fsynced.
pub fn switch(root: &Path, v: &Version) -> std::io::Result<()> {
    let tmp = root.join(".current.tmp");
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::os::unix::fs::symlink(format!("releases/{v}"), &tmp)?;
    std::fs::rename(&tmp, root.join("current"))?;
    rollgate::fsx::sync_dir(root)
}

fn stop_signal(state: &AgentState) -> nix::sys::signal::Signal {
    parse_signal(&state.config.service.stop_signal).unwrap_or(nix::sys::signal::SIGQUIT)
}

/// Stops the gateway gracefully.
pub async fn stop(state: &AgentState) -> Result<(), StepError> {
    state
        .service
        .stop(stop_signal(state), state.config.service.stop_timeout)
        .await
        .map_err(|e| {
            StepError::new(
                pb::FailureCode::ServiceFailed,
                format!("cannot stop the gateway: {e}"),
            )
        })
}

/// Starts the gateway of the current release.
pub async fn start_current(
    state: &AgentState,
    previous_pid: Option<u32>,
) -> Result<u32, StepError> {
    let Some(v) = state.root.current() else {
        return Err(StepError::precondition("no release is installed"));
    };
    state
        .service
        .start(
            &state.root.release_dir(&v),
            previous_pid,
            state.config.health.start_timeout,
        )
        .await
        .map_err(|e| {
            StepError::new(
                pb::FailureCode::ServiceFailed,
                format!("cannot start {v}: {e}"),
            )
        })
}

/// Runs an Install or Rollback plan from the start.
pub async fn run(state: &AgentState, ctx: &OpCtx, plan: &Plan) -> StepResult {
    let dir = state.root.release_dir(&plan.target);
    if !dir.join(super::stage::MARKER).is_file() {
        return Err(StepError::precondition(format!(
            "release {} is not staged on this host",
            plan.target
        )));
    }
    if let Some(b) = &plan.restore {
        // Check the backup before anything is stopped.
        pg::check_backup(state, b).await?;
    }
    let before_pid = state.service.status().await.pid();
    ctx.progress("stop", "stopping the gateway", 0, 0);
    stop(state).await?;
    phase(ctx, "stopped", serde_json::json!({ "pid": before_pid }))?;
    if let Some(b) = &plan.restore {
        ctx.progress(
            "restore",
            format!("restoring the database from backup {b}"),
            0,
            0,
        );
        if let Err(e) = pg::restore(state, b).await {
            let back = start_current(state, None).await;
            return Err(e.reverted(back.is_ok()));
        }
        phase(ctx, "restored", serde_json::json!({ "backup": b }))?;
    }
    if plan.previous.as_ref() != Some(&plan.target) {
        switch(state.root.path(), &plan.target).map_err(|e| {
            StepError::internal(format!("cannot switch current to {}: {e}", plan.target))
        })?;
    }
    phase(
        ctx,
        "switched",
        serde_json::json!({ "current": plan.target }),
    )?;
    ctx.progress("start", format!("starting {}", plan.target), 0, 0);
    match start_current(state, before_pid).await {
        Ok(pid) => phase(ctx, "started", serde_json::json!({ "pid": pid }))?,
        Err(e) => {
            let reverted = revert(state, ctx, plan).await;
            return Err(StepError::new(e.code, e.message)
                .detail(reverted.detail())
                .reverted(reverted.ok()));
        }
    }
    finish_gate(state, ctx, plan).await
}

/// The health gate and what follows it; shared with crash recovery.
pub async fn finish_gate(state: &AgentState, ctx: &OpCtx, plan: &Plan) -> StepResult {
    match gate::gate(
        state,
        Some(ctx),
        &plan.target,
        plan.health_timeout(),
        plan.min_healthy(),
    )
    .await
    {
        Ok(passed) => {
            phase(ctx, "gated", serde_json::json!({ "pid": passed.pid }))?;
            if let Some(p) = &plan.previous
                && *p != plan.target
            {
                remember_previous(state, p);
            }
            prune(state, &plan.target);
            let restore = match &plan.restore {
                Some(b) => Some(pg::compare_export(state, b).await?),
                None => None,
            };
            Ok(pb::success::Detail::Install(pb::InstallResult {
                previous_version: plan
                    .previous
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                version: plan.target.to_string(),
                pid: passed.pid,
                healthy_for_ms: passed.healthy_for.as_millis() as u64,
                restore,
            }))
        }
        Err(GateFailed { reason, last }) => {
            // Read before the revert starts the old release and writes more.
            let log = gateway_log_tail(state);
            tracing::warn!(target_version = %plan.target, %reason, "health gate failed; reverting");
            ctx.progress(
                "revert",
                format!("health gate failed: {reason}; reverting"),
                0,
                0,
            );
            let reverted = revert(state, ctx, plan).await;
            Err(StepError::new(
                pb::FailureCode::HealthGateFailed,
                format!("{} failed its health gate: {reason}", plan.target),
            )
            .detail(format!(
                "last probe: {}\n{}{log}",
                last.describe(),
                reverted.detail()
            ))
            .reverted(reverted.ok()))
        }
    }
}

/// The last lines the gateway wrote (exec manager: the agent keeps its log),
/// so a failure report says why a release would not come up.
fn gateway_log_tail(state: &AgentState) -> String {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 4096;
    let path = state.config.agent.state_dir.join("gateway.log");
    let Ok(mut f) = std::fs::File::open(&path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(TAIL)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let last = &lines[lines.len().saturating_sub(8)..];
    if last.is_empty() {
        return String::new();
    }
    format!("\nlast lines of {}:\n{}", path.display(), last.join("\n"))
}

/// How a revert went.
pub enum Reverted {
    /// Back on the previous release, healthy.
    Healthy(Version),
    /// Back on the previous release, but it is not healthy.
    Unhealthy(Version, String),
    /// No previous release to go back to: the gateway is stopped.
    Nothing(String),
}

impl Reverted {
    pub fn ok(&self) -> bool {
        !matches!(self, Reverted::Nothing(_))
    }

    pub fn detail(&self) -> String {
        match self {
            Reverted::Healthy(v) => format!("reverted to {v}; it is healthy"),
            Reverted::Unhealthy(v, why) => format!("reverted to {v}, which is NOT healthy: {why}"),
            Reverted::Nothing(why) => format!("not reverted: {why}"),
        }
    }
}

/// Goes back to the release that was current before the plan.
pub async fn revert(state: &AgentState, ctx: &OpCtx, plan: &Plan) -> Reverted {
    // Journalled first: a crash from here on must finish the revert, not
    // take the failed release up again.
    if let Err(e) = phase(ctx, "reverting", serde_json::Value::Null) {
        return Reverted::Nothing(format!("cannot journal the revert: {}", e.message));
    }
    let Some(prev) = plan.previous.clone() else {
        let _ = stop(state).await;
        return Reverted::Nothing("there was no release before; the gateway is stopped".into());
    };
    if let Err(e) = stop(state).await {
        return Reverted::Nothing(format!("cannot stop the failed release: {}", e.message));
    }
    if let Err(e) = switch(state.root.path(), &prev) {
        return Reverted::Nothing(format!("cannot switch back to {prev}: {e}"));
    }
    let _ = phase(ctx, "reverted", serde_json::json!({ "current": prev }));
    if let Err(e) = start_current(state, None).await {
        return Reverted::Unhealthy(prev, e.message);
    }
    // The old release only has to come back; it already proved itself.
    match gate::gate(
        state,
        Some(ctx),
        &prev,
        plan.health_timeout(),
        Duration::ZERO,
    )
    .await
    {
        Ok(_) => Reverted::Healthy(prev),
        Err(f) => Reverted::Unhealthy(prev, f.reason),
    }
}

/// Removes old releases beyond `keep_releases`. Never the current one, the
/// previous one, or any newer than current (staged for a later hop).
pub fn prune(state: &AgentState, current: &Version) {
    let previous = previous_release(state);
    let doomed = doomed_releases(
        &state.root.releases(),
        current,
        previous.as_ref(),
        state.config.gateway.keep_releases,
    );
    for v in doomed {
        let dir = state.root.release_dir(&v);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => tracing::info!(version = %v, "removed an old release"),
            Err(e) => tracing::warn!(version = %v, error = %e, "cannot remove an old release"),
        }
    }
}

/// Which releases to remove: of those older than current (previous aside),
/// the oldest beyond what `keep` leaves room for.
pub fn doomed_releases(
    all: &[Version],
    current: &Version,
    previous: Option<&Version>,
    keep: usize,
) -> Vec<Version> {
    let pinned = 1 + usize::from(previous.is_some_and(|p| p != current && all.contains(p)));
    let mut older: Vec<&Version> = all
        .iter()
        .filter(|v| *v < current && Some(*v) != previous)
        .collect();
    older.sort();
    older.reverse();
    let room = keep.saturating_sub(pinned);
    older.into_iter().skip(room).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vs(list: &[&str]) -> Vec<Version> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn prune_keeps_current_previous_and_newer() {
        let all = vs(&["3.1.0", "3.2.0", "3.3.0", "3.4.0", "3.5.0"]);
        let cur: Version = "3.4.0".parse().unwrap();
        let prev: Version = "3.2.0".parse().unwrap();
        // keep 3: current, previous, and the newest other older one (3.3.0).
        assert_eq!(doomed_releases(&all, &cur, Some(&prev), 3), vs(&["3.1.0"]));
        assert_eq!(
            doomed_releases(&all, &cur, Some(&prev), 2),
            vs(&["3.3.0", "3.1.0"])
        );
        assert_eq!(
            doomed_releases(&all, &cur, None, 2),
            vs(&["3.2.0", "3.1.0"])
        );
        assert!(doomed_releases(&all, &cur, Some(&prev), 10).is_empty());
    }

    #[test]
    fn switch_replaces_the_link_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let v1: Version = "3.3.0".parse().unwrap();
        let v2: Version = "3.4.0".parse().unwrap();
        switch(dir.path(), &v1).unwrap();
        switch(dir.path(), &v2).unwrap();
        assert_eq!(
            std::fs::read_link(dir.path().join("current")).unwrap(),
            Path::new("releases/3.4.0")
        );
        assert!(!dir.path().join(".current.tmp").exists());
    }
}

//! Install and Rollback: stop the gateway, switch to the target release
//! through the install method, start it, gate on health — and on a failed
//! gate switch back, start the previous release and check it. Phases
//! journalled: `stopped`, `restored` (Rollback with a DB restore),
//! `switched`, `started`, `gated`, and `reverting` / `reverted` on the way
//! back.

use std::time::Duration;

use rollgate::outcome::{FailureCode, Installed, StepOutput};
use rollgate::version::Version;

use super::gate::{self, GateFailed};
use super::{StepRun, pg};
use crate::kind::{Phase, StepKind, SwapPlan};
use crate::op::{OpCtx, StepError};
use crate::state::AgentState;

/// The release that was current before the last successful switch.
pub fn previous_release(state: &AgentState) -> Option<Version> {
    crate::install::previous_release(&state.config.agent.state_dir)
}

/// Stops the gateway gracefully.
pub async fn stop(state: &AgentState) -> Result<(), StepError> {
    let s = &state.config.service;
    state
        .service
        .stop(s.stop_signal, s.stop_timeout)
        .await
        .map_err(|e| {
            StepError::new(
                FailureCode::ServiceFailed,
                format!("cannot stop the gateway: {e}"),
            )
        })
}

/// Starts the gateway of the current release.
pub async fn start_current(
    state: &AgentState,
    previous_pid: Option<u32>,
) -> Result<u32, StepError> {
    let Some(v) = state.installer.current() else {
        return Err(StepError::precondition("no release is installed"));
    };
    let dir = state.installer.release_dir(&v);
    state
        .service
        .start(
            dir.as_deref(),
            previous_pid,
            state.config.health.start_timeout,
        )
        .await
        .map_err(|e| StepError::new(FailureCode::ServiceFailed, format!("cannot start {v}: {e}")))
}

/// Switches to `v` through the install method.
pub async fn switch(state: &AgentState, v: &Version) -> Result<(), StepError> {
    state.installer.switch(v).await.map_err(|e| {
        StepError::new(
            FailureCode::CommandFailed,
            format!("cannot switch to {v}: {e}"),
        )
    })
}

/// Runs an Install or Rollback plan from the start.
pub async fn run(state: &AgentState, ctx: &OpCtx, plan: &SwapPlan) -> StepRun {
    if state
        .installer
        .marker(&plan.target)
        .await
        .ok()
        .flatten()
        .is_none()
    {
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
    // Stopped, Switched, Started and Gated are journalled behind (see
    // `OpCtx::phase_behind`): recovery decides from Switched or Restored
    // alone, and one cut off before Switched is durable goes back to the
    // previous release, stopping whatever runs — the case of a crash
    // between the switch and its record, which exists anyway. The gate
    // only looks, so it may start while the journal thread writes.
    ctx.phase_behind(Phase::Stopped, serde_json::json!({ "pid": before_pid }))
        .await?;
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
        ctx.phase(Phase::Restored, serde_json::json!({ "backup": b }))
            .await?;
    }
    if plan.previous.as_ref() != Some(&plan.target) {
        switch(state, &plan.target).await?;
    }
    if crate::failpoint::named("install:started-unrecorded") {
        // Crash tests: switched and the new gateway started, and none of
        // the phases written behind reached the disk — what a crash before
        // the journal thread's fsync leaves.
        let _ = start_current(state, before_pid).await;
        crate::failpoint::die("install:started-unrecorded");
    }
    ctx.phase_behind(
        Phase::Switched,
        serde_json::json!({ "current": plan.target }),
    )
    .await?;
    ctx.progress("start", format!("starting {}", plan.target), 0, 0);
    match start_current(state, before_pid).await {
        Ok(pid) => {
            ctx.phase_behind(Phase::Started, serde_json::json!({ "pid": pid }))
                .await?
        }
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
pub async fn finish_gate(state: &AgentState, ctx: &OpCtx, plan: &SwapPlan) -> StepRun {
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
            ctx.phase_behind(Phase::Gated, serde_json::json!({ "pid": passed.pid }))
                .await?;
            let previous = plan.previous.as_ref().filter(|p| **p != plan.target);
            if let Some(p) = previous {
                crate::install::remember_previous(&state.config.agent.state_dir, p);
            }
            state
                .installer
                .prune(&plan.target, previous_release(state).as_ref())
                .await;
            let restore = match &plan.restore {
                Some(b) => Some(pg::compare_export(state, b).await?),
                None => None,
            };
            let out = Installed {
                previous_version: plan.previous.clone(),
                version: plan.target.clone(),
                pid: passed.pid,
                healthy_for_ms: passed.healthy_for.as_millis() as u64,
                restore,
            };
            Ok(match ctx.kind {
                StepKind::Rollback => StepOutput::Rollback(out),
                _ => StepOutput::Install(out),
            })
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
                FailureCode::HealthGateFailed,
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
pub async fn revert(state: &AgentState, ctx: &OpCtx, plan: &SwapPlan) -> Reverted {
    // Journalled first: a crash from here on must finish the revert, not
    // take the failed release up again.
    if let Err(e) = ctx.phase(Phase::Reverting, serde_json::Value::Null).await {
        return Reverted::Nothing(format!("cannot journal the revert: {}", e.message));
    }
    let Some(prev) = plan.previous.clone() else {
        let _ = stop(state).await;
        return Reverted::Nothing("there was no release before; the gateway is stopped".into());
    };
    if let Err(e) = stop(state).await {
        return Reverted::Nothing(format!("cannot stop the failed release: {}", e.message));
    }
    if let Err(e) = switch(state, &prev).await {
        return Reverted::Nothing(format!("cannot switch back to {prev}: {}", e.message));
    }
    let _ = ctx
        .phase(Phase::Reverted, serde_json::json!({ "current": prev }))
        .await;
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

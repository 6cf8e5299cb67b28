//! After a crash: finish or undo every step the journal shows begun and not
//! ended, so the host is on exactly one release with the gateway running.
//! Each recovery runs as the same operation (its attempt count grows), so a
//! coordinator that repeats the call follows it to its end.

use std::sync::Arc;

use futures::StreamExt;
use rollgate::pb;
use serde_json::Value;

use crate::journal::OpState;
use crate::ops::{EventStream, OpCtx};
use crate::service::ProcessStatus;
use crate::state::AgentState;
use crate::steps::install::{self, Plan};
use crate::steps::{self, StepError, StepResult, backup, drain, pg, stage};

/// Recovers every unfinished operation, then makes sure the gateway runs.
pub async fn run(state: Arc<AgentState>) {
    for st in state.ops.unfinished() {
        tracing::warn!(op = %st.op, kind = %st.kind, phases = ?st.phases.iter().map(|p| &p.0).collect::<Vec<_>>(), "recovering an operation cut off by a restart");
        let mut events = start(&state, st);
        while events.next().await.is_some() {}
    }
    ensure_running(&state).await;
}

fn interrupted(what: &str, reverted: bool) -> StepError {
    StepError::new(
        pb::FailureCode::Interrupted,
        format!(
            "the agent stopped during the {what}; on restart it {}",
            if reverted {
                "undid it"
            } else {
                "could not undo it"
            }
        ),
    )
    .reverted(reverted)
}

fn start(state: &Arc<AgentState>, st: OpState) -> EventStream {
    let kind: &'static str = match st.kind.as_str() {
        "stage" => "stage",
        "backup" => "backup",
        "restore" => "restore",
        "drain" => "drain",
        "undrain" => "undrain",
        "install" => "install",
        "rollback" => "rollback",
        other => {
            tracing::error!(op = %st.op, kind = other, "unknown operation kind in the journal");
            "unknown"
        }
    };
    let s = state.clone();
    state.ops.start(
        &st.op.clone(),
        kind,
        Value::Null,
        true,
        move |ctx| async move {
            let r = recover_one(&s, &ctx, &st).await;
            steps::finish(&s, r).await
        },
    )
}

async fn recover_one(state: &AgentState, ctx: &OpCtx, st: &OpState) -> StepResult {
    match st.kind.as_str() {
        "stage" => {
            stage::clean_staging(state);
            if st.passed("unpacked") {
                // The release was already renamed into place: it is complete.
                let version = st
                    .begin
                    .get("version")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let dir = st
                    .begin
                    .get("version")
                    .and_then(Value::as_str)
                    .and_then(|v| v.parse().ok())
                    .map(|v| state.root.release_dir(&v));
                if let Some(dir) = dir.filter(|d| d.join(stage::MARKER).is_file()) {
                    return Ok(pb::success::Detail::Stage(pb::StageResult {
                        version: version.to_string(),
                        release_dir: dir.display().to_string(),
                        bytes: 0,
                        already_present: true,
                    }));
                }
            }
            Err(interrupted("stage", true))
        }
        "backup" => {
            backup::clean_partials(state);
            Err(interrupted("backup", true))
        }
        "drain" => match drain::back_in_rotation(state).await {
            Ok(()) => Err(interrupted("drain (the host is back in rotation)", true)),
            Err(e) => Err(StepError::new(
                pb::FailureCode::Interrupted,
                format!(
                    "the agent stopped during the drain and could not put the host back: {}; it may be out of rotation",
                    e.message
                ),
            )),
        },
        "undrain" => {
            drain::back_in_rotation(state).await?;
            Ok(pb::success::Detail::Undrain(pb::UndrainResult {}))
        }
        "restore" => {
            start_if_stopped(state).await?;
            let id = st
                .begin
                .get("backup")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if st.passed("restored") {
                let r = pg::compare_export(state, id).await?;
                return Ok(pb::success::Detail::Restore(r));
            }
            Err(StepError::new(
                pb::FailureCode::Interrupted,
                "the agent stopped during the restore; the database is either fully restored or unchanged (one transaction): run the restore again",
            ))
        }
        "install" | "rollback" => {
            let plan: Plan = serde_json::from_value(st.begin.clone())
                .map_err(|e| StepError::internal(format!("unreadable plan in the journal: {e}")))?;
            if st.passed("reverting") {
                // A revert was under way: finish it.
                let r = install::revert(state, ctx, &plan).await;
                return Err(StepError::new(
                    pb::FailureCode::Interrupted,
                    format!("the agent stopped while reverting; {}", r.detail()),
                )
                .reverted(r.ok()));
            }
            if st.passed("switched") || st.passed("restored") {
                // Past the point of no return: finish the step.
                if state.root.current().as_ref() != Some(&plan.target) {
                    install::switch(state.root.path(), &plan.target).map_err(|e| {
                        StepError::internal(format!("cannot switch to {}: {e}", plan.target))
                    })?;
                }
                start_if_stopped(state).await?;
                return install::finish_gate(state, ctx, &plan).await;
            }
            // No `switched` in the journal: the step either never switched or
            // was cut off between the rename and the journal entry. Either
            // way the previous release is the one to run.
            if let Some(prev) = &plan.previous
                && state.root.current().as_ref() != Some(prev)
            {
                stop_if_running(state).await?;
                install::switch(state.root.path(), prev).map_err(|e| {
                    StepError::internal(format!("cannot switch back to {prev}: {e}"))
                })?;
            }
            start_if_stopped(state).await?;
            Err(interrupted(&st.kind, true))
        }
        _ => Err(StepError::internal(format!(
            "cannot recover an operation of kind {:?}",
            st.kind
        ))),
    }
}

async fn stop_if_running(state: &AgentState) -> Result<(), StepError> {
    if matches!(state.service.status().await, ProcessStatus::Running { .. }) {
        install::stop(state).await?;
    }
    Ok(())
}

async fn start_if_stopped(state: &AgentState) -> Result<(), StepError> {
    if matches!(state.service.status().await, ProcessStatus::Running { .. }) {
        return Ok(());
    }
    install::start_current(state, None).await.map(|_| ())
}

/// The exec manager supervises the gateway: on agent start, a host with an
/// installed release runs it. (systemd hosts: the unit's own enablement.)
async fn ensure_running(state: &AgentState) {
    if state.config.service.manager != crate::config::ManagerKind::Exec
        || state.root.current().is_none()
    {
        return;
    }
    // A step that began meanwhile owns the gateway (it may have just stopped
    // it on purpose).
    if let Some(op) = state.ops.active() {
        tracing::info!(%op, "not starting the gateway: a step is running");
        return;
    }
    match state.service.status().await {
        ProcessStatus::Running { pid } => tracing::info!(pid, "re-adopted the running gateway"),
        ProcessStatus::Stopped => match install::start_current(state, None).await {
            Ok(pid) => tracing::info!(pid, "started the gateway"),
            Err(e) => tracing::error!(error = %e.message, "cannot start the gateway"),
        },
        ProcessStatus::Unknown(why) => tracing::warn!(%why, "cannot tell whether the gateway runs"),
    }
}

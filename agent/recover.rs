//! After a crash: finish or undo every step the journal shows begun and not
//! ended, so the host is on exactly one release with the gateway running.
//! Each recovery runs as the same operation (its attempt count grows), so a
//! coordinator that repeats the call follows it to its end.
//!
//! What to do is decided by `plan`, a pure function of the step's kind and
//! the phases its journal shows passed; `run` carries it out.

use std::sync::Arc;

use futures::StreamExt;
use rollgate::outcome::{FailureCode, Staged, StepOutput};

use crate::journal::OpState;
use crate::kind::{Intent, Phase, StepKind};
use crate::op::{OpCtx, Started, StepError};
use crate::service::ProcessStatus;
use crate::state::AgentState;
use crate::steps::{self, StepRun, backup, drain, install, pg, stage};

/// What recovery does with a step cut off by a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Stage published the release: it is staged.
    StageDone,
    /// Stage did not publish: remove what it left; interrupted, undone.
    StageUndo,
    /// Backup: remove the unfinished backup; interrupted, undone.
    BackupUndo,
    /// Restore committed its one transaction: start the gateway, compare
    /// the export.
    RestoreDone,
    /// Restore did not commit: the database is unchanged; start the gateway.
    RestoreUndo,
    /// Drain: put the host back in rotation; interrupted, undone.
    DrainUndo,
    /// Undrain: put the host back in rotation; done.
    UndrainDone,
    /// Install/Rollback was reverting: finish the revert.
    SwapFinishRevert,
    /// Install/Rollback is past the point of no return (switched, or the
    /// database restored for an older release): switch if needed, start,
    /// gate.
    SwapForward,
    /// Install/Rollback had not switched (or its switch is not journalled):
    /// back to the previous release and start it; interrupted, undone.
    SwapBack,
    /// Rehearse: stop the rehearsal CP, drop the scratch database, remove
    /// its files; interrupted, undone. (Production was never touched.)
    RehearseUndo,
}

/// What to do with a step of `kind` whose journal shows `passed`.
pub fn plan(kind: StepKind, passed: &[Phase]) -> Recovery {
    let has = |p: Phase| passed.contains(&p);
    match kind {
        StepKind::Stage if has(Phase::Unpacked) => Recovery::StageDone,
        StepKind::Stage => Recovery::StageUndo,
        StepKind::Backup => Recovery::BackupUndo,
        StepKind::Restore if has(Phase::Restored) => Recovery::RestoreDone,
        StepKind::Restore => Recovery::RestoreUndo,
        StepKind::Drain => Recovery::DrainUndo,
        StepKind::Undrain => Recovery::UndrainDone,
        StepKind::Rehearse => Recovery::RehearseUndo,
        StepKind::Install | StepKind::Rollback => {
            if has(Phase::Reverting) {
                Recovery::SwapFinishRevert
            } else if has(Phase::Switched) || has(Phase::Restored) {
                Recovery::SwapForward
            } else {
                // Either never switched, or cut off between the switch and
                // its journal entry: the previous release is the one to run.
                Recovery::SwapBack
            }
        }
    }
}

/// Recovers every unfinished operation, then makes sure the gateway runs.
pub async fn run(state: Arc<AgentState>) {
    // A command the previous agent left running (dpkg, compose) would race
    // recovery: it ends first, then the method repairs what it cut off.
    for record in [state.installer.child_record(), state.service.child_record()]
        .into_iter()
        .flatten()
    {
        crate::command::end_leftover(record).await;
    }
    state.installer.repair().await;
    for st in state.ops.unfinished() {
        tracing::warn!(op = %st.op, kind = %st.kind, phases = ?st.passed_phases(), "recovering an operation cut off by a restart");
        let s = state.clone();
        let op = st.op.clone();
        let started = state.ops.resume(&op, st.kind, move |ctx| async move {
            let r = recover_one(&s, &ctx, &st).await;
            if matches!(st.kind, StepKind::Install | StepKind::Rollback) {
                s.service.tidy().await;
            }
            steps::conclude(&s, &ctx, r).await
        });
        match started {
            Started::Events(mut events) => while events.next().await.is_some() {},
            // The agent is stopping: the step stays unfinished in the
            // journal for the next start, and nothing is started now (the
            // gateway's release may be the one the step was undoing).
            Started::Retry(why) => {
                tracing::info!(op = %op, "recovery left for the next start: {why}");
                return;
            }
        }
    }
    ensure_running(&state).await;
}

fn interrupted(what: &str, reverted: bool) -> StepError {
    StepError::new(
        FailureCode::Interrupted,
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

async fn recover_one(state: &AgentState, ctx: &OpCtx, st: &OpState) -> StepRun {
    let action = plan(st.kind, &st.passed_phases());
    tracing::info!(op = %st.op, ?action, "recovery");
    match action {
        Recovery::StageDone => {
            stage::clean_staging(state);
            let Some(Intent::Stage {
                version, sha256, ..
            }) = &st.intent
            else {
                return Err(interrupted("stage", true));
            };
            match state.installer.marker(version).await {
                Ok(Some(m)) if m.sha256 == *sha256 => Ok(StepOutput::Stage(Staged {
                    version: version.clone(),
                    location: stage::location(state, version),
                    bytes: 0,
                    already_present: true,
                })),
                _ => Err(interrupted("stage", true)),
            }
        }
        Recovery::StageUndo => {
            stage::clean_staging(state);
            Err(interrupted("stage", true))
        }
        Recovery::BackupUndo => {
            backup::clean_partials(state);
            Err(interrupted("backup", true))
        }
        Recovery::RehearseUndo => {
            steps::rehearse::clean_up(state, &st.op).await;
            Err(interrupted("rehearsal (production was not touched)", true))
        }
        Recovery::DrainUndo => match drain::back_in_rotation(state).await {
            Ok(()) => Err(interrupted("drain (the host is back in rotation)", true)),
            Err(e) => Err(StepError::new(
                FailureCode::Interrupted,
                format!(
                    "the agent stopped during the drain and could not put the host back: {}; it may be out of rotation",
                    e.message
                ),
            )),
        },
        Recovery::UndrainDone => {
            drain::back_in_rotation(state).await?;
            Ok(StepOutput::Undrain)
        }
        Recovery::RestoreDone | Recovery::RestoreUndo => {
            start_if_stopped(state).await?;
            let Some(Intent::Restore { backup_id }) = &st.intent else {
                return Err(StepError::internal("the journal holds no restore request"));
            };
            if action == Recovery::RestoreDone {
                return Ok(StepOutput::Restore(
                    pg::compare_export(state, backup_id).await?,
                ));
            }
            Err(StepError::new(
                FailureCode::Interrupted,
                "the agent stopped during the restore; the database is either fully restored or unchanged (one transaction): run the restore again",
            ))
        }
        Recovery::SwapFinishRevert | Recovery::SwapForward | Recovery::SwapBack => {
            let plan = match &st.intent {
                Some(Intent::Install(p) | Intent::Rollback(p)) => p,
                other => {
                    return Err(StepError::internal(format!(
                        "the journal holds no install plan ({other:?})"
                    )));
                }
            };
            match action {
                Recovery::SwapFinishRevert => {
                    let r = install::revert(state, ctx, plan).await;
                    Err(StepError::new(
                        FailureCode::Interrupted,
                        format!("the agent stopped while reverting; {}", r.detail()),
                    )
                    .reverted(r.ok()))
                }
                Recovery::SwapForward => {
                    if state.installer.current().as_ref() != Some(&plan.target) {
                        install::switch(state, &plan.target).await?;
                    }
                    start_if_stopped(state).await?;
                    install::finish_gate(state, ctx, plan).await
                }
                _ => {
                    if let Some(prev) = &plan.previous
                        && state.installer.current().as_ref() != Some(prev)
                    {
                        stop_if_running(state).await?;
                        install::switch(state, prev).await?;
                    }
                    start_if_stopped(state).await?;
                    Err(interrupted(st.kind.as_str(), true))
                }
            }
        }
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
    if state.config.service.kind() != crate::config::ManagerKind::Exec
        || state.installer.current().is_none()
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
        ProcessStatus::Running { pid, .. } => {
            tracing::info!(pid, "re-adopted the running gateway")
        }
        ProcessStatus::Stopped => match install::start_current(state, None).await {
            Ok(pid) => tracing::info!(pid, "started the gateway"),
            Err(e) => tracing::error!(error = %e.message, "cannot start the gateway"),
        },
        ProcessStatus::Unknown(why) => tracing::warn!(%why, "cannot tell whether the gateway runs"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind, cut off after each prefix of its phases (and, for the
    /// swaps, the revert paths): what recovery does. A change to a step's
    /// phases or to this table is a change to crash safety, and shows here.
    #[test]
    fn recovery_table_covers_every_kind_and_phase() {
        use Phase::*;
        use Recovery::*;
        let table: &[(StepKind, &[Phase], Recovery)] = &[
            (StepKind::Stage, &[], StageUndo),
            (StepKind::Stage, &[Received], StageUndo),
            (StepKind::Stage, &[Received, Unpacked], StageDone),
            (StepKind::Backup, &[], BackupUndo),
            (StepKind::Backup, &[Fingerprinted], BackupUndo),
            (StepKind::Backup, &[Fingerprinted, Dumped], BackupUndo),
            (
                StepKind::Backup,
                &[Fingerprinted, Dumped, Published],
                BackupUndo,
            ),
            (StepKind::Restore, &[], RestoreUndo),
            (StepKind::Restore, &[Stopped], RestoreUndo),
            (StepKind::Restore, &[Stopped, Restored], RestoreDone),
            (StepKind::Drain, &[], DrainUndo),
            (StepKind::Drain, &[Marked], DrainUndo),
            (StepKind::Drain, &[Marked, Drained], DrainUndo),
            (StepKind::Undrain, &[], UndrainDone),
            (StepKind::Undrain, &[Ready], UndrainDone),
            (StepKind::Install, &[], SwapBack),
            (StepKind::Install, &[Stopped], SwapBack),
            (StepKind::Install, &[Stopped, Switched], SwapForward),
            (
                StepKind::Install,
                &[Stopped, Switched, Started],
                SwapForward,
            ),
            (
                StepKind::Install,
                &[Stopped, Switched, Started, Gated],
                SwapForward,
            ),
            (
                StepKind::Install,
                &[Stopped, Switched, Reverting],
                SwapFinishRevert,
            ),
            (
                StepKind::Install,
                &[Stopped, Switched, Started, Reverting],
                SwapFinishRevert,
            ),
            (
                StepKind::Install,
                &[Stopped, Switched, Started, Reverting, Reverted],
                SwapFinishRevert,
            ),
            (StepKind::Rehearse, &[], RehearseUndo),
            (StepKind::Rehearse, &[ScratchCreated], RehearseUndo),
            (
                StepKind::Rehearse,
                &[ScratchCreated, Restored],
                RehearseUndo,
            ),
            (
                StepKind::Rehearse,
                &[ScratchCreated, Restored, Started],
                RehearseUndo,
            ),
            (
                StepKind::Rehearse,
                &[ScratchCreated, Restored, Started, Checked],
                RehearseUndo,
            ),
            (StepKind::Rollback, &[], SwapBack),
            (StepKind::Rollback, &[Stopped], SwapBack),
            (StepKind::Rollback, &[Stopped, Restored], SwapForward),
            (
                StepKind::Rollback,
                &[Stopped, Restored, Switched],
                SwapForward,
            ),
            (
                StepKind::Rollback,
                &[Stopped, Switched, Started],
                SwapForward,
            ),
            (
                StepKind::Rollback,
                &[Stopped, Switched, Started, Gated],
                SwapForward,
            ),
            (
                StepKind::Rollback,
                &[Stopped, Switched, Started, Reverting, Reverted],
                SwapFinishRevert,
            ),
        ];
        for (kind, passed, want) in table {
            assert_eq!(plan(*kind, passed), *want, "{kind} after {passed:?}");
        }
        // Every kind and every phase it can journal appears in the table.
        for kind in StepKind::ALL {
            for phase in kind.phases() {
                assert!(
                    table
                        .iter()
                        .any(|(k, passed, _)| *k == kind && passed.contains(phase)),
                    "{kind}: phase {phase:?} is not in the table"
                );
            }
            assert!(
                table
                    .iter()
                    .any(|(k, passed, _)| *k == kind && passed.is_empty()),
                "{kind}: no phase passed is not in the table"
            );
        }
    }
}

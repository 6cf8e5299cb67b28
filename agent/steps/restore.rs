//! Restore (CP hosts): put the database back as a backup has it, in place,
//! on the current release: stop the gateway, pg_restore in one transaction,
//! start it, gate on health, compare the declarative export.

use rollgate::outcome::{FailureCode, StepOutput};

use super::install::{start_current, stop};
use super::{StepRun, gate, pg};
use crate::kind::Phase;
use crate::op::{OpCtx, StepError};
use crate::state::AgentState;

pub async fn restore(state: &AgentState, ctx: &OpCtx, id: &str) -> StepRun {
    pg::check_backup(state, id).await?;
    let Some(current) = state.installer.current() else {
        return Err(StepError::precondition("no release is installed"));
    };
    stop(state).await?;
    ctx.phase(Phase::Stopped, serde_json::Value::Null).await?;
    ctx.progress(
        "restore",
        format!("restoring the database from backup {id}"),
        0,
        0,
    );
    if let Err(e) = pg::restore(state, id).await {
        // One transaction: the database is as it was. Bring the gateway back.
        let back = start_current(state, None).await;
        return Err(e.reverted(back.is_ok()));
    }
    ctx.phase(Phase::Restored, serde_json::Value::Null).await?;
    start_current(state, None).await?;
    let h = &state.config.health;
    gate::gate(state, Some(ctx), &current, h.start_timeout, h.min_healthy)
        .await
        .map_err(|f| {
            StepError::new(
                FailureCode::HealthGateFailed,
                format!("the gateway is not healthy after the restore: {}", f.reason),
            )
            .detail(f.last.describe())
        })?;
    Ok(StepOutput::Restore(pg::compare_export(state, id).await?))
}

//! The steps that change a host. Each checks what it expects to find, acts,
//! checks the result and journals its phases through its `OpCtx`, so a crash
//! at any point can be finished or undone (`crate::recover`). Steps speak in
//! domain types (`rollgate::outcome`); the gRPC edge converts.

pub mod backup;
pub mod drain;
pub mod gate;
pub mod install;
pub mod pg;
pub mod rehearse;
pub mod restore;
pub mod scratch;
pub mod snapshot;
pub mod stage;

use rollgate::outcome::{Failure, StepOutput, StepResult};

use crate::op::OpCtx;
use crate::op::StepError;
use crate::state::AgentState;

/// How a step's own code ends.
pub type StepRun = Result<StepOutput, StepError>;

/// A step's result, with what the host looks like now (its release, the
/// gateway's health) added to a failure. The phases the step journalled
/// behind are durable first; one the disk refused fails the step.
pub async fn conclude(state: &AgentState, ctx: &OpCtx, r: StepRun) -> StepResult {
    let r = match ctx.settle().await {
        Ok(()) => r,
        Err(e) => r.and(Err(e)),
    };
    match r {
        Ok(out) => Ok(out),
        Err(e) => {
            let obs = state.prober.observe(&state.service, &state.installer).await;
            Err(Failure {
                code: e.code,
                message: e.message,
                detail: e.detail,
                reverted: e.reverted,
                active_version: state.installer.current(),
                gateway_healthy: obs.healthy(),
            })
        }
    }
}

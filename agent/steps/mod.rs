//! The steps that change a host. Each checks what it expects to find, acts,
//! checks the result and journals its phases through its `OpCtx`, so a crash
//! at any point can be finished or undone (`crate::recover`).

pub mod archive;
pub mod backup;
pub mod drain;
pub mod gate;
pub mod install;
pub mod pg;
pub mod restore;
pub mod stage;

use rollgate::pb;
use rollgate::pb::operation_result::Outcome;

use crate::state::AgentState;

/// A step that did not succeed, with everything the failure report needs.
#[derive(Debug, Clone)]
pub struct StepError {
    pub code: pb::FailureCode,
    pub message: String,
    pub detail: String,
    /// The step's changes were undone.
    pub reverted: bool,
}

impl StepError {
    pub fn new(code: pb::FailureCode, message: impl Into<String>) -> Self {
        StepError {
            code,
            message: message.into(),
            detail: String::new(),
            reverted: false,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    pub fn reverted(mut self, reverted: bool) -> Self {
        self.reverted = reverted;
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        StepError::new(pb::FailureCode::InvalidArgument, message)
    }

    pub fn precondition(message: impl Into<String>) -> Self {
        StepError::new(pb::FailureCode::Precondition, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        StepError::new(pb::FailureCode::Internal, message)
    }
}

pub type StepResult = Result<pb::success::Detail, StepError>;

/// Turns a step's outcome into the wire result, adding what the host looks
/// like now (active release, gateway health) to a failure.
pub async fn finish(state: &AgentState, r: StepResult) -> pb::OperationResult {
    match r {
        Ok(detail) => crate::ops::success(detail),
        Err(e) => {
            let obs = state.prober.observe(&state.service).await;
            pb::OperationResult {
                outcome: Some(Outcome::Failure(pb::Failure {
                    code: e.code as i32,
                    message: e.message,
                    detail: e.detail,
                    reverted: e.reverted,
                    active_version: state
                        .root
                        .current()
                        .map(|v| v.to_string())
                        .unwrap_or_default(),
                    gateway_healthy: obs.healthy(),
                })),
                replayed: false,
            }
        }
    }
}

/// Journals a phase; a journal that cannot be written stops the step.
pub fn phase(
    ctx: &crate::ops::OpCtx,
    name: &str,
    detail: serde_json::Value,
) -> Result<(), StepError> {
    ctx.phase(name, detail)
        .map_err(|e| StepError::internal(format!("cannot write the journal: {e}")))
}

//! Why a step did not succeed, in the agent's own terms.

use rollgate::outcome::FailureCode;

use crate::command::CommandError;

/// A step that did not succeed, with everything the failure report needs.
/// What the host looks like afterwards (its release, the gateway's health)
/// is added when the step ends (`crate::steps::conclude`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message} ({code})")]
pub struct StepError {
    pub code: FailureCode,
    pub message: String,
    pub detail: String,
    /// The step's changes were undone.
    pub reverted: bool,
}

impl StepError {
    pub fn new(code: FailureCode, message: impl Into<String>) -> Self {
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
        StepError::new(FailureCode::InvalidArgument, message)
    }

    pub fn precondition(message: impl Into<String>) -> Self {
        StepError::new(FailureCode::Precondition, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        StepError::new(FailureCode::Internal, message)
    }
}

impl From<CommandError> for StepError {
    fn from(e: CommandError) -> Self {
        let code = match e.kind {
            crate::command::Failed::Timeout => FailureCode::Timeout,
            crate::command::Failed::Spawn | crate::command::Failed::Exit => {
                FailureCode::CommandFailed
            }
        };
        StepError::new(code, e.message).detail(e.detail)
    }
}

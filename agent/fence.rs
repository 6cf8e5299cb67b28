//! The agent's side of fencing (`rollgate::fencing`): the highest token
//! seen, kept durable in `<state_dir>/fencing-token` (written atomically and
//! fsynced before the call that raised it is let through, so it survives a
//! restart), and the check every call passes through.
//!
//! A call with a lower token is refused before it reaches any step: nothing
//! is done, and the message says another coordinator took over. A call
//! without a token (`rollgate status` from any machine, a coordinator whose
//! state is a local directory) is let through: only a coordinator holding
//! a lease carries one, and a lower one is what a superseded holder has.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tonic::Status;

const FILE: &str = "fencing-token";

/// Why the recorded token cannot be known.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// The file holds something else: the agent must not start (exit 65).
    #[error("{0}")]
    Damaged(String),
    /// It could not be read (permissions, I/O): may pass; exit 1.
    #[error("{0}")]
    Unreadable(String),
}

#[derive(Debug)]
pub struct Fence {
    path: PathBuf,
    highest: Mutex<u64>,
}

impl Fence {
    /// Reads the highest token recorded in `state_dir` (0 when none). A
    /// damaged file stops the agent: guessing low would let a superseded
    /// coordinator in.
    pub fn load(state_dir: &Path) -> Result<Fence, FenceError> {
        let path = state_dir.join(FILE);
        let highest = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse::<u64>().map_err(|_| {
                FenceError::Damaged(format!(
                    "{} holds {:?}, not a fencing token; move it aside only if no coordinator holds the fleet's lease",
                    path.display(),
                    s.trim()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                return Err(FenceError::Unreadable(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        Ok(Fence {
            path,
            highest: Mutex::new(highest),
        })
    }

    /// The highest token seen so far.
    pub fn highest(&self) -> u64 {
        *self.highest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets a call carrying `token` through, or refuses it. A higher token
    /// is made durable first.
    pub fn admit(&self, token: Option<u64>) -> Result<(), Status> {
        let Some(token) = token else {
            return Ok(());
        };
        let mut highest = self.highest.lock().unwrap_or_else(|p| p.into_inner());
        if token < *highest {
            tracing::warn!(
                token,
                highest = *highest,
                "refused a call from a superseded coordinator"
            );
            return Err(Status::failed_precondition(format!(
                "fenced: this call's fencing token {token} is below {}, the highest this agent has seen: another coordinator has taken over the fleet since; nothing was done",
                *highest
            )));
        }
        if token > *highest {
            rollgate::fsx::write_atomic(&self.path, format!("{token}\n").as_bytes()).map_err(
                |e| {
                    tracing::error!(token, error = %e, path = %self.path.display(), "cannot record a fencing token");
                    Status::unavailable(format!(
                        "cannot record fencing token {token} in {}: {e}; nothing was done",
                        self.path.display()
                    ))
                },
            )?;
            tracing::info!(
                token,
                previous = *highest,
                "a new fencing token: earlier coordinators are fenced off"
            );
            *highest = token;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lower_token_is_refused_and_the_highest_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let f = Fence::load(dir.path()).unwrap();
        assert_eq!(f.highest(), 0);
        f.admit(None).unwrap();
        f.admit(Some(7)).unwrap();
        f.admit(Some(7)).unwrap();
        let e = f.admit(Some(6)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("below 7"), "{e:?}");
        f.admit(None).unwrap();
        drop(f);
        let again = Fence::load(dir.path()).unwrap();
        assert_eq!(again.highest(), 7);
        assert!(again.admit(Some(3)).is_err());
        again.admit(Some(9)).unwrap();
        assert_eq!(Fence::load(dir.path()).unwrap().highest(), 9);
    }

    #[test]
    fn a_damaged_record_is_an_error_not_zero() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "garbage").unwrap();
        let e = Fence::load(dir.path()).unwrap_err();
        assert!(matches!(e, FenceError::Damaged(_)), "{e:?}");
        assert!(e.to_string().contains("not a fencing token"), "{e}");
    }
}

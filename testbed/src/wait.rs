//! Waiting for a condition, bounded by a deadline: never a bare sleep.

use std::time::{Duration, Instant};

/// Polls `ok` every 25 ms until it holds; an error naming `what` after
/// `deadline`.
pub fn until(deadline: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Result<(), String> {
    value(deadline, what, || ok().then_some(()))
}

/// Polls `check` every 25 ms until it gives a value; an error naming `what`
/// after `deadline`.
pub fn value<T>(
    deadline: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() >= end {
            return Err(format!("timed out after {deadline:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `until`, for tests and benches: panics on the deadline.
pub fn must(deadline: Duration, what: &str, ok: impl FnMut() -> bool) {
    if let Err(e) = until(deadline, what, ok) {
        panic!("{e}");
    }
}

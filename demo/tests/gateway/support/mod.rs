//! Helpers for the end-to-end tests: packaged releases, child processes that are
//! always killed, a tiny HTTP client, deadline-bounded waits, gateway fixtures.

pub mod client;
pub mod gateway;
pub mod process;
pub mod releases;

use std::time::{Duration, Instant};

/// Polls `check` every 20 ms until it returns `Some`, or panics naming `what`
/// after `within`. The test-side replacement for sleeps.
pub fn eventually<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

//! Helpers for the end-to-end tests: packaged releases, child processes that are
//! always killed, a tiny HTTP client, deadline-bounded waits, gateway fixtures.

pub mod client;
pub mod gateway;
pub mod process;
pub mod releases;

use std::time::Duration;

/// Polls `check` until it returns `Some`, or panics naming `what` after
/// `within`: the testbed's deadline-bounded wait, for a value.
pub fn eventually<T>(what: &str, within: Duration, check: impl FnMut() -> Option<T>) -> T {
    rollgate_testbed::wait::value(within, what, check).unwrap_or_else(|e| panic!("{e}"))
}

//! Waiting for the signals that ask a process to stop.

use tokio::signal::unix::{SignalKind, signal};

/// Resolves with the name of the first SIGTERM or SIGINT received.
pub async fn signalled() -> &'static str {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; waiting for Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

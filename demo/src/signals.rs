//! Unix signals as the gateway roles understand them, nginx/APISIX style:
//! SIGQUIT asks for a graceful stop, SIGTERM and SIGINT for a fast one.

use tokio::signal::unix::{Signal, SignalKind, signal};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGQUIT: stop accepting, finish in-flight requests, then exit.
    Graceful,
    /// SIGTERM or SIGINT: exit now.
    Fast,
}

pub struct Signals {
    quit: Signal,
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Installs the handlers; do it before binding so no signal is missed.
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            quit: signal(SignalKind::quit())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    pub async fn next(&mut self) -> Stop {
        tokio::select! {
            _ = self.quit.recv() => Stop::Graceful,
            _ = self.term.recv() => Stop::Fast,
            _ = self.int.recv() => Stop::Fast,
        }
    }
}

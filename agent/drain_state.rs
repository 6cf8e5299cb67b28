//! Where the host stands towards its load balancer, kept across agent
//! restarts (`<state_dir>/drain-state`), and the HAProxy agent-check server
//! that tells the load balancer.
//!
//! HAProxy connects to the agent-check port every `agent-inter` and reads one
//! line: `ready up` puts the server back in rotation, `drain` stops new
//! connections to it (existing ones finish), `maint` takes it out entirely.

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

/// The host's load-balancer state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    Ready,
    Draining,
    Maint,
}

impl Drain {
    fn as_str(self) -> &'static str {
        match self {
            Drain::Ready => "ready",
            Drain::Draining => "drain",
            Drain::Maint => "maint",
        }
    }

    fn parse(s: &str) -> Option<Drain> {
        match s.trim() {
            "ready" => Some(Drain::Ready),
            "drain" => Some(Drain::Draining),
            "maint" => Some(Drain::Maint),
            _ => None,
        }
    }

    /// The agent-check answer.
    pub fn agent_check_line(self) -> &'static str {
        match self {
            Drain::Ready => "ready up\n",
            Drain::Draining => "drain\n",
            Drain::Maint => "maint\n",
        }
    }
}

#[derive(Debug)]
pub struct DrainCtl {
    file: PathBuf,
    state: watch::Sender<Drain>,
    /// Agent-check queries answered since the agent started, and the state
    /// the last one was told.
    checks: watch::Sender<(u64, Drain)>,
}

impl DrainCtl {
    /// Restores the state saved in `state_dir` (Ready when none).
    pub fn load(state_dir: &std::path::Path) -> DrainCtl {
        let file = state_dir.join("drain-state");
        let saved = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| Drain::parse(&s));
        if let Some(d) = saved.filter(|d| *d != Drain::Ready) {
            tracing::warn!(
                state = d.as_str(),
                "the host is still out of rotation from before the restart"
            );
        }
        DrainCtl {
            file,
            state: watch::Sender::new(saved.unwrap_or(Drain::Ready)),
            checks: watch::Sender::new((0, Drain::Ready)),
        }
    }

    pub fn get(&self) -> Drain {
        *self.state.borrow()
    }

    /// Saves (fsync) then publishes a new state.
    pub fn set(&self, d: Drain) -> std::io::Result<()> {
        rollgate::fsx::write_atomic(&self.file, d.as_str().as_bytes())?;
        self.state.send_replace(d);
        tracing::info!(state = d.as_str(), "load-balancer state changed");
        Ok(())
    }

    pub fn checks(&self) -> watch::Receiver<(u64, Drain)> {
        self.checks.subscribe()
    }

    /// Serves HAProxy agent-check on `listener` until the process ends.
    pub fn serve(self: std::sync::Arc<Self>, listener: tokio::net::TcpListener, addr: SocketAddr) {
        tokio::spawn(async move {
            tracing::info!(%addr, "answering HAProxy agent-check");
            loop {
                let (mut conn, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "agent-check accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let served = self.get();
                let line = served.agent_check_line();
                self.checks.send_modify(|(n, s)| {
                    *n += 1;
                    *s = served;
                });
                tokio::spawn(async move {
                    if let Err(e) = conn.write_all(line.as_bytes()).await {
                        tracing::debug!(%peer, error = %e, "agent-check reply failed");
                    }
                    let _ = conn.shutdown().await;
                });
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let d = DrainCtl::load(dir.path());
        assert_eq!(d.get(), Drain::Ready);
        d.set(Drain::Draining).unwrap();
        assert_eq!(DrainCtl::load(dir.path()).get(), Drain::Draining);
    }

    #[tokio::test]
    async fn answers_agent_check_with_the_current_state() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let d = std::sync::Arc::new(DrainCtl::load(dir.path()));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        d.clone().serve(l, addr);
        let ask = || async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert_eq!(ask().await, "ready up\n");
        d.set(Drain::Draining).unwrap();
        assert_eq!(ask().await, "drain\n");
        assert_eq!(*d.checks().borrow(), (2, Drain::Draining));
    }
}

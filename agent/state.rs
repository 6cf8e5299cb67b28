//! What every rpc of the agent shares.

use std::sync::Arc;

use crate::config::Config;
use crate::drain_state::DrainCtl;
use crate::facts::FactSource;
use crate::health::Prober;
use crate::install::Installer;
use crate::journal::{Journal, JournalError};
use crate::op::Ops;
use crate::service::Service;

#[derive(Debug)]
pub struct AgentState {
    pub config: Config,
    pub installer: Installer,
    pub service: Service,
    pub prober: Prober,
    pub facts: FactSource,
    pub drain: Arc<DrainCtl>,
    pub ops: Arc<Ops>,
    /// When a coordinator was last in touch (the drain lease).
    pub contact: Arc<crate::lease::Contact>,
    /// The highest fencing token seen; calls with a lower one are refused.
    pub fence: Arc<crate::fence::Fence>,
    /// Set once the agent stops and its step in flight has ended: open
    /// health watches end, so the server's graceful stop is not held by
    /// streams that never finish.
    pub stopping: tokio::sync::watch::Sender<bool>,
}

/// Why the agent's state cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the journal: {0}")]
    Journal(#[from] JournalError),
    #[error("{0}")]
    Fence(#[from] crate::fence::FenceError),
}

impl OpenError {
    /// The journal is damaged: the agent must not start (exit::DATA).
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            OpenError::Journal(JournalError::Corrupt { .. })
                | OpenError::Fence(crate::fence::FenceError::Damaged(_))
        )
    }
}

impl AgentState {
    /// Opens the journal and the saved drain state in the (existing) state dir.
    pub fn open(config: Config) -> Result<Self, OpenError> {
        let prober = Prober::new(&config.health);
        let (journal, states) = Journal::open(&config.agent.state_dir)?;
        let fence = crate::fence::Fence::load(&config.agent.state_dir)?;
        Ok(AgentState {
            installer: Installer::from_config(&config),
            service: Service::from_config(&config),
            prober,
            facts: FactSource::new(),
            drain: Arc::new(DrainCtl::load(&config.agent.state_dir)),
            ops: Ops::new(journal, states),
            contact: Arc::default(),
            fence: Arc::new(fence),
            stopping: tokio::sync::watch::Sender::new(false),
            config,
        })
    }
}

impl AgentState {
    /// A graceful stop: no new step begins, the one in flight is finished
    /// (not cut off by a restart such as a package upgrade's), then the
    /// health watches end. Says which it did.
    pub async fn stop(&self) {
        match self.ops.stop_admitting() {
            Some(op) => {
                tracing::info!(op = %op, "stopping: new steps are refused; finishing the step in flight first");
                let started = std::time::Instant::now();
                self.ops.idle().await;
                tracing::info!(op = %op, waited_ms = started.elapsed().as_millis() as u64, "stopping: the step in flight has ended");
            }
            None => tracing::info!("stopping: no step in flight"),
        }
        self.stopping.send_replace(true);
    }
}

//! What every rpc of the agent shares.

use std::sync::Arc;

use crate::config::AgentConfig;
use crate::drain_state::DrainCtl;
use crate::facts::FactSource;
use crate::health::Prober;
use crate::install_root::InstallRoot;
use crate::journal::Journal;
use crate::ops::Ops;
use crate::service::Service;

#[derive(Debug)]
pub struct AgentState {
    pub config: AgentConfig,
    pub root: InstallRoot,
    pub service: Service,
    pub prober: Prober,
    pub facts: FactSource,
    pub drain: Arc<DrainCtl>,
    pub ops: Arc<Ops>,
}

impl AgentState {
    /// Opens the journal and the saved drain state in the (existing) state dir.
    pub fn open(config: AgentConfig) -> Result<Self, String> {
        let prober = Prober::new(&config.health)
            .map_err(|e| format!("cannot build the HTTP probe client: {e}"))?;
        let (journal, states) = Journal::open(&config.agent.state_dir).map_err(|e| {
            format!(
                "cannot open the journal in {}: {e}",
                config.agent.state_dir.display()
            )
        })?;
        Ok(AgentState {
            root: InstallRoot::new(config.gateway.install_root.clone()),
            service: Service::from_config(&config),
            prober,
            facts: FactSource::new(),
            drain: Arc::new(DrainCtl::load(&config.agent.state_dir)),
            ops: Ops::new(journal, states),
            config,
        })
    }
}

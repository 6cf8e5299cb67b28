//! What every rpc of the agent shares.

use tokio::sync::watch;

use crate::config::AgentConfig;
use crate::facts::FactSource;
use crate::health::Prober;
use crate::install_root::InstallRoot;
use crate::service::Service;

/// Where the host stands towards its load balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    Ready,
    Draining,
    Maint,
}

#[derive(Debug)]
pub struct AgentState {
    pub config: AgentConfig,
    pub root: InstallRoot,
    pub service: Service,
    pub prober: Prober,
    pub facts: FactSource,
    pub drain: watch::Sender<Drain>,
}

impl AgentState {
    pub fn new(config: AgentConfig) -> Result<Self, String> {
        let prober = Prober::new(&config.health)
            .map_err(|e| format!("cannot build the HTTP probe client: {e}"))?;
        Ok(AgentState {
            root: InstallRoot::new(config.gateway.install_root.clone()),
            service: Service::from_config(&config),
            prober,
            facts: FactSource::new(),
            drain: watch::Sender::new(Drain::Ready),
            config,
        })
    }
}

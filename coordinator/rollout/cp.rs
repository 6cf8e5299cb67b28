//! The CP phase: each CP installs the hop with the agent's health gate, one
//! at a time; a failure (the agent reverts it) halts before any DP.

use rollgate::version::Version;

use super::driver::{Driver, Halt};
use super::steps::op_id;
use crate::fleet::FleetApi;

impl<F: FleetApi> Driver<F> {
    pub(super) async fn install_cp(&mut self, cp: &str, hop: &Version) -> Result<(), Halt> {
        // From an earlier hop this CP counts as passed; its restart now is ours.
        self.monitor.unpass(cp);
        self.watch_closely(&[cp.to_string()]);
        let op = op_id(&self.rid(), cp, "install", Some(hop));
        let p = self.ctx.policy.clone();
        let ctx = self.ctx.clone();
        let (r, halt) = self
            .monitored(
                Some(cp),
                ctx.run(cp, "install", Some(hop), &op, || {
                    ctx.fleet
                        .install(cp, &op, hop, p.min_healthy(), p.health_timeout())
                }),
            )
            .await;
        match r {
            Some(Ok(_)) => {
                self.monitor.pass(cp.to_string());
                halt.map_or(Ok(()), Err)
            }
            Some(Err(failure)) => Err(Halt::Step {
                host: cp.into(),
                step: "install".into(),
                failure: Box::new(failure),
            }),
            None => Err(halt.unwrap_or(Halt::Other("CP install abandoned".into()))),
        }
    }
}

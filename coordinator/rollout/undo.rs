//! `rollgate rollback`: DPs back to the release they had before the rollout,
//! in batches, then the CPs — with `--restore-db` the first CP restores the
//! database from the rollout's backup while its gateway is stopped.

use rollgate::role::Role;
use rollgate::version::Version;

use super::driver::{Driver, Halt};
use super::sequence::{HostEnd, rollback_dp};
use super::steps::op_id;
use crate::batch;
use crate::fleet::FleetApi;
use crate::report::Event;

impl<F: FleetApi> Driver<F> {
    /// Runs the rollback described by the journal's spec. `current` is each
    /// host's installed version now.
    pub async fn rollback(
        &mut self,
        current: &std::collections::BTreeMap<String, Version>,
    ) -> (super::log::Outcome, String) {
        let r = self.rollback_inner(current).await;
        self.conclude(r).await
    }

    async fn rollback_inner(
        &mut self,
        current: &std::collections::BTreeMap<String, Version>,
    ) -> Result<(), Halt> {
        let spec = self.ctx.log().spec.clone();
        let restore_db = matches!(
            spec.kind,
            super::spec::Kind::Rollback {
                restore_db: true,
                ..
            }
        );
        let all: Vec<String> = spec.hosts.iter().map(|h| h.name.clone()).collect();
        if let Some(h) = self
            .await_reports(&all, super::driver::HEALTH_INTERVAL * 3)
            .await
        {
            return Err(h);
        }
        let moved = |role: Role| -> Vec<(String, Version)> {
            spec.hosts
                .iter()
                .filter(|h| h.role == role)
                .filter(|h| {
                    current.get(&h.name) != Some(&h.from) || self.ctx.log().host_begun(&h.name)
                })
                .map(|h| (h.name.clone(), h.from.clone()))
                .collect()
        };
        let dps = moved(Role::Dp);
        let mut cps: Vec<(String, Version)> = moved(Role::Cp);
        let names: Vec<String> = dps.iter().map(|(n, _)| n.clone()).collect();
        for (b, hosts) in batch::cut(&names, spec.policy.canary, spec.policy.batch_size())
            .into_iter()
            .enumerate()
        {
            self.emit_batch(b, &hosts, "started");
            self.watch_closely(&hosts);
            let targets: std::collections::HashMap<String, Version> = dps.iter().cloned().collect();
            let (ends, halt) = self
                .run_hosts(&hosts, move |ctx, host| {
                    let to = targets[&host].clone();
                    async move { rollback_dp(ctx, host, to, None).await }
                })
                .await;
            for (host, end) in ends {
                match end {
                    HostEnd::Done => {
                        self.monitor.pass(host);
                    }
                    HostEnd::NotStarted => {}
                    HostEnd::Failed { step, failure, .. } => {
                        return Err(Halt::Step {
                            host,
                            step,
                            failure: Box::new(failure),
                        });
                    }
                }
            }
            if let Some(h) = halt {
                return Err(h);
            }
            self.emit_batch(b, &hosts, "succeeded");
        }
        if restore_db && cps.is_empty() {
            // Already on the old release, but the data goes back too.
            cps = spec
                .cps()
                .iter()
                .take(1)
                .map(|h| (h.name.clone(), h.from.clone()))
                .collect();
        }
        for (i, (cp, to)) in cps.iter().enumerate() {
            let restore = (restore_db && i == 0)
                .then(|| spec.backup_id.clone())
                .flatten();
            // Named for what it does, so the report shows the data went back too.
            let step = if restore.is_some() {
                "rollback-restore-db"
            } else {
                "rollback"
            };
            let op = op_id(&self.ctx.rid, cp, step, Some(to));
            self.watch_closely(std::slice::from_ref(cp));
            let ctx = self.ctx.clone();
            let timeout = ctx.policy.health_timeout();
            let (r, halt) = self
                .monitored(
                    Some(cp),
                    ctx.run(cp, step, Some(to), &op, || {
                        ctx.fleet.rollback(cp, &op, to, restore.as_deref(), timeout)
                    }),
                )
                .await;
            match r {
                Some(Ok(_)) => {
                    self.monitor.pass(cp.clone());
                }
                Some(Err(failure)) => {
                    return Err(Halt::Step {
                        host: cp.clone(),
                        step: "rollback".into(),
                        failure: Box::new(failure),
                    });
                }
                None => return Err(halt.unwrap_or(Halt::Other("CP rollback abandoned".into()))),
            }
            if let Some(h) = halt {
                return Err(h);
            }
        }
        Ok(())
    }

    fn emit_batch(&self, b: usize, hosts: &[String], status: &str) {
        self.ctx.reporter.emit(
            Event::new("batch", &self.ctx.rid, status)
                .batch(b)
                .detail(serde_json::json!({ "hosts": hosts, "rollback": true })),
        );
    }
}

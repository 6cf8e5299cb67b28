//! The DP phase: batches (canary first), each host drain → install →
//! undrain, the batch held healthy for `min_healthy`; failures within the
//! budget quarantined, a host that fails its batch's hold rolled back. Also
//! the first thing an upgrade does: DPs an earlier rollout left out of
//! rotation go back in.

use std::time::Instant;

use rollgate::outcome::{Failure, FailureCode};
use rollgate::role::Role;
use rollgate::version::Version;

use super::driver::{Driver, Halt};
use super::log::{HostMark, Record, now_ms};
use super::monitor::Alarm;
use super::sequence::{HostEnd, rollback_dp, upgrade_dp};
use super::steps::op_id;
use crate::fleet::FleetApi;
use crate::report::Event;

/// The operation id of putting a DP left drained back in rotation.
fn restore_op(rid: &str, host: &str) -> String {
    op_id(rid, host, "undrain-restore", None)
}

impl<F: FleetApi> Driver<F> {
    /// DPs the plan found out of rotation (an earlier rollout halted with
    /// them drained) go back first when healthy, so a re-run upgrade
    /// finishes what the halted one left.
    pub(super) async fn restore_rotation(&mut self) -> Result<(), Halt> {
        let hosts: Vec<String> = {
            let log = self.ctx.log();
            log.spec
                .hosts
                .iter()
                .filter(|h| h.role == Role::Dp && h.drained)
                .map(|h| h.name.clone())
                .collect()
        };
        if hosts.is_empty() {
            return Ok(());
        }
        for h in &hosts {
            if !self.monitor.healthy(h) && !self.ctx.log().begun(&restore_op(&self.rid(), h)) {
                return Err(Halt::Other(format!(
                    "{h} is out of rotation and not healthy ({}); fix it, or roll it back, before upgrading",
                    self.monitor.summary(h)
                )));
            }
        }
        let (ends, halt) = self
            .run_hosts(&hosts, |ctx, host| async move {
                let op = restore_op(&ctx.rid, &host);
                match ctx
                    .run(&host, "undrain", None, &op, || {
                        ctx.fleet.undrain(&host, &op)
                    })
                    .await
                {
                    Ok(_) => HostEnd::Done,
                    Err(failure) => HostEnd::Failed {
                        step: "undrain".into(),
                        failure,
                        left_drained: true,
                    },
                }
            })
            .await;
        for (host, end) in ends {
            if let HostEnd::Failed { failure, .. } = end {
                return Err(Halt::Step {
                    host,
                    step: "undrain".into(),
                    failure: Box::new(failure),
                });
            }
        }
        halt.map_or(Ok(()), Err)
    }

    /// One DP batch: every host drains, installs and undrains; then the
    /// batch must stay healthy for `min_healthy`.
    pub(super) async fn dp_batch(
        &mut self,
        hop: &Version,
        b: usize,
        hosts: Vec<String>,
    ) -> Result<(), Halt> {
        let rid = self.rid();
        let canary = b == 0;
        let began = Instant::now();
        self.emit(
            Event::new("batch", &rid, "started")
                .hop(hop)
                .batch(b)
                .detail(serde_json::json!({ "hosts": hosts, "canary": canary })),
        );
        self.watch_closely(&hosts);
        if let Some(h) = self.await_close_reports(&hosts).await {
            return Err(h);
        }
        for h in &hosts {
            if !self.monitor.healthy(h) && !self.already_begun(h, hop) {
                return Err(Halt::Other(format!(
                    "{h} is not healthy before its batch: {}",
                    self.monitor.summary(h)
                )));
            }
        }
        // Hosts that passed an earlier hop are restarted on purpose now.
        for h in &hosts {
            self.monitor.unpass(h);
        }
        let ends = self
            .run_hosts(&hosts, |ctx, host| {
                let hop = hop.clone();
                async move { upgrade_dp(ctx, host, hop).await }
            })
            .await;
        let (ends, halt) = ends;
        let mut failed = Vec::new();
        for (host, end) in &ends {
            match end {
                HostEnd::Done => {
                    self.monitor.pass(host.clone());
                    self.monitor.reset_streak(host);
                }
                HostEnd::NotStarted => {}
                HostEnd::Failed {
                    step,
                    failure,
                    left_drained,
                } => {
                    if *left_drained {
                        self.record_or_warn(Record::Host {
                            host: host.clone(),
                            mark: HostMark::LeftDrained {
                                step: step.clone(),
                                reason: failure.to_string(),
                            },
                            at_ms: now_ms(),
                        });
                    }
                    failed.push((host.clone(), step.clone(), failure.clone(), *left_drained));
                }
            }
        }
        if let Some(h) = halt {
            return Err(h);
        }
        self.absorb_failures(failed)?;
        // The whole batch holds healthy before the next one starts.
        let p = self.ctx.policy.clone();
        let start = Instant::now();
        // A hold of T lasts T. With T = 0 there is no hold, only one healthy
        // report from every host after its undrain: what that gives up is
        // catching a gateway that dies right after it turned ready (the
        // agent's own gate holds `min_healthy` too, and it is 0 as well).
        let hold = p.min_healthy();
        let live: Vec<String> = ends
            .iter()
            .filter(|(_, e)| matches!(e, HostEnd::Done))
            .map(|(h, _)| h.clone())
            .collect();
        let halt = if hold.is_zero() {
            self.confirm_serving(&live, hop, began, p.health_timeout())
                .await
        } else {
            self.emit(
                Event::new("batch", &rid, "holding")
                    .hop(hop)
                    .batch(b)
                    .detail(serde_json::json!({ "message": format!("the batch must stay healthy for {hold:?}"), "hold_ms": hold.as_millis() as u64 })),
            );
            self.hold(hold).await
        };
        if let Some(Halt::Alarm(Alarm::Unhealthy { host, why })) = &halt
            && hosts.contains(host)
        {
            let host = host.clone();
            let why = why.clone();
            self.roll_back_dp(&host, hop).await;
            return Err(Halt::Alarm(Alarm::Unhealthy { host, why }));
        }
        if let Some(h) = halt {
            return Err(h);
        }
        self.emit(
            Event::new("batch", &rid, "succeeded")
                .hop(hop)
                .batch(b)
                .elapsed(start.elapsed()),
        );
        Ok(())
    }

    /// True when the journal shows `host`'s sequence for `hop` began (this
    /// is a resume): the driver re-attaches to it whatever the host's health
    /// now — it may be mid-install, or failed and quarantined.
    fn already_begun(&self, host: &str, hop: &Version) -> bool {
        self.ctx
            .log()
            .begun(&op_id(&self.rid(), host, "drain", Some(hop)))
    }

    /// Failed hosts are back on their old release (the agent reverted them).
    /// Within the failure budget they are quarantined; beyond it the rollout
    /// halts.
    fn absorb_failures(
        &mut self,
        failed: Vec<(String, String, Failure, bool)>,
    ) -> Result<(), Halt> {
        if failed.is_empty() {
            return Ok(());
        }
        // A record that could not be journalled is not the host's failure:
        // the rollout cannot go on without its journal, whatever the budget.
        if let Some((host, step, failure, _)) = failed
            .iter()
            .find(|(_, _, f, _)| f.code == FailureCode::Journal)
            .cloned()
        {
            for (h, ..) in &failed {
                self.monitor.ignore(h.clone());
            }
            return Err(Halt::Step {
                host,
                step,
                failure: Box::new(failure),
            });
        }
        let budget = self.ctx.policy.max_failures;
        if self.quarantined().len() + failed.len() > budget {
            let (host, step, failure, _) = failed[0].clone();
            for (h, ..) in &failed {
                self.monitor.ignore(h.clone());
            }
            if failed.len() == 1 {
                return Err(Halt::Step {
                    host,
                    step,
                    failure: Box::new(failure),
                });
            }
            return Err(Halt::Budget {
                failed: failed
                    .iter()
                    .map(|(h, s, f, _)| format!("{h} ({s}: {f})"))
                    .collect(),
            });
        }
        for (h, step, f, left_drained) in failed {
            self.monitor.ignore(h.clone());
            self.emit(
                Event::new("host", &self.rid(), "quarantined")
                    .host(&h)
                    .error(format!("{step}: {f}"))
                    .detail(serde_json::json!({ "left_drained": left_drained, "active_version": f.active_version })),
            );
            self.record_or_warn(Record::Host {
                host: h,
                mark: HostMark::Quarantined {
                    step,
                    reason: f.to_string(),
                },
                at_ms: now_ms(),
            });
        }
        Ok(())
    }

    /// A host that passed its install but then failed its batch's hold goes
    /// back to the release it had: drain, rollback, undrain.
    async fn roll_back_dp(&mut self, host: &str, hop: &Version) {
        // Back one hop, not to where the rollout started: the CP already runs
        // this hop, and a DP two minors behind it would be incompatible.
        let from = {
            let log = self.ctx.log();
            let start = log
                .spec
                .hosts
                .iter()
                .find(|h| h.name == host)
                .map(|h| h.from.clone());
            start.map(|start| {
                log.spec
                    .hops
                    .iter()
                    .filter(|v| *v < hop && **v > start)
                    .max()
                    .cloned()
                    .unwrap_or(start)
            })
        };
        let Some(from) = from else { return };
        self.monitor.ignore(host.to_string());
        let ctx = self.ctx.clone();
        let (ends, _) = self
            .run_hosts(&[host.to_string()], move |ctx, host| {
                let from = from.clone();
                let hop = hop.clone();
                async move { rollback_dp(ctx, host, from, Some(hop)).await }
            })
            .await;
        drop(ctx);
        for (h, end) in ends {
            if let HostEnd::Failed { step, failure, .. } = end {
                tracing::error!(host = %h, %step, error = %failure, "rolling back the unhealthy host failed");
            }
        }
    }
}

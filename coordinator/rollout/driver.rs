//! The rollout driver: one owner task that walks the plan — stage
//! everywhere, back up the CP, then per hop: write-freeze guard, CPs one at a
//! time, DP batches (canary first) — while it watches every host's health.
//!
//! The lifecycle, as the journal records it:
//!
//! * **Staging** — artifacts go to every host, bounded in parallel. Nothing
//!   changes on a host yet; a failure halts with the fleet untouched.
//! * **Backup** — the first CP takes a verified backup; the coordinator keeps
//!   a copy. No backup, no upgrade.
//! * **Guard** — just before a hop's first CP swap, the DB fingerprint must
//!   equal the baseline; a change halts, naming the tables written.
//! * **CP** — each CP installs with the agent's health gate; a failure (the
//!   agent reverts it) halts before any DP is touched.
//! * **DP batches** — per host drain → install → undrain, hosts of a batch in
//!   parallel; then the batch must stay healthy for `min_healthy`. A failed
//!   host is back on its old release (the agent reverted it); beyond the
//!   failure budget the rollout halts, within it the host is quarantined.
//! * Throughout, an alarm (an upgraded host unhealthy, an agent silent) halts
//!   the rollout: steps in flight finish, nothing new starts.
//!
//! Each step is journalled before it is called; on `resume` the driver walks
//! the same plan and skips what the journal shows done.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::{AbortHandle, Abortable};
use futures::stream::FuturesUnordered;
use rollgate::catalog::Catalog;
use rollgate::lb::LbState;
use rollgate::outcome::Failure;
use rollgate::role::Role;
use tokio::sync::{mpsc, watch};

use super::log::{Outcome, Record, now_ms};
use super::monitor::{Alarm, Monitor};
use super::sequence::HostEnd;
use super::steps::Ctx;
use crate::fleet::{FleetApi, Health, HealthUpdate, lost};
use crate::report::Event;

/// How often health is streamed during a rollout: two bad reports in a row
/// (the alarm threshold) fit in well under a second.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(250);

/// How a `Driver::wait_for` ended.
enum Waited {
    Done,
    Halted(Halt),
    TimedOut,
}

impl Waited {
    /// The halt, if the wait ended on one; a timeout is not one.
    fn halt(self) -> Option<Halt> {
        match self {
            Waited::Halted(h) => Some(h),
            Waited::Done | Waited::TimedOut => None,
        }
    }
}

/// Why the rollout stopped early.
#[derive(Debug, Clone)]
pub enum Halt {
    Step {
        host: String,
        step: String,
        failure: Box<Failure>,
    },
    Alarm(Alarm),
    Guard {
        tables: Vec<String>,
        export_changed: bool,
    },
    Budget {
        failed: Vec<String>,
    },
    Interrupted,
    Other(String),
}

impl Halt {
    /// The halt came from an agent that stopped answering: what it was
    /// doing is not known, so nothing about its host was decided.
    pub fn is_lost(&self) -> bool {
        match self {
            Halt::Alarm(Alarm::Lost { .. }) => true,
            Halt::Step { failure, .. } => crate::fleet::is_lost(failure),
            _ => false,
        }
    }
}

impl std::fmt::Display for Halt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Halt::Step {
                host,
                step,
                failure,
            } => write!(f, "{host}: {step} failed: {failure}"),
            Halt::Alarm(a) => write!(f, "{a}"),
            Halt::Guard {
                tables,
                export_changed,
            } => write!(
                f,
                "the database was written after the backup (tables: {}{}); the CP was not touched",
                if tables.is_empty() {
                    "none".to_string()
                } else {
                    tables.join(", ")
                },
                if *export_changed {
                    "; the declarative export changed"
                } else {
                    ""
                }
            ),
            Halt::Budget { failed } => write!(
                f,
                "more hosts failed than --max-failures allows: {}",
                failed.join(", ")
            ),
            Halt::Interrupted => write!(
                f,
                "interrupted by the operator; run `rollgate resume` to continue"
            ),
            Halt::Other(s) => f.write_str(s),
        }
    }
}

pub struct Driver<F: FleetApi> {
    pub ctx: Arc<Ctx<F>>,
    pub catalog: Option<Catalog>,
    pub state_dir: PathBuf,
    pub monitor: Monitor,
    health_rx: mpsc::Receiver<HealthUpdate>,
    interrupt: watch::Receiver<bool>,
    /// The interrupt sender is gone: stop selecting on it.
    interrupt_gone: bool,
    /// Alarms already reported (each is told once, when first seen).
    told: Option<String>,
    /// Agent calls at once in the parallel phases (staging).
    pub(super) parallel: usize,
}

impl<F: FleetApi> Driver<F> {
    pub fn new(
        ctx: Arc<Ctx<F>>,
        catalog: Option<Catalog>,
        state_dir: PathBuf,
        interrupt: watch::Receiver<bool>,
    ) -> Self {
        let (spec_hosts, silence) = {
            let log = ctx.log();
            (
                log.spec
                    .hosts
                    .iter()
                    .map(|h| h.name.clone())
                    .collect::<Vec<_>>(),
                log.spec.policy.agent_silence(),
            )
        };
        let (tx, rx) = mpsc::channel(1024);
        ctx.fleet.watch(&spec_hosts, HEALTH_INTERVAL, tx);
        ctx.watch_interrupt(interrupt.clone());
        Driver {
            monitor: Monitor::new(&spec_hosts, silence),
            ctx,
            catalog,
            state_dir,
            health_rx: rx,
            interrupt,
            interrupt_gone: false,
            told: None,
            parallel: 16,
        }
    }

    /// At most `n` agent calls at once in the parallel phases
    /// (`coordinator.concurrency`).
    pub fn with_parallel(mut self, n: usize) -> Self {
        self.parallel = n.max(1);
        self
    }

    /// Hosts quarantined so far in this rollout (a resume included), from
    /// the journal.
    pub fn quarantined(&self) -> Vec<String> {
        self.ctx.log().quarantined()
    }

    pub(super) fn rid(&self) -> String {
        self.ctx.rid.clone()
    }

    pub(super) fn emit(&self, e: Event) {
        self.ctx.reporter.emit(e);
    }

    fn interrupted(&self) -> bool {
        *self.interrupt.borrow()
    }

    /// Waits for `fut` while keeping the health picture current. An alarm
    /// about `own_host` (the host `fut` works on) abandons `fut`; any other
    /// alarm is returned once `fut` is done.
    pub async fn monitored<T>(
        &mut self,
        own_host: Option<&str>,
        fut: impl std::future::Future<Output = T>,
    ) -> (Option<T>, Option<Halt>) {
        tokio::pin!(fut);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut halt = None;
        loop {
            tokio::select! {
                out = &mut fut => return (Some(out), halt.or_else(|| self.check())),
                () = self.pulse(&mut tick) => {}
            }
            if halt.is_none() {
                halt = self.check();
            }
            if let Some(Halt::Alarm(a)) = &halt
                && Some(a.host()) == own_host
            {
                return (None, halt);
            }
        }
    }

    /// Waits for the next thing that can change the picture while the driver
    /// waits on something else: a health update, a tick (silences grow with
    /// time alone) or the operator's interrupt. Each branch is cancel-safe,
    /// so losing a `select!` against the awaited work loses nothing.
    async fn pulse(&mut self, tick: &mut tokio::time::Interval) {
        tokio::select! {
            Some(u) = self.health_rx.recv() => self.monitor.update(u),
            _ = tick.tick() => {}
            // Without a sender (tests) there is nothing to wait for.
            r = self.interrupt.changed(), if !self.interrupt_gone => self.interrupt_gone = r.is_err(),
        }
    }

    /// The current reason to halt, if any. Health updates that queued up
    /// while the driver was busy are taken in first, so a silence is never
    /// judged on stale bookkeeping.
    /// Any reason found also stops the host tasks from starting new work.
    fn check(&mut self) -> Option<Halt> {
        let halt = self.find_halt();
        if halt.is_some() {
            self.ctx.stop();
        }
        halt
    }

    /// Takes in the health updates queued so far; whether there were any.
    fn take_updates(&mut self) -> bool {
        let mut took = false;
        while let Ok(u) = self.health_rx.try_recv() {
            self.monitor.update(u);
            took = true;
        }
        took
    }

    fn find_halt(&mut self) -> Option<Halt> {
        self.take_updates();
        if self.interrupted() {
            return Some(Halt::Interrupted);
        }
        let alarm = self.monitor.alarm()?;
        // Say it the moment it is noticed; the rollout halts once the steps
        // in flight are done.
        let text = alarm.to_string();
        if self.told.as_deref() != Some(text.as_str()) {
            let status = match &alarm {
                Alarm::Lost { .. } => "lost",
                Alarm::Unhealthy { .. } => "unhealthy",
            };
            self.emit(
                Event::new("status", &self.rid(), status)
                    .host(alarm.host())
                    .error(text.clone()),
            );
            self.told = Some(text);
        }
        Some(Halt::Alarm(alarm))
    }

    /// The one wait of the driver: takes in health reports until `done`
    /// holds, a reason to halt appears, or `max` has passed, whichever is
    /// first. `done` is asked after every report, so a wait ends the moment
    /// what it waits for is seen.
    async fn wait_for(&mut self, max: Duration, mut done: impl FnMut(&mut Self) -> bool) -> Waited {
        let end = tokio::time::Instant::now() + max;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            if let Some(h) = self.check() {
                return Waited::Halted(h);
            }
            if done(self) {
                return Waited::Done;
            }
            if tokio::time::Instant::now() >= end {
                return Waited::TimedOut;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(end) => {}
                () = self.pulse(&mut tick) => {}
            }
        }
    }

    /// Lets health catch up for `d`, halting on an alarm.
    /// Nothing to wait for but time, so an alarm ends the hold at once.
    pub async fn hold(&mut self, d: Duration) -> Option<Halt> {
        self.wait_for(d, |_| false).await.halt()
    }

    /// Each host whose last health report stands for a look now
    /// (`Monitor::settled_report`): its watch live (a report received
    /// within a heartbeat and two looks, the slack an unchanged report may
    /// take), taken after the last step the rollout called there ended (the
    /// agent names it) and with no operation running. The closing report
    /// shows these as they are instead of asking each agent again; the rest
    /// are asked.
    pub async fn settled_reports(&mut self) -> HashMap<String, Health> {
        // Reports waiting in watchers blocked on a full channel come in too:
        // taken until a yield brings nothing more (a few rounds at most, as
        // the watches never stop).
        for _ in 0..8 {
            if !self.take_updates() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let silence = self.ctx.policy.agent_silence();
        let fresh = crate::fleet::heartbeat(silence, HEALTH_INTERVAL) + HEALTH_INTERVAL * 2;
        self.monitor
            .hosts()
            .filter_map(|h| {
                let last_op = self.ctx.last_op(h);
                let r = self.monitor.settled_report(h, last_op.as_deref(), fresh)?;
                Some((h.to_string(), r.clone()))
            })
            .collect()
    }

    /// From now on `hosts` are looked at every `HEALTH_INTERVAL` instead of
    /// once a heartbeat (`FleetApi::watch_closely`).
    pub(super) fn watch_closely(&mut self, hosts: &[String]) {
        let new: Vec<String> = hosts
            .iter()
            .filter(|h| self.monitor.watch_closely(h))
            .cloned()
            .collect();
        if !new.is_empty() {
            self.ctx.fleet.watch_closely(&new);
        }
    }

    /// Waits (three close intervals at most) until each of `hosts` has
    /// reported on its close watch, so a judgement of its health does not
    /// rest on a look up to a heartbeat old. Hosts watched closely a batch
    /// ahead have long since.
    pub(super) async fn await_close_reports(&mut self, hosts: &[String]) -> Option<Halt> {
        let fresh = |d: &mut Self| hosts.iter().all(|h| d.monitor.reported_closely(h));
        self.wait_for(HEALTH_INTERVAL * 3, fresh).await.halt()
    }

    /// Waits until every one of `hosts` has reported once (at most `max`):
    /// health is judged on reports, not on a fixed wait. Then, while an
    /// agent runs an operation of another rollout (a step it finishes or
    /// undoes after a restart), waits for it to end, at most the time such a
    /// step may take (`health_timeout` + `min_healthy` + a margin): starting
    /// now would only be refused by the agent.
    pub async fn await_reports(&mut self, hosts: &[String], max: Duration) -> Option<Halt> {
        let reported = |d: &mut Self| hosts.iter().all(|h| d.monitor.reported(h));
        if let Some(h) = self.wait_for(max, reported).await.halt() {
            return Some(h);
        }
        let rid = self.rid();
        let p = self.ctx.policy.clone();
        let max = p.health_timeout() + p.min_healthy() + Duration::from_secs(30);
        let mut told = std::collections::HashSet::new();
        let busy = |d: &Self| -> Vec<(String, String)> {
            hosts
                .iter()
                .filter_map(|h| Some((h.clone(), d.monitor.busy_elsewhere(h, &rid)?)))
                .collect()
        };
        let waited = self
            .wait_for(max, |d| {
                let busy = busy(d);
                for (h, op) in &busy {
                    if told.insert((h.clone(), op.clone())) {
                        tracing::warn!(host = %h, op = %op, "waiting for the host's agent to finish an earlier operation");
                        d.emit(Event::new("host", &rid, "waiting").host(h).detail(
                            serde_json::json!({ "message": format!("its agent is finishing {op}"), "operation": op }),
                        ));
                    }
                }
                busy.is_empty()
            })
            .await;
        match waited {
            Waited::Done => None,
            Waited::Halted(h) => Some(h),
            Waited::TimedOut => {
                let (host, op) = busy(self).into_iter().next()?;
                Some(Halt::Other(format!(
                    "{host}'s agent is still running {op} after {max:?}; run again once it has ended (`rollgate status` shows the host)"
                )))
            }
        }
    }

    /// `min_healthy = 0`: no hold, but one report from every host of the
    /// batch, sent after `since` (the batch's start, before its drains),
    /// that shows it healthy, in rotation and on `version`: that is, a look
    /// after its undrain. Within `max`.
    pub async fn confirm_serving(
        &mut self,
        hosts: &[String],
        version: &rollgate::version::Version,
        since: std::time::Instant,
        max: Duration,
    ) -> Option<Halt> {
        let version = version.to_string();
        let waiting = |d: &Self| {
            hosts
                .iter()
                .find(|h| !d.monitor.serving_since(h, &version, since))
                .cloned()
        };
        match self.wait_for(max, |d| waiting(d).is_none()).await {
            Waited::Done => None,
            Waited::Halted(h) => Some(h),
            Waited::TimedOut => {
                let host = waiting(self)?;
                let why = format!(
                    "no report within {max:?} showing it healthy and in rotation on {version}: {}",
                    self.monitor.summary(&host)
                );
                Some(Halt::Alarm(Alarm::Unhealthy { host, why }))
            }
        }
    }

    /// Runs the whole upgrade; returns how it ended and why. It succeeds
    /// only with every DP back in rotation.
    pub async fn upgrade(&mut self) -> (Outcome, String) {
        let r = self.upgrade_inner().await;
        let r = match r {
            Ok(()) => self.every_dp_in_rotation().await,
            halted => halted,
        };
        self.conclude(r).await
    }

    /// Finds where every DP stands towards the load balancer; any host out
    /// of rotation (other than a quarantined one, reported as such) means
    /// the rollout has not succeeded. A host whose live health watch last
    /// said "in rotation" is taken at its word (the agent reports a change
    /// at once); every other host's agent is asked.
    async fn every_dp_in_rotation(&mut self) -> Result<(), Halt> {
        let quarantined = self.quarantined();
        let dps: Vec<String> = {
            let log = self.ctx.log();
            log.spec
                .hosts
                .iter()
                .filter(|h| h.role == Role::Dp && !quarantined.contains(&h.name))
                .filter(|h| self.monitor.lb(&h.name) != Some(LbState::InRotation))
                .map(|h| h.name.clone())
                .collect()
        };
        let fleet = self.ctx.fleet.clone();
        let seen: Vec<(String, Result<LbState, String>)> = futures::stream::iter(dps)
            .map(|h| {
                let fleet = fleet.clone();
                async move {
                    let lb = fleet.load_balancer(&h).await.map_err(|e| e.to_string());
                    (h, lb)
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        let mut out: Vec<String> = seen
            .into_iter()
            .filter_map(|(h, lb)| match lb {
                Ok(l) if !l.out_of_rotation() => None,
                Ok(l) => Some(format!("{h} ({l})")),
                Err(e) => Some(format!("{h} (cannot tell: {e})")),
            })
            .collect();
        if out.is_empty() {
            return Ok(());
        }
        out.sort();
        Err(Halt::Other(format!(
            "every step ended, but not every DP is in rotation: {}; run `rollgate upgrade` again to put them back",
            out.join(", ")
        )))
    }

    pub async fn conclude(&mut self, r: Result<(), Halt>) -> (Outcome, String) {
        let quarantined = self.quarantined();
        let (outcome, reason) = match r {
            Ok(()) if quarantined.is_empty() => (
                Outcome::Succeeded,
                "every host is on the target".to_string(),
            ),
            Ok(()) => (
                Outcome::Quarantined,
                format!(
                    "done, with quarantined hosts on their old release: {}",
                    quarantined.join(", ")
                ),
            ),
            Err(Halt::Interrupted) => (Outcome::Interrupted, Halt::Interrupted.to_string()),
            Err(h) if h.is_lost() => (Outcome::Disconnected, h.to_string()),
            Err(h) => (Outcome::Halted, h.to_string()),
        };
        let ended = Record::Ended {
            outcome,
            reason: reason.clone(),
            at_ms: now_ms(),
        };
        if let Err(e) = self.ctx.journal(ended).await {
            // The hosts are where the report says; the journal lacks this
            // record and the step ends held for it (`RolloutLog::hold`), so
            // the rollout reads as cut off and `resume` asks the agents.
            let journal = self.ctx.log().origin.to_string();
            tracing::error!(%journal, error = %e, "cannot record how the rollout ended");
        }
        (outcome, reason)
    }

    async fn upgrade_inner(&mut self) -> Result<(), Halt> {
        let spec = self.ctx.log().spec.clone();
        // Every watch's first report before judging anything.
        let all: Vec<String> = spec.hosts.iter().map(|h| h.name.clone()).collect();
        if let Some(h) = self.await_reports(&all, HEALTH_INTERVAL * 3).await {
            return Err(h);
        }
        self.restore_rotation().await?;
        self.stage_all().await?;
        let cps: Vec<String> = spec.cps().iter().map(|h| h.name.clone()).collect();
        if let Some(cp) = cps.first() {
            self.backup(cp).await?;
            self.rehearse_phase(cp).await?;
        }
        for (i, hop) in spec.hops.iter().enumerate() {
            self.emit(Event::new("hop", &self.rid(), "started").hop(hop));
            let cps_needing: Vec<String> = spec
                .needing(Role::Cp, hop)
                .iter()
                .map(|h| h.name.clone())
                .collect();
            // The hop's first DP batch is watched closely from here and each
            // later one from the batch before it, so the health check at a
            // batch's start reads looks at most one close interval old.
            let batches = spec.batches(hop);
            if let Some(first) = batches.first() {
                self.watch_closely(first);
            }
            if let Some(first) = cps_needing.first() {
                self.guard(first, i, hop).await?;
            }
            for cp in &cps_needing {
                self.install_cp(cp, hop).await?;
            }
            if let Some(cp) = cps.first().filter(|_| i + 1 < spec.hops.len()) {
                self.note_baseline(cp, i + 1).await?;
            }
            for (b, hosts) in batches.iter().cloned().enumerate() {
                if let Some(next) = batches.get(b + 1) {
                    self.watch_closely(next);
                }
                let quarantined = self.quarantined();
                let hosts: Vec<String> = hosts
                    .into_iter()
                    .filter(|h| !quarantined.contains(h))
                    .collect();
                if hosts.is_empty() {
                    continue;
                }
                self.dp_batch(hop, b, hosts).await?;
            }
            self.emit(Event::new("hop", &self.rid(), "succeeded").hop(hop));
        }
        Ok(())
    }

    /// `rollgate backup`: the backup phase alone.
    pub async fn backup_only(&mut self) -> (Outcome, String) {
        let cp = self.ctx.log().spec.cps().first().map(|h| h.name.clone());
        let r = match cp {
            None => Err(Halt::Other("no CP host to back up".into())),
            Some(cp) => match self
                .await_reports(std::slice::from_ref(&cp), HEALTH_INTERVAL * 3)
                .await
            {
                Some(h) => Err(h),
                None => self.backup(&cp).await,
            },
        };
        self.conclude(r).await
    }

    /// Runs one sequence per host concurrently, watching health. A host whose
    /// agent is lost has its sequence abandoned; other alarms let the
    /// sequences finish (so no host is left drained) and are returned.
    pub async fn run_hosts<S, Fut>(
        &mut self,
        hosts: &[String],
        seq: S,
    ) -> (Vec<(String, HostEnd)>, Option<Halt>)
    where
        S: Fn(Arc<Ctx<F>>, String) -> Fut,
        Fut: std::future::Future<Output = HostEnd> + Send + 'static,
    {
        let mut aborts: HashMap<String, AbortHandle> = HashMap::new();
        let mut running = FuturesUnordered::new();
        for h in hosts {
            let (abort, reg) = AbortHandle::new_pair();
            aborts.insert(h.clone(), abort);
            let fut = Abortable::new(seq(self.ctx.clone(), h.clone()), reg);
            let h = h.clone();
            running.push(async move { (h, fut.await) });
        }
        let mut ends = Vec::new();
        let mut halt: Option<Halt> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while !running.is_empty() {
            tokio::select! {
                Some((h, r)) = running.next() => ends.push((h.clone(), r.unwrap_or_else(|_| HostEnd::Failed {
                    step: "unknown".into(),
                    failure: lost(format!("the agent of {h} stopped answering in the middle of a step")),
                    left_drained: true,
                }))),
                () = self.pulse(&mut tick) => {}
            }
            if halt.is_none() {
                halt = self.check();
            }
            // Every host lost mid-step is given up, not only the one whose
            // silence halted the rollout: a coordinator cut off from many
            // agents must not wait out each one's step deadline.
            if halt.is_some() {
                for (h, a) in &aborts {
                    if !a.is_aborted() && self.monitor.silent(h) {
                        tracing::warn!(host = %h, "giving up its step: the agent stopped answering");
                        a.abort();
                    }
                }
            }
        }
        (ends, halt)
    }
}

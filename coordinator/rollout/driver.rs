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
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::{AbortHandle, Abortable};
use futures::stream::FuturesUnordered;
use rollgate::catalog::Catalog;
use rollgate::lb::LbState;
use rollgate::pb;
use rollgate::role::Role;
use rollgate::version::Version;
use tokio::sync::{mpsc, watch};

use super::log::{Outcome, Record, now_ms};
use super::monitor::{Alarm, Monitor};
use super::sequence::{HostEnd, rollback_dp, upgrade_dp};
use super::steps::{Ctx, op_id};
use crate::fleet::{FleetApi, HealthUpdate, StepFailure};
use crate::report::Event;

/// The operation id of putting a DP left drained back in rotation.
fn restore_op(rid: &str, host: &str) -> String {
    op_id(rid, host, "undrain-restore", None)
}

/// How often health is streamed during a rollout: two bad reports in a row
/// (the alarm threshold) fit in well under a second.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(250);

/// Why the rollout stopped early.
#[derive(Debug, Clone)]
pub enum Halt {
    Step {
        host: String,
        step: String,
        failure: Box<StepFailure>,
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
    /// Hosts quarantined after a failure within the budget.
    pub quarantined: Vec<String>,
    /// The interrupt sender is gone: stop selecting on it.
    interrupt_gone: bool,
    /// Alarms already reported (each is told once, when first seen).
    told: Option<String>,
    /// Agent calls at once in the parallel phases (staging).
    parallel: usize,
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
            quarantined: Vec::new(),
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

    fn rid(&self) -> String {
        self.ctx.rid.clone()
    }

    fn emit(&self, e: Event) {
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

    fn find_halt(&mut self) -> Option<Halt> {
        while let Ok(u) = self.health_rx.try_recv() {
            self.monitor.update(u);
        }
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

    /// Lets health catch up for `d`, halting on an alarm.
    /// Nothing to wait for but time, so an alarm ends the hold at once.
    pub async fn hold(&mut self, d: Duration) -> Option<Halt> {
        let end = tokio::time::Instant::now() + d;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(end) => return self.check(),
                () = self.pulse(&mut tick) => {}
            }
            if let Some(h) = self.check() {
                return Some(h);
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
        self.conclude(r)
    }

    /// Asks every DP's agent where its host stands towards the load
    /// balancer; any host out of rotation (other than a quarantined one,
    /// reported as such) means the rollout has not succeeded.
    async fn every_dp_in_rotation(&mut self) -> Result<(), Halt> {
        let dps: Vec<String> = {
            let log = self.ctx.log();
            log.spec
                .hosts
                .iter()
                .filter(|h| h.role == Role::Dp && !self.quarantined.contains(&h.name))
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

    pub fn conclude(&mut self, r: Result<(), Halt>) -> (Outcome, String) {
        let (outcome, reason) = match r {
            Ok(()) if self.quarantined.is_empty() => (
                Outcome::Succeeded,
                "every host is on the target".to_string(),
            ),
            Ok(()) => (
                Outcome::Quarantined,
                format!(
                    "done, with quarantined hosts on their old release: {}",
                    self.quarantined.join(", ")
                ),
            ),
            Err(Halt::Interrupted) => (Outcome::Interrupted, Halt::Interrupted.to_string()),
            Err(h) => (Outcome::Halted, h.to_string()),
        };
        let mut log = self.ctx.log();
        if let Err(e) = log.append(Record::Ended {
            outcome,
            reason: reason.clone(),
            at_ms: now_ms(),
        }) {
            // The hosts are where the report says; only the record is missing,
            // so `resume` would re-check every step against the agents.
            tracing::error!(journal = %log.path.display(), error = %e, "cannot record how the rollout ended");
        }
        drop(log);
        (outcome, reason)
    }

    async fn upgrade_inner(&mut self) -> Result<(), Halt> {
        let spec = self.ctx.log().spec.clone();
        // Give every watch its first report before judging anything.
        if let Some(h) = self.hold(HEALTH_INTERVAL * 3).await {
            return Err(h);
        }
        self.restore_rotation().await?;
        self.stage_all(&spec.hops).await?;
        let cps: Vec<String> = spec.cps().iter().map(|h| h.name.clone()).collect();
        if let Some(cp) = cps.first() {
            self.backup(cp).await?;
        }
        for (i, hop) in spec.hops.iter().enumerate() {
            self.emit(Event::new("hop", &self.rid(), "started").hop(hop));
            let cps_needing: Vec<String> = spec
                .needing(Role::Cp, hop)
                .iter()
                .map(|h| h.name.clone())
                .collect();
            if let Some(first) = cps_needing.first() {
                self.guard(first, i, hop).await?;
            }
            for cp in &cps_needing {
                self.install_cp(cp, hop).await?;
            }
            if let Some(cp) = cps.first().filter(|_| i + 1 < spec.hops.len()) {
                self.note_baseline(cp, i + 1).await?;
            }
            for (b, hosts) in spec.batches(hop).into_iter().enumerate() {
                let hosts: Vec<String> = hosts
                    .into_iter()
                    .filter(|h| !self.quarantined.contains(h))
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
            Some(cp) => match self.hold(HEALTH_INTERVAL * 3).await {
                Some(h) => Err(h),
                None => self.backup(&cp).await,
            },
        };
        self.conclude(r)
    }

    /// DPs the plan found out of rotation (an earlier rollout halted with
    /// them drained) go back first when healthy, so a re-run upgrade
    /// finishes what the halted one left.
    async fn restore_rotation(&mut self) -> Result<(), Halt> {
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

    /// Puts every hop's artifact on every host that needs it, in parallel.
    async fn stage_all(&mut self, hops: &[Version]) -> Result<(), Halt> {
        let spec = self.ctx.log().spec.clone();
        let Some(catalog) = self.catalog.clone() else {
            return Err(Halt::Other("no release catalog to stage from".into()));
        };
        // One list per host: an agent runs one step at a time, so a host's
        // hops are staged in turn while hosts go in parallel.
        let mut jobs: Vec<(String, Vec<rollgate::catalog::Release>)> = spec
            .hosts
            .iter()
            .map(|h| (h.name.clone(), Vec::new()))
            .collect();
        for hop in hops {
            let Some(rel) = catalog.get(hop).cloned() else {
                return Err(Halt::Other(format!(
                    "{hop} is not in the catalog {}",
                    catalog.path.display()
                )));
            };
            for (h, list) in spec.hosts.iter().zip(jobs.iter_mut()) {
                if h.from < *hop {
                    list.1.push(rel.clone());
                }
            }
        }
        let ctx = self.ctx.clone();
        let work = futures::stream::iter(jobs)
            .map(|(host, releases)| {
                let ctx = ctx.clone();
                async move {
                    for rel in releases {
                        let v = rel.version.clone();
                        let op = op_id(&ctx.rid, &host, "stage", Some(&v));
                        // Halting: no new call starts.
                        let Some(mut r) = ctx
                            .run_unless_halting(&host, "stage", Some(&v), &op, || {
                                ctx.fleet.stage(&host, &op, &rel)
                            })
                            .await
                        else {
                            return (host, Ok(()));
                        };
                        // A stage cut off by an agent restart was cleaned up: once more.
                        if matches!(&r, Err(f) if f.is_interrupted()) {
                            let op2 = format!("{op}.2");
                            match ctx
                                .run_unless_halting(&host, "stage", Some(&v), &op2, || {
                                    ctx.fleet.stage(&host, &op2, &rel)
                                })
                                .await
                            {
                                Some(again) => r = again,
                                None => return (host, Ok(())),
                            }
                        }
                        if let Err(f) = r {
                            return (host, Err(f));
                        }
                    }
                    (host, Ok(()))
                }
            })
            .buffer_unordered(self.parallel)
            .collect::<Vec<_>>();
        let (out, halt) = self.monitored(None, work).await;
        for (host, r) in out.unwrap_or_default() {
            if let Err(failure) = r {
                return Err(Halt::Step {
                    host,
                    step: "stage".into(),
                    failure: Box::new(failure),
                });
            }
        }
        halt.map_or(Ok(()), Err)
    }

    /// The verified CP backup, and a copy of it in the coordinator's state dir.
    async fn backup(&mut self, cp: &str) -> Result<(), Halt> {
        let rid = self.rid();
        let op = op_id(&rid, cp, "backup", None);
        let ctx = self.ctx.clone();
        let (r, halt) = self
            .monitored(
                Some(cp),
                ctx.run(cp, "backup", None, &op, || ctx.fleet.backup(cp, &op, &rid)),
            )
            .await;
        if let Some(h) = halt {
            return Err(h);
        }
        let detail = match r {
            Some(Ok(d)) => d,
            Some(Err(failure)) => {
                return Err(Halt::Step {
                    host: cp.into(),
                    step: "backup".into(),
                    failure: Box::new(failure),
                });
            }
            None => return Err(Halt::Other("backup abandoned".into())),
        };
        let pb::success::Detail::Backup(b) = detail else {
            return Err(Halt::Other("the backup step returned no backup".into()));
        };
        if self.ctx.log().notes.contains_key("backup_copy") {
            return Ok(());
        }
        let into = self.state_dir.join("backups").join(&rid);
        let copy = self.ctx.fleet.fetch_backup(cp, &rid, &b.files, &into).await;
        match copy {
            Ok(()) => {
                self.note_or_warn(
                    "backup_copy",
                    serde_json::json!({ "dir": into, "host_dir": b.dir, "files": b.files.len() }),
                );
                self.emit(
                    Event::new("step", &rid, "succeeded")
                        .host(cp)
                        .step("backup-copy")
                        .detail(serde_json::json!({ "dir": into })),
                );
                Ok(())
            }
            Err(e) => Err(Halt::Other(format!(
                "cannot copy the backup from {cp}: {e}"
            ))),
        }
    }

    /// Journals a note that helps a later resume but is not a step: a failed
    /// write is logged, not fatal (the hosts are where the report says).
    fn note_or_warn(&self, key: &str, value: serde_json::Value) {
        let mut log = self.ctx.log();
        if let Err(e) = log.note(key, value) {
            tracing::warn!(journal = %log.path.display(), key, error = %e, "cannot journal a note");
        }
    }

    /// The write-freeze guard before hop `i`'s first CP swap.
    async fn guard(&mut self, cp: &str, i: usize, hop: &Version) -> Result<(), Halt> {
        let rid = self.rid();
        let install_op = op_id(&rid, cp, "install", Some(hop));
        if self.ctx.log().begun(&install_op) {
            return Ok(()); // the swap already started: too late to guard, and no need
        }
        let baseline = if i == 0 { rid.clone() } else { String::new() };
        self.emit(
            Event::new("step", &rid, "started")
                .host(cp)
                .step("write-freeze-guard")
                .hop(hop)
                .detail(serde_json::json!({ "message": "reading the database's write counters until they settle (11 s or more)" })),
        );
        let ctx = self.ctx.clone();
        let (r, halt) = self
            .monitored(Some(cp), ctx.fleet.fingerprint(cp, &baseline))
            .await;
        if let Some(h) = halt {
            return Err(h);
        }
        let resp = match r {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                return Err(Halt::Other(format!(
                    "{cp}: cannot read the DB fingerprint: {e}"
                )));
            }
            None => return Err(Halt::Other("fingerprint abandoned".into())),
        };
        let (tables, export_changed) = if i == 0 {
            (resp.changed_tables, resp.export_changed)
        } else {
            let key = format!("baseline:{i}");
            let Some(before) = self
                .ctx
                .log()
                .notes
                .get(&key)
                .cloned()
                .and_then(|v| serde_json::from_value::<pb::Fingerprint>(v).ok())
            else {
                return Ok(());
            };
            let now = resp.current.unwrap_or_default();
            (
                rollgate::fingerprint::changed_tables(&before, &now),
                before.export_sha256 != now.export_sha256,
            )
        };
        let ok = tables.is_empty() && !export_changed;
        self.emit(
            Event::new("step", &rid, if ok { "succeeded" } else { "failed" })
                .host(cp)
                .step("write-freeze-guard")
                .hop(hop)
                .detail(serde_json::json!({ "changed_tables": tables, "export_changed": export_changed })),
        );
        if ok {
            Ok(())
        } else {
            Err(Halt::Guard {
                tables,
                export_changed,
            })
        }
    }

    /// Records the DB fingerprint after a hop's CPs: the next hop's baseline.
    async fn note_baseline(&mut self, cp: &str, next: usize) -> Result<(), Halt> {
        let key = format!("baseline:{next}");
        if self.ctx.log().notes.contains_key(&key) {
            return Ok(());
        }
        self.emit(
            Event::new("step", &self.rid(), "started")
                .host(cp)
                .step("db-baseline")
                .detail(serde_json::json!({ "message": "recording the database's write counters for the next hop's guard (11 s or more)" })),
        );
        let ctx = self.ctx.clone();
        let (r, halt) = self
            .monitored(Some(cp), ctx.fleet.fingerprint(cp, ""))
            .await;
        if let Some(h) = halt {
            return Err(h);
        }
        match r {
            Some(Ok(r)) => {
                let v = serde_json::to_value(r.current.unwrap_or_default()).unwrap_or_default();
                self.ctx
                    .log()
                    .note(&key, v)
                    .map_err(|e| Halt::Other(format!("cannot write the journal: {e}")))
            }
            Some(Err(e)) => Err(Halt::Other(format!(
                "{cp}: cannot record the next hop's DB baseline: {e}"
            ))),
            None => Err(Halt::Other("fingerprint abandoned".into())),
        }
    }

    async fn install_cp(&mut self, cp: &str, hop: &Version) -> Result<(), Halt> {
        // From an earlier hop this CP counts as passed; its restart now is ours.
        self.monitor.unpass(cp);
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

    /// One DP batch: every host drains, installs and undrains; then the
    /// batch must stay healthy for `min_healthy`.
    async fn dp_batch(&mut self, hop: &Version, b: usize, hosts: Vec<String>) -> Result<(), Halt> {
        let rid = self.rid();
        let canary = b == 0;
        self.emit(
            Event::new("batch", &rid, "started")
                .hop(hop)
                .batch(b)
                .detail(serde_json::json!({ "hosts": hosts, "canary": canary })),
        );
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
        // At least two health reports, so one bad report plus a second (the
        // alarm threshold) can land inside the hold.
        let hold = p.min_healthy().max(HEALTH_INTERVAL * 3);
        self.emit(
            Event::new("batch", &rid, "holding")
                .hop(hop)
                .batch(b)
                .detail(serde_json::json!({ "message": format!("the batch must stay healthy for {hold:?}"), "hold_ms": hold.as_millis() as u64 })),
        );
        let halt = self.hold(hold).await;
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
        failed: Vec<(String, String, StepFailure, bool)>,
    ) -> Result<(), Halt> {
        if failed.is_empty() {
            return Ok(());
        }
        let budget = self.ctx.policy.max_failures;
        if self.quarantined.len() + failed.len() > budget {
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
            self.note_or_warn(
                &format!("quarantined:{h}"),
                serde_json::json!({ "step": step, "reason": f.to_string() }),
            );
            self.quarantined.push(h);
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
                    failure: StepFailure::lost(format!("the agent of {h} stopped answering in the middle of a step")),
                    left_drained: true,
                }))),
                () = self.pulse(&mut tick) => {}
            }
            if halt.is_none() {
                halt = self.check();
                if let Some(Halt::Alarm(Alarm::Lost { host, .. })) = &halt
                    && let Some(a) = aborts.get(host)
                {
                    a.abort();
                }
            }
        }
        (ends, halt)
    }
}

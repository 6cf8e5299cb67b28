//! The rollout driver against scripted in-process agents.
//!
//! `ScriptedFleet` is a `FleetApi` kept in memory: each host has a version,
//! a drained flag, health, and the releases staged on it. Like the real
//! agent it answers a repeated operation id with the recorded result and
//! does nothing twice; it records every call (host, step, op id, when it
//! started and returned) and tells real actions apart from re-attaches. A
//! script makes a step of a host fail, or makes something happen when a
//! host acts (another host turns unhealthy or silent, the database is
//! written, the operator presses Ctrl-C). Health goes to the driver the way
//! the real watchers send it: a report per host on a timer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rollgate::catalog::Release;
use rollgate::fingerprint::{Fingerprint, Reading};
use rollgate::lb::LbState;
use rollgate::method::Method;
use rollgate::outcome::{
    BackupFile, BackupTaken, Drained, Failure, FailureCode, Installed, Staged, StepOutput,
};
use rollgate::role::Role;
use rollgate::version::Version;
use tokio::sync::{mpsc, watch};

use super::log::now_ms;
use crate::client::{CallError, Hello};
use crate::fleet::{FleetApi, Health, HealthUpdate, StepOutcome};

mod harness;
mod resume;
mod tests;

// === impl ScriptedFleet ===

/// What the driver asked of an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    Hello,
    Stage,
    Backup,
    FetchBackup,
    Fingerprint,
    Install,
    Rollback,
    Drain,
    Undrain,
    Rehearse,
}

/// One call, as the fleet saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub host: String,
    pub step: Step,
    /// The operation id; empty for calls that carry none.
    pub op: String,
    /// The version a stage, install or rollback was about.
    pub version: Option<Version>,
    /// The backup id (backup, fetch_backup) or baseline (fingerprint).
    pub arg: String,
    pub started: Instant,
    /// When the answer went back; `None` while pending or if abandoned.
    pub ended: Option<Instant>,
    /// The call changed the host; false when answered from the record of
    /// an earlier call with the same operation id.
    pub acted: bool,
    /// Put in by `replay` (the agents' history before a resume), not by
    /// the driver under test.
    pub replayed: bool,
}

/// Something that happens when a host carries out a step.
#[derive(Debug, Clone)]
pub enum Effect {
    /// The host's gateway starts failing its probes.
    Unhealthy(String),
    /// The host's agent stops reporting and stops answering calls.
    Silent(String),
    /// Someone writes to a table of the CP database.
    DbWrite(String),
    /// The operator presses Ctrl-C.
    Interrupt(watch::Sender<bool>),
}

#[derive(Debug)]
struct HostState {
    role: Role,
    version: Version,
    drained: bool,
    healthy: bool,
    silent: bool,
    staged: BTreeSet<Version>,
    /// The last operation that acted on the host (the agent reports it).
    last_ended: String,
}

#[derive(Debug, Default)]
struct State {
    hosts: BTreeMap<String, HostState>,
    calls: Vec<Call>,
    /// The agents' record of operations: id → result.
    results: HashMap<String, StepOutcome>,
    failures: HashMap<(String, Step), Failure>,
    /// One-shot: (host, step) → what happens when it acts.
    triggers: Vec<(String, Step, Effect)>,
    /// Content hashes of the CP database's tables.
    db: BTreeMap<String, i64>,
    /// Fingerprints taken with each backup, by backup id.
    backups: HashMap<String, Fingerprint>,
    /// How long a stage takes, when not STEP_TIME.
    stage_time: Option<Duration>,
    /// One-shot: when any host is first asked for `step`, `effect` happens
    /// (before the step acts).
    on_call: Vec<(Step, Effect)>,
    /// Hosts the driver asked to watch closely, and when.
    closely: Vec<(String, Instant)>,
}

/// An in-memory fleet. Clones share the same hosts: the agents' truth
/// outlives any one driver, as it does across a coordinator crash.
#[derive(Clone, Default)]
pub struct ScriptedFleet {
    state: Arc<Mutex<State>>,
    /// Moves when a step acts: the watches report at once, as a real
    /// agent looks again when an operation ends.
    acted: Arc<tokio::sync::watch::Sender<u64>>,
}

/// How long a step other than install takes; install holds healthy for
/// `min_healthy` like the real agent's health gate.
const STEP_TIME: Duration = Duration::from_millis(5);

impl ScriptedFleet {
    pub fn new<'a>(hosts: impl IntoIterator<Item = (&'a str, Role, Version)>) -> Self {
        let fleet = ScriptedFleet::default();
        {
            let mut s = fleet.lock();
            for (name, role, version) in hosts {
                s.hosts.insert(
                    name.to_string(),
                    HostState {
                        role,
                        staged: BTreeSet::from([version.clone()]),
                        version,
                        drained: false,
                        healthy: true,
                        silent: false,
                        last_ended: String::new(),
                    },
                );
            }
            s.db = BTreeMap::from([("public.routes".into(), 10), ("public.services".into(), 4)]);
        }
        fleet
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every action of `step` on `host` fails with `failure`.
    pub fn fail(&self, host: &str, step: Step, failure: Failure) -> &Self {
        self.lock().failures.insert((host.into(), step), failure);
        self
    }

    /// Every stage takes `d` (a slow artifact transfer).
    pub fn slow_stage(&self, d: Duration) -> &Self {
        self.lock().stage_time = Some(d);
        self
    }

    /// `host`'s load balancer has it out of rotation (an earlier rollout
    /// halted with it drained).
    pub fn set_drained(&self, host: &str) {
        if let Some(h) = self.lock().hosts.get_mut(host) {
            h.drained = true;
        }
    }

    /// When the first call of `step` (on any host) arrives, `effect`
    /// happens, before the step acts.
    pub fn on_first_call(&self, step: Step, effect: Effect) -> &Self {
        self.lock().on_call.push((step, effect));
        self
    }

    /// When `host` first carries out `step`, `effect` happens.
    pub fn on(&self, host: &str, step: Step, effect: Effect) -> &Self {
        self.lock().triggers.push((host.into(), step, effect));
        self
    }

    pub fn set_silent(&self, host: &str) {
        if let Some(h) = self.lock().hosts.get_mut(host) {
            h.silent = true;
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// When the driver asked to watch `host` closely, the first time.
    pub fn watched_closely(&self, host: &str) -> Option<Instant> {
        self.lock()
            .closely
            .iter()
            .find(|(h, _)| h == host)
            .map(|(_, at)| *at)
    }

    pub fn version(&self, host: &str) -> Version {
        self.lock().hosts[host].version.clone()
    }

    pub fn drained(&self, host: &str) -> bool {
        self.lock().hosts[host].drained
    }

    /// The steps the driver asked of `host`, in order.
    pub fn steps(&self, host: &str) -> Vec<Step> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.host == host && !c.replayed)
            .map(|c| c.step)
            .collect()
    }

    /// How many times `step` really ran on `host` (re-attaches not counted),
    /// including the history put in by `replay`.
    pub fn actions(&self, host: &str, step: Step, version: Option<&Version>) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.host == host && c.step == step && c.acted)
            .filter(|c| version.is_none() || c.version.as_ref() == version)
            .count()
    }

    /// Carries out `c` again as the agent would have, without the driver:
    /// the history of the agents before a coordinator resumes.
    pub fn replay(&self, c: &Call) {
        let mut s = self.lock();
        let r = s.act(&c.host, c.step, c.version.as_ref(), &c.arg);
        s.results.insert(c.op.clone(), r);
        s.calls.push(Call {
            acted: true,
            replayed: true,
            started: Instant::now(),
            ended: Some(Instant::now()),
            ..c.clone()
        });
    }

    fn record(
        &self,
        host: &str,
        step: Step,
        op: &str,
        version: Option<&Version>,
        arg: &str,
    ) -> usize {
        let mut s = self.lock();
        s.calls.push(Call {
            host: host.into(),
            step,
            op: op.into(),
            version: version.cloned(),
            arg: arg.into(),
            started: Instant::now(),
            ended: None,
            acted: false,
            replayed: false,
        });
        s.calls.len() - 1
    }

    fn returned(&self, idx: usize, acted: bool) {
        let mut s = self.lock();
        s.calls[idx].ended = Some(Instant::now());
        s.calls[idx].acted = acted;
    }

    fn is_silent(&self, host: &str) -> bool {
        self.lock().hosts.get(host).is_none_or(|h| h.silent)
    }

    /// One mutating step: answered from the record when the operation id
    /// is known, otherwise carried out after `takes`. A silent agent never
    /// answers (the driver must give up on it).
    async fn step(
        &self,
        host: &str,
        step: Step,
        op: &str,
        version: Option<&Version>,
        arg: &str,
        takes: Duration,
    ) -> StepOutcome {
        let idx = self.record(host, step, op, version, arg);
        {
            let mut s = self.lock();
            let (fire, keep) = std::mem::take(&mut s.on_call)
                .into_iter()
                .partition(|(st, _)| *st == step);
            s.on_call = keep;
            for (_, e) in fire {
                s.apply(e);
            }
        }
        if self.is_silent(host) {
            std::future::pending::<()>().await;
        }
        let known = self.lock().results.get(op).cloned();
        if let Some(r) = known {
            self.returned(idx, false);
            return r;
        }
        tokio::time::sleep(takes).await;
        // The agent may have died while the step ran.
        if self.is_silent(host) {
            std::future::pending::<()>().await;
        }
        let r = {
            let mut s = self.lock();
            let r = s.act(host, step, version, arg);
            s.results.insert(op.into(), r.clone());
            if let Some(h) = s.hosts.get_mut(host) {
                op.clone_into(&mut h.last_ended);
            }
            r
        };
        self.acted.send_modify(|n| *n += 1);
        self.returned(idx, true);
        r
    }
}

impl State {
    fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            tables: self.db.clone(),
            export_sha256: Some("e".repeat(64)),
            excluded_tables: vec!["public.heartbeats".into()],
            taken_at_ms: now_ms(),
        }
    }

    /// What the agent does for `step`, then what the script says happens.
    fn act(&mut self, host: &str, step: Step, version: Option<&Version>, arg: &str) -> StepOutcome {
        let r = self.act_inner(host, step, version, arg);
        let fired: Vec<Effect> = {
            let (fire, keep) = std::mem::take(&mut self.triggers)
                .into_iter()
                .partition(|(h, s, _)| h == host && *s == step);
            self.triggers = keep;
            fire.into_iter().map(|(.., e)| e).collect()
        };
        for e in fired {
            self.apply(e);
        }
        r
    }

    fn apply(&mut self, e: Effect) {
        match e {
            Effect::Unhealthy(h) => self.hosts.get_mut(&h).expect("scripted host").healthy = false,
            Effect::Silent(h) => self.hosts.get_mut(&h).expect("scripted host").silent = true,
            Effect::DbWrite(t) => *self.db.entry(t).or_default() += 1,
            Effect::Interrupt(tx) => {
                let _ = tx.send(true);
            }
        }
    }

    fn act_inner(
        &mut self,
        host: &str,
        step: Step,
        version: Option<&Version>,
        arg: &str,
    ) -> StepOutcome {
        let failure = self.failures.get(&(host.to_string(), step)).cloned();
        let fp = self.fingerprint();
        let Some(h) = self.hosts.get_mut(host) else {
            return Err(precondition(format!("{host} is not a scripted host")));
        };
        if let Some(f) = failure {
            match step {
                // The agent put back what `active_version` names.
                Step::Install | Step::Rollback => {
                    if let Some(v) = &f.active_version {
                        h.version = v.clone();
                    }
                    h.healthy = f.gateway_healthy;
                }
                // A failed drain undoes itself on the agent.
                Step::Drain => h.drained = false,
                _ => {}
            }
            return Err(f);
        }
        let v = || version.cloned().expect("a versioned step");
        Ok(match step {
            Step::Stage => {
                h.staged.insert(v());
                StepOutput::Stage(Staged {
                    version: v(),
                    location: format!("/opt/gw/releases/{}", v()),
                    bytes: 1,
                    already_present: false,
                })
            }
            Step::Backup => {
                self.backups.insert(arg.into(), fp.clone());
                StepOutput::Backup(BackupTaken {
                    backup_id: arg.into(),
                    dir: format!("/var/backups/rollgate/{arg}"),
                    files: vec![BackupFile {
                        path: "db.dump".into(),
                        size: 1,
                        sha256: "d".repeat(64),
                    }],
                    fingerprint: fp,
                })
            }
            Step::Install | Step::Rollback => {
                if !h.staged.contains(&v()) {
                    return Err(precondition(format!("{} is not staged on {host}", v())));
                }
                let previous = std::mem::replace(&mut h.version, v());
                h.healthy = true;
                let r = Installed {
                    previous_version: Some(previous),
                    version: v(),
                    pid: 4242,
                    healthy_for_ms: 1,
                    restore: None,
                };
                if step == Step::Install {
                    StepOutput::Install(r)
                } else {
                    StepOutput::Rollback(r)
                }
            }
            Step::Drain => {
                h.drained = true;
                StepOutput::Drain(Drained {
                    remaining_connections: 0,
                    lb_acknowledged: false,
                    waited_ms: 0,
                })
            }
            Step::Undrain => {
                h.drained = false;
                StepOutput::Undrain
            }
            // A scripted rehearsal passes at once; the version is the last hop.
            Step::Rehearse => StepOutput::Rehearse(rollgate::outcome::Rehearsed {
                backup_id: arg.into(),
                restore_ms: 1,
                hops: vec![rollgate::outcome::RehearsedHop {
                    version: v(),
                    schema_before: 1,
                    schema_after: 2,
                    migration_ms: 1,
                    ready_ms: 2,
                    stop_ms: 1,
                    export_ok: true,
                    export_bytes: 10,
                    reported_version: v().to_string(),
                }],
            }),
            Step::Hello | Step::FetchBackup | Step::Fingerprint => {
                return Err(precondition(format!("{step:?} is not an operation")));
            }
        })
    }
}

fn precondition(message: String) -> Failure {
    Failure {
        gateway_healthy: true,
        ..Failure::new(FailureCode::Precondition, message)
    }
}

impl ScriptedFleet {
    /// Host facts, as Hello gives them (the driver itself does not ask).
    pub async fn hello(&self, host: &str) -> Result<Hello, CallError> {
        let idx = self.record(host, Step::Hello, "", None, "");
        let s = self.lock();
        let h = s
            .hosts
            .get(host)
            .ok_or_else(|| CallError::Mismatch(format!("{host} is not a scripted host")))?;
        let hello = Hello {
            host_name: host.into(),
            role: h.role,
            agent_version: "scripted".into(),
            installed: Some(h.version.clone()),
            disk_free_bytes: 1 << 40,
            custom_plugin_files: Vec::new(),
            database_backup: h.role == Role::Cp,
            rehearsal: h.role == Role::Cp,
            method: Method::Tarball,
            kept: vec![h.version.clone()],
        };
        drop(s);
        self.returned(idx, false);
        Ok(hello)
    }
}

impl FleetApi for ScriptedFleet {
    async fn stage(&self, host: &str, op: &str, release: &Release, _method: Method) -> StepOutcome {
        let takes = self.lock().stage_time.unwrap_or(STEP_TIME);
        self.step(host, Step::Stage, op, Some(&release.version), "", takes)
            .await
    }

    async fn backup(&self, host: &str, op: &str, backup_id: &str) -> StepOutcome {
        self.step(host, Step::Backup, op, None, backup_id, STEP_TIME)
            .await
    }

    async fn rehearse(
        &self,
        host: &str,
        op: &str,
        backup_id: &str,
        hops: &[(Version, i64)],
    ) -> StepOutcome {
        let last = hops.last().map(|(v, _)| v.clone());
        self.step(
            host,
            Step::Rehearse,
            op,
            last.as_ref(),
            backup_id,
            STEP_TIME,
        )
        .await
    }

    async fn fetch_backup(
        &self,
        host: &str,
        backup_id: &str,
        _files: &[BackupFile],
        _into: &Path,
    ) -> Result<(), String> {
        // Nothing to copy: the driver's part is asking, and noting the copy.
        let idx = self.record(host, Step::FetchBackup, "", None, backup_id);
        self.returned(idx, false);
        Ok(())
    }

    async fn fingerprint(&self, host: &str, baseline_backup: &str) -> Result<Reading, CallError> {
        let idx = self.record(host, Step::Fingerprint, "", None, baseline_backup);
        let r = {
            let s = self.lock();
            let current = s.fingerprint();
            let baseline = if baseline_backup.is_empty() {
                None
            } else {
                let b = s.backups.get(baseline_backup).cloned().ok_or_else(|| {
                    CallError::Mismatch(format!("no backup {baseline_backup} on {host}"))
                })?;
                let diff = b.diff(&current);
                Some((b, diff))
            };
            Reading { current, baseline }
        };
        self.returned(idx, false);
        Ok(r)
    }

    async fn install(
        &self,
        host: &str,
        op: &str,
        version: &Version,
        min_healthy: Duration,
        _health_timeout: Duration,
    ) -> StepOutcome {
        self.step(host, Step::Install, op, Some(version), "", min_healthy)
            .await
    }

    async fn rollback(
        &self,
        host: &str,
        op: &str,
        to: &Version,
        _restore: Option<&str>,
        _health_timeout: Duration,
    ) -> StepOutcome {
        self.step(host, Step::Rollback, op, Some(to), "", STEP_TIME)
            .await
    }

    async fn drain(&self, host: &str, op: &str, _timeout: Duration) -> StepOutcome {
        self.step(host, Step::Drain, op, None, "", STEP_TIME).await
    }

    async fn undrain(&self, host: &str, op: &str) -> StepOutcome {
        self.step(host, Step::Undrain, op, None, "", STEP_TIME)
            .await
    }

    async fn load_balancer(&self, host: &str) -> Result<LbState, CallError> {
        let s = self.lock();
        match s.hosts.get(host) {
            Some(h) if !h.silent => Ok(if h.drained {
                LbState::Drained
            } else {
                LbState::InRotation
            }),
            _ => Err(CallError::Timeout(Duration::from_secs(1))),
        }
    }

    /// Recorded; the scripted hosts report every `interval` whatever the
    /// pace (the driver's tests are about what it does with reports).
    fn watch_closely(&self, hosts: &[String]) {
        let now = Instant::now();
        self.lock()
            .closely
            .extend(hosts.iter().map(|h| (h.clone(), now)));
    }

    /// A report for every host that is not silent, every `interval` and
    /// whenever a step has acted (as an agent looks when an operation ends),
    /// until the driver drops its receiver.
    fn watch(&self, hosts: &[String], interval: Duration, tx: mpsc::Sender<HealthUpdate>) {
        let fleet = self.clone();
        let hosts = hosts.to_vec();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            let mut acted = fleet.acted.subscribe();
            while !tx.is_closed() {
                tokio::select! {
                    _ = tick.tick() => {}
                    Ok(()) = acted.changed() => {}
                }
                let reports: Vec<HealthUpdate> = {
                    let s = fleet.lock();
                    hosts
                        .iter()
                        .filter_map(|name| {
                            let h = s.hosts.get(name).filter(|h| !h.silent)?;
                            Some(HealthUpdate::Report {
                                host: name.clone(),
                                health: Health {
                                    healthy: h.healthy,
                                    // Every report is one look: the monitor counts.
                                    streak: 0,
                                    summary: if h.healthy {
                                        format!("healthy on {}", h.version)
                                    } else {
                                        "ready answered 503".into()
                                    },
                                    lb: if h.drained {
                                        LbState::Drained
                                    } else {
                                        LbState::InRotation
                                    },
                                    installed_version: h.version.to_string(),
                                    running_version: if h.healthy {
                                        h.version.to_string()
                                    } else {
                                        String::new()
                                    },
                                    last_operation: h.last_ended.clone(),
                                    received: std::time::Instant::now(),
                                    active_operation: String::new(),
                                },
                            })
                        })
                        .collect()
                };
                for r in reports {
                    if tx.send(r).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

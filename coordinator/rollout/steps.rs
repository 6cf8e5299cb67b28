//! Running one journalled step: skip it if the journal shows it ended (and
//! hand back what it returned), otherwise journal `begin` (fsync), call the
//! agent with the step's operation id, journal `end`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use std::time::Instant;
use tokio::sync::watch;

use rollgate::outcome::{Failure, FailureCode};
use rollgate::version::Version;

use super::log::{Record, RolloutLog, now_ms};
use super::spec::PolicySnap;
use crate::fleet::{FleetApi, StepOutcome};
use crate::report::{Event, Reporter};

/// What every host task of a rollout shares.
pub struct Ctx<F: FleetApi> {
    pub fleet: Arc<F>,
    pub log: Mutex<RolloutLog>,
    pub reporter: Arc<Reporter>,
    pub rid: String,
    pub policy: PolicySnap,
    /// Set by the driver the moment it decides to halt (an alarm, Ctrl-C):
    /// from then on no host task starts new work. Steps in flight finish.
    stop: AtomicBool,
    /// The operator's interrupt, read directly too: a Ctrl-C stops new work
    /// even before the driver's loop has looked.
    interrupt: OnceLock<watch::Receiver<bool>>,
    /// The operation id of each host's last step call in this run.
    last_op: Mutex<HashMap<String, String>>,
}

/// The operation id of a step: `<rollout>/<host>/<step>-<version>`.
pub fn op_id(rid: &str, host: &str, step: &str, v: Option<&Version>) -> String {
    match v {
        Some(v) => rollgate::ids::operation_id(rid, host, &format!("{step}-{v}")),
        None => rollgate::ids::operation_id(rid, host, step),
    }
}

impl<F: FleetApi> Ctx<F> {
    /// The context of the rollout journalled in `log`, with its id and policy.
    pub fn new(fleet: Arc<F>, log: RolloutLog, reporter: Arc<Reporter>) -> Self {
        Ctx {
            rid: log.spec.id.clone(),
            policy: log.spec.policy.clone(),
            fleet,
            log: Mutex::new(log),
            reporter,
            stop: AtomicBool::new(false),
            interrupt: OnceLock::new(),
            last_op: Mutex::default(),
        }
    }

    /// The operation id of the last step this run called on `host`, if
    /// any (whether it ended, failed or was abandoned).
    pub fn last_op(&self, host: &str) -> Option<String> {
        let calls = self.last_op.lock().unwrap_or_else(|e| e.into_inner());
        calls.get(host).cloned()
    }

    fn mark_call(&self, host: &str, op: &str) {
        let mut calls = self.last_op.lock().unwrap_or_else(|e| e.into_inner());
        match calls.get_mut(host) {
            Some(o) => op.clone_into(o),
            None => {
                calls.insert(host.to_string(), op.to_string());
            }
        }
    }

    /// Makes `stopping` true as soon as `interrupt` is.
    pub fn watch_interrupt(&self, interrupt: watch::Receiver<bool>) {
        let _ = self.interrupt.set(interrupt);
    }

    /// The rollout is halting: host tasks start nothing new.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || self.interrupt.get().is_some_and(|i| *i.borrow())
    }

    pub fn log(&self) -> std::sync::MutexGuard<'_, RolloutLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `rec`, with the records held before it (`hold`), and waits
    /// until they are durable, without holding the journal's lock meanwhile
    /// (a state database that hangs holds only this task, up to the
    /// writer's timeout). Group commit: other tasks' records share the fsync.
    pub(super) async fn journal(&self, rec: Record) -> Result<(), Failure> {
        let durable = self.log().submit(rec).map_err(journal_failure)?;
        durable
            .await
            .map_err(|_| journal_failure(std::io::Error::other("the journal writer has stopped")))?
            .map_err(journal_failure)
    }

    /// Applies `rec` and writes it with the next record journalled, in the
    /// same commit (`RolloutLog::hold`).
    fn hold(&self, rec: Record) -> Result<(), Failure> {
        self.log().hold(rec).map_err(journal_failure)
    }

    /// Runs `call` as step `step` of `host`, unless the journal says it ended.
    pub async fn run<Fut>(
        &self,
        host: &str,
        step: &str,
        hop: Option<&Version>,
        op: &str,
        call: impl FnOnce() -> Fut,
    ) -> StepOutcome
    where
        Fut: std::future::Future<Output = StepOutcome>,
    {
        match self.run_as(Start::Always, host, step, hop, op, call).await {
            Some(r) => r,
            None => unreachable!("a step that always starts was not started"),
        }
    }

    /// As `run`, for new work: when the rollout is halting and the journal
    /// does not show the step begun, nothing is called and None comes back.
    /// Halting is looked at again once the begin is durable, right before
    /// the call, so a halt that comes while it is written still stops the
    /// call; the step then stays begun and never sent, and a resume sends it.
    pub async fn run_unless_halting<Fut>(
        &self,
        host: &str,
        step: &str,
        hop: Option<&Version>,
        op: &str,
        call: impl FnOnce() -> Fut,
    ) -> Option<StepOutcome>
    where
        Fut: std::future::Future<Output = StepOutcome>,
    {
        self.run_as(Start::UnlessHalting, host, step, hop, op, call)
            .await
    }

    async fn run_as<Fut>(
        &self,
        start: Start,
        host: &str,
        step: &str,
        hop: Option<&Version>,
        op: &str,
        call: impl FnOnce() -> Fut,
    ) -> Option<StepOutcome>
    where
        Fut: std::future::Future<Output = StepOutcome>,
    {
        // A step begun before (this is a resume) is followed whatever happens.
        let held_back =
            || start == Start::UnlessHalting && self.stopping() && !self.log().begun(op);
        let ev = || {
            let mut e = Event::new("step", &self.rid, "").host(host).step(step);
            if let Some(v) = hop {
                e = e.hop(v);
            }
            e
        };
        if let Some(end) = self.log().ended(op).cloned() {
            let mut e = ev();
            e.status = "done-before".into();
            self.reporter.emit(e);
            return Some(end);
        }
        if held_back() {
            return None;
        }
        if let Err(f) = self
            .journal(Record::Begin {
                op: op.into(),
                host: host.into(),
                step: step.into(),
                at_ms: now_ms(),
            })
            .await
        {
            return Some(Err(f));
        }
        if start == Start::UnlessHalting && self.stopping() {
            return None;
        }
        let mut e = ev();
        e.status = "started".into();
        self.reporter.emit(e);
        let start = Instant::now();
        self.mark_call(host, op);
        let r = call().await;
        // The End waits for the next record's commit (`RolloutLog::hold`):
        // nothing is acted on before then but events, and what follows on
        // this host is a Begin, which is durable before its call.
        if let Err(f) = self.hold(Record::End {
            op: op.into(),
            host: host.into(),
            step: step.into(),
            result: r.clone(),
            at_ms: now_ms(),
        }) {
            return Some(Err(f));
        }
        let mut e = ev().elapsed(start.elapsed());
        match &r {
            Ok(_) => e.status = "succeeded".into(),
            Err(f) => {
                e.status = "failed".into();
                e = e.error(f.to_string()).detail(serde_json::json!({
                    "code": f.code, "reverted": f.reverted, "active_version": f.active_version,
                    "gateway_healthy": f.gateway_healthy, "detail": f.detail,
                }));
            }
        }
        self.reporter.emit(e);
        Some(r)
    }
}

fn journal_failure(e: std::io::Error) -> Failure {
    Failure::new(
        FailureCode::Journal,
        format!("cannot write the rollout journal: {e}"),
    )
}

/// Whether a step may start while the rollout is halting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    Always,
    UnlessHalting,
}

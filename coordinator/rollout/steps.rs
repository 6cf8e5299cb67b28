//! Running one journalled step: skip it if the journal shows it ended (and
//! hand back what it returned), otherwise journal `begin` (fsync), call the
//! agent with the step's operation id, journal `end`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use rollgate::pb;
use rollgate::version::Version;

use super::log::{Record, RolloutLog, now_ms};
use super::spec::PolicySnap;
use crate::fleet::{FleetApi, StepFailure, StepOutcome};
use crate::report::{Event, Reporter};

/// What every host task of a rollout shares.
pub struct Ctx<F: FleetApi> {
    pub fleet: Arc<F>,
    pub log: Mutex<RolloutLog>,
    pub reporter: Arc<Reporter>,
    pub rid: String,
    pub policy: PolicySnap,
}

/// The operation id of a step: `<rollout>/<host>/<step>-<version>`.
pub fn op_id(rid: &str, host: &str, step: &str, v: Option<&Version>) -> String {
    match v {
        Some(v) => rollgate::ids::operation_id(rid, host, &format!("{step}-{v}")),
        None => rollgate::ids::operation_id(rid, host, step),
    }
}

impl<F: FleetApi> Ctx<F> {
    pub fn log(&self) -> std::sync::MutexGuard<'_, RolloutLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Journals a record and waits until it is on disk (group commit: the
    /// lock is not held while waiting).
    async fn journal(&self, rec: Record) -> Result<(), StepFailure> {
        let failed = |e: std::io::Error| StepFailure {
            code: "JOURNAL".into(),
            ..StepFailure::lost(format!("cannot write the rollout journal: {e}"))
        };
        let durable = self.log().submit(rec).map_err(failed)?;
        durable
            .await
            .map_err(|_| failed(std::io::Error::other("the journal writer has stopped")))?
            .map_err(failed)
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
            return stored(&end.summary, end.ok);
        }
        self.journal(Record::Begin {
            op: op.into(),
            host: host.into(),
            step: step.into(),
            at_ms: now_ms(),
        })
        .await?;
        let mut e = ev();
        e.status = "started".into();
        self.reporter.emit(e);
        let start = Instant::now();
        let r = call().await;
        let summary = match &r {
            Ok(d) => serde_json::to_string(d).unwrap_or_default(),
            Err(f) => serde_json::to_string(f).unwrap_or_default(),
        };
        self.journal(Record::End {
            op: op.into(),
            host: host.into(),
            step: step.into(),
            ok: r.is_ok(),
            summary,
            at_ms: now_ms(),
        })
        .await?;
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
        r
    }
}

/// A step's journalled result, as the step returned it.
fn stored(summary: &str, ok: bool) -> StepOutcome {
    if ok {
        serde_json::from_str::<pb::success::Detail>(summary)
            .map_err(|e| StepFailure::lost(format!("unreadable journal entry: {e}")))
    } else {
        Err(serde_json::from_str::<StepFailure>(summary)
            .unwrap_or_else(|_| StepFailure::lost(summary.to_string())))
    }
}

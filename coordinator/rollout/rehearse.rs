//! The rehearsal phase: after the backup and before the write-freeze guard,
//! the CP hops are tried on a scratch copy of the backed-up database by the
//! first CP's agent (`Rehearse`); a failure halts the rollout before any CP
//! or DP is touched. Each passed hop's timings are kept in
//! `<state_dir>/rehearsals.json`, from which `plan` predicts the CP window.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rollgate::outcome::{Failure, Rehearsed, StepOutput};
use rollgate::role::Role;
use rollgate::version::Version;
use serde::{Deserialize, Serialize};

use super::driver::{Driver, HEALTH_INTERVAL, Halt};
use super::log::{Outcome, now_ms};
use super::steps::op_id;
use crate::fleet::FleetApi;
use crate::inventory::Rehearse;
use crate::report::Event;

/// What a rehearsal measured for one target version, kept for `plan`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub stop_ms: u64,
    pub migration_ms: u64,
    pub ready_ms: u64,
    pub schema_before: i64,
    pub schema_after: i64,
    pub rehearsed_at_ms: i64,
    pub rollout: String,
}

fn windows_file(state_dir: &Path) -> PathBuf {
    state_dir.join("rehearsals.json")
}

/// The last rehearsal's measurements, by target version.
pub fn windows(state_dir: &Path) -> BTreeMap<String, Window> {
    std::fs::read(windows_file(state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn remember(state_dir: &Path, rid: &str, r: &Rehearsed) {
    let mut all = windows(state_dir);
    for h in &r.hops {
        all.insert(
            h.version.to_string(),
            Window {
                stop_ms: h.stop_ms,
                migration_ms: h.migration_ms,
                ready_ms: h.ready_ms,
                schema_before: h.schema_before,
                schema_after: h.schema_after,
                rehearsed_at_ms: now_ms(),
                rollout: rid.to_string(),
            },
        );
    }
    let text = serde_json::to_vec_pretty(&all).unwrap_or_default();
    if let Err(e) = rollgate::fsx::write_atomic(&windows_file(state_dir), &text) {
        tracing::warn!(error = %e, "cannot keep the rehearsal's timings");
    }
}

/// How `rollgate rehearse` ended, for its report.
#[derive(Debug, Clone, Default)]
pub struct RehearsalReport {
    pub hops: Vec<(Version, i64)>,
    pub rehearsed: Option<Rehearsed>,
    pub failure: Option<Failure>,
    /// The database's fingerprint after the rehearsal equals the backup's.
    pub production_unchanged: Option<bool>,
}

impl<F: FleetApi> Driver<F> {
    /// The CP hops to rehearse, each with the schema its release reaches
    /// (0: the catalog does not say); empty when the policy says not to.
    fn rehearsal_hops(&self, policy: Rehearse) -> Vec<(Version, i64)> {
        let spec = self.ctx.log().spec.clone();
        let hops: Vec<&Version> = spec
            .hops
            .iter()
            .filter(|h| !spec.needing(Role::Cp, h).is_empty())
            .collect();
        let release = |v: &Version| self.catalog.as_ref().and_then(|c| c.get(v)).cloned();
        let migrates = hops.iter().any(|h| release(h).is_some_and(|r| r.migrates));
        let wanted = match policy {
            Rehearse::Always => true,
            Rehearse::WhenMigrating => migrates,
            Rehearse::Never | Rehearse::SkippedByFlag => false,
        };
        if !wanted {
            return Vec::new();
        }
        hops.into_iter()
            .map(|h| {
                let schema = release(h).and_then(|r| r.schema_version).unwrap_or(0);
                (h.clone(), schema)
            })
            .collect()
    }

    /// The upgrade's rehearsal phase, as `[policy] rehearse` says.
    pub(super) async fn rehearse_phase(&mut self, cp: &str) -> Result<(), Halt> {
        let policy = self.ctx.log().spec.policy.rehearse();
        let hops = self.rehearsal_hops(policy);
        if hops.is_empty() {
            let why = match policy {
                Rehearse::SkippedByFlag => "--no-rehearse",
                Rehearse::Never => "policy rehearse = \"never\"",
                _ => "no CP hop migrates the database",
            };
            self.emit(
                Event::new("step", &self.rid(), "skipped")
                    .host(cp)
                    .step("rehearse")
                    .detail(serde_json::json!({ "message": why })),
            );
            return Ok(());
        }
        self.rehearse(cp, &hops).await.map(|_| ())
    }

    /// Rehearses `hops` on `cp` against the rollout's backup.
    async fn rehearse(&mut self, cp: &str, hops: &[(Version, i64)]) -> Result<Rehearsed, Halt> {
        let rid = self.rid();
        let backup = self
            .ctx
            .log()
            .spec
            .backup_id
            .clone()
            .ok_or_else(|| Halt::Other("no backup to rehearse on".into()))?;
        let op = op_id(&rid, cp, "rehearse", None);
        let ctx = self.ctx.clone();
        let last = hops.last().map(|(v, _)| v.clone());
        let (r, halt) = self
            .monitored(
                Some(cp),
                ctx.run(cp, "rehearse", last.as_ref(), &op, || {
                    ctx.fleet.rehearse(cp, &op, &backup, hops)
                }),
            )
            .await;
        if let Some(h) = halt {
            return Err(h);
        }
        match r {
            Some(Ok(StepOutput::Rehearse(done))) => {
                remember(&self.state_dir, &rid, &done);
                let s = |ms: u64| format!("{:.1}s", ms as f64 / 1000.0);
                let summary: Vec<String> = done
                    .hops
                    .iter()
                    .map(|h| {
                        format!(
                            "{}: schema {} → {}, migrate {}, ready {}, stop {}",
                            h.version,
                            h.schema_before,
                            h.schema_after,
                            s(h.migration_ms),
                            s(h.ready_ms),
                            s(h.stop_ms)
                        )
                    })
                    .collect();
                self.emit(
                    Event::new("step", &rid, "rehearsed")
                        .host(cp)
                        .step("rehearse")
                        .detail(serde_json::json!({
                            "message": format!("restore {}; {}", s(done.restore_ms), summary.join("; ")),
                            "restore_ms": done.restore_ms,
                            "hops": done.hops,
                        })),
                );
                Ok(done)
            }
            Some(Ok(_)) => Err(Halt::Other(
                "the rehearse step returned something else".into(),
            )),
            Some(Err(failure)) => Err(Halt::Step {
                host: cp.into(),
                step: "rehearse".into(),
                failure: Box::new(failure),
            }),
            None => Err(Halt::Other("rehearsal abandoned".into())),
        }
    }

    /// `rollgate rehearse`: stage the CP hops, take (or reuse) the backup,
    /// rehearse every CP hop, then check production's fingerprint against
    /// the backup's.
    pub async fn rehearse_only(&mut self) -> ((Outcome, String), RehearsalReport) {
        let mut report = RehearsalReport {
            hops: self.rehearsal_hops(Rehearse::Always),
            ..Default::default()
        };
        let r = self.rehearse_only_inner(&mut report).await;
        (self.conclude(r).await, report)
    }

    async fn rehearse_only_inner(&mut self, report: &mut RehearsalReport) -> Result<(), Halt> {
        let spec = self.ctx.log().spec.clone();
        let Some(cp) = spec.cps().first().map(|h| h.name.clone()) else {
            return Err(Halt::Other(
                "the inventory has no CP host to rehearse on".into(),
            ));
        };
        if report.hops.is_empty() {
            return Err(Halt::Other(format!(
                "{cp} is on {} already: no CP hop to rehearse",
                spec.target
            )));
        }
        if let Some(h) = self
            .await_reports(std::slice::from_ref(&cp), HEALTH_INTERVAL * 3)
            .await
        {
            return Err(h);
        }
        self.stage_all().await?;
        if spec.backup_id.as_deref() == Some(spec.id.as_str()) {
            self.backup(&cp).await?;
        }
        let hops = report.hops.clone();
        let outcome = self.rehearse(&cp, &hops).await;
        let baseline = spec.backup_id.clone().unwrap_or_default();
        let fleet = self.ctx.fleet.clone();
        let (reading, _) = self
            .monitored(Some(&cp), fleet.fingerprint(&cp, &baseline))
            .await;
        report.production_unchanged = match reading {
            Some(Ok(r)) => r.baseline.map(|(_, diff)| diff.is_empty()),
            _ => None,
        };
        match outcome {
            Ok(done) => {
                report.rehearsed = Some(done);
                Ok(())
            }
            Err(Halt::Step {
                host,
                step,
                failure,
            }) => {
                report.failure = Some((*failure).clone());
                Err(Halt::Step {
                    host,
                    step,
                    failure,
                })
            }
            Err(h) => Err(h),
        }
    }
}

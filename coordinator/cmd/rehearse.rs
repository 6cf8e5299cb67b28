//! `rollgate rehearse`: the CP upgrade to `--to` tried on a scratch copy of
//! the production database on the CP host, hop by hop, before production is
//! touched. Exit 0 when every hop passed; 2 when a rehearsal failed (nothing
//! changed in production); 1 when it could not run.

use std::path::Path;
use std::sync::Arc;

use rollgate::outcome::Failure as StepFailure;
use rollgate::role::Role;
use rollgate::version::Version;

use super::interrupt_signal;
use super::upgrade::{host_plans, in_catalog, unfinished, verify_artifacts};
use crate::Failure;
use crate::fleet::grpc::GrpcFleet;
use crate::inventory::{Inventory, Rehearse};
use crate::output::{Output, print_table, yes_no};
use crate::report::{Event, Reporter};
use crate::rollout::driver::Driver;
use crate::rollout::journals::Journals;
use crate::rollout::lock;
use crate::rollout::log::{Outcome, now_ms};
use crate::rollout::rehearse::RehearsalReport;
use crate::rollout::spec::{Kind, PolicySnap, RolloutSpec, new_id};
use crate::rollout::steps::Ctx;

pub struct RehearseArgs {
    pub to: Version,
    /// A verified backup on the CP to rehearse on (default: take one now).
    pub backup: Option<String>,
    pub output: Output,
}

pub async fn rehearse(inv: Inventory, catalog_path: &Path, a: RehearseArgs) -> Result<(), Failure> {
    let catalog = rollgate::catalog::Catalog::load(catalog_path)
        .map_err(|e| Failure::Usage(format!("bad catalog: {e}")))?;
    in_catalog(&catalog, &a.to)?;
    verify_artifacts(&catalog, std::slice::from_ref(&a.to))?;
    if let Some(b) = &a.backup {
        rollgate::ids::check_backup_id(b).map_err(|e| Failure::Usage(format!("--backup: {e}")))?;
    }
    let state_dir = inv.coordinator.state_dir.clone();
    let rid = new_id("rh");
    let _lock = lock::acquire(&state_dir, &rid, "rehearse").map_err(Failure::Failed)?;
    let journals = Journals::of(&inv);
    if let Some(l) = unfinished(&journals).await? {
        return Err(Failure::Blocked(format!(
            "rollout {} was cut off; continue it with `rollgate resume` first",
            l.spec.id
        )));
    }
    let report = super::plan::plan(&inv, &catalog, &a.to, Rehearse::Always).await;
    verify_artifacts(&catalog, &report.artifact_versions())?;
    if !report.runnable {
        return Err(Failure::Blocked(format!(
            "the plan is blocked: {}",
            report.blocked.join("; ")
        )));
    }
    let hosts: Vec<_> = host_plans(&inv, &inv.policy, &report)
        .into_iter()
        .filter(|h| h.role == Role::Cp)
        .collect();
    if hosts.is_empty() {
        return Err(Failure::Usage(
            "the inventory has no CP host to rehearse on".into(),
        ));
    }
    let spec = RolloutSpec {
        id: rid.clone(),
        kind: Kind::Rehearse,
        inventory: std::fs::canonicalize(&inv.path).unwrap_or_else(|_| inv.path.clone()),
        catalog: Some(std::fs::canonicalize(catalog_path).unwrap_or_else(|_| catalog_path.into())),
        created_ms: now_ms(),
        target: a.to.clone(),
        hops: report.hop_versions.clone(),
        hosts,
        policy: PolicySnap::from_policy(&inv.policy),
        backup_id: Some(a.backup.clone().unwrap_or_else(|| rid.clone())),
    };
    let log = journals
        .create(spec)
        .await
        .map_err(|e| Failure::Failed(format!("cannot create the rollout journal: {e}")))?;
    let inv = Arc::new(inv);
    let reporter = Arc::new(match a.output {
        // One document at the end, not an event stream.
        Output::Json => Reporter::quiet(),
        Output::Text => Reporter::new(Output::Text),
    });
    reporter.emit(
        Event::new("rollout", &rid, "started")
            .detail(serde_json::json!({ "target": a.to, "kind": "rehearse" })),
    );
    let fleet = Arc::new(GrpcFleet::new(
        inv.clone(),
        super::upgrade::step_deadline(&inv.policy),
    ));
    fleet.adopt(report.agents);
    let ctx = Arc::new(Ctx::new(fleet, log, reporter.clone()));
    let mut driver = Driver::new(ctx, Some(catalog), state_dir, interrupt_signal())
        .with_parallel(inv.coordinator.concurrency);
    let ((outcome, reason), rehearsal) = driver.rehearse_only().await;
    reporter.finish();
    print(a.output, &rid, &rehearsal);
    exit(outcome, reason, &rehearsal)
}

fn exit(outcome: Outcome, reason: String, r: &RehearsalReport) -> Result<(), Failure> {
    match (outcome, &r.failure, r.production_unchanged) {
        (Outcome::Succeeded, _, Some(true)) => Ok(()),
        (Outcome::Succeeded, _, unchanged) => Err(Failure::Failed(format!(
            "every hop passed, but the production database {} since the backup: something wrote to it meanwhile",
            if unchanged == Some(false) {
                "changed"
            } else {
                "could not be compared"
            }
        ))),
        (_, Some(f), Some(true)) => Err(Failure::Blocked(format!(
            "the rehearsal failed: {}; production is unchanged",
            f.message
        ))),
        _ => Err(Failure::Failed(format!(
            "the rehearsal did not run to its end: {reason}"
        ))),
    }
}

/// One row per hop: what was measured, or why it failed.
fn rows(r: &RehearsalReport) -> Vec<serde_json::Value> {
    // The agent names the failing hop first in its message ("3.4.0: ...").
    let failed_at = r.failure.as_ref().and_then(|f: &StepFailure| {
        r.hops
            .iter()
            .position(|(v, _)| f.message.starts_with(&format!("{v}: ")))
    });
    r.hops
        .iter()
        .enumerate()
        .map(|(i, (v, _))| {
            let done = r
                .rehearsed
                .as_ref()
                .and_then(|d| d.hops.iter().find(|h| h.version == *v));
            match (done, &r.failure) {
                (Some(h), _) => serde_json::json!({
                    "to": v, "ok": true, "schema_before": h.schema_before, "schema_after": h.schema_after,
                    "migration_ms": h.migration_ms, "ready_ms": h.ready_ms, "stop_ms": h.stop_ms,
                    "export_ok": h.export_ok, "reported_version": h.reported_version, "error": null,
                }),
                (None, Some(f)) if Some(i) == failed_at || failed_at.is_none() && i == 0 => {
                    serde_json::json!({ "to": v, "ok": false, "error": f.message, "log": f.detail })
                }
                (None, Some(_)) if failed_at.is_some_and(|at| i < at) => {
                    serde_json::json!({ "to": v, "ok": true, "error": null })
                }
                _ => serde_json::json!({ "to": v, "ok": false, "error": "not rehearsed" }),
            }
        })
        .collect()
}

/// Prints the rehearsal's outcome: a table, or one JSON document.
pub fn print(output: Output, rid: &str, r: &RehearsalReport) {
    let hops = rows(r);
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "rollout": rid,
                "restore_ms": r.rehearsed.as_ref().map(|d| d.restore_ms),
                "hops": hops,
                "production_unchanged": r.production_unchanged,
            })
        ),
        Output::Text => {
            println!(
                "\nRehearsal {rid} (a scratch copy of the CP database; production is not touched):"
            );
            let ms = |v: &serde_json::Value, k: &str| {
                v[k].as_u64()
                    .map_or_else(|| "-".into(), |m| format!("{:.1}s", m as f64 / 1000.0))
            };
            print_table(
                &[
                    "TO", "OK", "SCHEMA", "MIGRATE", "READY", "STOP", "EXPORT", "NOTE",
                ],
                &hops
                    .iter()
                    .map(|h| {
                        vec![
                            h["to"].as_str().unwrap_or_default().to_string(),
                            yes_no(h["ok"].as_bool()),
                            match (h["schema_before"].as_i64(), h["schema_after"].as_i64()) {
                                (Some(a), Some(b)) => format!("{a} → {b}"),
                                _ => "-".into(),
                            },
                            ms(h, "migration_ms"),
                            ms(h, "ready_ms"),
                            ms(h, "stop_ms"),
                            h["export_ok"]
                                .as_bool()
                                .map_or_else(|| "-".into(), |b| yes_no(Some(b))),
                            h["error"].as_str().unwrap_or_default().to_string(),
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
            if let Some(log) = hops
                .iter()
                .find_map(|h| h["log"].as_str())
                .filter(|l| !l.is_empty())
            {
                println!("{log}");
            }
            println!("production unchanged: {}", yes_no(r.production_unchanged));
        }
    }
}

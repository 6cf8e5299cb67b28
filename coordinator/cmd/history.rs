//! `rollgate history` and `rollgate show ROLLOUT`: what ran, how it ended,
//! and each host's timeline, from the rollout journals.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::Failure;
use crate::inventory::Inventory;
use crate::output::{Output, print_json, print_table};
use crate::rollout::journals::Journals;
use crate::rollout::lock::fmt_ms;
use crate::rollout::log::{Record, RolloutLog};

#[derive(Debug, Serialize)]
struct Row {
    id: String,
    kind: serde_json::Value,
    created: String,
    target: String,
    outcome: String,
    reason: String,
}

fn row(l: &RolloutLog) -> Row {
    let (outcome, reason) = match &l.outcome {
        Some((o, r)) => (
            serde_json::to_value(o)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            r.clone(),
        ),
        None => (
            "unfinished".into(),
            "no end recorded: running, or cut off (rollgate resume)".into(),
        ),
    };
    Row {
        id: l.spec.id.clone(),
        kind: serde_json::to_value(&l.spec.kind).unwrap_or_default(),
        created: fmt_ms(l.spec.created_ms),
        target: l.spec.target.to_string(),
        outcome,
        reason,
    }
}

/// A journal that cannot be read still gets its row, so a corrupt file is
/// seen, never silently left out.
fn unreadable_row(id: String, error: String) -> Row {
    Row {
        id,
        kind: serde_json::Value::Null,
        created: String::new(),
        target: String::new(),
        outcome: "unreadable".into(),
        reason: error,
    }
}

/// Every rollout in the state dir. Unreadable journals are listed with the
/// reason, and make the command exit 1 (in both output forms) so a script
/// cannot mistake a damaged history for a complete one.
pub async fn history(inv: &Inventory, output: Output) -> Result<(), Failure> {
    let rows: Vec<Row> = Journals::of(inv)
        .list()
        .await
        .map_err(Failure::Failed)?
        .into_iter()
        .map(|l| match l.log {
            Ok(log) => row(&log),
            Err(e) => {
                tracing::warn!(rollout = %l.id, error = %e, "unreadable rollout journal");
                unreadable_row(l.id, e)
            }
        })
        .collect();
    let unreadable: Vec<&Row> = rows.iter().filter(|r| r.outcome == "unreadable").collect();
    match output {
        Output::Json => print_json(&serde_json::json!({
            "rollouts": rows,
            "unreadable": unreadable.len(),
        })),
        Output::Text => {
            print_table(
                &["ROLLOUT", "KIND", "CREATED", "TARGET", "OUTCOME"],
                &rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.clone(),
                            r.kind["kind"].as_str().unwrap_or("-").to_string(),
                            r.created.clone(),
                            r.target.clone(),
                            r.outcome.clone(),
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
            for r in &unreadable {
                println!("unreadable: {}: {}", r.id, r.reason);
            }
        }
    }
    if unreadable.is_empty() {
        Ok(())
    } else {
        Err(Failure::Failed(format!(
            "{} rollout journal(s) cannot be read: {}",
            unreadable.len(),
            unreadable
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

#[derive(Debug, Serialize)]
struct StepLine {
    step: String,
    op: String,
    started: String,
    ended: Option<String>,
    ok: Option<bool>,
    elapsed_ms: Option<i64>,
}

pub async fn show(inv: &Inventory, id: &str, output: Output) -> Result<(), Failure> {
    let l = Journals::of(inv).read_by_id(id).await?;
    let mut hosts: BTreeMap<String, Vec<StepLine>> = BTreeMap::new();
    let mut begun: BTreeMap<String, i64> = BTreeMap::new();
    for r in &l.records {
        match r {
            Record::Begin {
                op,
                host,
                step,
                at_ms,
            } => {
                begun.insert(op.clone(), *at_ms);
                hosts.entry(host.clone()).or_default().push(StepLine {
                    step: step.clone(),
                    op: op.clone(),
                    started: fmt_ms(*at_ms),
                    ended: None,
                    ok: None,
                    elapsed_ms: None,
                });
            }
            Record::End {
                op,
                host,
                result,
                at_ms,
                ..
            } => {
                if let Some(line) = hosts
                    .entry(host.clone())
                    .or_default()
                    .iter_mut()
                    .rev()
                    .find(|s| s.op == *op)
                {
                    line.ended = Some(fmt_ms(*at_ms));
                    line.ok = Some(result.is_ok());
                    line.elapsed_ms = begun.get(op).map(|b| at_ms - b);
                }
            }
            _ => {}
        }
    }
    let summary = row(&l);
    let states = crate::rollout::state::fold(&l.records);
    match output {
        Output::Json => print_json(&serde_json::json!({
            "rollout": summary,
            "backup_copy": l.backup_copy,
            "host_states": states,
            "hosts": hosts,
        })),
        Output::Text => {
            println!(
                "Rollout {} ({}) → {}: {} — {}",
                summary.id,
                summary.kind["kind"].as_str().unwrap_or(""),
                summary.target,
                summary.outcome,
                summary.reason
            );
            let hops: Vec<String> = l.spec.hops.iter().map(ToString::to_string).collect();
            if hops.is_empty() {
                println!("created {}", summary.created);
            } else {
                println!("created {}; hops {}", summary.created, hops.join(" → "));
            }
            for (h, steps) in &hosts {
                match states.get(h) {
                    Some(st) => println!("\n{h}: {}", describe(st)),
                    None => println!("\n{h}:"),
                }
                for s in steps {
                    let status = match s.ok {
                        Some(true) => "ok",
                        Some(false) => "FAILED",
                        None => "no end recorded",
                    };
                    let took = s
                        .elapsed_ms
                        .map(|ms| format!(" ({:.1}s)", ms as f64 / 1000.0))
                        .unwrap_or_default();
                    // The op id's last part names the step and its version.
                    let what = s.op.rsplit('/').next().unwrap_or(&s.step);
                    println!("  {}  {what:<26} {status}{took}", s.started);
                }
            }
        }
    }
    Ok(())
}

/// One line for a host's state in `show`.
fn describe(s: &crate::rollout::state::HostState) -> String {
    use crate::rollout::state::HostState;
    match s {
        HostState::Pending => "pending".into(),
        HostState::InStep { step, .. } => format!("in {step} (no end recorded)"),
        HostState::Done { step } => format!("done (last step {step})"),
        HostState::Failed { step, reason } => format!("FAILED at {step}: {reason}"),
        HostState::Quarantined { step, reason } => {
            format!("quarantined after {step}: {reason}")
        }
        HostState::LeftDrained { step, reason } => {
            format!("LEFT OUT OF ROTATION after {step}: {reason}")
        }
    }
}

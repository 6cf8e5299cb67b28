//! The subcommands that drive rollouts, and what they share.

pub mod certs;
#[cfg(feature = "demo")]
pub mod demo;
pub mod docs;
pub mod history;
pub mod inventory;
pub mod plan;
pub mod rehearse;
pub mod rollback;
pub mod status;
pub mod upgrade;

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;

use futures::StreamExt;
use rollgate::version::Version;
use serde::Serialize;
use tokio::sync::watch;

use crate::Failure;
use crate::client::{Agent, CallPolicy};
use crate::fleet::Health;
use crate::inventory::Inventory;
use crate::output::{Output, print_table, yes_no};
use crate::report::{Event, Reporter};
use crate::rollout::log::{LastStep, Outcome};
use rollgate::lb::LbState;

/// First Ctrl-C (or SIGTERM): finish the steps in flight, start nothing new,
/// stop with "interrupted". Second: leave at once (the journal lets
/// `resume` re-attach to whatever was in flight).
pub fn interrupt_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        rollgate::shutdown::signalled().await;
        eprintln!(
            "rollgate: interrupted: finishing the steps in flight (Ctrl-C again to leave at once)"
        );
        let _ = tx.send(true);
        rollgate::shutdown::signalled().await;
        eprintln!("rollgate: leaving now; `rollgate resume` continues the rollout");
        std::process::exit(i32::from(rollgate::exit::FAILED));
    });
    rx
}

/// Asks for a typed "yes" on a terminal; refuses (blocked) elsewhere.
pub fn confirm(question: &str, yes: bool) -> Result<(), Failure> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::Blocked(format!(
            "{question} Re-run with --yes to accept (there is no terminal to ask on)."
        )));
    }
    eprint!("{question} Type yes to continue: ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| Failure::Blocked(format!("cannot read the answer: {e}")))?;
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(Failure::Blocked(
            "not confirmed; nothing was changed".into(),
        ))
    }
}

/// How long the closing survey waits for one agent.
const SURVEY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// One host as the end-of-rollout report shows it.
#[derive(Debug, Serialize)]
pub struct HostState {
    pub name: String,
    pub installed: Option<String>,
    pub running: Option<String>,
    pub healthy: Option<bool>,
    pub drain: Option<rollgate::lb::LbState>,
    pub reachable: bool,
    /// The host's last step in the rollout (end-of-rollout reports only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_step: Option<LastStep>,
}

impl HostState {
    /// A host whose agent said where it stands (empty versions: unknown).
    fn answered(name: &str, installed: &str, running: &str, healthy: bool, drain: LbState) -> Self {
        let known = |v: &str| Some(v.to_string()).filter(|v| !v.is_empty());
        HostState {
            name: name.to_string(),
            installed: known(installed),
            running: known(running),
            healthy: Some(healthy),
            drain: Some(drain),
            reachable: true,
            last_step: None,
        }
    }
}

/// Asks every agent where its host stands now.
pub async fn fleet_state(inv: &Inventory) -> Vec<HostState> {
    fleet_state_over(inv, &HashMap::new(), &HashMap::new()).await
}

/// As `fleet_state`, over channels already open where there are some, and
/// without asking the hosts whose health watch has just shown where they
/// stand (`settled`: `Driver::settled_reports`).
pub async fn fleet_state_over(
    inv: &Inventory,
    open: &HashMap<String, Agent>,
    settled: &HashMap<String, Health>,
) -> Vec<HostState> {
    let policy = CallPolicy::from_inventory(inv);
    futures::stream::iter(&inv.hosts)
        .map(|h| {
            let policy = policy.clone();
            async move {
                if let Some(health) = settled.get(&h.name) {
                    return HostState::answered(
                        &h.name,
                        &health.installed_version,
                        &health.running_version,
                        health.healthy,
                        health.lb,
                    );
                }
                let ask = async {
                    // An open channel's agent said who it is when it was
                    // opened; a new one is asked (Hello checks its name and
                    // role). The health report says what is installed.
                    match open.get(&h.name) {
                        Some(a) => a.health_once().await,
                        None => {
                            let a = Agent::connect(h, inv, &policy).await?;
                            Ok(a.hello_with_health().await?.1)
                        }
                    }
                };
                // A survey, not a retry loop: an agent that does not answer
                // at once is reported as unreachable.
                let r = tokio::time::timeout(SURVEY_TIMEOUT, ask).await;
                match r {
                    Ok(Ok(health)) => HostState::answered(
                        &h.name,
                        &health.installed_version,
                        &health.running_version,
                        health.healthy,
                        rollgate::convert::lb_from_wire(health.drain_state),
                    ),
                    Ok(Err(_)) | Err(_) => HostState {
                        name: h.name.clone(),
                        installed: None,
                        running: None,
                        healthy: None,
                        drain: None,
                        reachable: false,
                        last_step: None,
                    },
                }
            }
        })
        .buffered(inv.coordinator.concurrency)
        .collect()
        .await
}

/// Installed versions of every host (all must answer).
pub async fn installed_versions(inv: &Inventory) -> Result<BTreeMap<String, Version>, Failure> {
    let mut out = BTreeMap::new();
    for s in fleet_state(inv).await {
        if !s.reachable {
            return Err(Failure::Failed(format!(
                "{} is not reachable; every host must answer",
                s.name
            )));
        }
        let Some(v) = s.installed.and_then(|v| v.parse().ok()) else {
            return Err(Failure::Blocked(format!(
                "{} has no release installed",
                s.name
            )));
        };
        out.insert(s.name, v);
    }
    Ok(out)
}

/// Where every host stands once a rollout has ended: what the health
/// watches last showed, where that stands for a look now, and otherwise a
/// survey over the channels still open (`fleet_state_over`), with each
/// host's last step from the rollout's journal (unreachable hosts included).
pub async fn ended_state(
    inv: &Inventory,
    open: &HashMap<String, Agent>,
    settled: &HashMap<String, Health>,
    mut last: BTreeMap<String, LastStep>,
) -> Vec<HostState> {
    let mut hosts = fleet_state_over(inv, open, settled).await;
    for h in &mut hosts {
        h.last_step = last.remove(&h.name);
    }
    hosts
}

/// Prints how a rollout ended and where every host stands; maps the outcome
/// to the exit code.
pub fn finish(
    output: Output,
    reporter: &Reporter,
    rid: &str,
    outcome: Outcome,
    reason: String,
    hosts: Vec<HostState>,
) -> Result<(), Failure> {
    let status = serde_json::to_value(outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut ev =
        Event::new("rollout", rid, status.clone()).detail(serde_json::json!({ "hosts": hosts }));
    if outcome != Outcome::Succeeded {
        ev = ev.error(reason.clone());
    }
    if output == Output::Json {
        reporter.emit(ev);
    } else {
        println!("\nRollout {rid}: {status} — {reason}");
        print_table(
            &[
                "HOST",
                "INSTALLED",
                "RUNNING",
                "HEALTHY",
                "LOAD BALANCER",
                "LAST STEP",
            ],
            &hosts
                .iter()
                .map(|h| {
                    vec![
                        h.name.clone(),
                        h.installed.clone().unwrap_or_else(|| "-".into()),
                        h.running.clone().unwrap_or_else(|| "-".into()),
                        yes_no(h.healthy),
                        h.drain
                            .map_or_else(|| "unreachable".into(), |d| d.to_string()),
                        h.last_step
                            .as_ref()
                            .map_or_else(|| "-".into(), |s| format!("{}: {}", s.step, s.status)),
                    ]
                })
                .collect::<Vec<_>>(),
        );
    }
    match outcome {
        Outcome::Succeeded => Ok(()),
        Outcome::Interrupted => Err(Failure::Failed(format!(
            "rollout {rid} interrupted: `rollgate resume` continues it"
        ))),
        Outcome::Disconnected => Err(Failure::Failed(format!(
            "rollout {rid} halted: {reason}. What that agent was doing is undecided, not failed: once it answers again, `rollgate resume {rid}` follows its steps by operation id and continues (or `rollgate upgrade` starts afresh from where the hosts are)"
        ))),
        _ => Err(Failure::Failed(format!(
            "rollout {rid} {status}: {reason}. Fix the cause (the agent's logs on the host say more), then run `rollgate upgrade` again — hosts already on the target are skipped — or undo it with `rollgate rollback {rid}`"
        ))),
    }
}

//! `rollgate plan`: the path, the breaking changes on it, and a preflight of
//! every host. Read-only. Exit 0 when the plan can run, 2 when blocked.

use std::collections::BTreeMap;
use std::io::Read;

use futures::StreamExt;
use rollgate::catalog::{Artifact, Catalog, Release};
use rollgate::lb::LbState;
use rollgate::method::Method;
use rollgate::role::Role;
use rollgate::version::Version;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::Failure;
use crate::cli::PlanArgs;
use crate::client::{Agent, CallPolicy, Hello};
use crate::inventory::{Host, Inventory, Rehearse};
use crate::output::{Output, print_json};
use crate::planner;

#[derive(Debug, Clone, Serialize)]
pub struct HostCheck {
    pub name: String,
    pub role: Role,
    pub version: Option<String>,
    pub healthy: bool,
    pub reachable: bool,
    /// Where the host stands towards its load balancer now.
    pub load_balancer: Option<LbState>,
    /// The release the host can go back to (its current one, kept on disk).
    pub rollback_to: Option<String>,
    /// How the host installs releases (tarball, compose, deb).
    pub method: Method,
    /// Its own release must be staged first: it does not keep it as an
    /// artifact it can switch back to.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stage_from: bool,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

/// A CP hop's predicted window: the rehearsal's stop, migration and ready
/// times; `rehearsed: null` when no rehearsal of it has run.
#[derive(Debug, Clone, Serialize)]
pub struct CpWindow {
    pub to: String,
    pub rehearsed: Option<crate::rollout::rehearse::Window>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub version: String,
    pub change: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub from: Option<String>,
    pub to: String,
    pub hops: Vec<String>,
    pub breaking_changes: Vec<Change>,
    pub hosts: Vec<HostCheck>,
    /// The CP window each CP hop is predicted to take, from the last
    /// rehearsal of that release (`rollgate rehearse` or an upgrade's).
    pub cp_windows: Vec<CpWindow>,
    /// Why the plan cannot run; empty when it can.
    pub blocked: Vec<String>,
    pub runnable: bool,
    #[serde(skip)]
    pub from_versions: BTreeMap<String, Version>,
    #[serde(skip)]
    pub hop_versions: Vec<Version>,
    /// The channels opened to ask the agents, for the rollout to reuse
    /// (a TLS handshake per host saved).
    #[serde(skip)]
    pub agents: Vec<Agent>,
}

impl PlanReport {
    /// Every release whose artifacts the rollout sends: the hops, and the
    /// own release of hosts that must stage it first.
    pub fn artifact_versions(&self) -> Vec<Version> {
        let mut v = self.hop_versions.clone();
        for h in self.hosts.iter().filter(|h| h.stage_from) {
            if let Some(from) = self.from_versions.get(&h.name)
                && !v.contains(from)
            {
                v.push(from.clone());
            }
        }
        v
    }
}

struct Seen {
    host: Host,
    hello: Result<(Hello, bool, LbState), String>,
    agent: Option<Agent>,
}

async fn look(host: &Host, inv: &Inventory, policy: &CallPolicy) -> Seen {
    let r = async {
        let a = Agent::connect_retrying(host, inv, policy).await?;
        let (hello, health) = a.hello_with_health().await?;
        let lb = rollgate::convert::lb_from_wire(health.drain_state);
        Ok::<_, crate::client::CallError>((hello, health.healthy, lb, a))
    }
    .await
    .map_err(|e| e.to_string());
    let (hello, agent) = match r {
        Ok((h, healthy, lb, a)) => (Ok((h, healthy, lb)), Some(a)),
        Err(e) => (Err(e), None),
    };
    Seen {
        host: host.clone(),
        hello,
        agent,
    }
}

/// `rollgate plan`: exit 0 when the plan can run, 2 when blocked, 64 when
/// the catalog or its artifacts are bad.
pub async fn run(a: PlanArgs) -> Result<(), Failure> {
    let inv = a.inv.load()?;
    let catalog = rollgate::catalog::Catalog::load(&a.catalog)
        .map_err(|e| Failure::Usage(format!("bad catalog: {e}")))?;
    super::upgrade::in_catalog(&catalog, &a.to)?;
    super::upgrade::verify_artifacts(&catalog, std::slice::from_ref(&a.to))?;
    let r = plan(&inv, &catalog, &a.to, inv.policy.rehearse).await;
    super::upgrade::verify_artifacts(&catalog, &r.artifact_versions())?;
    match a.inv.output {
        Output::Json => print_json(&r),
        Output::Text => print_text(&r),
    }
    if r.runnable {
        Ok(())
    } else {
        Err(Failure::Blocked(format!(
            "the plan is blocked: {}",
            r.blocked.join("; ")
        )))
    }
}

/// Plans an upgrade of the fleet to `to`, rehearsing CP hops as `rehearse`
/// says.
pub async fn plan(
    inv: &Inventory,
    catalog: &Catalog,
    to: &Version,
    rehearse: Rehearse,
) -> PlanReport {
    let policy = CallPolicy::from_inventory(inv);
    let seen: Vec<Seen> = futures::stream::iter(&inv.hosts)
        .map(|h| look(h, inv, &policy))
        .buffered(inv.coordinator.concurrency)
        .collect()
        .await;
    let mut blocked = Vec::new();
    let mut checks = Vec::new();
    let mut from_versions = BTreeMap::new();
    for s in &seen {
        let mut c = HostCheck {
            name: s.host.name.clone(),
            role: s.host.role,
            version: None,
            healthy: false,
            reachable: s.hello.is_ok(),
            load_balancer: None,
            rollback_to: None,
            method: Default::default(),
            stage_from: false,
            problems: Vec::new(),
            warnings: Vec::new(),
        };
        match &s.hello {
            Err(e) => c.problems.push(format!("agent not reachable: {e}")),
            Ok((hello, healthy, lb)) => {
                c.method = hello.method;
                c.healthy = *healthy;
                c.load_balancer = Some(*lb);
                if !healthy {
                    c.problems.push("the gateway is not healthy".into());
                } else if lb.out_of_rotation() {
                    c.warnings.push(format!(
                        "out of its load balancer ({lb}): the rollout puts it back in rotation first"
                    ));
                }
                match &hello.installed {
                    Some(v) => {
                        c.version = Some(v.to_string());
                        from_versions.insert(s.host.name.clone(), v.clone());
                        match rollback_source(hello, v, catalog) {
                            Ok(stage) => {
                                c.rollback_to = Some(v.to_string());
                                c.stage_from = stage;
                            }
                            Err(p) => c.problems.push(p),
                        }
                    }
                    None => c.problems.push("no release is installed".into()),
                }
                if s.host.role == Role::Cp && !hello.database_backup {
                    c.problems.push("the agent has no [backup] configured: the upgrade needs a verified CP backup".into());
                }
            }
        }
        checks.push(c);
    }

    let from = from_versions.values().min().cloned();
    let hops = match &from {
        Some(f) => match planner::path(f, to, &catalog.releases) {
            Ok(h) => h,
            Err(e) => {
                blocked.push(e.to_string());
                Vec::new()
            }
        },
        None => {
            if catalog.get(to).is_none() {
                blocked.push(planner::Refusal::NotInCatalog(to.clone()).to_string());
            }
            Vec::new()
        }
    };
    // A host newer than the target would be downgraded: refuse.
    for (name, v) in &from_versions {
        if v > to {
            blocked.push(format!(
                "{name} runs {v}, newer than the target {to}: that is a rollback, not an upgrade"
            ));
        }
    }
    let breaking = from
        .as_ref()
        .map(|f| {
            planner::breaking_changes(f, to, &catalog.releases)
                .into_iter()
                .map(|(v, c)| Change {
                    version: v.to_string(),
                    change: c.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();

    let migrates = hops
        .iter()
        .any(|h| catalog.get(h).is_some_and(|r| r.migrates));
    let rehearsing = match rehearse {
        Rehearse::Always => !hops.is_empty(),
        Rehearse::WhenMigrating => migrates,
        Rehearse::Never | Rehearse::SkippedByFlag => false,
    };
    for (c, s) in checks.iter_mut().zip(&seen) {
        if let Ok((hello, ..)) = &s.hello
            && s.host.role == Role::Cp
            && rehearsing
            && !hello.rehearsal
        {
            c.problems.push(format!(
                "the agent has no [rehearsal] configured, and this upgrade's CP hops are rehearsed (policy rehearse = {}{}): configure [rehearsal] on the CP, or upgrade with --no-rehearse",
                rehearse.as_str(),
                if migrates { ", a hop migrates the database" } else { "" }
            ));
        }
    }
    if !hops.is_empty() {
        let dps: Vec<Version> = seen
            .iter()
            .filter(|s| s.host.role == Role::Dp)
            .filter_map(|s| from_versions.get(&s.host.name).cloned())
            .collect();
        for (hop, dp, why) in planner::dp_compat_per_hop(&dps, &hops, &catalog.releases) {
            blocked.push(format!(
                "at hop {hop}: a DP on {dp} would be incompatible with the CP: {why}"
            ));
        }
        for (c, s) in checks.iter_mut().zip(&seen) {
            let Ok((hello, ..)) = &s.hello else { continue };
            let Some(v) = &hello.installed else { continue };
            let method = hello.method;
            let mut need = 0u64;
            for h in hops.iter().filter(|h| *h > v) {
                match catalog.get(h).and_then(|r| r.package(method)) {
                    Some(p) => need += p.size,
                    None => c.problems.push(format!(
                        "the catalog has no {method} artifact for {h}, and this host installs with {method}"
                    )),
                }
            }
            if hello.disk_free_bytes < need * 2 {
                c.problems.push(format!(
                    "{} bytes free at the install root; the artifacts need twice their {need} bytes",
                    hello.disk_free_bytes
                ));
            }
            if let Some(target) = hops.last().and_then(|h| catalog.get(h)) {
                c.warnings.extend(plugin_differences(hello, target));
            }
        }
    }
    for c in &checks {
        for p in &c.problems {
            blocked.push(format!("{}: {p}", c.name));
        }
    }
    let windows = crate::rollout::rehearse::windows(&inv.coordinator.state_dir);
    let cp_windows = hops
        .iter()
        .filter(|h| {
            seen.iter().any(|s| {
                s.host.role == Role::Cp && from_versions.get(&s.host.name).is_some_and(|v| v < *h)
            })
        })
        .map(|h| CpWindow {
            to: h.to_string(),
            rehearsed: windows.get(&h.to_string()).cloned(),
        })
        .collect();
    PlanReport {
        cp_windows,
        from: from.as_ref().map(ToString::to_string),
        to: to.to_string(),
        hops: hops.iter().map(ToString::to_string).collect(),
        breaking_changes: breaking,
        runnable: blocked.is_empty(),
        blocked,
        hosts: checks,
        from_versions,
        hop_versions: hops,
        agents: seen.into_iter().filter_map(|s| s.agent).collect(),
    }
}

/// Whether a host on `v` can go back to it without a transfer: Ok(false)
/// when it keeps it (tarball hosts keep their release directory), Ok(true)
/// when it must be staged first from the catalog, Err when neither.
fn rollback_source(hello: &Hello, v: &Version, catalog: &Catalog) -> Result<bool, String> {
    if hello.method == Method::Tarball || hello.kept.contains(v) {
        return Ok(false);
    }
    match catalog.get(v).and_then(|r| r.package(hello.method)) {
        Some(_) => Ok(true),
        None => Err(format!(
            "no rollback artifact: {v} is neither kept on the host nor in the catalog as a {} artifact; add it to the catalog",
            hello.method
        )),
    }
}

/// Custom plugin files on the host that the target release does not have,
/// or has with other content: they need testing (runbook step 3).
fn plugin_differences(hello: &Hello, target: &Release) -> Vec<String> {
    if hello.custom_plugin_files.is_empty() {
        return Vec::new();
    }
    let Artifact::File(path) = &target.artifact else {
        return vec![format!(
            "custom plugins not compared: {} is a URL artifact",
            target.version
        )];
    };
    let entries = match artifact_hashes(path) {
        Ok(e) => e,
        Err(e) => return vec![format!("custom plugins not compared: {e}")],
    };
    hello
        .custom_plugin_files
        .iter()
        .filter_map(|(p, sha)| match entries.get(p) {
            Some(s) if s == sha => None,
            Some(_) => Some(format!(
                "custom plugin {p} differs from {}: test it",
                target.version
            )),
            None => Some(format!(
                "custom plugin {p} is not in {}: test it",
                target.version
            )),
        })
        .collect()
}

/// path → sha256 of every file in a release artifact.
fn artifact_hashes(path: &std::path::Path) -> Result<BTreeMap<String, String>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut out = BTreeMap::new();
    for e in tar.entries().map_err(|e| e.to_string())? {
        let mut e = e.map_err(|e| e.to_string())?;
        if !e.header().entry_type().is_file() {
            continue;
        }
        let p = e
            .path()
            .map_err(|e| e.to_string())?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data).map_err(|e| e.to_string())?;
        out.insert(p, hex::encode(Sha256::digest(&data)));
    }
    Ok(out)
}

pub fn print_text(r: &PlanReport) {
    println!(
        "Upgrade plan: {} → {}",
        r.from.as_deref().unwrap_or("?"),
        r.to
    );
    if r.hops.is_empty() && r.blocked.is_empty() {
        println!("  nothing to do: the fleet is on {}", r.to);
    } else if !r.hops.is_empty() {
        println!("  path: {}", r.hops.join(" → "));
    }
    if !r.breaking_changes.is_empty() {
        println!("\nBreaking changes you must read before upgrading:");
        for c in &r.breaking_changes {
            println!("  {}: {}", c.version, c.change);
        }
    }
    println!("\nPreflight:");
    crate::output::print_table(
        &[
            "HOST",
            "ROLE",
            "VERSION",
            "HEALTHY",
            "LOAD BALANCER",
            "ROLLBACK TO",
            "CHECK",
        ],
        &r.hosts
            .iter()
            .map(|h| {
                vec![
                    h.name.clone(),
                    h.role.to_string(),
                    h.version.clone().unwrap_or_else(|| "-".into()),
                    crate::output::yes_no(Some(h.healthy)),
                    h.load_balancer
                        .map_or_else(|| "-".into(), |l| l.to_string()),
                    h.rollback_to.clone().unwrap_or_else(|| "-".into()),
                    if h.problems.is_empty() {
                        "ok".into()
                    } else {
                        h.problems.join("; ")
                    },
                ]
            })
            .collect::<Vec<_>>(),
    );
    for h in &r.hosts {
        for w in &h.warnings {
            println!("  warning: {}: {w}", h.name);
        }
    }
    if !r.cp_windows.is_empty() {
        println!("\nPredicted CP window per hop (measured by the last rehearsal):");
        let s = |ms: u64| format!("{:.1}s", ms as f64 / 1000.0);
        for w in &r.cp_windows {
            match &w.rehearsed {
                Some(m) => println!(
                    "  {}: stop {} + migrate {} + ready {} (schema {} → {}; rehearsal {})",
                    w.to,
                    s(m.stop_ms),
                    s(m.migration_ms),
                    s(m.ready_ms),
                    m.schema_before,
                    m.schema_after,
                    m.rollout
                ),
                None => println!(
                    "  {}: not rehearsed yet (`rollgate rehearse` measures it)",
                    w.to
                ),
            }
        }
    }
    if r.blocked.is_empty() {
        println!("\nThe plan can run.");
    } else {
        println!("\nBlocked:");
        for b in &r.blocked {
            println!("  - {b}");
        }
    }
}

//! `rollgate upgrade`, `rollgate resume` and `rollgate backup`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rollgate::catalog::Catalog;
use rollgate::role::Role;
use rollgate::version::Version;

use super::plan::{self, PlanReport};
use super::{confirm, ended_state, finish, interrupt_signal};
use crate::Failure;
use crate::batch::{BatchSize, InService};
use crate::fleet::GrpcFleet;
use crate::inventory::{Inventory, Policy};
use crate::output::Output;
use crate::report::{Event, Reporter};
use crate::rollout::driver::Driver;
use crate::rollout::journals::Journals;
use crate::rollout::lock;
use crate::rollout::log::{Outcome, RolloutLog, now_ms};
use crate::rollout::spec::{HostPlan, Kind, PolicySnap, RolloutSpec, new_id};
use crate::rollout::steps::Ctx;

/// Flags that override the inventory's `[policy]`.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub batch: Option<BatchSize>,
    pub canary: Option<usize>,
    pub min_healthy: Option<Duration>,
    pub max_failures: Option<usize>,
    pub min_in_service: Option<InService>,
    /// `--no-rehearse`.
    pub no_rehearse: bool,
}

impl Overrides {
    pub fn apply(&self, p: &Policy) -> Policy {
        let mut p = p.clone();
        if let Some(b) = self.batch {
            p.batch = b;
        }
        if let Some(c) = self.canary {
            p.canary = c;
        }
        if let Some(m) = self.min_healthy {
            p.min_healthy = m;
        }
        if let Some(m) = self.max_failures {
            p.max_failures = m;
        }
        if let Some(m) = self.min_in_service {
            p.min_in_service = m;
        }
        if self.no_rehearse {
            p.rehearse = crate::inventory::Rehearse::SkippedByFlag;
        }
        p
    }
}

pub struct UpgradeArgs {
    pub to: Version,
    pub overrides: Overrides,
    pub yes: bool,
    pub dry_run: bool,
    pub output: Output,
}

/// The step deadline: long enough for the slowest step (a backup, a start
/// with its health gate), short enough that a stuck agent is noticed.
pub(super) fn step_deadline(p: &Policy) -> Duration {
    (p.health_timeout + p.min_healthy + p.drain_timeout) * 2 + Duration::from_secs(600)
}

/// Refuses a target the catalog does not list, naming what it does list,
/// before any agent is asked anything.
pub fn in_catalog(catalog: &Catalog, to: &Version) -> Result<(), Failure> {
    if catalog.get(to).is_some() {
        return Ok(());
    }
    let known: Vec<String> = catalog
        .releases
        .iter()
        .map(|r| r.version.to_string())
        .collect();
    Err(Failure::Blocked(format!(
        "{to} is not in the catalog {}; it lists {}",
        catalog.path.display(),
        known.join(", ")
    )))
}

/// Checks the artifacts of `versions` (exist, inside the catalog's allowed
/// directories, regular files, size and SHA-256 as listed) before anything
/// is journalled or any agent is asked to act: exit 64 naming the release.
pub fn verify_artifacts(catalog: &Catalog, versions: &[Version]) -> Result<(), Failure> {
    for v in versions {
        let Some(r) = catalog.get(v) else {
            continue; // the plan has refused it already
        };
        catalog.verify(r).map_err(|e| {
            tracing::error!(version = %v, error = %e, "artifact check failed");
            Failure::Usage(format!("bad catalog {}: {e}", catalog.path.display()))
        })?;
    }
    Ok(())
}

pub fn load_catalog(path: &Path) -> Result<Catalog, Failure> {
    Catalog::load(path).map_err(|e| Failure::Usage(format!("bad catalog: {e}")))
}

/// The rollout that was cut off (no end, or interrupted), if any: nothing
/// else may start until it is resumed.
pub async fn unfinished(journals: &Journals) -> Result<Option<RolloutLog>, Failure> {
    Ok(latest(journals)
        .await?
        .filter(|l| matches!(&l.outcome, None | Some((Outcome::Interrupted, _)))))
}

/// The latest rollout, when `resume` can continue it: cut off, or stopped
/// by a lost agent. A rollout stopped by a lost agent does not block a new
/// upgrade (hosts on the target are skipped, hosts it left drained are put
/// back first), but once a later rollout ran it is no longer resumable.
async fn resumable(journals: &Journals) -> Result<Option<RolloutLog>, Failure> {
    Ok(latest(journals).await?.filter(|l| {
        matches!(
            &l.outcome,
            None | Some((Outcome::Interrupted | Outcome::Disconnected, _))
        )
    }))
}

/// The newest rollout, when it can be read. Not being able to list them is
/// an error: a rollout cut off might be among them.
async fn latest(journals: &Journals) -> Result<Option<RolloutLog>, Failure> {
    journals
        .latest()
        .await
        .map_err(|e| Failure::Failed(format!("{e}; nothing was changed")))
}

pub async fn upgrade(inv: Inventory, catalog_path: &Path, a: UpgradeArgs) -> Result<(), Failure> {
    let catalog = load_catalog(catalog_path)?;
    in_catalog(&catalog, &a.to)?;
    verify_artifacts(&catalog, std::slice::from_ref(&a.to))?;
    let state_dir = inv.coordinator.state_dir.clone();
    let rid = new_id("r");
    let _lock = lock::acquire(&state_dir, &rid, "upgrade").map_err(Failure::Failed)?;
    let journals = Journals::of(&inv);
    if let Some(l) = unfinished(&journals).await? {
        return Err(Failure::Blocked(format!(
            "rollout {} was cut off; continue it with `rollgate resume` or undo it with `rollgate rollback {}`",
            l.spec.id, l.spec.id
        )));
    }
    let effective = a.overrides.apply(&inv.policy);
    let report = plan::plan(&inv, &catalog, &a.to, effective.rehearse).await;
    verify_artifacts(&catalog, &report.artifact_versions())?;
    match a.output {
        // One event per line, like every other event of the rollout.
        Output::Json => println!("{}", serde_json::json!({ "event": "plan", "plan": report })),
        Output::Text => plan::print_text(&report),
    }
    if !report.runnable {
        return Err(Failure::Blocked(format!(
            "the plan is blocked: {}",
            report.blocked.join("; ")
        )));
    }
    if report.hop_versions.is_empty() {
        return Ok(());
    }
    let policy = a.overrides.apply(&inv.policy);
    if policy.canary == 0 {
        return Err(Failure::Usage("--canary must be at least 1".into()));
    }
    let spec = RolloutSpec {
        id: rid.clone(),
        kind: Kind::Upgrade,
        inventory: absolute(&inv.path),
        catalog: Some(absolute(catalog_path)),
        created_ms: now_ms(),
        target: a.to.clone(),
        hops: report.hop_versions.clone(),
        hosts: host_plans(&inv, &policy, &report),
        policy: PolicySnap::from_policy(&policy),
        backup_id: inv.by_role(Role::Cp).next().map(|_| rid.clone()),
    };
    let outage = spec.in_service_violations();
    if !outage.is_empty() {
        return Err(Failure::Blocked(format!(
            "the plan would take too many DPs out of rotation at once: {}",
            outage.join("; ")
        )));
    }
    if a.dry_run {
        print_steps(&spec);
        return Ok(());
    }
    if !report.breaking_changes.is_empty() {
        confirm(
            &format!(
                "{} breaking change(s) between {} and {} (listed above).",
                report.breaking_changes.len(),
                report.from.as_deref().unwrap_or("?"),
                a.to
            ),
            a.yes,
        )?;
    }
    let log = journals
        .create(spec)
        .await
        .map_err(|e| Failure::Failed(format!("cannot create the rollout journal: {e}")))?;
    drive(inv, Some(catalog), log, a.output, false, report.agents).await
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

pub(super) fn host_plans(inv: &Inventory, policy: &Policy, report: &PlanReport) -> Vec<HostPlan> {
    // By name: a scan of the checks for every host was quadratic.
    let checks: std::collections::HashMap<&str, _> =
        report.hosts.iter().map(|c| (c.name.as_str(), c)).collect();
    inv.hosts
        .iter()
        .filter_map(|h| {
            let seen = checks.get(h.name.as_str());
            Some(HostPlan {
                name: h.name.clone(),
                role: h.role,
                from: report.from_versions.get(&h.name)?.clone(),
                group: h.labels.get(&policy.group_label).cloned(),
                drained: seen
                    .and_then(|c| c.load_balancer)
                    .is_some_and(|l| l.out_of_rotation()),
                method: seen.map(|c| c.method).unwrap_or_default(),
                stage_from: seen.is_some_and(|c| c.stage_from),
            })
        })
        .collect()
}

/// `--dry-run`: every step, in order, with its operation id.
fn print_steps(spec: &RolloutSpec) {
    use crate::rollout::steps::op_id;
    println!("\nDry run of rollout {} (nothing is changed):", spec.id);
    let mut n = 0;
    let mut step = |text: String| {
        n += 1;
        println!("  {n:>3}. {text}");
    };
    for h in spec
        .hosts
        .iter()
        .filter(|h| h.stage_from && spec.hops.iter().any(|hop| h.from < *hop))
    {
        step(format!(
            "stage {} ({} artifact, for a revert without a transfer) on {} [{}]",
            h.from,
            h.method,
            h.name,
            op_id(&spec.id, &h.name, "stage", Some(&h.from))
        ));
    }
    for hop in &spec.hops {
        for h in spec.hosts.iter().filter(|h| h.from < *hop) {
            step(format!(
                "stage {hop} on {} [{}]",
                h.name,
                op_id(&spec.id, &h.name, "stage", Some(hop))
            ));
        }
    }
    if let Some(cp) = spec.cps().first() {
        step(format!(
            "back up the database on {} and copy the backup here [{}]",
            cp.name,
            op_id(&spec.id, &cp.name, "backup", None)
        ));
        step(format!(
            "rehearse the CP hops on {} on a scratch copy of the database (policy rehearse = {}) [{}]",
            cp.name,
            spec.policy.rehearse,
            op_id(&spec.id, &cp.name, "rehearse", None)
        ));
    }
    for hop in &spec.hops {
        let cps = spec.needing(Role::Cp, hop);
        if let Some(cp) = cps.first() {
            step(format!(
                "write-freeze guard: the DB fingerprint on {} must equal the baseline",
                cp.name
            ));
        }
        for cp in cps {
            step(format!(
                "install {hop} on CP {} (health gate) [{}]",
                cp.name,
                op_id(&spec.id, &cp.name, "install", Some(hop))
            ));
        }
        for (b, hosts) in spec.batches(hop).iter().enumerate() {
            let label = if b == 0 {
                "canary batch".to_string()
            } else {
                format!("batch {b}")
            };
            step(format!(
                "{label}: drain → install {hop} → undrain on {}; then hold healthy for {}ms",
                hosts.join(", "),
                spec.policy.min_healthy_ms
            ));
        }
    }
}

/// Runs (or resumes) the rollout in `log` to its end. For a command that
/// exits next: the agents' connections are left open for the exit to close.
pub async fn drive(
    inv: Inventory,
    catalog: Option<Catalog>,
    log: RolloutLog,
    output: Output,
    resuming: bool,
    open: Vec<crate::client::Agent>,
) -> Result<(), Failure> {
    let inv = Arc::new(inv);
    let spec = log.spec.clone();
    let reporter = Arc::new(Reporter::new(output));
    let fleet = Arc::new(GrpcFleet::new(inv.clone(), step_deadline(&inv.policy)));
    fleet.adopt(open);
    let ctx = Arc::new(Ctx::new(fleet.clone(), log, reporter.clone()));
    reporter.set_total(total_steps(&spec));
    let status = if resuming { "resumed" } else { "started" };
    reporter.emit(Event::new("rollout", &spec.id, status).detail(
        serde_json::json!({ "target": spec.target, "hops": spec.hops, "kind": spec.kind }),
    ));
    let mut driver = Driver::new(
        ctx,
        catalog,
        inv.coordinator.state_dir.clone(),
        interrupt_signal(),
    )
    .with_parallel(inv.coordinator.concurrency);
    let (outcome, reason) = match &spec.kind {
        Kind::Upgrade => driver.upgrade().await,
        Kind::Rollback { .. } => {
            let current = super::installed_versions(&inv).await?;
            driver.rollback(&current).await
        }
        Kind::Backup => driver.backup_only().await,
        Kind::Rehearse => {
            let (ended, report) = driver.rehearse_only().await;
            super::rehearse::print(output, &spec.id, &report);
            ended
        }
    };
    // Hosts whose health watch has just shown where they stand are not
    // asked again (`Driver::settled_reports`). The rollout's memory
    // (journal, health watches) goes before the survey opens what it needs
    // for the rest: at 10,000 hosts both at once set the peak. Each host's
    // last step is read back from the stored journal: what `resume` will
    // see (a record whose write failed is in memory only).
    let settled = driver.settled_reports().await;
    drop(driver);
    reporter.finish();
    let last = match Journals::of(&inv).read_by_id(&spec.id).await {
        Ok(l) => l.last_steps(),
        Err(e) => {
            tracing::warn!(rollout = %spec.id, error = %e, "cannot read the journal for the report");
            Default::default()
        }
    };
    let open = fleet.take_channels().await;
    let hosts = ended_state(&inv, &open, &settled, last).await;
    // Not closed one by one: the process exits after the report and the
    // kernel closes them (see `main`).
    std::mem::forget(open);
    finish(output, &reporter, &spec.id, outcome, reason, hosts)
}

fn total_steps(spec: &RolloutSpec) -> u64 {
    let mut n = 0u64;
    for hop in &spec.hops {
        n += spec.hosts.iter().filter(|h| h.from < *hop).count() as u64; // stage
        n += spec.needing(Role::Cp, hop).len() as u64;
        n += 3 * spec.needing(Role::Dp, hop).len() as u64;
    }
    // A host's own release staged first (stage_from).
    n += spec
        .hosts
        .iter()
        .filter(|h| h.stage_from && spec.hops.iter().any(|hop| h.from < *hop))
        .count() as u64;
    n + u64::from(!spec.cps().is_empty())
}

/// Which rollout `rollgate resume` continues, and with which catalog: found
/// and checked before the fleet lease is taken (a take-over fences the
/// holder off), so a wrong id or catalog changes nothing, not even the
/// lease. Returns the rollout's id, which `resume` reads again once it
/// holds the fleet.
pub async fn resume_target(
    inv: &Inventory,
    rollout: Option<&str>,
    given: Option<Catalog>,
) -> Result<(String, Option<Catalog>), Failure> {
    let journals = Journals::of(inv);
    let seen = match rollout {
        Some(id) => journals.read_by_id(id).await?,
        None => match resumable(&journals).await? {
            Some(l) => l,
            None => return Err(Failure::Usage(last_ended(&journals).await)),
        },
    };
    still_resumable(&journals, &seen).await?;
    let catalog = resume_catalog(&seen.spec, given)?;
    Ok((seen.spec.id, catalog))
}

/// A rollout can be resumed while it has not ended, or ended cut off
/// (interrupted, an agent lost) with no rollout run after it.
async fn still_resumable(journals: &Journals, seen: &RolloutLog) -> Result<(), Failure> {
    if let Some((o, why)) = &seen.outcome
        && !matches!(o, Outcome::Interrupted | Outcome::Disconnected)
    {
        return Err(Failure::Usage(format!(
            "rollout {} ended ({o:?}: {why}); only a rollout that was interrupted or lost an agent can be resumed",
            seen.spec.id
        )));
    }
    if seen.outcome.is_some()
        && let Some(later) = latest(journals)
            .await?
            .filter(|l| l.spec.id != seen.spec.id)
    {
        return Err(Failure::Usage(format!(
            "rollout {} cannot be resumed: rollout {} ran after it; run `rollgate upgrade` to go on from where the hosts are",
            seen.spec.id, later.spec.id
        )));
    }
    Ok(())
}

/// `rollgate resume`: continues rollout `id` (from `resume_target`), cut
/// off by a crash or Ctrl-C.
pub async fn resume(
    inv: Inventory,
    id: String,
    output: Output,
    catalog: Option<Catalog>,
) -> Result<(), Failure> {
    let state_dir = inv.coordinator.state_dir.clone();
    let journals = Journals::of(&inv);
    // Read again, holding the fleet: what it says now is what counts.
    let seen = journals.read_by_id(&id).await?;
    still_resumable(&journals, &seen).await?;
    let _lock = lock::acquire(&state_dir, &seen.spec.id, "resume").map_err(Failure::Failed)?;
    // Only now, holding the lock, open the journal to continue it.
    let log = journals.open(&seen).await.map_err(Failure::Failed)?;
    drive(inv, catalog, log, output, true, Vec::new()).await
}

/// The catalog a resumed rollout goes on with: the one given (`--catalog`),
/// else the one it was started with, read from the path recorded then. It
/// must list every release of the rollout, with artifacts that check out.
fn resume_catalog(spec: &RolloutSpec, given: Option<Catalog>) -> Result<Option<Catalog>, Failure> {
    let catalog = match (given, &spec.catalog) {
        (Some(c), _) => c,
        (None, Some(p)) => load_catalog(p).map_err(|f| {
            Failure::Usage(format!(
                "{f} (the catalog rollout {} was started with); on another machine, name it with --catalog",
                spec.id
            ))
        })?,
        // Backups and rehearsals need no catalog.
        (None, None) => return Ok(None),
    };
    let needed = spec.catalog_versions();
    for v in &needed {
        if catalog.get(v).is_none() {
            return Err(Failure::Usage(format!(
                "the catalog {} does not list {v}, a release of rollout {}; nothing was changed",
                catalog.path.display(),
                spec.id
            )));
        }
    }
    verify_artifacts(&catalog, &needed)?;
    Ok(Some(catalog))
}

/// `rollgate backup`: the upgrade's backup phase alone.
pub async fn backup(inv: Inventory, output: Output) -> Result<(), Failure> {
    let state_dir = inv.coordinator.state_dir.clone();
    let rid = new_id("b");
    let _lock = lock::acquire(&state_dir, &rid, "backup").map_err(Failure::Failed)?;
    let current = super::installed_versions(&inv).await?;
    let Some(cp) = inv.by_role(Role::Cp).next() else {
        return Err(Failure::Usage(
            "the inventory has no CP host to back up".into(),
        ));
    };
    let v = current
        .get(&cp.name)
        .cloned()
        .ok_or_else(|| Failure::Failed(format!("{} has no release", cp.name)))?;
    let spec = RolloutSpec {
        id: rid.clone(),
        kind: Kind::Backup,
        inventory: absolute(&inv.path),
        catalog: None,
        created_ms: now_ms(),
        target: v.clone(),
        hops: Vec::new(),
        hosts: vec![HostPlan {
            name: cp.name.clone(),
            role: Role::Cp,
            from: v,
            group: None,
            drained: false,
            method: Default::default(),
            stage_from: false,
        }],
        policy: PolicySnap::from_policy(&inv.policy),
        backup_id: Some(rid.clone()),
    };
    let log = Journals::of(&inv)
        .create(spec)
        .await
        .map_err(Failure::Failed)?;
    drive(inv, None, log, output, false, Vec::new()).await
}

/// Why there is nothing to resume, and what to do instead.
async fn last_ended(journals: &Journals) -> String {
    let Ok(Some(l)) = latest(journals).await else {
        return "no rollout to resume: none has run with this inventory".into();
    };
    let (outcome, reason) = l
        .outcome
        .map(|(o, r)| (format!("{o:?}").to_lowercase(), r))
        .unwrap_or_default();
    format!(
        "nothing to resume: the last rollout {} ended {outcome} ({reason}). Run `rollgate upgrade` again to go on from where the hosts are, or `rollgate rollback {}`",
        l.spec.id, l.spec.id
    )
}

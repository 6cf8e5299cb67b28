//! `rollgate demo`: the main job on one machine. A throwaway PostgreSQL, the
//! reference gateway's CP and DPs behind HAProxy (agent-check pointed at each
//! agent), an upstream, one agent per host, certificates, inventory and
//! catalog; steady traffic through HAProxy during a real upgrade; then the
//! requests sent and failed and every host's version before and after.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rollgate::version::Version;
use rollgate_testbed::fleet::{Bins, DemoFleet, FleetSpec, missing_prerequisites};
use rollgate_testbed::install::{Install, docker_missing};
use rollgate_testbed::load::Load;

use super::upgrade::{Overrides, UpgradeArgs, upgrade};
use crate::Failure;
use crate::inventory::Inventory;
use crate::output::Output;

pub struct DemoArgs {
    pub dps: usize,
    pub from: Version,
    pub to: Version,
    pub keep: bool,
    pub no_upgrade: bool,
    pub rate: u32,
    pub install: Install,
    pub dir: Option<PathBuf>,
    /// The fleet lease in a `rollgate_state` database on the demo's server.
    pub state_postgres: bool,
    pub output: Output,
}

pub async fn demo(a: DemoArgs) -> Result<(), Failure> {
    let exe = std::env::current_exe()
        .map_err(|e| Failure::Failed(format!("cannot find this executable: {e}")))?;
    let bins = Bins::next_to(&exe);
    let mut missing = missing_prerequisites(&bins);
    if a.install == Install::Compose
        && let Some(why) = docker_missing()
    {
        missing.push(why);
    }
    if !missing.is_empty() {
        return Err(Failure::Usage(format!(
            "rollgate demo needs: {}. deploy/demo.sh installs them and builds everything.",
            missing.join("; ")
        )));
    }
    // One DP behind the load balancer cannot be upgraded without an outage,
    // which the policy's min_in_service (1) refuses: the demo needs two.
    if a.dps < 2 || a.dps > 50 {
        return Err(Failure::Usage(
            "--dps must be 2 to 50 (with one DP an upgrade is an outage)".into(),
        ));
    }
    let temp = a.dir.is_none();
    let dir = a.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "rollgate-demo-{}-{}",
            std::process::id(),
            crate::rollout::log::now_ms()
        ))
    });
    // Absolute: the agents, gateways and teardown script run from other
    // directories than this one, and a relative --dir meant this one.
    let dir = std::path::absolute(&dir)
        .map_err(|e| Failure::Usage(format!("--dir {}: {e}", dir.display())))?;
    let spec = FleetSpec {
        dir,
        net: (0, 0),
        dps: a.dps,
        version: a.from.to_string(),
        artifacts_cache: bins.rollgate.parent().map(PathBuf::from).unwrap_or_default(),
        bins,
        policy: "batch = 1\ncanary = 1\nmin_healthy = \"3s\"\nhealth_timeout = \"30s\"\ndrain_timeout = \"10s\"".into(),
        detached: a.keep,
        install: a.install,
    };
    let text = a.output == Output::Text;
    if text {
        println!(
            "Starting the demo fleet in {} (PostgreSQL, CP {}, {} DPs behind HAProxy, installed as {})...",
            spec.dir.display(),
            a.from,
            a.dps,
            a.install.as_str()
        );
    }
    let fleet = tokio::task::spawn_blocking(move || DemoFleet::start(spec))
        .await
        .map_err(|e| Failure::Failed(e.to_string()))?
        .map_err(|e| Failure::Failed(format!("cannot start the demo fleet: {e}")))?;
    if a.state_postgres {
        let pg = fleet
            .pg
            .as_ref()
            .ok_or_else(|| Failure::Failed("the demo fleet has no PostgreSQL server".into()))?;
        use_postgres_state(pg, &fleet.inventory)?;
    }
    if text {
        println!(
            "Fleet up: load balancer http://{} → DPs; inventory {}",
            fleet.lb,
            fleet.inventory.display()
        );
    }
    if a.no_upgrade {
        return keep_or_stop(fleet, a.keep, a.output);
    }
    let before = fleet.versions();
    let load = Load::start(fleet.url(), a.rate, 8);
    if text {
        println!(
            "Sending {} requests/s through HAProxy; upgrading {} → {}\n",
            a.rate, a.from, a.to
        );
    }
    let inv = Inventory::load(&fleet.inventory)
        .map_err(|e| Failure::Failed(format!("the demo inventory: {e}")))?;
    let args = UpgradeArgs {
        to: a.to.clone(),
        overrides: Overrides::default(),
        yes: true,
        dry_run: false,
        output: a.output,
    };
    let result =
        crate::lease::holding(inv, "upgrade", |inv| upgrade(inv, &fleet.catalog, args)).await;
    let report = load.stop().await;
    let after = fleet.versions();
    let versions = |m: &BTreeMap<String, Option<String>>| -> BTreeMap<String, String> {
        m.iter()
            .map(|(k, v)| (k.clone(), v.clone().unwrap_or_else(|| "down".into())))
            .collect()
    };
    let summary = serde_json::json!({
        "requests": report.sent,
        "failed": report.failed,
        "before": versions(&before),
        "after": versions(&after),
    });
    if text {
        println!("\nDemo summary");
        println!(
            "  requests sent through HAProxy: {} in {:.0}s, failed: {}",
            report.sent, report.seconds, report.failed
        );
        for (ms, why) in report.failures.iter().take(5) {
            println!("    failure at +{:.1}s: {why}", *ms as f64 / 1000.0);
        }
        for (h, v) in versions(&before) {
            println!(
                "  {h:<6} {v} → {}",
                versions(&after).get(&h).cloned().unwrap_or_default()
            );
        }
    } else {
        println!("{summary}");
    }
    if a.keep {
        keep_or_stop(fleet, true, Output::Text)?;
    } else {
        let dir = fleet.dir.clone();
        drop(fleet);
        if temp {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    result
}

/// `--keep`: leave the fleet running and say how to use and stop it.
fn keep_or_stop(fleet: DemoFleet, keep: bool, output: Output) -> Result<(), Failure> {
    if !keep {
        return Ok(());
    }
    let (inventory, catalog, state_dir, lb, exe) = (
        fleet.inventory.clone(),
        fleet.catalog.clone(),
        fleet.state_dir.clone(),
        fleet.lb,
        fleet.bins.rollgate.clone(),
    );
    // The demo's PostgreSQL server, to look at what a rehearsal leaves.
    let postgres = fleet.pg.as_ref().map(|p| p.url("postgres"));
    let teardown = fleet.keep().map_err(Failure::Failed)?;
    if output == Output::Json {
        println!(
            "{}",
            serde_json::json!({
                "inventory": inventory, "catalog": catalog, "state_dir": state_dir,
                "lb": lb.to_string(), "teardown": teardown.display().to_string(),
                "postgres": postgres,
            })
        );
    } else {
        let r = exe.display();
        let (i, c) = (inventory.display(), catalog.display());
        println!("\nThe fleet keeps running.");
        println!(
            "  traffic:   curl http://{lb}{}",
            rollgate_testbed::fleet::ROUTE
        );
        println!("  status:    {r} status -i {i}");
        println!("  plan:      {r} plan -i {i} -c {c} --to 3.5.0");
        println!("  rehearse:  {r} rehearse -i {i} -c {c} --to 3.5.0");
        if let Some(p) = &postgres {
            println!("  postgres:  psql {p}");
        }
        println!("  upgrade:   {r} upgrade -i {i} -c {c} --to 3.5.0");
        println!("  rollback:  {r} rollback -i {i} --restore-db");
        println!("  stop it:   {}", teardown.display());
    }
    Ok(())
}

/// Points the demo's inventory at a state database of rollgate's own on the
/// demo's PostgreSQL server (never the gateway's database).
fn use_postgres_state(
    pg: &rollgate_testbed::pg::PgCluster,
    inventory: &std::path::Path,
) -> Result<(), Failure> {
    let fail = |e: String| {
        tracing::error!(error = %e, "cannot set up the demo's state database");
        Failure::Failed(format!("the demo's state database: {e}"))
    };
    pg.createdb("rollgate_state")
        .map_err(|e| fail(e.to_string()))?;
    let text = std::fs::read_to_string(inventory).map_err(|e| fail(e.to_string()))?;
    let state = format!(
        "[state]   # the fleet lease, shared by coordinators on any machine\nbackend = \"postgres\"\nurl = \"{}\"\n\n",
        pg.conninfo("rollgate_state")
    );
    rollgate::fsx::write_atomic(inventory, format!("{state}{text}").as_bytes())
        .map_err(|e| fail(e.to_string()))
}

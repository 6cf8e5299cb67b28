//! Gateways installed from Debian packages, each simulated host in a dpkg
//! root of its own (`--instdir`/`--admindir`, nothing installed into this
//! machine's root): the real dpkg, HAProxy, PostgreSQL and CLI.

use std::path::Path;
use std::time::Duration;

use rollgate::pb;
use rollgate_testbed::fleet::DemoFleet;
use rollgate_testbed::install::Install;
use rollgate_testbed::load::Load;
use sha2::{Digest, Sha256};

use crate::support::{Sandbox, client, wait_until};
use crate::upgrade::events;
use crate::zero_downtime::{
    RATE, args, assert_rate, assert_rehearsed, expect_exit, failed_steps, policy, rollback_args,
    rollgate,
};

/// What dpkg-query says about the package on a host: "<status> <version>".
fn dpkg_says(fleet: &DemoFleet, host: &str) -> String {
    fleet
        .host(host)
        .and_then(|h| h.deb.as_ref())
        .and_then(|d| d.version())
        .unwrap_or_default()
}

fn assert_installed(fleet: &DemoFleet, host: &str, version: &str) {
    assert_eq!(
        dpkg_says(fleet, host),
        format!("install ok installed {version}"),
        "{host}"
    );
}

async fn stage_deb(
    fleet: &DemoFleet,
    host: &str,
    op: &str,
    version: &str,
) -> Option<pb::OperationResult> {
    let deb = rollgate_testbed::catalog::release(&fleet.catalog, version)
        .unwrap()
        .deb
        .unwrap();
    let sha = hex::encode(Sha256::digest(std::fs::read(&deb).unwrap()));
    let mut c = client::to_fleet_host(fleet, host).await;
    client::stage_location(&mut c, op, version, &deb, &sha, "").await
}

async fn install_on(
    fleet: &DemoFleet,
    host: &str,
    op: &str,
    version: &str,
) -> Option<pb::OperationResult> {
    let mut c = client::to_fleet_host(fleet, host).await;
    client::install(&mut c, op, version).await
}

/// The fleet's catalog without release `version`'s .deb, written to `out`
/// (artifacts still found where they are).
fn catalog_without_deb_of(fleet: &DemoFleet, version: &str, out: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&fleet.catalog).unwrap();
    let mut doc: toml::Table = toml::from_str(&text).unwrap();
    let dir = fleet.catalog.parent().unwrap().display().to_string();
    for r in doc["releases"].as_array_mut().unwrap() {
        let r = r.as_table_mut().unwrap();
        if r["version"].as_str() == Some(version) {
            r.remove("deb");
        }
        let a = r["artifact"].as_str().unwrap().to_string();
        r.insert("artifact".into(), format!("{dir}/{a}").into());
        for kind in ["image", "deb"] {
            if let Some(t) = r.get_mut(kind).and_then(|t| t.as_table_mut()) {
                let a = t["artifact"].as_str().unwrap().to_string();
                t.insert("artifact".into(), format!("{dir}/{a}").into());
            }
        }
    }
    doc.insert("artifact_dirs".into(), vec![dir].into());
    std::fs::write(out, toml::to_string(&doc).unwrap()).unwrap();
    out.to_path_buf()
}

fn cached(fleet: &DemoFleet, host: &str) -> Vec<String> {
    let dir = fleet.host(host).unwrap().dir.join("state/packages");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A package fleet (CP + 2 DPs): a never-ready package is reverted; kill -9
/// of the agent between dpkg's unpack and configure ends, after the restart,
/// on exactly one configured version; the upgrade then runs with no failed
/// request; and `rollback --restore-db` re-installs each host's previous
/// package from its cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deb_fleet_reverts_survives_a_kill_mid_dpkg_and_rolls_back_from_its_cache() {
    let sb = Sandbox::new();
    let mut fleet =
        sb.fleet_installed(Install::Deb, 2, "3.3.0", &policy("health_timeout = \"5s\""));
    for h in ["cp-1", "dp-1", "dp-2"] {
        assert_installed(&fleet, h, "3.3.0");
    }

    // 0. No package of 3.3.0 in the catalog, none in the hosts' caches (the
    // packages were installed by hand): no rollback possible, so no plan.
    let without = catalog_without_deb_of(&fleet, "3.3.0", &sb.path().join("no-deb.toml"));
    let mut plan = args(&fleet, "plan", "3.4.0");
    plan[4] = without.display().to_string();
    plan.retain(|a| a != "--yes");
    let out = rollgate(&sb, plan).await;
    expect_exit(&out, 2);
    assert!(
        out.stdout.contains("no rollback artifact") && out.stdout.contains("dp-1"),
        "{}",
        out.stdout
    );

    // 1. A package that never becomes ready: the canary goes back.
    let out = rollgate(&sb, args(&fleet, "upgrade", "3.4.0-never-ready")).await;
    expect_exit(&out, 1);
    let failed = failed_steps(&out.stdout);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["host"], "dp-1");
    assert_eq!(failed[0]["detail"]["reverted"], true);
    assert_installed(&fleet, "dp-1", "3.3.0");
    assert!(
        cached(&fleet, "dp-1").contains(&"3.3.0.deb".to_string()),
        "the host's own package was cached for the revert: {:?}",
        cached(&fleet, "dp-1")
    );

    // 2. kill -9 between `dpkg --unpack` and `dpkg --configure` on dp-2.
    let staged = stage_deb(&fleet, "dp-2", "t/stage-3.4.0", "3.4.0")
        .await
        .unwrap();
    client::success(&staged);
    fleet.kill_agent("dp-2").unwrap();
    fleet
        .start_agent_env("dp-2", &[("ROLLGATE_FAILPOINT", "deb:unpacked")])
        .unwrap();
    assert!(
        install_on(&fleet, "dp-2", "t/install-3.4.0", "3.4.0")
            .await
            .is_none(),
        "the agent died mid-install"
    );
    let fleet = tokio::task::spawn_blocking(move || {
        let mut fleet = fleet;
        wait_until(Duration::from_secs(60), "dp-2's agent to die", || {
            fleet.agent_exited("dp-2")
        });
        fleet
    })
    .await
    .unwrap();
    assert!(
        dpkg_says(&fleet, "dp-2").starts_with("install ok unpacked"),
        "dpkg was cut off between unpack and configure: {}",
        dpkg_says(&fleet, "dp-2")
    );
    let mut fleet = fleet;
    fleet.start_agent("dp-2").unwrap();
    // The same operation again: the recovered outcome (asked again while
    // the agent answers "retry", until its recovery has taken the step up).
    let r = client::until_result(|| install_on(&fleet, "dp-2", "t/install-3.4.0", "3.4.0")).await;
    let f = client::failure(&r);
    assert_eq!(f.code, pb::FailureCode::Interrupted as i32, "{f:?}");
    assert!(f.reverted, "{f:?}");
    assert_installed(&fleet, "dp-2", "3.3.0");
    let dp2 = fleet.host("dp-2").unwrap().gateway;
    wait_until(Duration::from_secs(30), "dp-2 to serve 3.3.0", || {
        rollgate_testbed::http::status_version(dp2).as_deref() == Some("3.3.0")
    });

    // 3. The upgrade, under load. (The CP took 3.4.0-never-ready in step 1:
    // only DPs never get ready on it.)
    let before: Vec<String> = ["cp-1", "dp-1", "dp-2"]
        .iter()
        .map(|h| dpkg_says(&fleet, h))
        .collect();
    assert_eq!(
        before[1..],
        ["install ok installed 3.3.0", "install ok installed 3.3.0"]
    );
    let load = Load::start(fleet.url(), RATE, 8);
    let out = rollgate(&sb, args(&fleet, "upgrade", "3.4.0")).await;
    let report = load.stop().await;
    expect_exit(&out, 0);
    // Rehearsed from the cached package, unpacked beside the installed one.
    assert_rehearsed(&out.stdout);
    assert_rate(&report);
    assert_eq!(report.failed, 0, "{report:?}");
    for h in ["cp-1", "dp-1", "dp-2"] {
        assert_installed(&fleet, h, "3.4.0");
    }

    // 4. Back, from the cache: the rollback stages nothing.
    let out = rollgate(&sb, rollback_args(&fleet)).await;
    expect_exit(&out, 0);
    assert!(
        !events(&out.stdout).iter().any(|e| e["step"] == "stage"),
        "a rollback needs no transfer"
    );
    // Every host is back where that rollout found it.
    for (h, was) in ["cp-1", "dp-1", "dp-2"].iter().zip(&before) {
        assert_eq!(&dpkg_says(&fleet, h), was, "{h}");
    }
    for (h, v) in fleet
        .versions()
        .into_iter()
        .filter(|(h, _)| h.starts_with("dp"))
    {
        assert_eq!(v.as_deref(), Some("3.3.0"), "{h} /status");
    }
    // Nothing went into this machine's own dpkg database.
    assert!(!Path::new("/var/lib/dpkg/info/demo-gateway.list").exists());
}

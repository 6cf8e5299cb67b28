//! `rollgate upgrade` end to end: real agents, the reference gateway, a real
//! PostgreSQL.

use crate::support::Sandbox;
use crate::support::fixtures::fleet_on_330;
use crate::support::gateway::{self, Db, running_version};

/// The JSON events a command printed, one per line.
pub fn events(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cp_and_four_dps_from_330_to_340() {
    let sb = Sandbox::new();
    let db = Db::start();
    let fleet = fleet_on_330(&sb, &db, 4, "batch = 2\ncanary = 1").await;
    let catalog = gateway::artifacts().join("releases.toml");
    let out = sb.rollgate(&[
        "upgrade",
        "-i",
        "fleet.toml",
        "-c",
        &catalog.display().to_string(),
        "--to",
        "3.4.0",
        "--yes",
        "--output",
        "json",
    ]);
    let evs = events(&out.stdout);
    assert_eq!(
        out.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    let last = evs.last().unwrap();
    assert_eq!(last["event"], "rollout");
    assert_eq!(last["status"], "succeeded", "{last}");
    assert_eq!(running_version(fleet.cp.addr).as_deref(), Some("3.4.0"));
    for (h, _, addr) in &fleet.dps {
        assert_eq!(
            running_version(*addr).as_deref(),
            Some("3.4.0"),
            "{}",
            h.name
        );
    }
    // CP before any DP; the canary batch alone first.
    let installs: Vec<String> = evs
        .iter()
        .filter(|e| e["step"] == "install" && e["status"] == "succeeded")
        .map(|e| e["host"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        installs.first().map(String::as_str),
        Some("cp-1"),
        "{installs:?}"
    );
    assert_eq!(installs.len(), 5);
    let batches: Vec<&serde_json::Value> = evs
        .iter()
        .filter(|e| e["event"] == "batch" && e["status"] == "started")
        .collect();
    assert_eq!(batches.len(), 3, "canary 1, then 2 + 1");
    assert_eq!(batches[0]["detail"]["hosts"].as_array().unwrap().len(), 1);
    assert_eq!(batches[0]["detail"]["canary"], true);
    assert!(
        sb.path().join("state/backups").read_dir().unwrap().count() == 1,
        "the backup was copied back"
    );
    // The closing report: every host on 3.4.0, serving, in rotation.
    let hosts = last["detail"]["hosts"]
        .as_array()
        .expect("the closing report");
    assert_eq!(hosts.len(), 5, "{last}");
    for h in hosts {
        assert_eq!(h["installed"], "3.4.0", "{h}");
        assert_eq!(h["running"], "3.4.0", "{h}");
        assert_eq!(h["healthy"], true, "{h}");
        assert_eq!(h["drain"], "in rotation", "{h}");
    }
    // The last batch's hosts reported on their watch after their steps
    // ended, just before the end: the closing report is taken from those
    // reports, so no agent of that batch was asked again (a look on a
    // stream of its own, after the 250 ms one).
    let last_batch: Vec<&str> = batches[2]["detail"]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    // Each host was watched at the heartbeat's pace until its turn came,
    // then every 250 ms (the agent logs the pace of each stream it serves).
    for host in std::iter::once(&fleet.cp.host).chain(fleet.dps.iter().map(|(h, _, _)| h)) {
        let log = std::fs::read_to_string(host.dir.join("agent.log")).unwrap();
        let paces: Vec<u64> = log
            .lines()
            .filter(|l| l.contains("health watch started"))
            .filter_map(|l| {
                l.split("interval_ms=")
                    .nth(1)?
                    .split(['}', ' '])
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        let close = paces.iter().position(|&ms| ms == 250);
        assert!(
            close.is_some_and(|i| paces[..i].iter().any(|&ms| ms > 250)),
            "{}: watch paces {paces:?}",
            host.name
        );
        if last_batch.contains(&host.name.as_str()) {
            assert_eq!(
                paces.last(),
                Some(&250),
                "{}: asked again after the rollout: watch paces {paces:?}",
                host.name
            );
        }
    }
}

fn catalog_arg() -> String {
    gateway::artifacts()
        .join("releases.toml")
        .display()
        .to_string()
}

/// `rollgate upgrade` of the sandbox's fleet.toml to `to`, confirmed, JSON.
pub fn upgrade_to(to: &str) -> Vec<String> {
    let catalog = catalog_arg();
    [
        "upgrade",
        "-i",
        "fleet.toml",
        "-c",
        &catalog,
        "--to",
        to,
        "--yes",
        "--output",
        "json",
    ]
    .map(String::from)
    .to_vec()
}

pub fn hosts_running(fleet: &crate::support::fixtures::Fleet) -> Vec<(String, Option<String>)> {
    let mut v = vec![("cp-1".to_string(), running_version(fleet.cp.addr))];
    v.extend(
        fleet
            .dps
            .iter()
            .map(|(h, _, a)| (h.name.clone(), running_version(*a))),
    );
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_330_to_350_in_two_hops() {
    let sb = Sandbox::new();
    let db = Db::start();
    let fleet = fleet_on_330(&sb, &db, 2, "batch = 1").await;
    let out = sb.rollgate(&upgrade_to("3.5.0"));
    assert_eq!(
        out.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    let evs = events(&out.stdout);
    let hops: Vec<&str> = evs
        .iter()
        .filter(|e| e["event"] == "hop" && e["status"] == "succeeded")
        .map(|e| e["hop"].as_str().unwrap())
        .collect();
    assert_eq!(hops, ["3.4.1", "3.5.0"], "through the latest 3.4 patch");
    for (h, v) in hosts_running(&fleet) {
        assert_eq!(v.as_deref(), Some("3.5.0"), "{h}");
    }
    assert_eq!(
        db.psql("SELECT max(version) FROM schema_version").trim(),
        "3",
        "both migrations ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_dp_release_halts_after_the_canary() {
    let sb = Sandbox::new();
    let db = Db::start();
    let fleet = fleet_on_330(&sb, &db, 3, "batch = 2\nhealth_timeout = \"4s\"").await;
    let out = sb.rollgate(&upgrade_to("3.4.0-never-ready"));
    assert_eq!(
        out.code,
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    let evs = events(&out.stdout);
    let last = evs.last().unwrap();
    assert_eq!(last["status"], "halted", "{last}");
    assert!(
        last["error"].as_str().unwrap().contains("dp-1"),
        "the report names the host: {last}"
    );
    let failed: Vec<&serde_json::Value> = evs
        .iter()
        .filter(|e| e["event"] == "step" && e["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(
        (failed[0]["host"].as_str(), failed[0]["step"].as_str()),
        (Some("dp-1"), Some("install"))
    );
    assert_eq!(failed[0]["detail"]["reverted"], true);
    // No DP after the canary was touched.
    for h in ["dp-2", "dp-3"] {
        assert!(
            !evs.iter()
                .any(|e| e["host"] == h && matches!(e["step"].as_str(), Some("drain" | "install"))),
            "{h} was touched"
        );
    }
    for (h, _, addr) in &fleet.dps {
        assert_eq!(
            running_version(*addr).as_deref(),
            Some("3.3.0"),
            "{} serves the old version",
            h.name
        );
    }
    let hosts = last["detail"]["hosts"].as_array().unwrap();
    assert!(
        hosts.iter().all(|h| h["drain"] == "in rotation"),
        "no host left drained: {hosts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_coordinator_resumes_and_installs_every_host_exactly_once() {
    use rollgate::pb;
    let sb = Sandbox::new();
    let db = Db::start();
    let fleet = fleet_on_330(&sb, &db, 4, "batch = 1").await;
    let mut run = sb.rollgate_bg(&upgrade_to("3.4.0"));
    let line = run.wait_line(std::time::Duration::from_secs(180), "dp-2 installed", |l| {
        l.contains("\"host\":\"dp-2\"")
            && l.contains("\"step\":\"install\"")
            && l.contains("\"status\":\"succeeded\"")
    });
    run.kill9();
    let rid = serde_json::from_str::<serde_json::Value>(&line).unwrap()["rollout"]
        .as_str()
        .unwrap()
        .to_string();

    // A new upgrade is refused while the cut-off rollout is unfinished.
    let again = sb.rollgate(&[
        "upgrade",
        "-i",
        "fleet.toml",
        "-c",
        &catalog_arg(),
        "--to",
        "3.4.0",
        "--yes",
    ]);
    assert_eq!(again.code, Some(2), "{}", again.stderr);
    assert!(
        again.stderr.contains(&rid) && again.stderr.contains("resume"),
        "{}",
        again.stderr
    );

    let out = sb.rollgate(&["resume", "-i", "fleet.toml", "--output", "json"]);
    assert_eq!(
        out.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    let evs = events(&out.stdout);
    assert!(
        evs.iter()
            .any(|e| e["status"] == "done-before" && e["host"] == "dp-2"),
        "dp-2's steps are not repeated"
    );
    for (h, v) in hosts_running(&fleet) {
        assert_eq!(v.as_deref(), Some("3.4.0"), "{h}");
    }
    // The agents' journals: one install per host in this rollout, run once.
    let mut hosts = vec![&fleet.cp.host];
    hosts.extend(fleet.dps.iter().map(|(h, _, _)| h));
    for h in hosts {
        let mut c = crate::support::client::connect(&sb, h).await;
        let ops = c
            .list_operations(pb::ListOperationsRequest {
                prefix: format!("{rid}/{}/install", h.name),
            })
            .await
            .unwrap()
            .into_inner()
            .operations;
        assert_eq!(ops.len(), 1, "{}: {ops:?}", h.name);
        assert_eq!(ops[0].attempts, 1, "{}: {ops:?}", h.name);
        assert_eq!(ops[0].status(), pb::OperationStatus::Succeeded);
    }
    let hist = sb.rollgate(&["history", "-i", "fleet.toml", "--output", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&hist.stdout).unwrap();
    assert_eq!(doc["rollouts"][0]["outcome"], "succeeded", "{doc}");
    let show = sb.rollgate(&["show", "-i", "fleet.toml", &rid]);
    assert_eq!(show.code, Some(0));
    assert!(
        show.stdout.contains("dp-4") && show.stdout.contains("install"),
        "{}",
        show.stdout
    );
}

/// A rollout resumed where its catalog is no longer at the path it was
/// started with (another bastion): `resume` says to name it, `--catalog`
/// names it, and one that lacks the rollout's release is refused; none of
/// these changes anything, and the named catalog finishes the rollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_resumes_with_its_catalog_named_where_the_recorded_path_is_gone() {
    let sb = Sandbox::new();
    let db = Db::start();
    let fleet = fleet_on_330(&sb, &db, 2, "batch = 1").await;
    // The catalog in a directory of the test's own (hard links: the same
    // files, so the artifacts stay inside the catalog's directory).
    let (here, there) = (sb.path().join("cat-a"), sb.path().join("cat-b"));
    std::fs::create_dir(&here).unwrap();
    for e in std::fs::read_dir(gateway::artifacts()).unwrap() {
        let p = e.unwrap().path();
        std::fs::hard_link(&p, here.join(p.file_name().unwrap())).unwrap();
    }
    let mut args = upgrade_to("3.4.0");
    let at = args.iter().position(|a| a == "-c").unwrap() + 1;
    args[at] = here.join("releases.toml").display().to_string();
    let mut run = sb.rollgate_bg(&args);
    run.wait_line(std::time::Duration::from_secs(180), "dp-1 installed", |l| {
        l.contains("\"host\":\"dp-1\"")
            && l.contains("\"step\":\"install\"")
            && l.contains("\"status\":\"succeeded\"")
    });
    run.kill9();
    std::fs::rename(&here, &there).unwrap();

    let out = sb.rollgate(&["resume", "-i", "fleet.toml"]);
    assert_eq!(out.code, Some(64), "{}", out.stderr);
    assert!(out.stderr.contains("--catalog"), "{}", out.stderr);
    // Beside the artifacts, every release but the rollout's own.
    let lacking = there.join("lacking.toml");
    let text = std::fs::read_to_string(there.join("releases.toml")).unwrap();
    let without_340: Vec<&str> = text
        .split("[[releases]]")
        .filter(|r| !r.contains("version = \"3.4.0\""))
        .collect();
    std::fs::write(&lacking, without_340.join("[[releases]]")).unwrap();
    let lacking = lacking.display().to_string();
    let out = sb.rollgate(&["resume", "-i", "fleet.toml", "-c", &lacking]);
    assert_eq!(out.code, Some(64), "{}", out.stderr);
    assert!(out.stderr.contains("does not list 3.4.0"), "{}", out.stderr);
    for (h, v) in hosts_running(&fleet) {
        if h != "dp-2" {
            continue;
        }
        assert_eq!(
            v.as_deref(),
            Some("3.3.0"),
            "{h} was not touched by a refused resume"
        );
    }

    let named = there.join("releases.toml").display().to_string();
    let out = sb.rollgate(&[
        "resume",
        "-i",
        "fleet.toml",
        "-c",
        &named,
        "--output",
        "json",
    ]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    for (h, v) in hosts_running(&fleet) {
        assert_eq!(v.as_deref(), Some("3.4.0"), "{h}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_db_write_between_backup_and_cp_swap_aborts_before_the_cp_is_touched() {
    let sb = Sandbox::new();
    let db = Db::start();
    // One DP: its batch is the whole fleet, an outage this test accepts.
    let fleet = fleet_on_330(&sb, &db, 1, "min_in_service = 0").await;
    let mut run = sb.rollgate_bg(&upgrade_to("3.4.0"));
    run.wait_line(std::time::Duration::from_secs(120), "the backup", |l| {
        l.contains("\"step\":\"backup-copy\"") && l.contains("succeeded")
    });
    gateway::add_route(fleet.cp.addr, "sneaky");
    let (code, lines) = run.finish(std::time::Duration::from_secs(120));
    assert_eq!(code, Some(1), "{}", lines.join("\n"));
    let evs = events(&lines.join("\n"));
    let guard = evs
        .iter()
        .find(|e| e["step"] == "write-freeze-guard" && e["status"] != "started")
        .expect("guard event");
    assert_eq!(guard["status"], "failed");
    let tables: Vec<&str> = guard["detail"]["changed_tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        tables.contains(&"public.routes"),
        "names the table written: {tables:?}"
    );
    assert!(
        !evs.iter().any(|e| e["step"] == "install"),
        "no install started"
    );
    assert_eq!(running_version(fleet.cp.addr).as_deref(), Some("3.3.0"));
    assert_eq!(
        gateway::current_of(&fleet.cp.host).as_deref(),
        Some("3.3.0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_refuses_a_major_jump_and_a_downgrade() {
    let sb = Sandbox::new();
    let db = Db::start();
    let mut fleet = fleet_on_330(&sb, &db, 1, "min_in_service = 0").await;
    // dp-1 treats the release's conf/ as a custom plugin dir, and someone
    // edited a file in it: the plan must warn.
    {
        let (dp, agent, _) = &mut fleet.dps[0];
        let cfg = std::fs::read_to_string(dp.config_path()).unwrap();
        std::fs::write(
            dp.config_path(),
            cfg.replace(
                "[service]",
                "[gateway]\ncustom_plugin_dirs = [\"conf\"]\n\n[service]",
            ),
        )
        .unwrap();
        let f = dp.dir.join("root/current/conf/dp.toml");
        let text = std::fs::read_to_string(&f).unwrap();
        std::fs::write(&f, text + "\n# local change\n").unwrap();
        agent.signal(nix::sys::signal::Signal::SIGKILL);
        agent.wait_exit(std::time::Duration::from_secs(10)).unwrap();
        *agent = dp.start_agent();
    }
    // A catalog with a 4.0.0 and a 3.2.0 (same bytes as other releases: the
    // planner refuses before any artifact is read).
    let base = std::fs::read_to_string(gateway::artifacts().join("releases.toml")).unwrap();
    let r = gateway::release("3.5.0");
    let extra = |v: &str| {
        format!(
            "\n[[releases]]\nversion = \"{v}\"\nartifact = \"{}\"\nsha256 = \"{}\"\nsize = {}\n",
            gateway::artifact_path(&r).display(),
            r.sha256,
            r.size
        )
    };
    let cat = sb.path().join("releases-more.toml");
    // The artifacts stay where they were packaged, a directory the catalog
    // names as allowed.
    std::fs::write(
        &cat,
        format!(
            "artifact_dirs = [\"{}\"]\n\n",
            gateway::artifacts().display()
        ) + &base.replace(
            "artifact = \"",
            &format!("artifact = \"{}/", gateway::artifacts().display()),
        ) + &extra("4.0.0")
            + &extra("3.2.0"),
    )
    .unwrap();
    let cat = cat.display().to_string();

    let major = sb.rollgate(&[
        "plan",
        "-i",
        "fleet.toml",
        "-c",
        &cat,
        "--to",
        "4.0.0",
        "--output",
        "json",
    ]);
    assert_eq!(major.code, Some(2), "{}\n{}", major.stdout, major.stderr);
    let doc: serde_json::Value = serde_json::from_str(&major.stdout).unwrap();
    assert!(
        doc["blocked"][0].as_str().unwrap().contains("major"),
        "{doc}"
    );

    let down = sb.rollgate(&["plan", "-i", "fleet.toml", "-c", &cat, "--to", "3.2.0"]);
    assert_eq!(down.code, Some(2), "{}\n{}", down.stdout, down.stderr);
    assert!(
        down.stdout.contains("downgrade") || down.stdout.contains("older"),
        "{}",
        down.stdout
    );

    let ok = sb.rollgate(&["plan", "-i", "fleet.toml", "-c", &cat, "--to", "3.5.0"]);
    assert_eq!(ok.code, Some(0), "{}\n{}", ok.stdout, ok.stderr);
    assert!(ok.stdout.contains("3.4.1 → 3.5.0"), "{}", ok.stdout);
    assert!(ok.stdout.contains("Breaking changes"), "{}", ok.stdout);
    assert!(
        ok.stdout
            .contains("custom plugin conf/dp.toml differs from 3.5.0"),
        "{}",
        ok.stdout
    );

    let dry = sb.rollgate(&[
        "upgrade",
        "-i",
        "fleet.toml",
        "-c",
        &cat,
        "--to",
        "3.4.0",
        "--dry-run",
    ]);
    assert_eq!(dry.code, Some(0), "{}", dry.stderr);
    assert!(
        dry.stdout
            .contains("canary batch: drain → install 3.4.0 → undrain on dp-1"),
        "{}",
        dry.stdout
    );
    assert!(
        sb.path()
            .join("state/rollouts")
            .read_dir()
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "a dry run records nothing"
    );

    let unconfirmed = sb.rollgate(&["upgrade", "-i", "fleet.toml", "-c", &cat, "--to", "3.4.0"]);
    assert_eq!(
        unconfirmed.code,
        Some(2),
        "breaking changes need --yes: {}",
        unconfirmed.stderr
    );
    assert!(
        unconfirmed.stderr.contains("--yes"),
        "{}",
        unconfirmed.stderr
    );
}

/// Defect: after Ctrl-C (or an alarm) during staging the coordinator said
/// "finishing the steps in flight" and kept starting stage calls until the
/// whole round ended. Staging here is slow (a 2 s download per host, one
/// host at a time): after SIGTERM no new stage starts, and the rollout stops
/// within the stage in flight plus a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupt_during_staging_starts_no_new_stage() {
    let sb = Sandbox::new();
    let db = Db::start();
    let _fleet = fleet_on_330(&sb, &db, 3, "").await;
    let slow = std::time::Duration::from_secs(2);
    let artifacts = gateway::artifacts();
    let at = crate::support::files::serve_dir(sb.ip(60), artifacts.clone(), slow);
    let base = std::fs::read_to_string(artifacts.join("releases.toml")).unwrap();
    let cat = sb.path().join("releases-http.toml");
    std::fs::write(
        &cat,
        base.replace("artifact = \"", &format!("artifact = \"http://{at}/")),
    )
    .unwrap();
    // One agent call at a time, so "in flight" is exactly one stage.
    let inv = std::fs::read_to_string(sb.path().join("fleet.toml")).unwrap();
    std::fs::write(
        sb.path().join("fleet.toml"),
        inv.replace("[coordinator]\n", "[coordinator]\nconcurrency = 1\n"),
    )
    .unwrap();
    let cat = cat.display().to_string();
    let mut run = sb.rollgate_bg(&[
        "upgrade",
        "-i",
        "fleet.toml",
        "-c",
        &cat,
        "--to",
        "3.4.0",
        "--yes",
        "--output",
        "json",
    ]);
    let (code, lines, stopped_in) = tokio::task::spawn_blocking(move || {
        run.wait_line(std::time::Duration::from_secs(60), "the first stage", |l| {
            l.contains("\"step\":\"stage\"") && l.contains("\"status\":\"started\"")
        });
        run.signal(nix::sys::signal::Signal::SIGTERM);
        let at = std::time::Instant::now();
        let (code, lines) = run.finish(std::time::Duration::from_secs(60));
        (code, lines, at.elapsed())
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{}", lines.join("\n"));
    let evs = events(&lines.join("\n"));
    assert_eq!(
        evs.last().unwrap()["status"],
        "interrupted",
        "{:?}",
        evs.last()
    );
    let started = evs
        .iter()
        .filter(|e| e["step"] == "stage" && e["status"] == "started")
        .count();
    assert_eq!(
        started,
        1,
        "only the stage in flight ran:\n{}",
        lines.join("\n")
    );
    let on_agents: usize = ["cp-1", "dp-1", "dp-2", "dp-3"]
        .iter()
        .filter_map(|h| std::fs::read_to_string(sb.path().join(h).join("state/journal")).ok())
        .map(|t| {
            t.lines()
                .filter(|l| {
                    l.contains("\"op\":\"r-")
                        && l.contains("\"kind\":\"stage\"")
                        && l.contains("\"event\":\"begin\"")
                })
                .count()
        })
        .sum();
    assert_eq!(on_agents, 1, "agents were asked for one stage");
    assert!(
        stopped_in < slow + std::time::Duration::from_secs(3),
        "stopped {stopped_in:?} after SIGTERM"
    );
}

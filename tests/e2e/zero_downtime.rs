//! The runbook's promises with real parts: PostgreSQL, the reference CP and
//! DPs each under its own agent, HAProxy in front with agent-check, steady
//! traffic through it, and the real `rollgate` CLI. Each scenario asserts on
//! the coordinator's JSON events and on the gateways' own /status.

use std::time::{Duration, Instant};

use rollgate_testbed::fleet::DemoFleet;
use rollgate_testbed::http;
use rollgate_testbed::load::{Load, LoadReport};

use crate::support::Sandbox;
use crate::upgrade::events;

/// Requests per second through HAProxy in every scenario.
pub(crate) const RATE: u32 = 250;

pub(crate) fn policy(extra: &str) -> String {
    let mut keys: std::collections::BTreeMap<&str, &str> = [
        ("batch", "1"),
        ("canary", "1"),
        ("min_healthy", "\"2s\""),
        ("health_timeout", "\"20s\""),
        ("drain_timeout", "\"10s\""),
    ]
    .into_iter()
    .collect();
    for l in extra.lines().filter(|l| l.contains('=')) {
        let (k, v) = l.split_once('=').unwrap();
        keys.insert(k.trim(), v.trim());
    }
    keys.iter().map(|(k, v)| format!("{k} = {v}\n")).collect()
}

pub(crate) fn args<'a>(fleet: &'a DemoFleet, cmd: &'a str, to: &'a str) -> Vec<String> {
    vec![
        cmd.into(),
        "-i".into(),
        fleet.inventory.display().to_string(),
        "-c".into(),
        fleet.catalog.display().to_string(),
        "--to".into(),
        to.into(),
        "--yes".into(),
        "--output".into(),
        "json".into(),
    ]
}

/// `rollgate <cmd> -i <fleet> --output json`.
pub(crate) fn inventory_args(cmd: &str, fleet: &DemoFleet) -> Vec<String> {
    [
        cmd,
        "-i",
        &fleet.inventory.display().to_string(),
        "--output",
        "json",
    ]
    .map(String::from)
    .to_vec()
}

/// `rollgate rollback -i <fleet> --restore-db --yes --output json`.
pub(crate) fn rollback_args(fleet: &DemoFleet) -> Vec<String> {
    [
        "rollback",
        "-i",
        &fleet.inventory.display().to_string(),
        "--restore-db",
        "--yes",
        "--output",
        "json",
    ]
    .map(String::from)
    .to_vec()
}

/// The CLI exited with `code`; otherwise fails showing what it printed.
pub(crate) fn expect_exit(out: &crate::support::RunOutput, code: i32) {
    assert_eq!(
        out.code,
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
}

/// The rollout rehearsed its CP hops (a `rehearsed` event).
pub(crate) fn assert_rehearsed(stdout: &str) {
    assert!(
        events(stdout)
            .iter()
            .any(|e| e["step"] == "rehearse" && e["status"] == "rehearsed"),
        "no rehearsal in:\n{stdout}"
    );
}

/// The `step` events that failed.
pub(crate) fn failed_steps(stdout: &str) -> Vec<serde_json::Value> {
    events(stdout)
        .into_iter()
        .filter(|e| e["event"] == "step" && e["status"] == "failed")
        .collect()
}

/// Runs the CLI without blocking the runtime the load runs on.
pub(crate) async fn rollgate(sb: &Sandbox, args: Vec<String>) -> crate::support::RunOutput {
    let dir = sb.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        crate::support::proc::run(
            crate::support::ROLLGATE,
            &args,
            &dir,
            Duration::from_secs(300),
        )
    })
    .await
    .unwrap()
}

pub(crate) fn assert_rate(r: &LoadReport) {
    let rate = r.sent as f64 / r.seconds;
    assert!(
        rate >= f64::from(RATE) * 0.8,
        "the load ran at {rate:.0}/s, below {RATE}/s: {r:?}"
    );
}

fn dp_versions(fleet: &DemoFleet) -> Vec<(String, Option<String>)> {
    fleet
        .versions()
        .into_iter()
        .filter(|(h, _)| h.starts_with("dp"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zero_failed_requests_through_haproxy_during_the_upgrade() {
    let sb = Sandbox::new();
    let fleet = sb.demo_fleet(3, "3.3.0", &policy(""));
    let load = Load::start(fleet.url(), RATE, 8);
    let out = rollgate(&sb, args(&fleet, "upgrade", "3.4.0")).await;
    let report = load.stop().await;
    assert_eq!(
        out.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(events(&out.stdout).last().unwrap()["status"], "succeeded");
    assert_rate(&report);
    assert_eq!(
        report.failed, 0,
        "failed requests during the upgrade: {report:?}"
    );
    for (h, v) in fleet.versions() {
        assert_eq!(v.as_deref(), Some("3.4.0"), "{h} /status");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_canary_is_rolled_back_and_the_fleet_stays_on_the_old_version() {
    let sb = Sandbox::new();
    let fleet = sb.demo_fleet(3, "3.3.0", &policy("health_timeout = \"5s\""));
    let load = Load::start(fleet.url(), RATE, 8);
    let out = rollgate(&sb, args(&fleet, "upgrade", "3.4.0-never-ready")).await;
    let report = load.stop().await;
    assert_eq!(
        out.code,
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    let evs = events(&out.stdout);
    let failed: Vec<_> = evs
        .iter()
        .filter(|e| e["event"] == "step" && e["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["host"], "dp-1", "the canary");
    assert_eq!(failed[0]["detail"]["reverted"], true);
    assert_eq!(evs.last().unwrap()["status"], "halted");
    for (h, v) in dp_versions(&fleet) {
        assert_eq!(v.as_deref(), Some("3.3.0"), "{h} serves the old version");
    }
    let canary = fleet.host("dp-1").unwrap().gateway;
    assert!(http::ready(canary), "the canary is back and ready");
    assert_rate(&report);
    // The canary was drained before it was touched: only a request caught in
    // flight on it could fail. The bound: none at all beyond a handful.
    assert!(report.failed <= 5, "failed requests: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_coordinator_resumes_with_zero_failed_requests() {
    let sb = Sandbox::new();
    let fleet = sb.demo_fleet(3, "3.3.0", &policy(""));
    let load = Load::start(fleet.url(), RATE, 8);
    let mut run = sb.rollgate_bg(&args(&fleet, "upgrade", "3.4.0"));
    tokio::task::spawn_blocking(move || {
        run.wait_line(Duration::from_secs(180), "the canary installed", |l| {
            l.contains("\"host\":\"dp-1\"")
                && l.contains("\"step\":\"install\"")
                && l.contains("succeeded")
        });
        run.kill9();
    })
    .await
    .unwrap();
    let out = rollgate(&sb, inventory_args("resume", &fleet)).await;
    let report = load.stop().await;
    assert_eq!(
        out.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(events(&out.stdout).last().unwrap()["status"], "succeeded");
    assert_rate(&report);
    assert_eq!(report.failed, 0, "{report:?}");
    for (h, v) in fleet.versions() {
        assert_eq!(v.as_deref(), Some("3.4.0"), "{h}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_that_stops_answering_halts_the_rollout_and_no_host_is_left_drained() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let sb = Sandbox::new();
    let fleet = sb.demo_fleet(3, "3.3.0", &policy("agent_silence = \"2s\""));
    let stopped = Pid::from_raw(fleet.agent_pid("dp-3").unwrap() as i32);
    let load = Load::start(fleet.url(), RATE, 8);
    let mut run = sb.rollgate_bg(&args(&fleet, "upgrade", "3.4.0"));
    let (run, stopped_at) = tokio::task::spawn_blocking(move || {
        run.wait_line(Duration::from_secs(180), "the canary batch", |l| {
            l.contains("\"event\":\"batch\"")
                && l.contains("\"batch\":0")
                && l.contains("succeeded")
        });
        kill(stopped, Signal::SIGSTOP).unwrap();
        (run, Instant::now())
    })
    .await
    .unwrap();
    let (code, lines) = tokio::task::spawn_blocking(move || run.finish(Duration::from_secs(120)))
        .await
        .unwrap();
    let noticed = stopped_at.elapsed();
    kill(stopped, Signal::SIGCONT).unwrap();
    let report = load.stop().await;
    assert_eq!(code, Some(1), "{}", lines.join("\n"));
    let evs = events(&lines.join("\n"));
    let last = evs.last().unwrap();
    assert_eq!(last["status"], "disconnected", "{last}");
    let why = last["error"].as_str().unwrap();
    assert!(
        why.contains("dp-3") && why.contains("stopped answering"),
        "{why}"
    );
    // Noticed within the silence deadline plus the step in flight.
    assert!(
        noticed < Duration::from_secs(20),
        "halted {noticed:?} after the agent stopped; events:\n{}",
        lines.join("\n")
    );
    for h in last["detail"]["hosts"].as_array().unwrap() {
        if h["reachable"] == true {
            assert_eq!(h["drain"], "in rotation", "left drained: {h}");
        }
    }
    assert!(
        !evs.iter()
            .any(|e| e["host"] == "dp-3" && e["step"] == "drain"),
        "dp-3 was never drained"
    );
    assert_rate(&report);
    assert_eq!(report.failed, 0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_cp_migration_leaves_the_cp_and_its_data_as_before() {
    let sb = Sandbox::new();
    let fleet = sb.demo_fleet(2, "3.3.0", &policy("health_timeout = \"10s\""));
    let cp = fleet.host("cp-1").unwrap().gateway;
    let (_, export_before) = http::get(cp, "/api/export").unwrap();
    let schema_before = fleet
        .pg
        .as_ref()
        .unwrap()
        .psql("gateway", "SELECT max(version) FROM schema_version")
        .unwrap();
    // Without the rehearsal (which would catch it first: tests/e2e/rehearse.rs),
    // the install itself must fail and put the CP and its data back.
    let mut upgrade = args(&fleet, "upgrade", "3.4.0-bad-migration");
    upgrade.push("--no-rehearse".into());
    let out = rollgate(&sb, upgrade).await;
    assert_eq!(
        out.code,
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    let evs = events(&out.stdout);
    let failed = evs
        .iter()
        .find(|e| e["status"] == "failed" && e["event"] == "step")
        .expect("a failed step");
    assert_eq!(
        (failed["host"].as_str(), failed["step"].as_str()),
        (Some("cp-1"), Some("install"))
    );
    assert_eq!(failed["detail"]["reverted"], true, "{failed}");
    assert!(
        !evs.iter().any(
            |e| e["host"].as_str().is_some_and(|h| h.starts_with("dp")) && e["step"] == "drain"
        ),
        "no DP touched"
    );
    assert_eq!(http::status_version(cp).as_deref(), Some("3.3.0"));
    let schema_after = fleet
        .pg
        .as_ref()
        .unwrap()
        .psql("gateway", "SELECT max(version) FROM schema_version")
        .unwrap();
    assert_eq!(schema_after, schema_before);
    let (_, export_after) = http::get(cp, "/api/export").unwrap();
    assert_eq!(
        export_after, export_before,
        "the declarative export, byte for byte"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollback_with_restore_db_returns_every_host_and_the_data() {
    let sb = Sandbox::new();
    let fleet = sb.demo_fleet(2, "3.3.0", &policy(""));
    let cp = fleet.host("cp-1").unwrap().gateway;
    let (_, export_before) = http::get(cp, "/api/export").unwrap();
    let out = rollgate(&sb, args(&fleet, "upgrade", "3.4.0")).await;
    assert_eq!(
        out.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(
        fleet
            .pg
            .as_ref()
            .unwrap()
            .psql("gateway", "SELECT max(version) FROM schema_version")
            .unwrap()
            .trim(),
        "2"
    );

    // What a newer release's migration leaves (3.5 creates config_history):
    // the restore must take the database back exactly, not leave it.
    let pg = fleet.pg.as_ref().unwrap();
    pg.psql("gateway", "CREATE TABLE public.made_by_new_release (x int)")
        .unwrap();

    let load = Load::start(fleet.url(), RATE, 8);
    let out = rollgate(&sb, rollback_args(&fleet)).await;
    let report = load.stop().await;
    assert_eq!(
        out.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    for (h, v) in fleet.versions() {
        assert_eq!(v.as_deref(), Some("3.3.0"), "{h}");
    }
    assert_eq!(
        fleet
            .pg
            .as_ref()
            .unwrap()
            .psql("gateway", "SELECT max(version) FROM schema_version")
            .unwrap()
            .trim(),
        "1"
    );
    let (_, export_after) = http::get(cp, "/api/export").unwrap();
    assert_eq!(
        export_after, export_before,
        "the data is back, byte for byte"
    );
    let left = pg
        .psql(
            "gateway",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'made_by_new_release'",
        )
        .unwrap();
    assert_eq!(left.trim(), "0", "a table the newer release made is gone");
    assert_rate(&report);
    assert_eq!(report.failed, 0, "{report:?}");
}

/// `rollgate status -i INV --output json`, as a document.
async fn status(sb: &Sandbox, fleet: &DemoFleet) -> serde_json::Value {
    let out = rollgate(
        sb,
        vec![
            "status".into(),
            "-i".into(),
            fleet.inventory.display().to_string(),
            "--output".into(),
            "json".into(),
        ],
    )
    .await;
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status is not JSON ({e}): {}\n{}", out.stdout, out.stderr))
}

fn lb_of<'a>(doc: &'a serde_json::Value, host: &str) -> &'a serde_json::Value {
    let h = doc["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == host)
        .unwrap_or_else(|| panic!("{host} not in {doc}"));
    &h["load_balancer"]
}

/// Defect: a DP whose agent died mid-install stayed drained, and a re-run
/// upgrade skipped it (already on the target) and said "succeeded".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dp_left_drained_by_a_killed_agent_is_put_back_by_the_next_upgrade() {
    let sb = Sandbox::new();
    let mut fleet = sb.demo_fleet(3, "3.3.0", &policy("agent_silence = \"2s\""));
    let load = Load::start(fleet.url(), RATE, 8);
    let mut run = sb.rollgate_bg(&args(&fleet, "upgrade", "3.4.0"));
    let run = tokio::task::spawn_blocking(move || {
        run.wait_line(Duration::from_secs(180), "dp-2's install", |l| {
            l.contains("\"host\":\"dp-2\"")
                && l.contains("\"step\":\"install\"")
                && l.contains("\"status\":\"started\"")
        });
        run
    })
    .await
    .unwrap();
    // Down longer than agent_silence: the coordinator gives up on the host.
    fleet.kill_agent("dp-2").unwrap();
    let (code, lines) = tokio::task::spawn_blocking(move || run.finish(Duration::from_secs(120)))
        .await
        .unwrap();
    assert_eq!(code, Some(1), "{}", lines.join("\n"));
    let halted = events(&lines.join("\n"));
    let last = halted.last().unwrap();
    // Lost, not failed: `resume` could follow its install; here the
    // operator starts afresh instead.
    assert_eq!(last["status"], "disconnected", "{last}");
    assert!(last["error"].as_str().unwrap().contains("dp-2"), "{last}");

    // systemd would restart it: the agent finishes (or undoes) its install
    // by itself, and the host stays out of rotation until it is told.
    fleet.start_agent("dp-2").unwrap();
    let gw = fleet.host("dp-2").unwrap().gateway;
    tokio::task::spawn_blocking(move || {
        crate::support::wait_until(Duration::from_secs(60), "dp-2 ready again", || {
            http::ready(gw)
        })
    })
    .await
    .unwrap();
    let before = status(&sb, &fleet).await;
    assert_eq!(lb_of(&before, "dp-2"), "drained", "{before}");
    assert_eq!(lb_of(&before, "dp-1"), "in rotation", "{before}");

    let out = rollgate(&sb, args(&fleet, "upgrade", "3.4.0")).await;
    assert_eq!(
        out.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    let evs = events(&out.stdout);
    assert_eq!(evs.last().unwrap()["status"], "succeeded");
    let first_dp2 = evs
        .iter()
        .find(|e| e["event"] == "step" && e["host"] == "dp-2")
        .expect("a step on dp-2");
    assert_eq!(
        first_dp2["step"], "undrain",
        "the re-run puts dp-2 back before anything else: {first_dp2}"
    );
    let after = status(&sb, &fleet).await;
    for h in after["hosts"].as_array().unwrap() {
        assert_eq!(h["version"], "3.4.0", "{h}");
        if h["role"] == "dp" {
            assert_eq!(h["load_balancer"], "in rotation", "{h}");
        }
    }
    let report = load.stop().await;
    assert_rate(&report);
    // dp-2 was drained before its agent died, and stayed out until healthy.
    assert_eq!(report.failed, 0, "{report:?}");
}

/// Defect: `canary = 10` with 3 DPs was clamped to 3 and drained every DP at
/// once (HAProxy answered 503). A plan that would leave fewer DPs in
/// rotation than `min_in_service` is blocked; within it, the upgrade keeps
/// serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_that_would_drain_every_dp_is_refused_and_nothing_is_touched() {
    let sb = Sandbox::new();
    let fleet = sb.demo_fleet(3, "3.3.0", &policy("canary = 10"));
    let load = Load::start(fleet.url(), RATE, 8);
    let refused = rollgate(&sb, args(&fleet, "upgrade", "3.4.0")).await;
    assert_eq!(
        refused.code,
        Some(2),
        "stdout:\n{}\nstderr:\n{}",
        refused.stdout,
        refused.stderr
    );
    assert!(
        refused.stderr.contains("3 of the 3") && refused.stderr.contains("min_in_service"),
        "{}",
        refused.stderr
    );
    let mut with_batch = args(&fleet, "upgrade", "3.4.0");
    with_batch
        .extend(["--canary", "1", "--batch", "100%", "--min-in-service", "2"].map(String::from));
    let refused = rollgate(&sb, with_batch).await;
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
    assert!(
        fleet
            .state_dir
            .join("rollouts")
            .read_dir()
            .map_or(0, |d| d.count())
            == 0,
        "a refused plan records no rollout"
    );
    for (h, v) in fleet.versions() {
        assert_eq!(v.as_deref(), Some("3.3.0"), "{h}");
    }
    // canary 1, then the other two at once: one DP always serves.
    let mut allowed = args(&fleet, "upgrade", "3.4.0");
    allowed.extend(["--canary", "1", "--batch", "100%"].map(String::from));
    let out = rollgate(&sb, allowed).await;
    let report = load.stop().await;
    assert_eq!(
        out.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert_rate(&report);
    assert_eq!(report.failed, 0, "no 503 from HAProxy: {report:?}");
    for (h, v) in fleet.versions() {
        assert_eq!(v.as_deref(), Some("3.4.0"), "{h}");
    }
}

//! `[state] backend = "postgres"`: the fleet lease in a PostgreSQL database
//! of rollgate's own, shared by coordinators on different machines (two
//! processes with different `--state-dir`s), and its fencing token carried
//! to every agent.

use std::time::Duration;

use crate::support::fixtures::{Fleet, fleet_on_330};
use crate::support::gateway::Db;
use crate::support::{Sandbox, entries};
use crate::upgrade::upgrade_to;

fn with_state_dir(mut args: Vec<String>, dir: &str) -> Vec<String> {
    args.extend(["--state-dir".to_string(), dir.to_string()]);
    args
}

fn token_of(sb: &Sandbox, host: &str) -> u64 {
    std::fs::read_to_string(sb.path().join(host).join("state/fencing-token"))
        .unwrap_or_else(|e| panic!("{host} has no fencing token: {e}"))
        .trim()
        .parse()
        .unwrap()
}

/// A CP and two DPs on 3.3.0, batch 1, with `policy`; an inventory whose
/// state is the fleet lease in a database of its own on the test's
/// PostgreSQL (one file, played as two machines by two `--state-dir`s).
async fn postgres_state_fleet(sb: &Sandbox, db: &Db, policy: &str, lease: &str) -> Fleet {
    let fleet = fleet_on_330(sb, db, 2, &format!("batch = 1\n{policy}")).await;
    db.pg.createdb("rollgate_state").unwrap();
    let inv = sb.path().join("fleet.toml");
    let text = std::fs::read_to_string(&inv).unwrap();
    let state = format!(
        "[state]\nbackend = \"postgres\"\nurl = \"{}\"\nlease = \"{lease}\"\n\n",
        db.pg.conninfo("rollgate_state")
    );
    std::fs::write(&inv, format!("{state}{text}")).unwrap();
    fleet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_coordinator_on_the_fleet_exits_2_naming_the_holder_and_agents_fence_by_token() {
    let sb = Sandbox::new();
    let db = Db::start();
    let _fleet = postgres_state_fleet(&sb, &db, "min_healthy = \"2s\"", "6s").await;

    // Machine A upgrades; while it runs, machine B tries the same.
    let mut a = sb.rollgate_bg(&with_state_dir(upgrade_to("3.4.0"), "bastion-a"));
    a.wait_line(Duration::from_secs(120), "A's first install", |l| {
        l.contains("\"step\":\"install\"")
    });
    let b = sb.rollgate(&with_state_dir(upgrade_to("3.4.0"), "bastion-b"));
    assert_eq!(b.code, Some(2), "{}\n{}", b.stdout, b.stderr);
    assert!(
        b.stderr.contains("the fleet lease is held by")
            && b.stderr.contains("rollgate upgrade")
            && b.stderr.contains("renewed"),
        "{}",
        b.stderr
    );
    assert_eq!(
        entries(&sb.path().join("bastion-b/rollouts")),
        0,
        "B recorded no rollout"
    );
    // Any machine's `status` shows who holds the fleet.
    let st = sb.rollgate(&["status", "-i", "fleet.toml", "--output", "json"]);
    let doc = crate::support::json(&st);
    let held = &doc["lease"]["held"];
    assert_eq!(held["command"], "upgrade", "{doc}");
    assert!(held["holder"].as_str().unwrap().contains('@'), "{doc}");
    let (code, lines) = a.finish(Duration::from_secs(180));
    assert_eq!(code, Some(0), "{}", lines.join("\n"));
    let st = sb.rollgate(&["status", "-i", "fleet.toml"]);
    assert!(st.stdout.contains("fleet lease: free"), "{}", st.stdout);

    // Every agent A called has A's token.
    let t_a = token_of(&sb, "cp-1");
    assert!(t_a > 0);
    for h in ["dp-1", "dp-2"] {
        assert_eq!(token_of(&sb, h), t_a, "{h}");
    }
    // The lease was given up: B now runs (nothing left to do) with a newer
    // token, which the agents record.
    let b = sb.rollgate(&with_state_dir(upgrade_to("3.4.0"), "bastion-b"));
    assert_eq!(b.code, Some(0), "{}\n{}", b.stdout, b.stderr);
    let t_b = token_of(&sb, "cp-1");
    assert!(t_b > t_a, "{t_b} > {t_a}");
    let lease_rows = db
        .pg
        .psql(
            "rollgate_state",
            "SELECT count(*) FROM rollgate_lease WHERE expires_at > now()",
        )
        .unwrap();
    assert_eq!(lease_rows.trim(), "0", "released at the end");
}

#[test]
fn a_postgres_backend_without_a_url_is_refused_naming_the_key() {
    let sb = Sandbox::new();
    sb.certs(&[("cp-1", 1)]);
    let addr = "127.0.0.1:1".parse().unwrap();
    sb.inventory(
        &[("cp-1", "cp", addr)],
        "\n[state]\nbackend = \"postgres\"\n",
    );
    let out = sb.rollgate(&["status", "-i", "fleet.toml"]);
    assert_eq!(out.code, Some(64), "{}", out.stderr);
    assert!(out.stderr.contains("state.url"), "{}", out.stderr);
}

/// A frozen coordinator (SIGSTOP: a VM freeze, a laptop lid) whose lease
/// lapsed while another machine took the fleet: woken, it changes nothing
/// — every agent refuses its calls, as their journals show — and exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_woken_after_another_took_the_fleet_changes_nothing_and_exits_1() {
    use nix::sys::signal::Signal;
    let sb = Sandbox::new();
    let db = Db::start();
    let _fleet = postgres_state_fleet(&sb, &db, "min_healthy = \"4s\"", "3s").await;

    // A freezes while it holds dp-1's batch healthy (no step in flight).
    let mut a = sb.rollgate_bg(&with_state_dir(upgrade_to("3.4.0"), "bastion-a"));
    let line = a.wait_line(Duration::from_secs(120), "dp-1 back in rotation", |l| {
        l.contains("\"host\":\"dp-1\"")
            && l.contains("\"step\":\"undrain\"")
            && l.contains("\"status\":\"succeeded\"")
    });
    a.signal(Signal::SIGSTOP);
    let frozen_at = rollgate::clock::now_ms();
    let rid_a = serde_json::from_str::<serde_json::Value>(&line).unwrap()["rollout"]
        .as_str()
        .unwrap()
        .to_string();

    // B waits out the lease, then takes the fleet and finishes the upgrade.
    let b = rollgate_testbed::wait::value(Duration::from_secs(30), "B to take the lease", || {
        let out = sb.rollgate(&with_state_dir(upgrade_to("3.4.0"), "bastion-b"));
        (out.code != Some(2)).then_some(out)
    })
    .unwrap();
    assert_eq!(b.code, Some(0), "{}\n{}", b.stdout, b.stderr);

    // A wakes up: it changes nothing and exits 1.
    a.signal(Signal::SIGCONT);
    let stderr_a = a.stderr_path();
    let (code, lines) = a.finish(Duration::from_secs(120));
    assert_eq!(code, Some(1), "{}", lines.join("\n"));
    let said = std::fs::read_to_string(stderr_a).unwrap();
    assert!(
        said.contains("lost the fleet lease")
            && said.contains("took it over, running `rollgate upgrade`"),
        "A says who took over:\n{said}"
    );
    for host in ["cp-1", "dp-1", "dp-2"] {
        let journal = std::fs::read_to_string(sb.path().join(host).join("state/journal")).unwrap();
        for l in journal
            .lines()
            .filter(|l| l.contains(&rid_a) && l.contains("\"begin\""))
        {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(
                e["at_ms"].as_i64().unwrap() < frozen_at,
                "{host} began a step of the woken coordinator: {l}"
            );
        }
    }
}

/// `rollgate demo --keep --no-upgrade --state postgres`: a fleet to try the
/// shared state by hand, its inventory pointing at a state database of its
/// own on the demo's PostgreSQL.
#[test]
fn the_demo_can_keep_a_fleet_whose_state_is_in_postgres() {
    use crate::support::{KeptDemo, ROLLGATE, proc};
    let sb = Sandbox::new();
    let dir = sb.path().join("kept");
    let args: Vec<String> = [
        "demo",
        "--keep",
        "--no-upgrade",
        "--state",
        "postgres",
        "--dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([dir.display().to_string()])
    .collect();
    let demo = KeptDemo::start(sb.path(), &args);
    let doc = &demo.doc;
    let inv = doc["inventory"].as_str().unwrap();
    let text = std::fs::read_to_string(inv).unwrap();
    assert!(
        text.contains("backend = \"postgres\"") && text.contains("dbname=rollgate_state"),
        "{text}"
    );
    let st = proc::run(
        ROLLGATE,
        &["status", "-i", inv],
        sb.path(),
        Duration::from_secs(60),
    );
    assert_eq!(st.code, Some(0), "{}", st.stderr);
    assert!(st.stdout.contains("fleet lease: free"), "{}", st.stdout);
}

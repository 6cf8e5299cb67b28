//! Real network faults: a host's agent link cut with every packet dropped
//! both ways (`rollgate_testbed::partition`), not a refused connection.
//! The coordinator notices within `agent_silence` and halts without
//! deciding the host's fate; the agent finishes its step by itself and, with
//! no coordinator in touch, puts a drained host back once its drain lease
//! lapses; after the link heals `resume` follows every step by its
//! operation id and completes.

use std::time::{Duration, Instant};

use rollgate_testbed::partition::Cut;
use rollgate_testbed::proc::Running;

use crate::support::fixtures::{Fleet, fleet_on_330};
use crate::support::gateway::{Db, agent_check, agent_check_addr, running_version};
use crate::support::{Host, Sandbox, wait_until};
use crate::upgrade::{events, hosts_running, upgrade_to};

/// Keepalive of the coordinator's agent connections, and of the agents'.
const KEEPALIVE: &str = "keepalive = \"1s\"\nkeepalive_timeout = \"1s\"\n";
/// The DPs' drain lease.
const LEASE: Duration = Duration::from_secs(3);

/// A fleet on 3.3.0 whose coordinator and agents ping idle connections
/// every second and whose DPs have a short drain lease (agents restarted
/// with it).
async fn fleet(sb: &Sandbox, db: &Db, dps: usize, policy: &str) -> Fleet {
    let mut fleet = fleet_on_330(sb, db, dps, policy).await;
    let inv = sb.path().join("fleet.toml");
    let text = std::fs::read_to_string(&inv).unwrap();
    std::fs::write(
        &inv,
        text.replacen("[coordinator]\n", &format!("[coordinator]\n{KEEPALIVE}"), 1),
    )
    .unwrap();
    for (host, agent, _) in &mut fleet.dps {
        let cfg = std::fs::read_to_string(host.config_path()).unwrap();
        let cfg = cfg
            .replacen("[agent]\n", &format!("[agent]\n{KEEPALIVE}"), 1)
            .replacen(
                "[drain]\n",
                &format!("[drain]\nlease = \"{}s\"\n", LEASE.as_secs()),
                1,
            );
        std::fs::write(host.config_path(), cfg).unwrap();
        agent.signal(nix::sys::signal::Signal::SIGTERM);
        agent.wait_exit(Duration::from_secs(10)).unwrap();
        *agent = host.start_agent();
    }
    fleet
}

/// A fleet (as `fleet`) upgrading to 3.4.0 in the background, returned
/// once dp-1's `step` has started, with the rollout's id; `prepare` runs
/// before the upgrade starts.
async fn upgrading<T>(
    sb: &Sandbox,
    db: &Db,
    dps: usize,
    policy: &str,
    step: &str,
    prepare: impl FnOnce(&Fleet) -> T,
) -> (Fleet, Running, String, T) {
    let fleet = fleet(sb, db, dps, policy).await;
    let prepared = prepare(&fleet);
    let mut run = sb.rollgate_bg(&upgrade_to("3.4.0"));
    let step_json = format!("\"step\":\"{step}\"");
    let line = run.wait_line(Duration::from_secs(120), &format!("dp-1's {step}"), |l| {
        l.contains("\"host\":\"dp-1\"") && l.contains(&step_json)
    });
    let rid = rollout_of(&line);
    (fleet, run, rid, prepared)
}

/// The records of `host`'s agent journal for operations whose id contains
/// `op`, as (op, event).
fn journal(host: &Host, op: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(host.dir.join("state/journal"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["op"].as_str().is_some_and(|o| o.contains(op)))
        .map(|r| {
            (
                r["op"].as_str().unwrap().to_string(),
                r["event"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn ended_once(host: &Host, op: &str) -> bool {
    journal(host, op).iter().filter(|(_, e)| e == "end").count() == 1
}

/// The rollout id in a JSON event line.
fn rollout_of(line: &str) -> String {
    serde_json::from_str::<serde_json::Value>(line).unwrap()["rollout"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `rollgate resume`, which must complete the rollout.
fn resume_completes(sb: &Sandbox, fleet: &Fleet, rid: &str) {
    let out = sb.rollgate(&["resume", rid, "-i", "fleet.toml", "--output", "json"]);
    assert_eq!(
        out.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    let evs = events(&out.stdout);
    assert_eq!(evs.last().unwrap()["status"], "succeeded");
    for (h, v) in hosts_running(fleet) {
        assert_eq!(v.as_deref(), Some("3.4.0"), "{h}");
    }
    for (h, _, _) in &fleet.dps {
        assert_eq!(agent_check(agent_check_addr(h)), "ready up\n", "{}", h.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_mid_install_halts_the_rollout_and_resume_completes_it() {
    let sb = Sandbox::new();
    let db = Db::start();
    let policy = "batch = 1\nmin_healthy = \"4s\"\nagent_silence = \"2s\"";
    let (fleet, run, rid, ()) = upgrading(&sb, &db, 2, policy, "install", |_| ()).await;
    let dp1 = &fleet.dps[0].0;
    // The coordinator says "started" before its call reaches the agent: cut
    // only once the agent has begun the install (on a loaded machine the
    // cut could otherwise come first, and there is no step to finish).
    wait_until(Duration::from_secs(30), "dp-1 begins its install", || {
        journal(dp1, "/dp-1/install-3.4.0")
            .iter()
            .any(|(_, e)| e == "begin")
    });
    let cut = Cut::link(dp1.agent_addr).unwrap();
    let cut_at = Instant::now();
    let (code, lines) = run.finish(Duration::from_secs(60));
    let noticed = cut_at.elapsed();
    assert_eq!(code, Some(1), "{}", lines.join("\n"));
    let evs = events(&lines.join("\n"));
    let last = evs.last().unwrap();
    assert_eq!(last["status"], "disconnected", "{last}");
    let error = last["error"].as_str().unwrap();
    assert!(
        error.contains("dp-1") && error.contains("stopped answering"),
        "{last}"
    );
    // Noticed by silence (2 s), not by a step deadline; slack for a loaded
    // machine and the halt's own survey of the other hosts.
    assert!(
        noticed < Duration::from_secs(15),
        "halted {noticed:?} after the cut"
    );
    // The host's fate is not decided: no failed or reverted install.
    assert!(
        !evs.iter()
            .any(|e| e["host"] == "dp-1" && e["step"] == "install" && e["status"] == "failed"),
        "{evs:?}"
    );

    // The agent finishes its step by itself, and with no coordinator in
    // touch puts the host back once the drain lease lapses.
    wait_until(Duration::from_secs(30), "dp-1 installs 3.4.0 alone", || {
        ended_once(dp1, "/dp-1/install-3.4.0")
    });
    assert_eq!(running_version(fleet.dps[0].2).as_deref(), Some("3.4.0"));
    wait_until(
        Duration::from_secs(30),
        "dp-1 back in rotation by its lease",
        || agent_check(agent_check_addr(dp1)) == "ready up\n",
    );
    assert!(!journal(dp1, "lease/dp-1/undrain").is_empty());

    drop(cut);
    resume_completes(&sb, &fleet, &rid);
    assert!(
        ended_once(dp1, "/dp-1/install-3.4.0"),
        "followed by its id, never run twice: {:?}",
        journal(dp1, "/dp-1/install")
    );
}

/// Index of the first journal record of `host` whose op contains `op` and
/// whose event is `event`.
fn position(host: &Host, op: &str, event: &str) -> Option<usize> {
    journal(host, "/")
        .iter()
        .position(|(o, e)| o.contains(op) && e == event)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dp_left_drained_by_a_lost_coordinator_returns_to_rotation_and_resume_drains_it_again() {
    let sb = Sandbox::new();
    let db = Db::start();
    let policy = "batch = 1\nmin_healthy = \"1s\"\nagent_silence = \"2s\"\ndrain_timeout = \"30s\"";
    // An open client connection keeps dp-1's drain waiting.
    let (fleet, run, rid, held) = upgrading(&sb, &db, 2, policy, "drain", |f| {
        std::net::TcpStream::connect(f.dps[0].2).unwrap()
    })
    .await;
    let dp1 = &fleet.dps[0].0;
    wait_until(Duration::from_secs(20), "dp-1 marked drained", || {
        agent_check(agent_check_addr(dp1)) == "drain\n"
    });
    let cut = Cut::link(dp1.agent_addr).unwrap();
    let (code, lines) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(1), "{}", lines.join("\n"));
    assert_eq!(
        events(&lines.join("\n")).last().unwrap()["status"],
        "disconnected"
    );

    // The drain completes on the agent; nobody is in touch; the lease
    // lapses and the agent puts the host back by itself.
    drop(held);
    wait_until(Duration::from_secs(30), "dp-1 drained", || {
        ended_once(dp1, "/dp-1/drain")
    });
    let lapsed = Instant::now();
    wait_until(
        Duration::from_secs(30),
        "dp-1 back in rotation by its lease",
        || agent_check(agent_check_addr(dp1)) == "ready up\n",
    );
    println!(
        "back in rotation {:?} after the drain ended (lease {LEASE:?}, agent keepalive 1s + 1s)",
        lapsed.elapsed()
    );
    assert!(!journal(dp1, "lease/dp-1/undrain").is_empty());
    assert!(
        journal(dp1, "/dp-1/install-3.4.0").is_empty(),
        "no install was begun"
    );

    // After the heal, resume finds dp-1 in rotation since its journalled
    // drain, and drains it again (the next round) before installing.
    drop(cut);
    resume_completes(&sb, &fleet, &rid);
    let drains: std::collections::BTreeSet<String> = journal(dp1, "/dp-1/drain")
        .into_iter()
        .map(|(o, _)| o)
        .collect();
    assert_eq!(drains.len(), 2, "a second round's drain: {drains:?}");
    let second = drains.iter().find(|o| o.contains("drain.2")).unwrap();
    assert!(
        position(dp1, second, "end") < position(dp1, "/dp-1/install-3.4.0", "begin"),
        "drained again before the install: {:?}",
        journal(dp1, "/")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_cut_off_from_every_agent_halts_and_names_each_hosts_last_step() {
    let sb = Sandbox::new();
    let db = Db::start();
    let policy = "batch = 1\nmin_healthy = \"4s\"\nagent_silence = \"2s\"";
    let (fleet, run, rid, ()) = upgrading(&sb, &db, 2, policy, "install", |_| ()).await;
    let mut agents = vec![fleet.cp.host.agent_addr];
    agents.extend(fleet.dps.iter().map(|(h, _, _)| h.agent_addr));
    let cuts: Vec<Cut> = agents.iter().map(|a| Cut::link(*a).unwrap()).collect();
    let cut_at = Instant::now();
    let (code, lines) = run.finish(Duration::from_secs(60));
    let halted = cut_at.elapsed();
    assert_eq!(code, Some(1), "{}", lines.join("\n"));
    assert!(
        halted < Duration::from_secs(20),
        "halted {halted:?} after the cut"
    );
    let evs = events(&lines.join("\n"));
    let last = evs.last().unwrap();
    assert_eq!(last["status"], "disconnected", "{last}");
    let hosts = last["detail"]["hosts"].as_array().unwrap();
    let step_of = |name: &str| {
        let h = hosts
            .iter()
            .find(|h| h["name"] == name)
            .unwrap_or_else(|| panic!("{name} in the report: {hosts:?}"));
        assert_eq!(h["reachable"], false, "{h}");
        (
            h["last_step"]["step"].as_str().unwrap().to_string(),
            h["last_step"]["status"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(step_of("cp-1"), ("install".into(), "succeeded".into()));
    assert_eq!(
        step_of("dp-1"),
        ("install".into(), "in flight: undecided".into())
    );
    assert_eq!(step_of("dp-2"), ("stage".into(), "succeeded".into()));

    drop(cuts);
    resume_completes(&sb, &fleet, &rid);
    for (h, _, _) in &fleet.dps {
        assert!(
            ended_once(h, &format!("/{}/install-3.4.0", h.name)),
            "{}",
            h.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_turns_a_black_holed_step_stream_into_an_error_within_its_bound() {
    let sb = Sandbox::new();
    let db = Db::start();
    // A silence deadline far away: only keepalive can end the stream.
    let policy = "min_healthy = \"8s\"\nagent_silence = \"120s\"\nhealth_timeout = \"30s\"\nmin_in_service = 0";
    let (fleet, run, _, ()) = upgrading(&sb, &db, 1, policy, "install", |_| ()).await;
    let dp1 = &fleet.dps[0].0;
    let cut = Cut::link(dp1.agent_addr).unwrap();
    let cut_at = Instant::now();
    wait_until(Duration::from_secs(30), "the step stream to fail", || {
        std::fs::read_to_string(&run.stderr)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("step stream broke") && l.contains("dp-1"))
    });
    let broke = cut_at.elapsed();
    println!(
        "a black-holed step stream failed {broke:?} after the cut (keepalive 1s + timeout 1s)"
    );
    // The bound is keepalive + keepalive_timeout (2 s) after the last frame;
    // slack for a loaded machine.
    assert!(broke < Duration::from_secs(6), "{broke:?}");

    // Healed, the same run re-attaches to the install by its operation id.
    drop(cut);
    let (code, lines) = run.finish(Duration::from_secs(90));
    assert_eq!(code, Some(0), "{}", lines.join("\n"));
    assert!(ended_once(dp1, "/dp-1/install-3.4.0"));
    assert_eq!(running_version(fleet.dps[0].2).as_deref(), Some("3.4.0"));
}

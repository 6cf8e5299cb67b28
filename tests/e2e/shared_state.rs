//! `[state] backend = "postgres"`: the fleet lease in a PostgreSQL database
//! of rollgate's own, shared by coordinators on different machines (two
//! processes with different `--state-dir`s), and its fencing token carried
//! to every agent.

use std::time::Duration;

use crate::support::fixtures::{Fleet, fleet_on_330};
use crate::support::gateway::Db;
use crate::support::{Sandbox, entries};
use crate::upgrade::upgrade_to;
use rollgate_testbed::pg::PgCluster;

/// The agent journal entries of `host` that begin an operation of rollout
/// `rid` (attempts after a crash included).
fn agent_begins(sb: &Sandbox, host: &str, rid: &str) -> Vec<serde_json::Value> {
    let journal = std::fs::read_to_string(sb.path().join(host).join("state/journal")).unwrap();
    journal
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "begin" && e["op"].as_str().unwrap_or("").starts_with(rid))
        .collect()
}

/// Every host's install of rollout `rid` began exactly once (no attempt 2).
fn installed_once(sb: &Sandbox, rid: &str) {
    for host in ["cp-1", "dp-1", "dp-2"] {
        let installs: Vec<_> = agent_begins(sb, host, rid)
            .into_iter()
            .filter(|e| e["op"].as_str().unwrap().contains("/install-"))
            .collect();
        assert_eq!(installs.len(), 1, "{host}: {installs:?}");
    }
}

/// The `begin` records of rollout `rid` in the state database's journal.
fn journalled_begins(state: &PgCluster, rid: &str) -> Vec<String> {
    state
        .psql(
            "rollgate_state",
            &format!(
                "SELECT record::json->>'op' FROM rollgate_journal
                 WHERE rollout = '{rid}' AND record::json->>'t' = 'begin' ORDER BY seq"
            ),
        )
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `rollgate resume` on machine `dir`, JSON output, with `extra`.
fn resume_on(sb: &Sandbox, dir: &str, extra: &[&str]) -> crate::support::RunOutput {
    let mut args = with_state_dir(
        ["resume", "-i", "fleet.toml", "--output", "json"]
            .map(String::from)
            .to_vec(),
        dir,
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    sb.rollgate(&args)
}

fn rollout_of(line: &str) -> String {
    serde_json::from_str::<serde_json::Value>(line).unwrap()["rollout"]
        .as_str()
        .unwrap()
        .to_string()
}

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
    state_in(sb, db, &db.pg, policy, lease).await
}

/// As `postgres_state_fleet`, the state database on `state`'s server.
async fn state_in(sb: &Sandbox, db: &Db, state: &PgCluster, policy: &str, lease: &str) -> Fleet {
    let fleet = fleet_on_330(sb, db, 2, &format!("batch = 1\n{policy}")).await;
    state.createdb("rollgate_state").unwrap();
    let inv = sb.path().join("fleet.toml");
    let text = std::fs::read_to_string(&inv).unwrap();
    let state = format!(
        "[state]\nbackend = \"postgres\"\nurl = \"{}\"\nlease = \"{lease}\"\n\n",
        state.conninfo("rollgate_state")
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

/// A `[state] url` naming the gateway's own database (the one backups and
/// `rollback --restore-db` rewind) is refused before anything is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_url_naming_the_gateways_database_is_refused_changing_nothing() {
    let sb = Sandbox::new();
    let db = Db::start();
    let _fleet = fleet_on_330(&sb, &db, 1, "batch = 1").await;
    let inv = sb.path().join("fleet.toml");
    let text = std::fs::read_to_string(&inv).unwrap();
    std::fs::write(
        &inv,
        format!(
            "[state]\nbackend = \"postgres\"\nurl = \"{}\"\n\n{text}",
            db.url()
        ),
    )
    .unwrap();
    let out = sb.rollgate(&upgrade_to("3.4.0"));
    assert_eq!(out.code, Some(64), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("not a database of rollgate's own")
            && out.stderr.contains("Nothing was changed"),
        "{}",
        out.stderr
    );
    let ours = db.psql("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'rollgate%'");
    assert_eq!(ours.trim(), "0", "nothing of rollgate's was created there");
    for host in ["cp-1", "dp-1"] {
        let journal =
            std::fs::read_to_string(sb.path().join(host).join("state/journal")).unwrap_or_default();
        // The fixture's own set-up steps are "t/…"; a rollout's are "r-…".
        assert!(
            !journal.lines().any(|l| l.contains("\"op\":\"r-")),
            "{host} ran a step of a rollout:\n{journal}"
        );
    }
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

/// `show`/`resume`/`rollback` of a rollout by id: a rollout that is not
/// there is the operator's input (exit 64); a state database that cannot be
/// asked is a failure (exit 1) naming it — the rollout may well be there.
#[test]
fn a_rollout_read_by_id_is_64_when_missing_and_1_when_the_state_database_is_down() {
    let sb = Sandbox::new();
    let mut state = PgCluster::start().unwrap();
    state.createdb("rollgate_state").unwrap();
    sb.certs(&[("cp-1", 1)]);
    let addr = "127.0.0.1:1".parse().unwrap();
    sb.inventory(
        &[("cp-1", "cp", addr)],
        &format!(
            "\n[state]\nbackend = \"postgres\"\nurl = \"{}\"\n",
            state.conninfo("rollgate_state")
        ),
    );
    let id = "r-20260101T000000Z-abcd";
    for cmd in [
        vec!["show", id, "-i", "fleet.toml"],
        vec!["resume", id, "-i", "fleet.toml"],
        vec!["rollback", id, "-i", "fleet.toml", "--yes"],
    ] {
        let out = sb.rollgate(&cmd);
        assert_eq!(out.code, Some(64), "{cmd:?}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!("no rollout {id}")),
            "{cmd:?}: {}",
            out.stderr
        );
    }
    state.stop().unwrap();
    for cmd in [
        vec!["show", id, "-i", "fleet.toml"],
        vec!["rollback", id, "-i", "fleet.toml", "--yes"],
    ] {
        let out = sb.rollgate(&cmd);
        assert_eq!(out.code, Some(1), "{cmd:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("rollgate_state") && !out.stderr.contains("no rollout"),
            "{cmd:?} names the state database: {}",
            out.stderr
        );
    }
}

/// `history`, `show` and `status` only read the state database: they work
/// for a role that may read and not create (an auditor's; PostgreSQL 15
/// lets no ordinary role create in `public`), and on a database rollgate
/// has not written yet they find nothing and create nothing.
#[test]
fn reading_commands_need_only_the_right_to_read_and_create_nothing() {
    let sb = Sandbox::new();
    let state = PgCluster::start().unwrap();
    state.createdb("rollgate_state").unwrap();
    state.psql("postgres", "CREATE ROLE auditor LOGIN").unwrap();
    sb.certs(&[("cp-1", 1)]);
    let owner = state.conninfo("rollgate_state");
    let auditor = owner.replace("user=postgres", "user=auditor");
    assert_ne!(auditor, owner);
    let inventory = |url: &str| {
        sb.inventory(
            &[("cp-1", "cp", "127.0.0.1:1".parse().unwrap())],
            &format!("\n[state]\nbackend = \"postgres\"\nurl = \"{url}\"\n"),
        )
    };
    let tables = || {
        state
            .psql(
                "rollgate_state",
                "SELECT count(*) FROM pg_class WHERE relname LIKE 'rollgate%'",
            )
            .unwrap()
            .trim()
            .to_string()
    };
    let id = "r-20260101T000000Z-abcd";
    let read_all = |when: &str| {
        let out = sb.rollgate(&["history", "-i", "fleet.toml"]);
        assert_eq!(out.code, Some(0), "history, {when}: {}", out.stderr);
        let out = sb.rollgate(&["show", id, "-i", "fleet.toml"]);
        assert_eq!(out.code, Some(64), "show, {when}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!("no rollout {id}")),
            "{when}: {}",
            out.stderr
        );
        // status reads the lease too; the one host is unreachable (exit 1),
        // so what must hold is a whole JSON report saying the lease is free.
        let out = sb.rollgate(&["status", "-i", "fleet.toml", "--output", "json"]);
        let doc: serde_json::Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("status, {when}: {e}: {} {}", out.stdout, out.stderr));
        assert!(doc.get("lease").is_some(), "status, {when}: {doc}");
        assert!(
            !out.stderr.contains("permission denied"),
            "status, {when}: {}",
            out.stderr
        );
    };
    inventory(&auditor);
    read_all("a database rollgate never wrote, read by the auditor");
    assert_eq!(tables(), "0", "a reading command created tables");
    // Once a command that writes has made the tables (as the owner), the
    // auditor, granted SELECT, reads them.
    inventory(&owner);
    let catalog = crate::support::gateway::artifacts().join("releases.toml");
    let out = sb.rollgate(&[
        "upgrade",
        "-i",
        "fleet.toml",
        "-c",
        catalog.to_str().unwrap(),
        "--to",
        "3.4.0",
        "--yes",
    ]);
    assert_ne!(tables(), "0", "the upgrade took no lease: {}", out.stderr);
    state
        .psql(
            "rollgate_state",
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO auditor",
        )
        .unwrap();
    inventory(&auditor);
    read_all("rollgate's tables, read by the auditor");
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
    let rid_a = rollout_of(&line);

    // B waits out the lease, then takes the fleet and finishes A's rollout
    // from the shared journal.
    let b = rollgate_testbed::wait::value(Duration::from_secs(30), "B to take the lease", || {
        let out = resume_on(&sb, "bastion-b", &[]);
        (out.code != Some(2)).then_some(out)
    })
    .unwrap();
    assert_eq!(b.code, Some(0), "{}\n{}", b.stdout, b.stderr);
    assert!(
        b.stdout.contains(&rid_a),
        "B finished A's rollout:\n{}",
        b.stdout
    );
    // From here on, anything done for the rollout is A's.
    let b_done = rollgate::clock::now_ms();

    // A wakes up: it changes nothing and exits 1.
    a.signal(Signal::SIGCONT);
    let stderr_a = a.stderr_path();
    let (code, lines) = a.finish(Duration::from_secs(120));
    assert_eq!(code, Some(1), "{}", lines.join("\n"));
    let said = std::fs::read_to_string(stderr_a).unwrap();
    assert!(
        said.contains("lost the fleet lease")
            && said.contains("took it over, running `rollgate resume`"),
        "A says who took over:\n{said}"
    );
    for host in ["cp-1", "dp-1", "dp-2"] {
        for e in agent_begins(&sb, host, &rid_a) {
            assert!(
                e["at_ms"].as_i64().unwrap() < b_done,
                "{host} began a step of the woken coordinator: {e}"
            );
        }
    }
    // Nor could it add to the rollout's journal in the state database.
    let late = db
        .pg
        .psql(
            "rollgate_state",
            &format!(
                "SELECT count(*) FROM rollgate_journal WHERE rollout = '{rid_a}'
                 AND written_at >= to_timestamp({b_done} / 1000.0)"
            ),
        )
        .unwrap();
    assert_eq!(late.trim(), "0", "A journalled after it was frozen");
}

/// The machine that ran a rollout is lost mid-batch (kill -9, its lease
/// still live): from another machine, `resume --take-over` asks for the
/// holder's name (no terminal: refused, naming it), then with `--yes`
/// takes the fleet at once and finishes the same rollout from the shared
/// journal, re-attaching by operation id: every install ran once. Both
/// machines' `history` show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_whose_machine_was_lost_is_taken_over_and_finished_from_another() {
    let sb = Sandbox::new();
    let db = Db::start();
    let _fleet = postgres_state_fleet(&sb, &db, "min_healthy = \"2s\"", "60s").await;

    let mut a = sb.rollgate_bg(&with_state_dir(upgrade_to("3.4.0"), "bastion-a"));
    let line = a.wait_line(Duration::from_secs(120), "dp-1's install", |l| {
        l.contains("\"host\":\"dp-1\"") && l.contains("\"step\":\"install\"")
    });
    a.kill9();
    let rid = rollout_of(&line);

    let resume = |extra: &[&str]| {
        let mut args = with_state_dir(
            [
                "resume",
                "-i",
                "fleet.toml",
                "--output",
                "json",
                "--take-over",
            ]
            .map(String::from)
            .to_vec(),
            "bastion-b",
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        sb.rollgate(&args)
    };
    // Without a terminal to type the holder's name on, nothing happens.
    let asked = resume(&[]);
    assert_eq!(asked.code, Some(2), "{}\n{}", asked.stdout, asked.stderr);
    assert!(
        asked.stderr.contains("fleet lease is held by")
            && asked.stderr.contains("--yes")
            && asked.stderr.contains("Nothing was changed"),
        "{}",
        asked.stderr
    );
    let took = resume_on(&sb, "bastion-b", &["--take-over", "--yes"]);
    assert_eq!(took.code, Some(0), "{}\n{}", took.stdout, took.stderr);
    assert!(
        took.stderr.contains("took the fleet lease over from"),
        "{}",
        took.stderr
    );
    assert!(
        took.stdout.contains(&rid),
        "B finished A's rollout {rid}:\n{}",
        took.stdout
    );
    installed_once(&sb, &rid);
    assert!(!journalled_begins(&db.pg, &rid).is_empty());

    // Either machine's history shows it, succeeded.
    for dir in ["bastion-a", "bastion-b"] {
        let h = sb.rollgate(&with_state_dir(
            ["history", "-i", "fleet.toml", "--output", "json"]
                .map(String::from)
                .to_vec(),
            dir,
        ));
        let doc = crate::support::json(&h);
        let rows = doc["rollouts"].as_array().unwrap();
        assert!(
            rows.iter()
                .any(|r| r["id"] == rid.as_str() && r["outcome"] == "succeeded"),
            "{dir}: {doc}"
        );
    }
}

/// The state database goes away mid-rollout: the coordinator halts, and no
/// agent ran a step the journal does not show begun. Once the database is
/// back, `resume` (from another machine, after the dead holder's lease
/// lapsed) finishes the rollout, each install run once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_database_lost_mid_rollout_halts_it_and_resume_finishes_once_it_is_back() {
    let sb = Sandbox::new();
    let db = Db::start();
    let mut state = PgCluster::start().unwrap();
    let _fleet = state_in(&sb, &db, &state, "min_healthy = \"2s\"", "3s").await;

    let mut a = sb.rollgate_bg(&with_state_dir(upgrade_to("3.4.0"), "bastion-a"));
    let line = a.wait_line(Duration::from_secs(120), "dp-1's drain", |l| {
        l.contains("\"host\":\"dp-1\"") && l.contains("\"step\":\"drain\"")
    });
    let rid = rollout_of(&line);
    state.stop().unwrap();
    let stderr_a = a.stderr_path();
    let (code, lines) = a.finish(Duration::from_secs(120));
    assert_eq!(code, Some(1), "{}", lines.join("\n"));
    let said = std::fs::read_to_string(stderr_a).unwrap();
    assert!(
        said.contains("state database"),
        "A says why it stopped:\n{said}"
    );

    state.start_again().unwrap();
    // Never acted on a step it could not journal.
    let journalled = journalled_begins(&state, &rid);
    for host in ["cp-1", "dp-1", "dp-2"] {
        for e in agent_begins(&sb, host, &rid) {
            let op = e["op"].as_str().unwrap();
            assert!(
                journalled.iter().any(|j| j == op),
                "{host} ran {op}, which the journal does not show begun"
            );
        }
    }
    let b = rollgate_testbed::wait::value(Duration::from_secs(30), "the lease to lapse", || {
        let out = resume_on(&sb, "bastion-b", &[]);
        (out.code != Some(2)).then_some(out)
    })
    .unwrap();
    assert_eq!(b.code, Some(0), "{}\n{}", b.stdout, b.stderr);
    installed_once(&sb, &rid);
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

    // `rollback --restore-db` rewinds the gateway's database, never
    // rollgate's own history, kept in a database of its own.
    let run = |args: &[&str]| {
        let out = proc::run(ROLLGATE, args, sb.path(), Duration::from_secs(300));
        crate::zero_downtime::expect_exit(&out, 0);
        out
    };
    let catalog = doc["catalog"].as_str().unwrap();
    let up = run(&[
        "upgrade", "-i", inv, "-c", catalog, "--to", "3.5.0", "--yes", "--output", "json",
    ]);
    let rid = up
        .stdout
        .lines()
        .find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l).ok()?["rollout"]
                .as_str()
                .map(String::from)
        })
        .expect("the upgrade's rollout id");
    let show = |id: &str| run(&["show", id, "-i", inv, "--output", "json"]).stdout;
    let before = show(&rid);
    run(&[
        "rollback",
        "-i",
        inv,
        "--restore-db",
        "--yes",
        "--output",
        "json",
    ]);
    assert_eq!(show(&rid), before, "the upgrade's journal is unchanged");
    let h = run(&["history", "-i", inv, "--output", "json"]);
    let doc = crate::support::json(&h);
    let kinds: Vec<&str> = doc["rollouts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"]["kind"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(kinds, ["upgrade", "rollback"], "{doc}");
}

//! `rollgate demo` as a newcomer runs it.

use std::time::Duration;

use crate::support::{KeptDemo, ROLLGATE, Sandbox, proc};

#[test]
fn demo_without_its_prerequisites_exits_64_saying_how_to_install_them() {
    let sb = Sandbox::new();
    let out = std::process::Command::new(ROLLGATE)
        .args(["demo", "--no-upgrade"])
        .env("ROLLGATE_PG_BIN", sb.path().join("no-postgres"))
        .current_dir(sb.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("postgresql-15") && stderr.contains("deploy/demo.sh"),
        "{stderr}"
    );
}

#[test]
fn demo_with_compose_and_no_docker_engine_exits_64_saying_how_to_get_one() {
    let sb = Sandbox::new();
    // An engine that is not there: the CLI's DOCKER_HOST at a dead socket.
    let out = std::process::Command::new(ROLLGATE)
        .args(["demo", "--install", "compose", "--no-upgrade", "--dir"])
        .arg(sb.path().join("fleet"))
        .env(
            "DOCKER_HOST",
            format!("unix://{}", sb.path().join("no-docker.sock").display()),
        )
        .current_dir(sb.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("Docker Engine") && stderr.contains("service docker start"),
        "{stderr}"
    );
    assert!(!sb.path().join("fleet").exists(), "nothing was built");
}

#[test]
fn demo_keep_no_upgrade_leaves_a_fleet_to_drive_by_hand_and_a_teardown() {
    let sb = Sandbox::new();
    let dir = sb.path().join("kept");
    let args: Vec<String> = ["demo", "--keep", "--no-upgrade", "--dps", "2", "--dir"]
        .iter()
        .map(|s| s.to_string())
        .chain([dir.display().to_string()])
        .collect();
    let guard = KeptDemo::start(sb.path(), &args);
    let doc = guard.doc.clone();
    let inv = doc["inventory"].as_str().unwrap();
    let status = proc::run(
        ROLLGATE,
        &["status", "-i", inv, "--output", "json"],
        sb.path(),
        Duration::from_secs(60),
    );
    assert_eq!(status.code, Some(0), "{}", status.stderr);
    let hosts: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(hosts["hosts"].as_array().unwrap().len(), 3);
    assert!(
        hosts["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["healthy"] == true && h["version"] == "3.3.0"),
        "{hosts}"
    );
    let lb: std::net::SocketAddr = doc["lb"].as_str().unwrap().parse().unwrap();
    let (code, _) = rollgate_testbed::http::get(lb, rollgate_testbed::fleet::ROUTE).unwrap();
    assert_eq!(code, 200, "traffic flows through the kept load balancer");
    let plan = proc::run(
        ROLLGATE,
        &[
            "plan",
            "-i",
            inv,
            "-c",
            doc["catalog"].as_str().unwrap(),
            "--to",
            "3.4.0",
        ],
        sb.path(),
        Duration::from_secs(60),
    );
    assert_eq!(plan.code, Some(0), "{}", plan.stdout);
    let backup = proc::run(
        ROLLGATE,
        &["backup", "-i", inv, "--output", "json"],
        sb.path(),
        Duration::from_secs(120),
    );
    assert_eq!(backup.code, Some(0), "{}\n{}", backup.stdout, backup.stderr);
    assert!(
        dir.join("state/backups").read_dir().unwrap().count() == 1,
        "rollgate backup kept a copy"
    );

    let gateways: Vec<i32> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter_map(|h| std::fs::read_to_string(h.path().join("state/gateway.pid")).ok())
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(gateways.len(), 3, "every host runs a gateway");
    drop(guard);
    assert!(!dir.exists(), "teardown removed the fleet");
    for pid in gateways {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        let alive = state.is_some_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| !r.trim_start().starts_with('Z'))
        });
        assert!(!alive, "gateway {pid} outlived the teardown");
    }
    assert!(
        rollgate_testbed::http::get(lb, "/").is_none(),
        "nothing listens any more"
    );
}

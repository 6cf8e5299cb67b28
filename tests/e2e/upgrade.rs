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
}

//! `--state-dir` (or `ROLLGATE_STATE_DIR`) on every command that keeps
//! state: the rollout journals, the lock and the backup copies go there
//! instead of the inventory's `[coordinator] state_dir`, so one inventory
//! can be driven from two "machines" (two state directories).

use crate::support::fixtures::cp_on_330;
use crate::support::gateway::Db;
use crate::support::{Sandbox, entries, json};

fn rollouts(sb: &Sandbox, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["history", "-i", "fleet.toml", "--output", "json"];
    args.extend_from_slice(extra);
    let out = sb.rollgate(&args);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    json(&out)["rollouts"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_dir_overrides_the_inventorys_for_journals_backups_and_history() {
    let sb = Sandbox::new();
    sb.certs(&[("cp-1", 1)]);
    let db = Db::start();
    let cp = cp_on_330(&sb, &db).await;
    sb.inventory(&[cp.host.entry()], "");
    let other = sb.path().join("bastion-b");

    let out = sb.rollgate(&[
        "backup",
        "-i",
        "fleet.toml",
        "--state-dir",
        other.to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    // Everything went to the other directory, nothing to the inventory's.
    assert_eq!(entries(&other.join("rollouts")), 1, "the backup's journal");
    assert_eq!(entries(&other.join("backups")), 1);
    assert_eq!(
        entries(&sb.path().join("state/rollouts")),
        0,
        "the inventory's state dir is untouched"
    );

    // Each machine sees its own history; the variable does what the option does.
    assert_eq!(
        rollouts(&sb, &["--state-dir", other.to_str().unwrap()]).len(),
        1
    );
    assert_eq!(rollouts(&sb, &[]).len(), 0);
    let env = std::process::Command::new(crate::support::ROLLGATE)
        .args(["history", "-i", "fleet.toml", "--output", "json"])
        .env("ROLLGATE_STATE_DIR", &other)
        .current_dir(sb.path())
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&env.stdout).unwrap();
    assert_eq!(doc["rollouts"].as_array().unwrap().len(), 1, "{doc}");
    let id = doc["rollouts"][0]["id"].as_str().unwrap().to_string();
    let show = sb.rollgate(&[
        "show",
        "-i",
        "fleet.toml",
        &id,
        "--state-dir",
        other.to_str().unwrap(),
    ]);
    assert_eq!(show.code, Some(0), "{}", show.stderr);
    let missing = sb.rollgate(&["show", "-i", "fleet.toml", &id]);
    assert_eq!(missing.code, Some(64), "{}", missing.stdout);

    // An empty one is refused, changing nothing.
    let bad = sb.rollgate(&["backup", "-i", "fleet.toml", "--state-dir", ""]);
    assert_eq!(bad.code, Some(64), "{}", bad.stderr);
    assert!(bad.stderr.contains("--state-dir"), "{}", bad.stderr);
    assert_eq!(entries(&other.join("rollouts")), 1);
}
